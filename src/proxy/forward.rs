//! Forwarding: one pooled upstream client (HTTP/1.1 and HTTP/2 by ALPN) that verifies upstream
//! certificates, dials through `upstream.overrides`, sets TCP_NODELAY and never follows redirects.

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
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

/// Opens TCP connections to upstreams, honouring `upstream.overrides`.
#[derive(Debug, Clone)]
pub struct Dialer {
    overrides: Arc<BTreeMap<String, String>>,
    connect_timeout: Duration,
}

impl Dialer {
    pub fn new(overrides: BTreeMap<String, String>, connect_timeout: Duration) -> Dialer {
        Dialer {
            overrides: Arc::new(overrides),
            connect_timeout,
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
        let stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect(&addr))
            .await
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "connecting to {addr} timed out after {:?}",
                        self.connect_timeout
                    ),
                )
            })??;
        stream.set_nodelay(true)?;
        Ok(stream)
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
