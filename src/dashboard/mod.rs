//! The gate's own HTTP listener for people and tools (design.md section 3, "Dashboard API"):
//! reviewers authenticate with `Authorization: Bearer <reviewer token>`. Today it serves
//! `/metrics`; the reviewer API, the event feed and the page come with step-up approvals.
//!
//! The dashboard never imports the proxy: they meet through the handles `app` gives both.

pub mod reviewers;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use crate::metrics::Metrics;
use reviewers::Reviewers;

/// What the dashboard serves from.
#[derive(Debug)]
pub struct DashboardState {
    pub reviewers: Reviewers,
    pub metrics: Arc<Metrics>,
    pub audit: Arc<crate::audit::Audit>,
    pub holds: crate::holds::Holds,
}

/// Most time a client may take to send a request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts connections until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    state: Arc<DashboardState>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            () = &mut shutdown => break,
        };
        let Ok((stream, _)) = accepted else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move {
                    let resp = if req.uri().path().starts_with("/api/challenges") {
                        challenges_api(&state, req).await
                    } else {
                        route(&state, req)
                    };
                    Ok::<_, Infallible>(resp)
                }
            });
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT);
            if let Err(e) = builder
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!("dashboard connection ended: {e}");
            }
        });
    }
}

type Body = Full<Bytes>;

fn route(state: &DashboardState, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path();
    match (req.method(), path) {
        (&Method::GET, "/metrics") => {
            if let Err(resp) = authorize(state, &req) {
                return *resp;
            }
            let mut resp = Response::new(Full::new(Bytes::from(state.metrics.encode())));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            resp
        }
        (&Method::GET, "/api/audit" | "/api/audit/export" | "/api/audit/verify") => {
            if let Err(resp) = authorize(state, &req) {
                return *resp;
            }
            audit_api(state, path, req.uri().query().unwrap_or(""))
        }
        _ => json(
            StatusCode::NOT_FOUND,
            &serde_json::json!({"error": "not_found", "reason": format!("no {path} here")}),
        ),
    }
}

/// Largest body a reviewer's decision may have (the note).
const MAX_NOTE_BODY: usize = 16 * 1024;

/// `GET /api/challenges?state=pending`, `POST /api/challenges/{id}/approve|deny` with an
/// optional JSON body `{"note": ".."}`. Reviewers authenticate with their bearer token.
async fn challenges_api(state: &DashboardState, req: Request<Incoming>) -> Response<Body> {
    let reviewer = match authorize(state, &req) {
        Ok(r) => r,
        Err(resp) => return *resp,
    };
    let path = req.uri().path().to_string();
    let rest = path.trim_start_matches("/api/challenges").trim_matches('/');
    let bad = |status: StatusCode, error: &str, reason: String| {
        json(
            status,
            &serde_json::json!({"error": error, "reason": reason}),
        )
    };
    if rest.is_empty() && req.method() == Method::GET {
        let query = req.uri().query().unwrap_or("");
        let params = crate::actions::canonical::parse_query(query).unwrap_or_default();
        let wanted = params
            .iter()
            .find(|(k, _)| k == "state")
            .map(|(_, v)| v.as_str());
        let st = match wanted.map(crate::holds::State::parse) {
            None => None,
            Some(Some(s)) => Some(s),
            Some(None) => {
                return bad(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    "state is pending, approved, denied, expired, abandoned, interrupted or redeemed".into(),
                );
            }
        };
        let holds = state.holds.clone();
        let list = tokio::task::spawn_blocking(move || holds.list(st))
            .await
            .unwrap_or_default();
        return json(StatusCode::OK, &serde_json::json!({"challenges": list}));
    }
    let (id, verb) = match rest.split_once('/') {
        Some((id, verb)) if req.method() == Method::POST => (id.to_string(), verb.to_string()),
        _ => {
            return bad(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no {} {path} here", req.method()),
            );
        }
    };
    let body = match http_body_util::Limited::new(req.into_body(), MAX_NOTE_BODY)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return bad(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                "the note is too long".into(),
            );
        }
    };
    let note = if body.is_empty() {
        None
    } else {
        match serde_json::from_slice::<serde_json::Value>(&body) {
            Ok(v) => v.get("note").and_then(|n| n.as_str()).map(str::to_string),
            Err(e) => {
                return bad(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    format!("the body is not JSON: {e}"),
                );
            }
        }
    };
    let holds = state.holds.clone();
    let now = crate::decider::now_ms();
    let result = tokio::task::spawn_blocking(move || match verb.as_str() {
        "approve" => Some(holds.approve(&id, &reviewer, note, now)),
        "deny" => Some(holds.deny(&id, &reviewer, note, now)),
        _ => None,
    })
    .await
    .unwrap_or(None);
    match result {
        None => bad(
            StatusCode::NOT_FOUND,
            "not_found",
            "POST /api/challenges/{id}/approve or /deny".into(),
        ),
        Some(Ok(c)) => json(StatusCode::OK, &serde_json::json!({"challenge": c})),
        Some(Err(crate::holds::HoldError::Unknown)) => bad(
            StatusCode::NOT_FOUND,
            "unknown_challenge",
            "no such challenge".into(),
        ),
        Some(Err(crate::holds::HoldError::AlreadyDecided { state: st })) => bad(
            StatusCode::CONFLICT,
            "already_decided",
            format!("the challenge is already {st}"),
        ),
        Some(Err(e)) => bad(
            StatusCode::SERVICE_UNAVAILABLE,
            "holds_unavailable",
            e.to_string(),
        ),
    }
}

