//! The one place that turns the dashboard's results and errors into HTTP responses, and adds
//! the headers every response carries (style.md habit 7).

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use http_body_util::Full;

pub type Body = Full<Bytes>;

/// The page's Content-Security-Policy: its own script, style and connections (`'self'`
/// covers the WebSocket to the same host and port), nothing inline, never framed.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
img-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; \
frame-ancestors 'none'";

/// Why a dashboard request was refused. Each becomes a JSON body
/// `{"error": CODE, "reason": TEXT}` with its status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// No (valid) reviewer token or session.
    #[error("{0}")]
    Unauthorized(String),
    /// The Host header is not the dashboard's own address (DNS rebinding).
    #[error(
        "the Host header {0:?} is not this dashboard's address; open the dashboard at its own \
         address (dashboard.listen), or localhost with its port"
    )]
    BadHost(String),
    /// A cross-origin request.
    #[error(
        "the Origin {0:?} is not this dashboard; state changes come from the dashboard's own page"
    )]
    BadOrigin(String),
    /// A cookie session's state change without an Origin header.
    #[error("a state change with a session cookie must carry an Origin header")]
    NoOrigin,
    /// A cookie session's state change without the session's CSRF token.
    #[error("the x-csrf-token header is missing or does not match the session (log in again)")]
    Csrf,
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    UnknownChallenge(String),
    /// The challenge already left `pending`, as `state`.
    #[error("the challenge is already {state}")]
    AlreadyDecided { state: String },
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::BadHost(_) | ApiError::BadOrigin(_) | ApiError::NoOrigin | ApiError::Csrf => {
                StatusCode::FORBIDDEN
            }
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::NotFound(_) | ApiError::UnknownChallenge(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::AlreadyDecided { .. } => StatusCode::CONFLICT,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The machine-readable `error` field.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::BadHost(_) => "bad_host",
            ApiError::BadOrigin(_) => "bad_origin",
            ApiError::NoOrigin => "origin_required",
            ApiError::Csrf => "csrf",
            ApiError::BadRequest(_) => "bad_request",
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::NotFound(_) => "not_found",
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
            ApiError::TooLarge(_) => "body_too_large",
            ApiError::UnknownChallenge(_) => "unknown_challenge",
            ApiError::AlreadyDecided { .. } => "already_decided",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Internal(_) => "internal",
        }
    }

    /// The JSON response for this error.
    pub fn response(&self) -> Response<Body> {
        let mut body = serde_json::json!({"error": self.code(), "reason": self.to_string()});
        if let ApiError::AlreadyDecided { state } = self {
            body["state"] = serde_json::Value::from(state.as_str());
        }
        let mut r = json(self.status(), &body);
        if let ApiError::Unauthorized(_) = self {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"agentgate\""),
            );
        }
        r
    }
}

/// A JSON response, never cached.
pub fn json(status: StatusCode, v: &serde_json::Value) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// A 200 with `body` as `content_type`.
pub fn bytes(content_type: &'static str, body: Bytes) -> Response<Body> {
    let mut r = Response::new(Full::new(body));
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// Adds the headers every dashboard response carries: no sniffing, no framing, no referrer,
/// and the CSP; API responses (everything but the page's own files) are never stored.
pub fn secure(resp: &mut Response<Body>, is_asset: bool) {
    set_security_headers(resp.headers_mut(), is_asset);
}

/// [`secure`] on a bare header map (the WebSocket upgrade's 101 as well).
pub fn set_security_headers(h: &mut HeaderMap, is_asset: bool) {
    let mut set = |name: &'static str, value: &'static str| {
        h.insert(name, HeaderValue::from_static(value));
    };
    set("content-security-policy", CSP);
    set("x-content-type-options", "nosniff");
    set("x-frame-options", "DENY");
    set("referrer-policy", "no-referrer");
    set("cross-origin-opener-policy", "same-origin");
    set("cross-origin-resource-policy", "same-origin");
    set(
        "permissions-policy",
        "camera=(), microphone=(), geolocation=()",
    );
    // The page's files are embedded in the binary and small: revalidated on every load, so a
    // new gate never runs an old script. Everything else is reviewer data: never stored.
    set(
        "cache-control",
        if is_asset { "no-cache" } else { "no-store" },
    );
}
