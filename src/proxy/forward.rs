//! Forwarding: one pooled upstream client (HTTP/1.1 and HTTP/2 by ALPN) that verifies upstream
//! certificates, dials through `upstream.overrides`, sets TCP_NODELAY and never follows redirects.

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::ClientConfig;
use tokio::net::TcpStream;

use crate::actions::host::Authority;

/// Opens TCP connections to upstreams, honouring `upstream.overrides`, and never to the gate's
/// own listeners, whatever name resolves there.
#[derive(Debug, Clone)]
pub struct Dialer {
    overrides: Arc<BTreeMap<String, String>>,
    connect_timeout: Duration,
    own_addrs: Arc<Vec<SocketAddr>>,
}

/// Whether `addr` reaches one of the gate's listeners (`own`). Addresses are compared in
/// their canonical form (`::ffff:127.0.0.1` is 127.0.0.1), and a destination of 0.0.0.0 or
/// `::` is the local host (Linux connects it to loopback); a listener on an unspecified
/// address is reachable through every loopback address. The gate's other local addresses
/// are caught after connecting (see [`is_self_connection`]).
pub fn is_gate_addr(own: &[SocketAddr], addr: &SocketAddr) -> bool {
    let ip = addr.ip().to_canonical();
    let local = ip.is_loopback() || ip.is_unspecified();
    own.iter().any(|o| {
        let oip = o.ip().to_canonical();
        o.port() == addr.port()
            && (oip == ip
                || (ip.is_unspecified() && oip.is_loopback())
                || (oip.is_unspecified() && local))
    })
}

/// Whether a connected `stream` ended at one of the gate's own listeners: its peer is on this
/// host (the kernel gives a connection to a local address that same address as its source)
/// and on a listener's port. Catches every name and form of a local address, including the
/// host's own interface addresses when the gate listens on all of them.
pub fn is_self_connection(own: &[SocketAddr], stream: &TcpStream) -> bool {
    let (Ok(local), Ok(peer)) = (stream.local_addr(), stream.peer_addr()) else {
        // Cannot tell: refuse.
        return true;
    };
    let peer_ip = peer.ip().to_canonical();
    let on_this_host = peer_ip == local.ip().to_canonical() || peer_ip.is_loopback();
    on_this_host
        && own.iter().any(|o| {
            o.port() == peer.port() && (o.ip().is_unspecified() || o.ip().to_canonical() == peer_ip)
        })
}

impl Dialer {
    pub fn new(
        overrides: BTreeMap<String, String>,
        connect_timeout: Duration,
        own_addrs: Vec<SocketAddr>,
    ) -> Dialer {
        Dialer {
            overrides: Arc::new(overrides),
            connect_timeout,
            own_addrs: Arc::new(own_addrs),
        }
    }

    /// The address actually dialled for `target`: an override for `host:port`, then for
    /// `host`, else the target itself.
    pub fn address_for(&self, target: &Authority) -> String {
        self.overrides
            .get(&target.to_string())
            .or_else(|| self.overrides.get(&target.host))
            .cloned()
            .unwrap_or_else(|| target.to_string())
    }

    /// Connects to `target` with the connect timeout and TCP_NODELAY set.
    pub async fn dial(&self, target: &Authority) -> io::Result<TcpStream> {
        let addr = self.address_for(target);
        let timeout = self.connect_timeout;
        let stream = tokio::time::timeout(timeout, self.connect(&addr))
            .await
            .map_err(|_| {
                let msg = format!("connecting to {addr} timed out after {timeout:?}");
                io::Error::new(io::ErrorKind::TimedOut, msg)
            })??;
        stream.set_nodelay(true)?;
        Ok(stream)
    }

    /// Resolves `addr`, refuses it if any address is the gate's own, then connects to the
    /// first address that answers.
    async fn connect(&self, addr: &str) -> io::Result<TcpStream> {
        let resolved: Vec<SocketAddr> = tokio::net::lookup_host(addr).await?.collect();
        if let Some(own) = resolved.iter().find(|a| is_gate_addr(&self.own_addrs, a)) {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("{addr} resolves to {own}, the gate's own address"),
            ));
        }
        let mut last = io::Error::new(
            io::ErrorKind::NotFound,
            format!("{addr} resolves to nothing"),
        );
        for a in resolved {
            match TcpStream::connect(a).await {
                Ok(s) if is_self_connection(&self.own_addrs, &s) => {
                    return Err(io::Error::new(
                        io::ErrorKind::PermissionDenied,
                        format!("{addr} reaches the gate's own listener"),
                    ));
                }
                Ok(s) => return Ok(s),
                Err(e) => last = e,
            }
        }
        Err(last)
    }
}

