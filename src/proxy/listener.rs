//! The proxy listener: accepts agents, enforces the connection limit, and serves the proxy
//! protocol (CONNECT and absolute-form HTTP/1.1) on each connection.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use super::activity::{Activity, Tracked};
use super::pipeline::{self, Origin};
use super::respond::{self, Refusal, RequestId};
use super::{ProxyState, RespBody, connect};
use crate::actions::host::Authority;
use crate::agents::Agent;

/// Accepts connections until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    state: Arc<ProxyState>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let permits = Arc::new(Semaphore::new(state.limits.max_connections));
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            () = &mut shutdown => break,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors and similar: back off instead of spinning.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        match permits.clone().try_acquire_owned() {
            Ok(permit) => {
                let state = state.clone();
                tokio::spawn(async move {
                    serve_client(stream, peer, state).await;
                    drop(permit);
                });
            }
            Err(_) => {
                tokio::spawn(refuse_overloaded(stream));
            }
        }
    }
}

async fn refuse_overloaded(mut stream: TcpStream) {
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let _ = stream.write_all(&respond::raw_overloaded()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

/// Serves the proxy protocol on one agent connection.
async fn serve_client(stream: TcpStream, peer: SocketAddr, state: Arc<ProxyState>) {
    let activity = Activity::new();
    let io = TokioIo::new(Tracked::new(stream, activity.clone()));
    let service = {
        let (state, activity) = (state.clone(), activity.clone());
        hyper::service::service_fn(move |req| {
            let state = state.clone();
            let in_flight = activity.request();
            async move {
                let resp = proxy_request(state, req).await;
                drop(in_flight);
                Ok::<_, Infallible>(resp)
            }
        })
    };
    let limits = &state.limits;
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        // Request heads are timed by the stalled-head watchdog (see activity.rs).
        .header_read_timeout(None)
        .max_buf_size(limits.max_header_bytes)
        .max_headers(limits.max_headers);
    let conn = builder.serve_connection(io, service).with_upgrades();
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        () = activity.stalled_head(limits.header_read_timeout) => {
            return tracing::debug!(%peer, "request head not complete in time; connection dropped");
        }
        () = activity.idle(limits.idle_timeout) => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, "proxy connection ended: {e}");
    }
}

/// One request on the proxy port: CONNECT, or an absolute-form plain-HTTP request.
async fn proxy_request(state: Arc<ProxyState>, req: Request<Incoming>) -> Response<RespBody> {
    let agent = match state
        .agents
        .authenticate(req.headers().get(http::header::PROXY_AUTHORIZATION))
    {
        Ok(agent) => agent,
        Err(e) => {
            tracing::info!(uri = %req.uri(), "proxy credentials refused: {e}");
            return respond::refusal(&Refusal::ProxyAuth(e.to_string()), &RequestId::new());
        }
    };
    if req.method() == Method::CONNECT {
        return connect::handle(state, agent, req).await;
    }
    match plain_origin(&state, agent, &req) {
        Ok(origin) => pipeline::handle(state, Arc::new(origin), super::detach_head(req)).await,
        Err(refusal) => respond::refusal(&refusal, &RequestId::new()),
    }
}

/// The origin of a plain-HTTP proxy request, from its absolute-form URI.
fn plain_origin(
    state: &ProxyState,
    agent: Arc<Agent>,
    req: &Request<Incoming>,
) -> Result<Origin, Refusal> {
    let uri = req.uri();
    let (scheme, default_port) = match uri.scheme_str() {
        Some("http") => ("http", 80),
        Some("https") => ("https", 443),
        Some(other) => {
            return Err(Refusal::BadRequest(format!(
                "the scheme {other:?} is not proxied; use http or https"
            )));
        }
        None => {
            return Err(Refusal::BadRequest(
                "this is AgentGate's proxy port: send requests through it as a proxy \
                 (set HTTPS_PROXY and HTTP_PROXY; see `agentgate env`)"
                    .into(),
            ));
        }
    };
    let authority = uri
        .authority()
        .ok_or_else(|| Refusal::BadRequest(format!("the URI {uri} names no host")))?;
    let target = Authority::parse(authority.as_str(), Some(default_port)).map_err(|e| {
        Refusal::BadRequest(format!("the host {:?} is refused: {e}", authority.as_str()))
    })?;
    if state.is_own_address(&target) {
        return Err(connect::own_address(&target));
    }
    Ok(Origin {
        scheme,
        target,
        misdirected: None,
        agent,
    })
}
