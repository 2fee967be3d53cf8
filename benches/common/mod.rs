//! Shared bench rig: the fake upstream and the gate on a 2-worker server runtime, and a
//! low-level client (hyper's `conn` API over tokio-rustls) on a separate current-thread runtime,
//! so the client never competes with the gate for the server's worker threads.
//!
//! Every socket is on 127.0.0.1; nothing leaves the machine.
//!
//! The benches that run the gate in their own process use the allocator the `agentgate`
//! binary uses (mimalloc; see `src/main.rs`), so that they measure what ships.
#![allow(dead_code)]

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::ClientConfig;
use rustls::client::Resumption;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::runtime::Runtime;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::support::{FakeUpstream, TestCa, TestGate, client_tls};

pub const HOST: &str = "api.github.com";
pub const TARGET: &str = "api.github.com:443";
pub const H1: &[&[u8]] = &[b"http/1.1"];
pub const H2: &[&[u8]] = &[b"h2"];
pub const H2_H1: &[&[u8]] = &[b"h2", b"http/1.1"];

/// The request body type every bench client sends: a boxed stream of frames, so that a body
/// can be one frame with a length or several frames without one (chunked / h2 DATA frames).
pub type ReqBody = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

/// The server side (upstream + gate, 2 workers) and the client runtime (1 thread).
pub struct Rig {
    pub server_rt: Runtime,
    pub client_rt: Runtime,
    pub upstream_ca: TestCa,
    pub up: FakeUpstream,
    pub gate: TestGate,
}

impl Rig {
    /// Starts a fake upstream offering `upstream_alpn` and a gate routing `api.github.com` to it.
    pub fn new(upstream_alpn: &[&[u8]]) -> Rig {
        let server_rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("server")
            .enable_all()
            .build()
            .unwrap();
        let client_rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let upstream_ca = TestCa::new("bench-upstream");
        let (up, gate) = server_rt.block_on(async {
            let up = FakeUpstream::tls(&upstream_ca, &[HOST], upstream_alpn).await;
            let gate = TestGate::start(&upstream_ca, &[(HOST, up.addr)], |_| {}).await;
            (up, gate)
        });
        Rig {
            server_rt,
            client_rt,
            upstream_ca,
            up,
            gate,
        }
    }

    /// Client TLS config for direct connections (trusts the upstream's test CA).
    pub fn direct_tls(&self, alpn: &[&[u8]], resume: bool) -> Arc<ClientConfig> {
        tls_config(self.upstream_ca.cert_der.clone(), alpn, resume)
    }

    /// Client TLS config for connections through the gate (trusts the gate's CA).
    pub fn gate_tls(&self, alpn: &[&[u8]], resume: bool) -> Arc<ClientConfig> {
        tls_config(self.gate.ca_der(), alpn, resume)
    }

    /// Forgets what the fake upstream recorded (call outside timed regions).
    pub fn clear_recorded(&self) {
        self.up.seen.lock().unwrap().clear();
    }
}

/// A client config trusting `root` only; `resume: false` disables TLS session resumption so
/// every handshake is a full one (what a freshly started agent does).
pub fn tls_config(
    root: CertificateDer<'static>,
    alpn: &[&[u8]],
    resume: bool,
) -> Arc<ClientConfig> {
    let mut cfg = client_tls(root, alpn);
    if !resume {
        cfg.resumption = Resumption::disabled();
    }
    Arc::new(cfg)
}