impl tower_service::Service<Uri> for Dialer {
    type Response = TokioIo<TcpStream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let dialer = self.clone();
        Box::pin(async move {
            let target = authority_of(&uri)?;
            dialer.dial(&target).await.map(TokioIo::new)
        })
    }
}

fn authority_of(uri: &Uri) -> io::Result<Authority> {
    let default = if uri.scheme_str() == Some("http") {
        80
    } else {
        443
    };
    let auth = uri
        .authority()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "upstream URI has no host"))?;
    Authority::parse(auth.as_str(), Some(default))
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))
}

/// The pooled upstream client.
#[derive(Debug, Clone)]
pub struct Forwarder {
    client: Client<HttpsConnector<Dialer>, Full<Bytes>>,
    dialer: Dialer,
}

impl Forwarder {
    pub fn new(tls: ClientConfig, dialer: Dialer) -> Forwarder {
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_all_versions()
            .wrap_connector(dialer.clone());
        let client = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        Forwarder { client, dialer }
    }

    /// The dialer (blind tunnels use it too, so overrides apply to them).
    pub fn dialer(&self) -> &Dialer {
        &self.dialer
    }

    /// Sends one request upstream; the response body is streamed, never buffered.
    pub async fn send(&self, req: Request<Full<Bytes>>) -> Result<Response<Incoming>, String> {
        let target = req
            .uri()
            .authority()
            .map(|a| a.to_string())
            .unwrap_or_default();
        self.client
            .request(req)
            .await
            .map_err(|e| describe_upstream_error(&target, &e))
    }
}

/// A reason an agent can act on, naming certificate failures as such.
fn describe_upstream_error(target: &str, e: &(dyn std::error::Error + 'static)) -> String {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    let mut last = e.to_string();
    while let Some(err) = source {
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return format!(
                "the upstream {target} presented a certificate the gate does not trust ({tls}); nothing was forwarded"
            );
        }
        if let Some(io) = err.downcast_ref::<io::Error>() {
            if let Some(tls) = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                return format!(
                    "the upstream {target} presented a certificate the gate does not trust ({tls}); nothing was forwarded"
                );
            }
        }
        last = err.to_string();
        source = err.source();
    }
    format!("the upstream {target} could not be reached or failed: {last}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn every_form_of_a_local_address_is_the_gate() {
        let own = [sa("127.0.0.1:8081")];
        for d in [
            "127.0.0.1:8081",
            "0.0.0.0:8081",
            "[::ffff:127.0.0.1]:8081",
            "[::ffff:0.0.0.0]:8081",
            "[::]:8081",
        ] {
            assert!(is_gate_addr(&own, &sa(d)), "{d}");
        }
        for d in ["127.0.0.1:8082", "10.0.0.1:8081", "[::ffff:10.0.0.1]:8081"] {
            assert!(!is_gate_addr(&own, &sa(d)), "{d}");
        }
        let any = [sa("0.0.0.0:8080")];
        for d in [
            "127.0.0.5:8080",
            "[::1]:8080",
            "[::ffff:127.0.0.1]:8080",
            "0.0.0.0:8080",
        ] {
            assert!(is_gate_addr(&any, &sa(d)), "{d}");
        }
        assert!(!is_gate_addr(&any, &sa("192.0.2.1:8080")));
    }

    #[tokio::test]
    async fn a_connection_that_lands_on_a_listener_of_the_gate_is_caught() {
        // The gate listening on every address: any local address reaches it.
        let gate = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
        let own = [gate.local_addr().unwrap()];
        let port = own[0].port();
        let to_gate = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        assert!(is_self_connection(&own, &to_gate));
        // Another local service is not the gate.
        let other = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let to_other = TcpStream::connect(other.local_addr().unwrap())
            .await
            .unwrap();
        assert!(!is_self_connection(&own, &to_other));
    }
}
