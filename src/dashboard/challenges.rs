//! `GET /api/challenges?state=pending&limit=N`, `POST /api/challenges/{id}/approve|deny` with
//! an optional JSON body `{"note": ".."}`. Decisions are state changes: see `guard`.

use std::net::SocketAddr;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use super::guard::{self, Caller};
use super::reply::{self, ApiError, Body};
use super::{DashboardState, read_body};
use crate::holds::{HoldError, State};

/// Largest body a reviewer's decision may have (the note).
const MAX_NOTE_BODY: usize = 16 * 1024;

pub async fn handle(
    state: &DashboardState,
    local: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let caller = guard::authenticate(&state.reviewers, &state.sessions, req.headers())?;
    let path = req.uri().path().to_string();
    let rest = path.trim_start_matches("/api/challenges").trim_matches('/');
    if rest.is_empty() {
        if req.method() != Method::GET {
            return Err(ApiError::MethodNotAllowed(
                "GET /api/challenges lists; POST /api/challenges/{id}/approve or /deny decides"
                    .into(),
            ));
        }
        return list(state, req.uri().query().unwrap_or("")).await;
    }
    let Some((id, verb)) = rest.split_once('/') else {
        return Err(ApiError::NotFound(format!(
            "no {} {path} here; POST /api/challenges/{{id}}/approve or /deny",
            req.method()
        )));
    };
    if req.method() != Method::POST || !matches!(verb, "approve" | "deny") {
        return Err(ApiError::NotFound(format!(
            "no {} {path} here; POST /api/challenges/{{id}}/approve or /deny",
            req.method()
        )));
    }
    guard::state_change(&state.hosts, local, req.headers(), &caller)?;
    let (id, verb) = (id.to_string(), verb.to_string());
    let note = note(req, &caller).await?;
    decide(state, id, verb, caller.reviewer, note).await
}

/// The challenges in `?state=` (all when absent), oldest first; `?limit=N` keeps the newest N.
async fn list(state: &DashboardState, query: &str) -> Result<Response<Body>, ApiError> {
    let params = crate::actions::canonical::parse_query(query)
        .map_err(|e| ApiError::BadRequest(format!("the query does not parse: {e}")))?;
    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let wanted = match get("state").map(State::parse) {
        None => None,
        Some(Some(s)) => Some(s),
        Some(None) => {
            return Err(ApiError::BadRequest(
                "state is pending, approved, denied, expired, abandoned, interrupted or redeemed"
                    .into(),
            ));
        }
    };
    let limit = get("limit")
        .map(str::parse::<usize>)
        .transpose()
        .map_err(|_| ApiError::BadRequest("limit is a number".into()))?;
    let holds = state.holds.clone();
    let mut list = tokio::task::spawn_blocking(move || holds.list(wanted))
        .await
        .map_err(|e| ApiError::Internal(format!("listing challenges failed: {e}")))?;
    if let Some(n) = limit {
        let drop = list.len().saturating_sub(n);
        list.drain(..drop);
    }
    Ok(reply::json(
        StatusCode::OK,
        &serde_json::json!({"challenges": list}),
    ))
}

/// The note of a decision's body (empty body: none). A browser session must send JSON.
async fn note(req: Request<Incoming>, caller: &Caller) -> Result<Option<String>, ApiError> {
    if matches!(caller.via, guard::Via::Session { .. }) {
        super::require_json(req.headers())?;
    }
    let body = read_body(req, MAX_NOTE_BODY, "the note is too long (16 KiB at most)").await?;
    if body.is_empty() {
        return Ok(None);
    }
    let v: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("the body is not JSON: {e}")))?;
    match v.get("note") {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ApiError::BadRequest("note is a string".into())),
    }
}

async fn decide(
    state: &DashboardState,
    id: String,
    verb: String,
    reviewer: String,
    note: Option<String>,
) -> Result<Response<Body>, ApiError> {
    let holds = state.holds.clone();
    let now = crate::decider::now_ms();
    let result = tokio::task::spawn_blocking(move || {
        if verb == "approve" {
            holds.approve(&id, &reviewer, note, now)
        } else {
            holds.deny(&id, &reviewer, note, now)
        }
    })
    .await
    .map_err(|e| ApiError::Internal(format!("the decision failed: {e}")))?;
    match result {
        Ok(c) => Ok(reply::json(
            StatusCode::OK,
            &serde_json::json!({"challenge": c}),
        )),
        Err(HoldError::Unknown) => Err(ApiError::UnknownChallenge("no such challenge".into())),
        Err(HoldError::AlreadyDecided { state: st }) => Err(ApiError::AlreadyDecided {
            state: st.to_string(),
        }),
        Err(e) => Err(ApiError::Unavailable(e.to_string())),
    }
}
