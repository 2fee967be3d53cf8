//! The gate's own HTTP listener for reviewers and tools (design.md section 3, "Dashboard API"):
//! the reviewers' page (`web/`, embedded), its live feed (`GET /api/events`, a WebSocket), the
//! reviewer API (challenges, audit, policy status), browser login, and `/metrics`.
//!
//! | route | who | does |
//! |---|---|---|
//! | `GET /`, `/app.js`, `/app.css` | anyone | the page (`assets`) |
//! | `POST /api/login`, `GET /api/session`, `POST /api/logout` | browser | session cookie + CSRF token (`login`, `session`) |
//! | `GET /api/events` | reviewer | the event feed (`ws`, `feed`) |
//! | `GET /api/challenges`, `POST /api/challenges/{id}/approve\|deny` | reviewer | step-up decisions (`challenges`) |
//! | `GET /api/audit`, `/api/audit/export`, `/api/audit/verify` | reviewer | the audit log (`audit_api`) |
//! | `GET /api/policy` | reviewer | the policy status (`policy`) |
//! | `GET /metrics` | reviewer | Prometheus / OpenMetrics text |
//!
//! Every request's Host must be the dashboard's own address; state changes and the WebSocket
//! check the Origin, and with a session cookie the CSRF token (`guard`). Every response carries
//! the security headers of `reply`.
//!
//! The dashboard never imports the proxy: they meet through the handles `app` gives both.

mod assets;
mod audit_api;
mod challenges;
pub mod feed;
pub mod guard;
mod login;
pub mod policy;
pub mod reply;
pub mod reviewers;
pub mod session;
mod ws;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use crate::audit::Audit;
use crate::holds::Holds;
use crate::metrics::Metrics;
use crate::policy::Active;
use feed::{Feed, Sources};
use guard::{Hosts, Via};
use policy::PolicyView;
use reply::{ApiError, Body};
use reviewers::Reviewers;
use session::Sessions;

/// What `app` hands the dashboard.
#[derive(Debug)]
pub struct Parts {
    pub reviewers: Reviewers,
    pub metrics: Arc<Metrics>,
    pub audit: Arc<Audit>,
    pub holds: Holds,
    /// The policy set in force, and the directory it is loaded from.
    pub policy: Arc<Active>,
    pub policies_dir: PathBuf,
    /// The address the dashboard's listener is bound to (requests must name it as Host).
    pub addr: SocketAddr,
}

/// What the dashboard serves from.
#[derive(Debug)]
pub struct DashboardState {
    pub reviewers: Reviewers,
    pub metrics: Arc<Metrics>,
    pub audit: Arc<Audit>,
    pub holds: Holds,
    pub policy: Arc<PolicyView>,
    pub sessions: Sessions,
    pub feed: Arc<Feed>,
    pub hosts: Hosts,
    /// The feed's sources, until `serve` starts the pump.
    sources: Mutex<Option<Sources>>,
}

impl DashboardState {
    /// Builds the dashboard and subscribes its feed to the holds and the audit log (events
    /// from now on reach the page once [`serve`] runs).
    pub fn new(p: Parts) -> DashboardState {
        let sources = Sources {
            holds: p.holds.subscribe(),
            audit: p.audit.subscribe(),
        };
        DashboardState {
            reviewers: p.reviewers,
            metrics: p.metrics,
            audit: p.audit,
            holds: p.holds,
            policy: Arc::new(PolicyView::new(
                p.policy,
                p.policies_dir,
                crate::decider::now_ms(),
            )),
            sessions: Sessions::default(),
            feed: Arc::new(Feed::new()),
            hosts: Hosts::new(p.addr),
            sources: Mutex::new(Some(sources)),
        }
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Most time a client may take to send a request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts connections until `shutdown` resolves; then closes the feed (open WebSockets are
/// closed, the pump stops).
pub async fn serve(
    listener: TcpListener,
    state: Arc<DashboardState>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let sources = lock(&state.sources).take();
    let pump =
        sources.map(|src| tokio::spawn(feed::pump(state.feed.clone(), state.policy.clone(), src)));
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
        let Ok(local) = stream.local_addr() else {
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(state, local, req).await) }
            });
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT);
            if let Err(e) = builder
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!("dashboard connection ended: {e}");
            }
        });
    }
    state.feed.close();
    if let Some(p) = pump {
        let _ = p.await;
    }
}

