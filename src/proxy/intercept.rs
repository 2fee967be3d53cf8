//! Interception: terminate the agent's TLS with a leaf for the CONNECT target, check the SNI,
//! and serve HTTP/1.1 and HTTP/2 (by ALPN) into the pipeline, pinned to that target.

use std::sync::Arc;

use hyper::server::conn::{http1, http2};
use hyper::upgrade::Upgraded;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio_rustls::LazyConfigAcceptor;

use super::activity::{Activity, Tracked};
use super::pipeline::{self, Origin};
use super::{ProxyState, serve_until_idle};
use crate::actions::host::{Authority, canonical_host};
use crate::agents::Agent;

/// Serves one intercepted tunnel until the agent closes it or it idles out.
///
/// The task of a tunnel lives as long as the agent's connection, through every held request,
/// so what it keeps inline is kept per tunnel: the TLS handshake's state and the connection
/// are boxed (the future itself stays a few hundred bytes), and the connection is the HTTP/1.1
/// or HTTP/2 server the ALPN chose rather than one sized for both.
pub async fn serve(state: Arc<ProxyState>, io: Upgraded, target: Authority, agent: Arc<Agent>) {
    let handshake_timeout = state.limits.header_read_timeout;
    let acceptor = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), TokioIo::new(io));
    let start = match Box::pin(tokio::time::timeout(handshake_timeout, acceptor)).await {
        Ok(Ok(start)) => start,
        Ok(Err(e)) => return tracing::debug!(%target, "TLS ClientHello refused: {e}"),
        Err(_) => return tracing::debug!(%target, "TLS ClientHello timed out"),
    };
    let misdirected = sni_mismatch(start.client_hello().server_name(), &target);
    let config = match state.issuer.server_config(&target.host) {
        Ok(c) => c,
        Err(e) => return tracing::warn!(%target, "no certificate for intercepted host: {e}"),
    };
    let accept = Box::pin(tokio::time::timeout(
        handshake_timeout,
        start.into_stream(config),
    ));
    let tls = match accept.await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => return tracing::debug!(%target, "TLS handshake with agent failed: {e}"),
        Err(_) => return tracing::debug!(%target, "TLS handshake with agent timed out"),
    };
    let alpn = match tls.get_ref().1.alpn_protocol() {
        Some(b"h2") => Alpn::H2,
        Some(b"http/1.1") => Alpn::Http1,
        _ => Alpn::None,
    };
    let origin = Arc::new(Origin {
        scheme: "https",
        target,
        misdirected,
        agent,
    });
    let activity = Activity::new();
    let io = TokioIo::new(Tracked::new(tls, activity.clone()));
    let idle = state.limits.idle_timeout;
    let head_timeout = Some(handshake_timeout);
    let service = {
        let (state, activity) = (state.clone(), activity.clone());
        hyper::service::service_fn(move |req| {
            let (state, origin) = (state.clone(), origin.clone());
            let in_flight = activity.request();
            let req = super::detach_head(req);
            async move {
                let resp = pipeline::handle(state, origin, req).await;
                drop(in_flight);
                Ok::<_, std::convert::Infallible>(resp)
            }
        })
    };
    match alpn {
        Alpn::H2 => {
            let conn = Box::pin(http2_builder(&state).serve_connection(io, service));
            serve_until_idle(conn, &activity, idle, None).await;
        }
        Alpn::Http1 => {
            let conn = Box::pin(http1_builder(&state).serve_connection(io, service));
            serve_until_idle(conn, &activity, idle, head_timeout).await;
        }
        Alpn::None => {
            let builder = agent_builder(&state);
            let conn = Box::pin(builder.serve_connection(io, service));
            serve_until_idle(conn, &activity, idle, head_timeout).await;
        }
    }
}

/// The protocol the agent's TLS handshake agreed on.
#[derive(Debug, Clone, Copy)]
enum Alpn {
    H2,
    Http1,
    /// None offered: HTTP/1.1 or HTTP/2 with prior knowledge, told apart by the first bytes.
    None,
}

/// The SNI, when sent, must name the CONNECT target.
fn sni_mismatch(sni: Option<&str>, target: &Authority) -> Option<String> {
    let sni = sni?;
    match canonical_host(sni) {
        Ok(h) if h == target.host => None,
        _ => Some(format!(
            "this tunnel was opened to {}; the TLS handshake named {sni:?}",
            target.host
        )),
    }
}

/// The HTTP/1.1 server for agents inside intercepted tunnels, with the limits set.
fn http1_builder(state: &ProxyState) -> http1::Builder {
    let limits = &state.limits;
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        // hyper's timer would also run while a keep-alive connection waits for its next
        // request; the stalled-head watchdog (activity.rs) times request heads instead.
        .header_read_timeout(None)
        .max_buf_size(limits.max_header_bytes)
        .max_headers(limits.max_headers);
    builder
}

/// The HTTP/2 server for agents inside intercepted tunnels, with the limits set.
fn http2_builder(state: &ProxyState) -> http2::Builder<TokioExecutor> {
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(state.limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(256);
    builder
}

/// The HTTP/1.1 + HTTP/2 server (told apart by the first bytes) for agents that offered no
/// ALPN, with the same limits.
fn agent_builder(state: &ProxyState) -> auto::Builder<TokioExecutor> {
    let limits = &state.limits;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // As in `http1_builder`.
        .header_read_timeout(None)
        .max_buf_size(limits.max_header_bytes)
        .max_headers(limits.max_headers);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(256);
    builder
}