/// A TCP connection with TCP_NODELAY set, as curl, reqwest and browsers do.
pub async fn tcp(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// Opens a CONNECT tunnel through the gate. Unlike the test support's `connect`, the response
/// head is read in bulk (as real clients do) rather than one byte per syscall: the gate sends
/// nothing after the head until the client's ClientHello, so nothing can be over-read.
pub async fn tunnel(gate: SocketAddr, target: &str) -> TcpStream {
    let mut s = tcp(gate).await;
    let auth = crate::support::proxy_auth(crate::support::TEST_AGENT, crate::support::TEST_TOKEN);
    s.write_all(
        format!(
            "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nProxy-Authorization: {auth}\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    while !buf.ends_with(b"\r\n\r\n") {
        let n = s.read(&mut chunk).await.unwrap();
        assert!(n > 0, "gate closed during CONNECT");
        buf.extend_from_slice(&chunk[..n]);
    }
    assert!(
        buf.starts_with(b"HTTP/1.1 200"),
        "CONNECT refused: {}",
        String::from_utf8_lossy(&buf)
    );
    s
}

/// TLS to `api.github.com` over `s`.
pub async fn tls(s: TcpStream, cfg: &Arc<ClientConfig>) -> TlsStream<TcpStream> {
    let name = ServerName::try_from(HOST).unwrap();
    TlsConnector::from(cfg.clone())
        .connect(name, s)
        .await
        .unwrap()
}

/// An HTTP/1.1 client connection over `io`; its connection task runs on the current runtime.
pub async fn h1(io: TlsStream<TcpStream>) -> http1::SendRequest<ReqBody> {
    let (send, conn) = http1::handshake(TokioIo::new(io)).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send
}

/// An HTTP/2 client connection over `io`.
pub async fn h2(io: TlsStream<TcpStream>) -> http2::SendRequest<ReqBody> {
    assert_eq!(
        io.get_ref().1.alpn_protocol(),
        Some(&b"h2"[..]),
        "h2 not negotiated"
    );
    let (send, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(io))
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send
}

/// A new direct connection to the upstream, speaking HTTP/1.1.
pub async fn direct_h1(rig_up: SocketAddr, cfg: &Arc<ClientConfig>) -> http1::SendRequest<ReqBody> {
    h1(tls(tcp(rig_up).await, cfg).await).await
}

/// A new CONNECT tunnel through the gate, then TLS and HTTP/1.1.
pub async fn gate_h1(gate: SocketAddr, cfg: &Arc<ClientConfig>) -> http1::SendRequest<ReqBody> {
    h1(tls(tunnel(gate, TARGET).await, cfg).await).await
}

/// The request shapes the benches send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// GET of a small response (~30 bytes).
    SmallGet,
    /// POST of `n` bytes in one frame with a Content-Length.
    Post(usize),
    /// POST of `n` bytes in two frames without a Content-Length (chunked on HTTP/1.1).
    PostChunked(usize),
    /// GET `/stream/N`: the upstream writes N bytes in 64 KiB chunks.
    Stream(usize),
}

impl Shape {
    pub fn label(self) -> &'static str {
        match self {
            Shape::SmallGet => "GET small",
            Shape::Post(_) => "POST 1-3 KB (length)",
            Shape::PostChunked(_) => "POST 1-3 KB (2 frames)",
            Shape::Stream(_) => "GET /stream/70000",
        }
    }

    /// The request; `absolute` for HTTP/2 (`:authority` from the URI), origin-form plus a
    /// Host header for HTTP/1.1.
    pub fn request(self, absolute: bool) -> Request<ReqBody> {
        let path = match self {
            Shape::SmallGet => "/repos/o/r/issues".to_string(),
            Shape::Post(_) | Shape::PostChunked(_) => "/repos/o/r/issues".to_string(),
            Shape::Stream(n) => format!("/stream/{n}"),
        };
        let (method, body): (&str, ReqBody) = match self {
            Shape::SmallGet | Shape::Stream(_) => ("GET", Full::new(Bytes::new()).boxed()),
            Shape::Post(n) => ("POST", Full::new(Bytes::from(vec![b'p'; n])).boxed()),
            Shape::PostChunked(n) => {
                let half = n / 2;
                let frames = vec![
                    Ok(Frame::data(Bytes::from(vec![b'a'; half]))),
                    Ok(Frame::data(Bytes::from(vec![b'b'; n - half]))),
                ];
                (
                    "POST",
                    StreamBody::new(futures_util::stream::iter(frames)).boxed(),
                )
            }
        };
        let mut b = Request::builder().method(method);
        b = if absolute {
            b.uri(format!("https://{HOST}{path}"))
        } else {
            b.uri(path).header(http::header::HOST, HOST)
        };
        if let Shape::Post(n) = self {
            b = b.header(http::header::CONTENT_LENGTH, n);
        }
        b.header("content-type", "application/json")
            .header("user-agent", "agentgate-bench")
            .body(body)
            .unwrap()
    }

    /// The response body length the upstream sends for this shape.
    pub fn expected_len(self) -> usize {
        match self {
            Shape::SmallGet | Shape::Post(_) | Shape::PostChunked(_) => {
                let m = if self == Shape::SmallGet {
                    "GET"
                } else {
                    "POST"
                };
                format!("ok {m} /repos/o/r/issues").len()
            }
            Shape::Stream(n) => n,
        }
    }
}

/// Either protocol's sender.
pub enum Sender {
    H1(http1::SendRequest<ReqBody>),
    H2(http2::SendRequest<ReqBody>),
}

