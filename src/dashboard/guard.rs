//! Who is asking, and from where.
//!
//! - **Host** (every request): the dashboard answers only to its own address: the address it
//!   is bound to or the connection's local address, or `localhost`, `127.0.0.1` or `[::1]`
//!   with its port. A DNS-rebinding page reaches the listener under its own name, and is
//!   refused here before anything else.
//! - **Origin** (every state change and the WebSocket upgrade): when present it must be
//!   `http://` and one of those hosts. A state change made with a session cookie must carry
//!   one (browsers always send it), and its `x-csrf-token` must be the session's.
//! - **Reviewer**: `Authorization: Bearer <reviewer token>` (the CLI, scripts), or the session
//!   cookie of `POST /api/login` (the page). A request that carries a wrong bearer token is
//!   refused, whatever cookie it also has.

use std::net::SocketAddr;

use http::{HeaderMap, Request, header};

use super::reply::ApiError;
use super::reviewers::Reviewers;
use super::session::{self, Key, Sessions};

/// The request header carrying a session's CSRF token.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// The addresses the dashboard answers to (lower-case `host:port`).
#[derive(Debug, Clone)]
pub struct Hosts {
    names: Vec<String>,
}

impl Hosts {
    /// The hosts for a listener bound to `bound`.
    pub fn new(bound: SocketAddr) -> Hosts {
        let port = bound.port();
        let mut names = vec![
            bound.to_string(),
            format!("localhost:{port}"),
            format!("127.0.0.1:{port}"),
            format!("[::1]:{port}"),
        ];
        names.dedup();
        Hosts { names }
    }

    /// Whether `host` (a Host header or `:authority`) names the dashboard reached on `local`.
    pub fn allows(&self, host: &str, local: SocketAddr) -> bool {
        let host = host.trim().to_ascii_lowercase();
        let with_port = if has_port(&host) {
            host
        } else {
            format!("{host}:80")
        };
        with_port == local.to_string() || self.names.contains(&with_port)
    }

    /// Checks the request's Host header and authority (both, when both are present).
    pub fn check<B>(&self, req: &Request<B>, local: SocketAddr) -> Result<(), ApiError> {
        let header = req
            .headers()
            .get(header::HOST)
            .map(|v| v.to_str().unwrap_or("\u{fffd}").to_string());
        let authority = req.uri().authority().map(|a| a.as_str().to_string());
        if header.is_none() && authority.is_none() {
            return Err(ApiError::BadHost(String::new()));
        }
        for h in header.iter().chain(authority.iter()) {
            if !self.allows(h, local) {
                return Err(ApiError::BadHost(h.clone()));
            }
        }
        Ok(())
    }

    /// Checks the Origin header, when there is one; returns whether there was.
    pub fn check_origin(&self, headers: &HeaderMap, local: SocketAddr) -> Result<bool, ApiError> {
        let Some(v) = headers.get(header::ORIGIN) else {
            return Ok(false);
        };
        let text = v.to_str().unwrap_or("\u{fffd}");
        let ok = text
            .strip_prefix("http://")
            .is_some_and(|h| !h.contains('/') && self.allows(h, local));
        if ok {
            Ok(true)
        } else {
            Err(ApiError::BadOrigin(text.to_string()))
        }
    }
}

/// `host:port`, `[v6]:port`; not `host` or `[v6]`.
fn has_port(host: &str) -> bool {
    match host.rsplit_once(':') {
        Some((h, p)) => !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && !h.ends_with(':'),
        None => false,
    }
}

/// How the reviewer proved who they are.
#[derive(Debug, Clone)]
pub enum Via {
    Bearer,
    /// A browser session (its key and CSRF token).
    Session {
        key: Key,
        csrf: String,
    },
}

/// An authenticated reviewer.
#[derive(Debug, Clone)]
pub struct Caller {
    pub reviewer: String,
    pub via: Via,
}

/// The reviewer a request's bearer token or session cookie names.
pub fn authenticate(
    reviewers: &Reviewers,
    sessions: &Sessions,
    headers: &HeaderMap,
) -> Result<Caller, ApiError> {
    if let Some(h) = headers.get(header::AUTHORIZATION) {
        return match reviewers.authenticate(Some(h)) {
            Some(reviewer) => Ok(Caller {
                reviewer,
                via: Via::Bearer,
            }),
            None => Err(ApiError::Unauthorized(
                "the Authorization header does not carry a reviewer token (Bearer <token>, \
                 see data/reviewer.token)"
                    .into(),
            )),
        };
    }
    let found = session::cookie(headers).and_then(|id| sessions.find(&id));
    match found {
        Some((key, s)) => Ok(Caller {
            reviewer: s.reviewer,
            via: Via::Session { key, csrf: s.csrf },
        }),
        None => Err(ApiError::Unauthorized(
            "log in first: POST /api/login with the reviewer token, or send Authorization: \
             Bearer <token> (see data/reviewer.token)"
                .into(),
        )),
    }
}

