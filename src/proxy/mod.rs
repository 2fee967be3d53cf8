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
pub async fn serve_until_idle<C>(
    conn: C,
    activity: &activity::Activity,
    idle: std::time::Duration,
    head_timeout: Option<std::time::Duration>,
) where
    C: hyper_util::server::graceful::GracefulConnection,
    C::Error: std::fmt::Display,
{
    tokio::pin!(conn);
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
