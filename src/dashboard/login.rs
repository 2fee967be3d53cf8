//! Browser login: `POST /api/login` `{"token": "<reviewer token>"}` sets the session cookie and
//! answers `{"reviewer", "csrf", "expires_ms"}`; `GET /api/session` answers the same for the
//! cookie's session (a reloaded page gets its CSRF token back); `POST /api/logout` ends it.

use std::net::SocketAddr;

use http::{Request, Response, StatusCode, header};
use hyper::body::Incoming;

use super::guard::{self, Via};
use super::reply::{self, ApiError, Body};
use super::session::{self, TTL};
use super::{DashboardState, read_body, require_json};

/// Largest login body.
const MAX_LOGIN_BODY: usize = 4096;

pub async fn login(
    state: &DashboardState,
    local: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    state.hosts.check_origin(req.headers(), local)?;
    require_json(req.headers())?;
    let body = read_body(req, MAX_LOGIN_BODY, "the login body is too large").await?;
    let v: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("the body is not JSON: {e}")))?;
    let Some(token) = v.get("token").and_then(|t| t.as_str()) else {
        return Err(ApiError::BadRequest(
            "send {\"token\": \"<reviewer token>\"}".into(),
        ));
    };
    let Some(reviewer) = state.reviewers.by_token(token) else {
        return Err(ApiError::Unauthorized(
            "that is not a reviewer token (see data/reviewer.token)".into(),
        ));
    };
    let new = state.sessions.create(&reviewer, crate::decider::now_ms())?;
    let mut resp = reply::json(
        StatusCode::OK,
        &serde_json::json!({
            "reviewer": reviewer,
            "csrf": new.csrf,
            "expires_ms": new.expires_ms,
        }),
    );
    resp.headers_mut()
        .insert(header::SET_COOKIE, session::set_cookie(&new.id, TTL)?);
    Ok(resp)
}

pub fn current(
    state: &DashboardState,
    req: &Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let caller = guard::authenticate(&state.reviewers, &state.sessions, req.headers())?;
    let (csrf, expires_ms) = match &caller.via {
        Via::Session { key, csrf } => {
            let id = session::cookie(req.headers()).unwrap_or_default();
            let expires = state
                .sessions
                .find(&id)
                .filter(|(k, _)| k == key)
                .map(|(_, s)| s.expires_ms);
            (Some(csrf.clone()), expires)
        }
        Via::Bearer => (None, None),
    };
    Ok(reply::json(
        StatusCode::OK,
        &serde_json::json!({"reviewer": caller.reviewer, "csrf": csrf, "expires_ms": expires_ms}),
    ))
}

pub fn logout(
    state: &DashboardState,
    local: SocketAddr,
    req: &Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let caller = guard::authenticate(&state.reviewers, &state.sessions, req.headers())?;
    guard::state_change(&state.hosts, local, req.headers(), &caller)?;
    let Via::Session { key, .. } = caller.via else {
        return Err(ApiError::BadRequest(
            "logout ends a browser session; a bearer token has none".into(),
        ));
    };
    state.sessions.end(&key);
    let mut resp = reply::json(StatusCode::OK, &serde_json::json!({"logged_out": true}));
    resp.headers_mut()
        .insert(header::SET_COOKIE, session::clear_cookie());
    Ok(resp)
}
