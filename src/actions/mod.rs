//! Actions: what a request does, as a name plus params. This module does no I/O.
//!
//! The full catalog (GitHub REST, GraphQL, git smart HTTP, Gmail) lands on top of these types;
//! until then every request on an intercepted host is an `http.request` and every tunnel a
//! `net.connect`, the catalog's own fallbacks.

pub mod canonical;
pub mod catalog;
pub mod generated;
pub mod git_smart_http;
pub mod github_graphql;
pub mod gmail;
pub mod gmail_batch;
pub mod gmail_resumable;
pub mod host;
pub mod mime;
pub mod routes;

use serde::Serialize;
use serde_json::{Map, Value};

/// A request as the classifiers see it: canonical, content-decoded, whole.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// Canonical host (lower-case, no trailing dot).
    pub host: &'a str,
    /// The effective method, upper-case (after any honoured method override).
    pub method: &'a str,
    /// The canonical path, without the query; segments still percent-encoded.
    pub path: &'a str,
    /// Query parameters, percent-decoded, in order.
    pub query: &'a [(String, String)],
    pub headers: &'a http::HeaderMap,
    /// The whole body, Content-Encoding removed.
    pub body: &'a [u8],
}

/// Why a request could not be classified: it is refused (400), never guessed at.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClassifyError {
    #[error("{0}")]
    Malformed(String),
}

/// What one request does, as the policy sees it.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Action {
    /// The action name, e.g. `github.repos.delete`, `http.request`, `net.connect`.
    pub name: String,
    /// The request's canonical host (every action has one).
    pub host: String,
    /// The effective method (`CONNECT` for `net.connect`).
    pub method: String,
    /// The request path without the query (empty for `net.connect`).
    pub path: String,
    /// Typed params from the API description (path, query and body fields by their names).
    pub params: Map<String, Value>,
}

impl Action {
    /// An action with `name` and `params`; host, method and path are set by the catalog.
    pub fn new(name: &str, params: Map<String, Value>) -> Action {
        Action {
            name: name.to_string(),
            host: String::new(),
            method: String::new(),
            path: String::new(),
            params,
        }
    }

    /// A request on an intercepted host that no table describes: `http.request`.
    pub fn unmapped() -> Action {
        Action::new("http.request", Map::new())
    }

    /// A CONNECT (or plain-HTTP request) to a host the gate does not intercept.
    pub fn net_connect(target: &host::Authority) -> Action {
        let mut params = Map::new();
        params.insert("host".into(), Value::String(target.host.clone()));
        params.insert("port".into(), Value::from(target.port));
        Action {
            host: target.host.clone(),
            method: "CONNECT".into(),
            ..Action::new("net.connect", params)
        }
    }

    /// A request the catalog has no more specific name for.
    pub fn http_request(method: &str, target: &host::Authority, path: &str) -> Action {
        Action {
            host: target.host.clone(),
            method: method.to_string(),
            path: path.to_string(),
            ..Action::unmapped()
        }
    }
}
