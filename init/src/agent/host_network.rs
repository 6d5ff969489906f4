//! The manager's host-network routes: read the configuration, preview a change, apply it with
//! automatic rollback unless confirmed, confirm. They are the operations the console has,
//! carried out by PID 1's network service (`crate::net`, docs/network.md).

use super::super::api::{self, NetworkApplied, NetworkChange, NetworkPreview};
use super::{Agent, Request};
use crate::agent::http::Response;
use crate::net::{self, ApplyOptions, NetError, Refusal};

/// The HTTP status for a refused network request.
fn error_response(e: &NetError) -> Response {
    let status = match (e, e.refusal()) {
        (NetError::NotRunning(_), _) => 503,
        (_, Refusal::Invalid) => 400,
        (_, Refusal::Conflict) => 409,
        (_, Refusal::Failed) => 500,
    };
    Response::error(status, &e.to_string())
}

fn answer<T: serde::Serialize>(result: Result<T, NetError>) -> Response {
    match result {
        Ok(value) => Response::json(200, &value),
        Err(e) => error_response(&e),
    }
}

impl Agent {
    pub(super) fn network_get(&self, _: &Request) -> Response {
        answer(net::status())
    }

    pub(super) fn network_preview(&self, request: &Request) -> Response {
        let change: net::NetConfig = match request.json() {
            Ok(change) => change,
            Err(response) => return response,
        };
        answer(net::preview(&change).map(|operations| NetworkPreview { operations }))
    }

    pub(super) fn network_apply(&self, request: &Request) -> Response {
        let body: NetworkChange = match request.json() {
            Ok(body) => body,
            Err(response) => return response,
        };
        let mut options = ApplyOptions::default();
        if let Some(secs) = body.confirm_within_secs {
            if !(api::NETWORK_CONFIRM_MIN_SECS..=api::NETWORK_CONFIRM_MAX_SECS).contains(&secs) {
                return Response::error(
                    400,
                    &format!(
                        "confirm_within_secs must be {}..={}, not {secs}",
                        api::NETWORK_CONFIRM_MIN_SECS,
                        api::NETWORK_CONFIRM_MAX_SECS
                    ),
                );
            }
            options.confirm_within_secs = secs;
        }
        options.manager = body.manager;
        answer(
            net::apply(&body.change, &options).map(|applied| NetworkApplied {
                operations: applied.operations,
                confirm_within_secs: applied.confirm_within_secs,
            }),
        )
    }

    pub(super) fn network_confirm(&self, request: &Request) -> Response {
        if let Some(bad) = super::handlers::empty_body(request) {
            return bad;
        }
        answer(net::confirm().map(|()| keel_api::reply::EmptyReply {}))
    }
}
