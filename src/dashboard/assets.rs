//! The reviewers' page: `web/index.html`, `web/app.js` and `web/app.css`, embedded in the
//! binary when it is compiled (no build step, nothing loaded from anywhere else).

use bytes::Bytes;
use http::{Method, Response};

use super::reply::{self, Body};

const INDEX: &str = include_str!("../../web/index.html");
const APP_JS: &str = include_str!("../../web/app.js");
const APP_CSS: &str = include_str!("../../web/app.css");

/// The page's file at `path`, for GET and HEAD.
pub fn get(method: &Method, path: &str) -> Option<Response<Body>> {
    if method != Method::GET && method != Method::HEAD {
        return None;
    }
    let (content_type, text) = match path {
        "/" | "/index.html" => ("text/html; charset=utf-8", INDEX),
        "/app.js" => ("text/javascript; charset=utf-8", APP_JS),
        "/app.css" => ("text/css; charset=utf-8", APP_CSS),
        _ => return None,
    };
    Some(reply::bytes(
        content_type,
        Bytes::from_static(text.as_bytes()),
    ))
}

/// Whether `path` is one of the page's files.
pub fn is_asset(path: &str) -> bool {
    matches!(path, "/" | "/index.html" | "/app.js" | "/app.css")
}
