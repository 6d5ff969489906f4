//! The manager's routes: VMs, images, host statistics and power, metrics, the OpenAPI document;
//! and the routes that stream (image upload, console and log follow) instead of holding a body.

use super::super::api::{self, ImageKind, VmState};
use super::super::hostinfo;
use super::super::http::server::{answer_error, Guarded};
use super::super::http::{self, Body, ChunkedWriter, HttpError, Response};
use super::super::identity::{CERT_FILE, KEY_FILE};
use super::super::images::{check_name, parse_kind, StoreError, UploadBody};
use super::super::vms::{Op, VmError};
use super::{Access, Agent, Peer, Request, ROUTES};
use rustls::{ServerConnection, StreamOwned};
use std::io::Write;
use std::net::TcpStream;

/// The OpenAPI document of this API, kept in the repository next to the code.
pub const OPENAPI_JSON: &str = include_str!("openapi.json");

pub(super) type Tls = StreamOwned<ServerConnection, Guarded<TcpStream>>;

/// The `{…}` parameters of `pattern` in the request path.
fn params<'r>(request: &'r Request, pattern: &str) -> Vec<&'r str> {
    http::path_params(pattern, &request.path)
}

fn first<'r>(request: &'r Request, pattern: &str) -> &'r str {
    params(request, pattern)
        .first()
        .copied()
        .unwrap_or_default()
}

fn json_or<T: serde::Serialize, E>(result: Result<T, E>, err: impl Fn(E) -> Response) -> Response {
    match result {
        Ok(value) => Response::json(200, &value),
        Err(e) => err(e),
    }
}

/// A VM operation's answer: 202 Accepted with the VM's status for one that goes on after the
/// answer (a start, a shutdown or power-off: the manager polls the status), else 200.
fn vm_answer(result: Result<api::VmStatus, VmError>, accepted: bool) -> Response {
    match result {
        Ok(status) => Response::json(if accepted { 202 } else { 200 }, &status),
        Err(e) => e.response(),
    }
}

pub(super) fn empty_body(request: &Request) -> Option<Response> {
    let body = request.body.trim_ascii();
    (!body.is_empty() && body != b"{}")
        .then(|| Response::error(400, "This route takes no body (or an empty JSON object)"))
}

impl Agent {
    /// Reads a request and answers it; uploads, console and log streams go straight to the
    /// socket.
    pub(super) fn serve_stream(
        &self,
        stream: &mut Tls,
        addr: std::net::IpAddr,
        generation: u64,
    ) -> Result<(), HttpError> {
        let limits = self.config.http;
        let mut head = match http::read_request_head(stream, &limits) {
            Ok(head) => head,
            Err(e) => return Err(answer_error(stream, e)),
        };
        // The head is in: the deadline ends, the body rate is watched.
        stream.sock.start_body();
        let verified = stream.conn.peer_certificates().is_some();
        let manager = verified && self.current_tls().generation == generation;
        let peer = Peer { addr, manager };
        let request = head.request.clone();
        let upload = request.method == "PUT" && http::path_matches(api::IMAGE, &request.path);
        // Refuse before reading a body nobody is allowed to send (and before 100 Continue).
        let refused = match http::route(ROUTES, &request) {
            Err(response) => Some(response),
            Ok((Access::Manager, _)) if !peer.manager => Some(Self::needs_manager()),
            Ok(_) if upload => Self::upload_target(&request, head.length().is_none()).err(),
            Ok(_) => None,
        };
        let response = if let Some(response) = refused {
            // Take a small body off the wire so the answer is not lost to a reset connection;
            // a client waiting for 100 Continue has sent none.
            let small = head
                .length()
                .is_some_and(|len| len <= limits.max_body as u64);
            if small && !head.expect_continue {
                if let Ok(mut body) = head.body(stream, &limits) {
                    let _ = std::io::copy(&mut body, &mut std::io::sink());
                }
            }
            response
        } else if upload {
            let mut body = head.body(stream, &limits)?;
            self.upload(&request, &mut body)
        } else if request.method == "GET"
            && http::path_matches(api::VM_CONSOLE, &request.path)
            && is_follow(&request)
        {
            return self.follow(&request, stream);
        } else if request.method == "GET"
            && http::path_matches(keel_api::logs::HOST_LOGS, &request.path)
            && is_follow(&request)
        {
            return self.follow_logs(&request, stream);
        } else {
            match head.read_body(stream, &limits) {
                Ok(request) => self.handle(&request, &peer),
                Err(e) => return Err(answer_error(stream, e)),
            }
        };
        http::write_response(stream, &response)?;
        Ok(())
    }