impl Sender {
    /// Sends `shape` and reads the whole response; returns the body length.
    pub async fn fetch(&mut self, shape: Shape) -> usize {
        let resp = match self {
            Sender::H1(s) => {
                s.ready().await.unwrap();
                s.send_request(shape.request(false)).await.unwrap()
            }
            Sender::H2(s) => {
                s.ready().await.unwrap();
                s.send_request(shape.request(true)).await.unwrap()
            }
        };
        assert_eq!(resp.status(), StatusCode::OK);
        let n = resp.into_body().collect().await.unwrap().to_bytes().len();
        assert_eq!(n, shape.expected_len(), "{shape:?}");
        n
    }
}

/// Percentile (nearest rank) of sorted durations.
pub fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Microseconds with one decimal.
pub fn us(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e6)
}

/// Runs `f` and returns how long it took.
pub async fn timed<F: std::future::Future>(f: F) -> (F::Output, Duration) {
    let t = Instant::now();
    let out = f.await;
    (out, t.elapsed())
}

/// How a measurement's connections send.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Load {
    /// Each connection sends its next request as soon as it has read the last answer.
    Closed,
    /// All connections together send this many requests a second, evenly spread: each
    /// connection on a schedule of its own ([`Pacer`]), staggered.
    Paced(u32),
}

impl Load {
    pub fn label(self) -> String {
        match self {
            Load::Closed => "closed loop".into(),
            Load::Paced(r) => format!("paced {r}/s"),
        }
    }

    /// The send schedule of connection `i` of `conns` from `start` (`None` for a closed
    /// loop): a send every `conns / rate` seconds, the connections evenly staggered.
    pub fn pacer(self, start: tokio::time::Instant, i: usize, conns: usize) -> Option<Pacer> {
        match self {
            Load::Closed => None,
            Load::Paced(rate) => {
                let every = Duration::from_secs_f64(conns as f64 / f64::from(rate));
                let offset = every.mul_f64(i as f64 / conns as f64);
                let mut t = tokio::time::interval_at(start + offset, every);
                t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                Some(Pacer(t))
            }
        }
    }
}

/// One connection's send schedule under [`Load::Paced`]. A connection waits for each answer
/// before it sends again, so an answer that comes later than the next send time makes that
/// send late. The schedule is kept anyway (tokio's `Burst`): the late sends go out at once,
/// back to back, until the connection is on time again, so the connections stay staggered and
/// the load stays evenly spread. (With `Delay`, which this replaced, every connection held up
/// by the same stall of more than 5 ms was put back on a schedule starting at the same
/// instant: from then on all 32 sent together, and the rest of the window measured bursts of
/// 32 instead of the stated load.)
pub struct Pacer(tokio::time::Interval);

impl Pacer {
    /// Waits for the next send time. Returns how late the send is because the connection was
    /// still waiting for an earlier answer when it was due: count it in the request's latency,
    /// as a client on this schedule waits for it too (no coordinated omission). A send the
    /// connection was on time for returns zero: the timer's own lateness (up to a millisecond)
    /// is not the path's.
    pub async fn next(&mut self) -> Duration {
        let asked = tokio::time::Instant::now();
        let due = self.0.tick().await;
        if due < asked {
            due.elapsed()
        } else {
            Duration::ZERO
        }
    }
}

/// A GET to a gate's dashboard at `addr` as the reviewer holding `token`, on a fresh
/// connection; the body of its `200`.
pub async fn dashboard_get(addr: SocketAddr, token: &str, path: &str) -> Bytes {
    let s = TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    let (mut send, conn) = http1::handshake::<_, Full<Bytes>>(TokioIo::new(s))
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = Request::get(path)
        .header("host", addr.to_string())
        .header("authorization", format!("Bearer {token}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200, "GET {path}");
    resp.into_body().collect().await.unwrap().to_bytes()
}

/// The `held_requests` gauge of the gate's `/metrics` (-1 when it is missing).
pub async fn held_gauge(addr: SocketAddr, token: &str) -> i64 {
    let text = dashboard_get(addr, token, "/metrics").await;
    String::from_utf8_lossy(&text)
        .lines()
        .find(|l| !l.starts_with('#') && l.contains("held_requests"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or(-1)
}

#[path = "../estimates/mod.rs"]
mod estimates;
#[allow(unused_imports)]
pub use estimates::{median_us, name_filter, output_dir};