/// One request: routed, errors turned into JSON, security headers added.
async fn handle(
    state: Arc<DashboardState>,
    local: SocketAddr,
    req: Request<Incoming>,
) -> Response<Body> {
    let is_asset = assets::is_asset(req.uri().path());
    let mut resp = match route(&state, local, req).await {
        Ok(r) => r,
        Err(e) => e.response(),
    };
    reply::secure(&mut resp, is_asset);
    resp
}

async fn route(
    state: &Arc<DashboardState>,
    local: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    state.hosts.check(&req, local)?;
    let path = req.uri().path().to_string();
    if let Some(r) = assets::get(req.method(), &path) {
        return Ok(r);
    }
    let method = req.method().clone();
    match (&method, path.as_str()) {
        (&Method::POST, "/api/login") => login::login(state, local, req).await,
        (&Method::GET, "/api/session") => login::current(state, &req),
        (&Method::POST, "/api/logout") => login::logout(state, local, &req),
        (&Method::GET, "/api/events") => {
            let caller = guard::authenticate(&state.reviewers, &state.sessions, req.headers())?;
            let had_origin = state.hosts.check_origin(req.headers(), local)?;
            if matches!(caller.via, Via::Session { .. }) && !had_origin {
                return Err(ApiError::NoOrigin);
            }
            ws::upgrade(state.clone(), req, caller)
        }
        (_, "/api/challenges") => challenges::handle(state, local, req).await,
        (_, p) if p.starts_with("/api/challenges/") => challenges::handle(state, local, req).await,
        (&Method::GET, "/api/policy") => {
            guard::authenticate(&state.reviewers, &state.sessions, req.headers())?;
            let view = state.policy.clone();
            let report = tokio::task::spawn_blocking(move || view.report())
                .await
                .map_err(|e| ApiError::Internal(format!("the policy status failed: {e}")))?;
            Ok(reply::json(StatusCode::OK, &report))
        }
        (&Method::GET, "/api/audit" | "/api/audit/export" | "/api/audit/verify") => {
            guard::authenticate(&state.reviewers, &state.sessions, req.headers())?;
            audit_api::handle(&state.audit, &path, req.uri().query().unwrap_or("")).await
        }
        (&Method::GET, "/metrics") => {
            guard::authenticate(&state.reviewers, &state.sessions, req.headers())?;
            Ok(reply::bytes(
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                Bytes::from(state.metrics.encode()),
            ))
        }
        _ => Err(ApiError::NotFound(format!("no {method} {path} here"))),
    }
}

/// The request body, refused past `limit` bytes.
async fn read_body(
    req: Request<Incoming>,
    limit: usize,
    too_large: &str,
) -> Result<Bytes, ApiError> {
    match http_body_util::Limited::new(req.into_body(), limit)
        .collect()
        .await
    {
        Ok(b) => Ok(b.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            Err(ApiError::TooLarge(too_large.to_string()))
        }
        Err(e) => Err(ApiError::BadRequest(format!("cannot read the body: {e}"))),
    }
}

/// Refuses a body that is not declared `application/json` (browser forms cannot send that
/// cross-site without a preflight).
fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = ct.split(';').next().unwrap_or("").trim();
    if essence.eq_ignore_ascii_case("application/json") {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType(
            "send the body as Content-Type: application/json".into(),
        ))
    }
}

/// Where the dashboard listens, for the banner.
pub fn url(addr: SocketAddr) -> String {
    format!("http://{addr}/")
}