    pub(super) fn needs_manager() -> Response {
        Response::error(403, "This route needs the manager's client certificate")
    }

    /// The console history, then everything the guest prints until the VM stops, chunked.
    fn follow(&self, request: &Request, stream: &mut Tls) -> Result<(), HttpError> {
        let name = first(request, api::VM_CONSOLE);
        let console = match self.vms.console(name) {
            Ok(console) => console,
            Err(e) => return Ok(http::write_response(stream, &e.response())?),
        };
        // A stream is quiet for as long as the guest is: no deadline and no rate from here.
        stream.sock.open();
        let (history, chunks) = console.follow();
        http::write_stream_head(stream, 200, "text/plain; charset=utf-8")?;
        let mut out = ChunkedWriter::new(&mut *stream);
        out.write_all(&history)?;
        out.flush()?;
        let running = self
            .vms
            .get(name)
            .is_ok_and(|s| s.state != VmState::Stopped);
        if running {
            for chunk in chunks {
                out.write_all(&chunk)?;
                out.flush()?;
            }
        }
        out.finish(&[])?;
        Ok(())
    }

    /// What an upload names (kind, name, the SHA-256 header if sent), or why it is refused from
    /// its head, before its body is read (and before 100 Continue). A chunked body may send the
    /// SHA-256 in a trailer announced by `Trailer` instead of the header.
    fn upload_target(
        request: &Request,
        chunked: bool,
    ) -> Result<(ImageKind, &str, Option<&str>), Response> {
        let refuse = |e: StoreError| Response::error(e.status(), &e.to_string());
        let [kind, name] = params(request, api::IMAGE)[..] else {
            return Err(Response::error(404, "No such image path"));
        };
        let kind = parse_kind(kind).map_err(refuse)?;
        check_name(name).map_err(refuse)?;
        let digest = request.header(api::SHA256_HEADER);
        let in_trailer = chunked
            && request.header("trailer").is_some_and(|names| {
                names
                    .split(',')
                    .any(|n| n.trim().eq_ignore_ascii_case(api::SHA256_HEADER))
            });
        if digest.is_none() && !in_trailer {
            let message = format!(
                "Send the image's SHA-256 (64 hex digits) in the {} header",
                api::SHA256_HEADER
            );
            return Err(Response::error(400, &message));
        }
        Ok((kind, name, digest))
    }

    /// Stores an upload streamed from `body`: its length declared, or chunked.
    fn upload(&self, request: &Request, body: &mut dyn UploadBody) -> Response {
        let len = body.length();
        let (kind, name, digest) = match Self::upload_target(request, len.is_none()) {
            Ok(target) => target,
            Err(response) => return response,
        };
        match self.store.upload_stream(kind, name, digest, len, body) {
            Ok(image) => Response::json(200, &image),
            Err(e) => Response::error(e.status(), &e.to_string()),
        }
    }

    pub(super) fn image_upload(&self, request: &Request) -> Response {
        self.upload(request, &mut &request.body[..])
    }

    pub(super) fn image_list(&self, _: &Request) -> Response {
        json_or(self.store.list(), |e| {
            Response::error(e.status(), &e.to_string())
        })
    }

    pub(super) fn image_delete(&self, request: &Request) -> Response {
        let [kind, name] = params(request, api::IMAGE)[..] else {
            return Response::error(404, "No such image path");
        };
        let kind: ImageKind = match parse_kind(kind) {
            Ok(kind) => kind,
            Err(e) => return Response::error(e.status(), &e.to_string()),
        };
        if let Some(vm) = self.vms.uses_image(kind, name) {
            let message = format!(
                "VM {vm:?} uses {} image {name:?}; delete it first",
                kind.as_str()
            );
            return Response::error(409, &message);
        }
        match self.store.delete(kind, name) {
            Ok(()) => Response::json(
                200,
                &keel_api::reply::DeletedReply {
                    deleted: name.to_string(),
                },
            ),
            Err(e) => Response::error(e.status(), &e.to_string()),
        }
    }