/// Most records one `GET /api/audit` returns.
const MAX_AUDIT_PAGE: usize = 1000;

/// `GET /api/audit?after=SEQ&limit=N` (records as JSON, oldest first), `GET
/// /api/audit/export?since=&until=&agent=&action=&decision=` (JSON lines, as `agentgate audit
/// export` prints them), `GET /api/audit/verify` (the chain check).
fn audit_api(state: &DashboardState, path: &str, query: &str) -> Response<Body> {
    let params: Vec<(String, String)> =
        crate::actions::canonical::parse_query(query).unwrap_or_default();
    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let bad = |reason: String| {
        json(
            StatusCode::BAD_REQUEST,
            &serde_json::json!({"error": "bad_request", "reason": reason}),
        )
    };
    match path {
        "/api/audit/verify" => {
            let report = state.audit.verify();
            json(StatusCode::OK, &serde_json::json!(report))
        }
        "/api/audit/export" => {
            let filter = match crate::audit::Filter::parse(
                get("since"),
                get("until"),
                get("agent"),
                get("action"),
                get("decision"),
            ) {
                Ok(f) => f,
                Err(e) => return bad(e.to_string()),
            };
            let mut out = Vec::new();
            match crate::audit::cli::write_lines(state.audit.export(&filter), &mut out) {
                Ok(_) => {
                    let mut r = Response::new(Full::new(Bytes::from(out)));
                    r.headers_mut().insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/x-ndjson"),
                    );
                    r
                }
                Err(e) => json(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &serde_json::json!({"error": "audit", "reason": e.to_string()}),
                ),
            }
        }
        _ => {
            let after = match get("after").map(str::parse::<u64>).transpose() {
                Ok(a) => a.unwrap_or(0),
                Err(_) => return bad("after is a sequence number".into()),
            };
            let limit = match get("limit").map(str::parse::<usize>).transpose() {
                Ok(l) => l.unwrap_or(100).clamp(1, MAX_AUDIT_PAGE),
                Err(_) => return bad("limit is a number".into()),
            };
            match state.audit.after(after, limit) {
                Ok(records) => {
                    let next = records.last().map_or(after, |r| r.seq);
                    json(
                        StatusCode::OK,
                        &serde_json::json!({"records": records, "next": next}),
                    )
                }
                Err(e) => json(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &serde_json::json!({"error": "audit", "reason": e.to_string()}),
                ),
            }
        }
    }
}

/// The reviewer a request's bearer token names, or the 401 to send.
fn authorize(
    state: &DashboardState,
    req: &Request<Incoming>,
) -> Result<String, Box<Response<Body>>> {
    state
        .reviewers
        .authenticate(req.headers().get(header::AUTHORIZATION))
        .ok_or_else(|| {
            let mut r = json(
                StatusCode::UNAUTHORIZED,
                &serde_json::json!({
                    "error": "unauthorized",
                    "reason": "a reviewer token is needed: Authorization: Bearer <token> (see data/reviewer.token)"
                }),
            );
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"agentgate\""),
            );
            Box::new(r)
        })
}

fn json(status: StatusCode, v: &serde_json::Value) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// Where the dashboard listens, for the banner.
pub fn url(addr: SocketAddr) -> String {
    format!("http://{addr}/")
}
