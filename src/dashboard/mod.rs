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
use http_body_util::Full;
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
                async move { Ok::<_, Infallible>(route(&state, req)) }
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
        _ => json(
            StatusCode::NOT_FOUND,
            &serde_json::json!({"error": "not_found", "reason": format!("no {path} here")}),
        ),
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
