//! Routing tables: a method and a path pattern per handler, 404 and 405 (with `Allow`) for the
//! rest; path parameters and query strings.

use crate::message::{Request, Response};

/// One entry of a routing table.
#[derive(Debug, Clone)]
pub struct Route<H> {
    pub method: &'static str,
    pub path: &'static str,
    pub handler: H,
}

/// The handler for `request`, or the 404 or 405 (with `Allow`) response.
pub fn route<'r, H>(routes: &'r [Route<H>], request: &Request) -> Result<&'r H, Response> {
    let mut allowed = Vec::new();
    for r in routes
        .iter()
        .filter(|r| path_matches(r.path, &request.path))
    {
        if r.method == request.method {
            return Ok(&r.handler);
        }
        allowed.push(r.method);
    }
    if allowed.is_empty() {
        return Err(Response::error(
            404,
            &format!("No such path {:?}", request.path),
        ));
    }
    let message = format!("Method {} not allowed on {}", request.method, request.path);
    Err(Response::error(405, &message).with_header("Allow", &allowed.join(", ")))
}

/// Whether `path` fits `pattern`, where a `{name}` segment matches any one non-empty segment.
pub fn path_matches(pattern: &str, path: &str) -> bool {
    let mut want = pattern.split('/');
    let mut got = path.split('/');
    loop {
        match (want.next(), got.next()) {
            (None, None) => return true,
            (Some(w), Some(g)) if w.starts_with('{') && w.ends_with('}') && !g.is_empty() => {}
            (Some(w), Some(g)) if w == g => {}
            _ => return false,
        }
    }
}

/// The value of each `{name}` segment of `pattern` in `path`, in order.
pub fn path_params<'p>(pattern: &str, path: &'p str) -> Vec<&'p str> {
    pattern
        .split('/')
        .zip(path.split('/'))
        .filter(|(w, _)| w.starts_with('{'))
        .map(|(_, g)| g)
        .collect()
}

/// The value of `key` in a `a=1&b=2` query string (no percent-decoding: values are plain).
pub fn query_param<'q>(query: Option<&'q str>, key: &str) -> Option<&'q str> {
    query?
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn routing() {
        let routes = [
            Route {
                method: "GET",
                path: "/a",
                handler: 1,
            },
            Route {
                method: "POST",
                path: "/a",
                handler: 2,
            },
            Route {
                method: "GET",
                path: "/b",
                handler: 3,
            },
        ];
        let req = |method: &str, path: &str| Request {
            method: method.into(),
            path: path.into(),
            query: None,
            headers: vec![],
            body: vec![],
        };
        assert_eq!(route(&routes, &req("GET", "/a")), Ok(&1));
        assert_eq!(route(&routes, &req("POST", "/a")), Ok(&2));
        assert_eq!(route(&routes, &req("GET", "/b")), Ok(&3));
        let e = route(&routes, &req("GET", "/c")).unwrap_err();
        assert_eq!(e.status, 404);
        let e = route(&routes, &req("DELETE", "/a")).unwrap_err();
        assert_eq!(e.status, 405);
        assert_eq!(e.header("allow"), Some("GET, POST"));
    }

    #[test]
    fn path_patterns_and_queries() {
        let cases = [
            ("/v1/vms/{name}", "/v1/vms/a", true),
            ("/v1/vms/{name}", "/v1/vms/", false),
            ("/v1/vms/{name}", "/v1/vms/a/start", false),
            ("/v1/vms/{name}/start", "/v1/vms/a/start", true),
            ("/v1/vms", "/v1/vms", true),
            ("/v1/vms", "/v1/vmsx", false),
        ];
        for (pattern, path, want) in cases {
            assert_eq!(path_matches(pattern, path), want, "{pattern} {path}");
        }
        assert_eq!(
            path_params("/v1/images/{kind}/{name}", "/v1/images/kernel/k1"),
            ["kernel", "k1"]
        );
        assert_eq!(query_param(Some("a=1&follow=true"), "follow"), Some("true"));
        assert_eq!(query_param(Some("follow"), "follow"), Some(""));
        assert_eq!(query_param(None, "follow"), None);
    }
}