    pub(super) fn vm_list(&self, _: &Request) -> Response {
        Response::json(
            200,
            &api::VmList {
                vms: self.vms.list(),
            },
        )
    }

    pub(super) fn vm_define(&self, request: &Request) -> Response {
        let spec: api::VmSpec = match request.json() {
            Ok(spec) => spec,
            Err(response) => return response,
        };
        json_or(self.vms.define(spec), |e| e.response())
    }

    pub(super) fn vm_get(&self, request: &Request) -> Response {
        json_or(self.vms.get(first(request, api::VM)), |e| e.response())
    }

    pub(super) fn vm_delete(&self, request: &Request) -> Response {
        json_or(self.vms.delete(first(request, api::VM)), |e| e.response())
    }

    pub(super) fn vm_start(&self, request: &Request) -> Response {
        if let Some(bad) = empty_body(request) {
            return bad;
        }
        vm_answer(self.vms.start(first(request, api::VM_START)), true)
    }

    fn vm_op(&self, request: &Request, pattern: &str, op: Op) -> Response {
        if let Some(bad) = empty_body(request) {
            return bad;
        }
        let accepted = matches!(op, Op::Shutdown | Op::PowerOff);
        vm_answer(self.vms.control(first(request, pattern), op), accepted)
    }

    pub(super) fn vm_shutdown(&self, request: &Request) -> Response {
        self.vm_op(request, api::VM_SHUTDOWN, Op::Shutdown)
    }

    pub(super) fn vm_poweroff(&self, request: &Request) -> Response {
        self.vm_op(request, api::VM_POWEROFF, Op::PowerOff)
    }

    pub(super) fn vm_pause(&self, request: &Request) -> Response {
        self.vm_op(request, api::VM_PAUSE, Op::Pause)
    }

    pub(super) fn vm_resume(&self, request: &Request) -> Response {
        self.vm_op(request, api::VM_RESUME, Op::Resume)
    }

    pub(super) fn vm_console(&self, request: &Request) -> Response {
        if let Some(bad) = bad_follow(request) {
            return bad;
        }
        match self.vms.console(first(request, api::VM_CONSOLE)) {
            Ok(console) => Response {
                status: 200,
                headers: vec![("Content-Type".into(), "text/plain; charset=utf-8".into())],
                body: console.history(),
            },
            Err(e) => e.response(),
        }
    }

    /// Host and per-VM figures now, for the stats route and the metrics.
    fn sample_stats(&self) -> api::HostStats {
        let running = self.vms.running();
        self.sampler
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .sample(&running)
    }

    pub(super) fn host_stats(&self, _: &Request) -> Response {
        Response::json(200, &self.sample_stats())
    }

    /// The ingress firewall PID 1 loads at boot (`crate::firewall`), rule by rule.
    pub(super) fn host_firewall(&self, _: &Request) -> Response {
        Response::json(200, &crate::firewall::describe())
    }

    pub(super) fn metrics(&self, _: &Request) -> Response {
        let stats = self.sample_stats();
        Response {
            status: 200,
            headers: vec![("Content-Type".into(), "text/plain; version=0.0.4".into())],
            body: hostinfo::prometheus(&stats, self.vms.list().len()).into_bytes(),
        }
    }

    pub(super) fn openapi(&self, _: &Request) -> Response {
        Response {
            status: 200,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: OPENAPI_JSON.as_bytes().to_vec(),
        }
    }

    fn power(&self, request: &Request, signal: i32, action: &str) -> Response {
        if let Some(bad) = empty_body(request) {
            return bad;
        }
        let Some(pid) = self.config.power_pid else {
            return Response::error(409, "This agent does not control the host's power");
        };
        // SAFETY: kill has no memory effects.
        if unsafe { libc::kill(pid, signal) } != 0 {
            let e = std::io::Error::last_os_error();
            return Response::error(500, &format!("Cannot signal PID {pid}: {e}"));
        }
        Response::json(
            200,
            &api::HostAction {
                action: action.into(),
            },
        )
    }

