//! The proxy: listener, CONNECT handling, TLS interception, blind tunnels, the request pipeline,
//! forwarding, and the one place that turns refusals into responses.

pub mod activity;
pub mod connect;
pub mod drafts;
pub mod forward;
pub mod intercept;
pub mod listener;
pub mod pipeline;
pub mod respond;
pub mod resumable;
pub mod tunnel;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;

use crate::actions::catalog::Catalog;
use crate::actions::host::Authority;
use crate::config::Limits;
use crate::decider::Decider;
use crate::tls::issuer::LeafIssuer;

/// The body type of every response the gate sends to an agent.
pub type RespBody = BoxBody<Bytes, hyper::Error>;

/// Everything a connection task needs, shared behind an `Arc`.
#[derive(Debug)]
pub struct ProxyState {
    pub intercept: BTreeSet<String>,
    pub catalog: Catalog,
    /// Message params of Gmail drafts the gate saw written.
    pub drafts: drafts::Drafts,
    /// Gmail resumable upload sessions in progress.
    pub uploads: resumable::Uploads,
    /// Where real tokens come from.
    pub vault: Arc<dyn crate::vault::Vault>,
    /// The placeholders agents hold.
    pub placeholders: crate::vault::inject::Placeholders,
    /// GitHub Enterprise Server hosts (their tokens are GitHub's).
    pub github_enterprise: BTreeSet<String>,
    /// The audit log: every decision is durable here before anything goes upstream.
    pub audit: Arc<crate::audit::Audit>,
    /// Step-up challenges: held requests waiting for a reviewer.
    pub holds: crate::holds::Holds,
    /// Counters and histograms for `/metrics`.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// The agents the proxy credentials are checked against.
    pub agents: crate::agents::Agents,
    /// The active policy and the counters: every decision comes from here.
    pub decider: Arc<Decider>,
    pub limits: Limits,
    pub issuer: Arc<LeafIssuer>,
    pub forwarder: forward::Forwarder,
    /// The gate's own listening addresses (proxy, dashboard): never reachable through the proxy.
    pub own_addrs: Vec<SocketAddr>,
}

impl ProxyState {
    /// Whether the gate terminates TLS for `host` and inspects its requests.
    pub fn intercepts(&self, host: &str) -> bool {
        self.intercept.contains(host)
    }

    /// Whether `target` names one of the gate's own listeners.
    pub fn is_own_address(&self, target: &Authority) -> bool {
        self.own_addrs.iter().any(|own| {
            own.port() == target.port && {
                match target.host.parse::<std::net::IpAddr>() {
                    Ok(t) => {
                        forward::is_gate_addr(&[*own], &std::net::SocketAddr::new(t, target.port))
                    }
                    Err(_) => target.host == "localhost" || target.host.ends_with(".localhost"),
                }
            }
        })
    }
}

/// Drives a server connection to its end: shut down gracefully once it has been idle (no
/// request in flight, no bytes) for `idle`; dropped when a request head stalls for
/// `head_timeout` (`None` for HTTP/2, which has no request heads to stall).
///
/// The connection comes boxed: the task of a tunnel that waits on a held request then keeps
/// a pointer, not the connection state (kilobytes, in the task and again in this future's
/// argument slot).
pub async fn serve_until_idle<C>(
    mut conn: std::pin::Pin<Box<C>>,
    activity: &activity::Activity,
    idle: std::time::Duration,
    head_timeout: Option<std::time::Duration>,
) where
    C: hyper_util::server::graceful::GracefulConnection,
    C::Error: std::fmt::Display,
{
    let stalled = async {
        match head_timeout {
            Some(t) => activity.stalled_head(t).await,
            None => std::future::pending().await,
        }
    };
    let result = tokio::select! {
        r = conn.as_mut() => r,
        () = stalled => return tracing::debug!("request head not complete in time; connection dropped"),
        () = activity.idle(idle) => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!("agent connection ended: {e}");
    }
}

/// The request with its head (URI, header values) copied out of the connection's read buffer.
///
/// hyper parses a request head in place: the URI and every header value are slices of the
/// connection's read buffer. A request that is kept (held for a reviewer) would keep that whole
/// buffer (8 KB and more) alive, and the connection would allocate a new one for its next read.
/// Copied, the head costs its own few hundred bytes and the connection reuses its buffer.
/// Names, values and their sensitivity are kept exactly; a URI that would not parse again
/// (never expected) is left as it was.
pub fn detach_head<B>(req: http::Request<B>) -> http::Request<B> {
    let (mut parts, body) = req.into_parts();
    let mut headers = http::HeaderMap::with_capacity(parts.headers.len());
    let mut name = None;
    for (n, v) in parts.headers {
        if let Some(n) = n {
            name = Some(n);
        }
        let Some(n) = &name else { continue };
        let sensitive = v.is_sensitive();
        // Values hyper accepted always pass this check; the original is kept otherwise.
        let mut copied = http::HeaderValue::from_bytes(v.as_bytes()).unwrap_or(v);
        copied.set_sensitive(sensitive);
        headers.append(n.clone(), copied);
    }
    parts.headers = headers;
    if let Ok(uri) = http::Uri::try_from(parts.uri.to_string()) {
        if uri == parts.uri {
            parts.uri = uri;
        }
    }
    http::Request::from_parts(parts, body)
}