/// The checks of a state change (approve, deny, logout) beyond authentication: the Origin,
/// and for a session its presence and the CSRF token.
pub fn state_change(
    hosts: &Hosts,
    local: SocketAddr,
    headers: &HeaderMap,
    caller: &Caller,
) -> Result<(), ApiError> {
    let had_origin = hosts.check_origin(headers, local)?;
    if let Via::Session { csrf, .. } = &caller.via {
        if !had_origin {
            return Err(ApiError::NoOrigin);
        }
        let presented = headers
            .get(CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let ok = !presented.is_empty()
            && bool::from(subtle::ConstantTimeEq::ct_eq(
                csrf.as_bytes(),
                presented.as_bytes(),
            ));
        if !ok {
            return Err(ApiError::Csrf);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn hosts_are_the_dashboards_own_addresses() {
        let h = Hosts::new(addr("127.0.0.1:8081"));
        let local = addr("127.0.0.1:8081");
        for ok in [
            "127.0.0.1:8081",
            "localhost:8081",
            "LOCALHOST:8081",
            "[::1]:8081",
        ] {
            assert!(h.allows(ok, local), "{ok}");
        }
        for bad in [
            "evil.example:8081",
            "127.0.0.1:8082",
            "localhost",
            "127.0.0.1",
            "",
            "127.0.0.1:8081.evil",
            "localhost:8081:8081",
        ] {
            assert!(!h.allows(bad, local), "{bad}");
        }
        let wildcard = Hosts::new(addr("0.0.0.0:80"));
        assert!(wildcard.allows("10.1.2.3", addr("10.1.2.3:80")));
        assert!(wildcard.allows("localhost", addr("10.1.2.3:80")));
        assert!(!wildcard.allows("10.1.2.4", addr("10.1.2.3:80")));
    }

    #[test]
    fn origins_are_http_and_an_allowed_host() {
        let h = Hosts::new(addr("127.0.0.1:8081"));
        let local = addr("127.0.0.1:8081");
        let with = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::ORIGIN, v.parse().unwrap());
            m
        };
        assert_eq!(h.check_origin(&HeaderMap::new(), local), Ok(false));
        assert_eq!(
            h.check_origin(&with("http://127.0.0.1:8081"), local),
            Ok(true)
        );
        assert_eq!(
            h.check_origin(&with("http://localhost:8081"), local),
            Ok(true)
        );
        for bad in [
            "https://127.0.0.1:8081",
            "http://evil.example:8081",
            "null",
            "http://127.0.0.1:8081/x",
            "http://127.0.0.1:9999",
        ] {
            assert!(h.check_origin(&with(bad), local).is_err(), "{bad}");
        }
    }

    #[test]
    fn session_state_changes_need_origin_and_csrf() {
        let h = Hosts::new(addr("127.0.0.1:8081"));
        let local = addr("127.0.0.1:8081");
        let caller = Caller {
            reviewer: "r".into(),
            via: Via::Session {
                key: [0; 32],
                csrf: "tok".into(),
            },
        };
        let mut m = HeaderMap::new();
        m.insert(CSRF_HEADER, "tok".parse().unwrap());
        assert_eq!(
            state_change(&h, local, &m, &caller),
            Err(ApiError::NoOrigin)
        );
        m.insert(header::ORIGIN, "http://127.0.0.1:8081".parse().unwrap());
        assert_eq!(state_change(&h, local, &m, &caller), Ok(()));
        m.insert(CSRF_HEADER, "tok2".parse().unwrap());
        assert_eq!(state_change(&h, local, &m, &caller), Err(ApiError::Csrf));
        m.remove(CSRF_HEADER);
        assert_eq!(state_change(&h, local, &m, &caller), Err(ApiError::Csrf));
        let bearer = Caller {
            reviewer: "r".into(),
            via: Via::Bearer,
        };
        assert_eq!(state_change(&h, local, &HeaderMap::new(), &bearer), Ok(()));
        m.insert(header::ORIGIN, "http://evil.example".parse().unwrap());
        assert!(matches!(
            state_change(&h, local, &m, &bearer),
            Err(ApiError::BadOrigin(_))
        ));
    }
}