    pub(super) fn host_state(&self, _: &Request) -> Response {
        Response::json(200, &crate::state::status())
    }

    pub(super) fn host_state_create(&self, request: &Request) -> Response {
        let body: api::CreateStateRequest = match request.json() {
            Ok(body) => body,
            Err(response) => return response,
        };
        match self.create_state(&body) {
            Ok(status) => Response::json(200, &status),
            Err(e) => Response::error(e.status(), &e.to_string()),
        }
    }

    /// Creates the state partition, then copies what the host kept in RAM so far (identity,
    /// adoption, host ID and manager choice, VM definitions, saved network settings) onto it, so
    /// a reboot keeps them. For the API and the console.
    pub fn create_state(
        &self,
        request: &api::CreateStateRequest,
    ) -> Result<crate::state::Status, crate::state::create::CreateError> {
        let status = crate::state::create_on(&request.disk, request.size_mib, &request.confirm)?;
        if let Some(dir) = status.dir() {
            let from = &self.config.state_dir;
            let mut problems = crate::state::copy_into(
                from,
                &dir.join("agent"),
                &[
                    KEY_FILE,
                    CERT_FILE,
                    super::ADOPTION_FILE,
                    super::super::register::HOST_ID_FILE,
                    super::super::registration::SAVED_FILE,
                ],
            );
            if let (Some(parent), Some(name)) = (
                self.config.vm_defs.parent(),
                self.config.vm_defs.file_name().and_then(|n| n.to_str()),
            ) {
                problems.extend(crate::state::copy_into(parent, &dir.join("agent"), &[name]));
            }
            problems.extend(crate::state::copy_into(
                std::path::Path::new(crate::state::RAM_DIR),
                dir,
                &[crate::net::store::CONFIG_FILE],
            ));
            log::info!(
                "keel-agent: state partition created: {}",
                status.console_line()
            );
            for problem in problems {
                log::warn!("keel-agent: cannot copy to the state partition: {problem}");
            }
        }
        Ok(status)
    }

    /// PID 1 reboots on SIGTERM (see pid1::shutdown).
    pub(super) fn host_reboot(&self, request: &Request) -> Response {
        self.power(request, libc::SIGTERM, "reboot")
    }

    /// PID 1 powers off on SIGUSR2.
    pub(super) fn host_poweroff(&self, request: &Request) -> Response {
        self.power(request, libc::SIGUSR2, "power-off")
    }
}

/// The answer to a `follow` query parameter that is not a boolean.
pub(super) fn bad_follow(request: &Request) -> Option<Response> {
    let follow = http::query_param(request.query.as_deref(), "follow");
    follow
        .is_some_and(|f| !["", "1", "true", "yes", "0", "false", "no"].contains(&f))
        .then(|| Response::error(400, "follow must be true or false"))
}

fn is_follow(request: &Request) -> bool {
    matches!(
        http::query_param(request.query.as_deref(), "follow"),
        Some("" | "1" | "true" | "yes")
    )
}

impl UploadBody for Body<'_, Tls> {
    fn length(&self) -> Option<u64> {
        Body::length(self)
    }

    fn trailer(&self, name: &str) -> Option<String> {
        Body::trailer(self, name).map(str::to_string)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::OPENAPI_JSON;
    use keel_api::limits;

    #[test]
    fn the_openapi_document_states_keel_api_s_limits() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI_JSON).unwrap();
        let spec = &doc["components"]["schemas"]["VmSpec"]["properties"];
        assert_eq!(spec["vcpus"]["minimum"], limits::MIN_VCPUS);
        assert_eq!(spec["vcpus"]["maximum"], limits::MAX_VCPUS);
        assert_eq!(spec["memory_mib"]["minimum"], limits::MIN_MEMORY_MIB);
        assert_eq!(spec["memory_mib"]["maximum"], limits::MAX_MEMORY_MIB);
        assert_eq!(spec["cmdline"]["maxLength"], limits::MAX_CMDLINE_LEN);
    }
}
