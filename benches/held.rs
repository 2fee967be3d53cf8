//! Step-up holds at scale (issue 7, speed): 10,000 requests held at once through the real
//! `agentgate` binary, then approved in bulk through the reviewer API.
//!
//! The gate runs as its own process (`agentgate run --config FILE`, the bench profile's
//! binary) with a policy that steps up `github.issues.create`, the env vault, its data
//! directory on the disk (the system temp dir unless a directory is given) and `api.github.com`
//! routed to a fake HTTPS upstream in this process. 100 agents (`[[agents]]`) each hold 100
//! requests: the gate's bounds are 100 per agent and 10,000 in all, fixed in the code
//! (`HoldLimits::default()`; the config has no keys for them), so 100 x 100 is exactly its
//! total. Each request is `POST /repos/acme/api/issues` with a small JSON body and the GitHub
//! placeholder, through a CONNECT tunnel with the agent's proxy credentials, and TLS to the
//! gate:
//! - `h2`: one HTTP/2 connection per agent, 100 streams on each (100 connections);
//! - `h1`: one HTTP/1.1 connection per request (10,000 connections, 10,000 tunnels);
//!   needs about 10,100 file descriptors in this process and in the gate (`ulimit -n`).
//!
//! Printed, per mode:
//! - the gate's RSS (`VmRSS` of `/proc/PID/status`) after start and with all 10,000 held
//!   (the gate's `held_requests` gauge at 10,000), the growth per held request, its peak
//!   (`VmHWM`) and open descriptors; target: RSS <= 500 MB with 10,000 held;
//! - approval in bulk: 8 approver tasks, each on its own keep-alive connection to the
//!   dashboard, `POST /api/challenges/{id}/approve` one id after another; for each request,
//!   the time from the approve call's answer (and from its start) to the fake upstream's
//!   handler receiving the forwarded request (same process, same clock): p50 / p90 / p99 /
//!   max; target: p99 <= 10 ms. The time from the answer can be negative: the gate wakes the
//!   held request before it answers the reviewer;
//! - that every agent got the upstream's 201 and the upstream saw each request once.
//!
//! Run: `cargo bench --bench held` (both modes), `cargo bench --bench held -- h2` (or `h1`),
//! `cargo bench --bench held -- h2 DIR` to put the gate's directory under DIR.
//! Every socket is on 127.0.0.1.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/support/mod.rs"]
mod support;

mod common;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use support::{GITHUB_PLACEHOLDER, TempDir, TestCa, client_tls, proxy_auth};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_rustls::{TlsAcceptor, TlsConnector};

const BIN: &str = env!("CARGO_BIN_EXE_agentgate");
const HOST: &str = "api.github.com";
const AGENTS: usize = 100;
/// Held per agent: the gate's per-agent bound.
const PER_AGENT: usize = 100;
const HELD: usize = AGENTS * PER_AGENT;
const APPROVERS: usize = 8;
/// The real token the env vault hands the gate.
const VAULT_TOKEN: &str = "ghs_BenchVaultToken0123456789abcdefghijkl";
const POLICY: &str = "default block;\n\
    step_up \"issues-need-a-human\" on github.issues.create reason \"A human approves new issues\";\n";
/// The header carrying a request's number, for the upstream to report it.
const SEQ: &str = "x-bench-seq";

type ReqBody = Full<Bytes>;

fn epoch() -> Instant {
    static E: OnceLock<Instant> = OnceLock::new();
    *E.get_or_init(Instant::now)
}

fn agent_name(k: usize) -> String {
    format!("agent-{k:03}")
}

fn agent_token(k: usize) -> String {
    format!("agt_bench-agent-{k:03}-token-0123456789abcdef")
}

/// The fake GitHub: HTTPS with h2 and http/1.1; notes when each numbered request reached its
/// handler (time since `epoch()`), answers 201.
struct Upstream {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<(usize, Duration)>>>,
}

impl Upstream {
    async fn start(ca: &TestCa) -> Upstream {
        let acceptor =
            TlsAcceptor::from(Arc::new(ca.server_config(&[HOST], &[b"h2", b"http/1.1"])));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::with_capacity(HELD)));
        let s = seen.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                stream.set_nodelay(true).unwrap();
                let (acceptor, s) = (acceptor.clone(), s.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let svc =
                        hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                            let s = s.clone();
                            async move {
                                let at = epoch().elapsed();
                                let seq = req
                                    .headers()
                                    .get(SEQ)
                                    .and_then(|v| v.to_str().ok())
                                    .and_then(|v| v.parse::<usize>().ok());
                                if let Some(seq) = seq {
                                    s.lock().unwrap().push((seq, at));
                                }
                                let _ = req.into_body().collect().await;
                                let resp = Response::builder()
                                    .status(StatusCode::CREATED)
                                    .header("content-type", "application/json; charset=utf-8")
                                    .body(Full::new(Bytes::from_static(b"{\"number\":1}")))
                                    .unwrap();
                                Ok::<_, Infallible>(resp)
                            }
                        });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        Upstream { addr, seen }
    }
}

/// `agentgate run` in its own directory.
struct Gate {
    child: Child,
    pid: u32,
    proxy: SocketAddr,
    dashboard: SocketAddr,
    token: String,
    ca: CertificateDer<'static>,
    _dir: TempDir,
}

impl Gate {
    async fn start(dir: TempDir, upstream: &Upstream, upstream_ca: &TestCa) -> Gate {
        let root = dir.path();
        upstream_ca.write_pem(root, "upstream-ca.pem");
        std::fs::create_dir_all(root.join("policies")).unwrap();
        std::fs::write(root.join("policies/held.policy"), POLICY).unwrap();
        let proxy: SocketAddr = format!("127.0.0.1:{}", support::free_port())
            .parse()
            .unwrap();
        let dashboard: SocketAddr = format!("127.0.0.1:{}", support::free_port())
            .parse()
            .unwrap();
        let mut text = format!(
            "[proxy]\nlisten = \"{proxy}\"\n[dashboard]\nlisten = \"{dashboard}\"\n\
             [paths]\ncerts = \"certs\"\npolicies = \"policies\"\ndata = \"data\"\n\
             [upstream]\nextra_roots = [\"upstream-ca.pem\"]\n\
             [upstream.overrides]\n\"{HOST}\" = \"{}\"\n\
             [limits]\nmax_connections = {}\n\
             [step_up]\nwindow = \"30m\"\n[vault]\nbackend = \"env\"\n",
            upstream.addr,
            HELD + 1_000,
        );
        for k in 0..AGENTS {
            text.push_str(&format!(
                "[[agents]]\nname = \"{}\"\ntoken_sha256 = \"{}\"\nuser = \"auth0|bench\"\n",
                agent_name(k),
                hex::encode(agentgate::agents::sha256(&agent_token(k)))
            ));
        }
        let config = root.join("agentgate.toml");
        std::fs::write(&config, text).unwrap();
        let mut child = Command::new(BIN)
            .args(["run", "--config"])
            .arg(&config)
            .env("AGENTGATE_GITHUB_TOKEN", VAULT_TOKEN)
            .env("RUST_LOG", "agentgate=warn")
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let pid = child.id().unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let mut banner = String::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while let Ok(Ok(Some(line))) = tokio::time::timeout_at(deadline, lines.next_line()).await {
            banner.push_str(&line);
            banner.push('\n');
            if line.contains("eval \"$(agentgate env") {
                break;
            }
        }
        assert!(
            banner.contains(&format!("proxy listening on {proxy}")),
            "the gate did not start:\n{banner}"
        );
        // Keep reading its log, so the gate never blocks on a full pipe.
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                eprintln!("gate: {line}");
            }
        });
        let token = std::fs::read_to_string(root.join("data/reviewer.token"))
            .unwrap()
            .trim()
            .to_string();
        use rustls::pki_types::pem::PemObject;
        let ca = CertificateDer::from_pem_file(root.join("certs/ca.pem")).unwrap();
        Gate {
            child,
            pid,
            proxy,
            dashboard,
            token,
            ca,
            _dir: dir,
        }
    }

    /// (VmRSS, VmHWM) in bytes.
    fn rss(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).unwrap();
        let kb = |key: &str| -> u64 {
            status
                .lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        (kb("VmRSS:") * 1024, kb("VmHWM:") * 1024)
    }

    /// The gate's threads (tokio's blocking pool grows under a burst of step-ups).
    fn threads(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("Threads:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|v| v.parse().ok())
            })
            .unwrap_or(0)
    }

    fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// A GET to the dashboard, as the reviewer, on a fresh connection.
    async fn get(&self, path: &str) -> Bytes {
        common::dashboard_get(self.dashboard, &self.token, path).await
    }

    /// The `held_requests` gauge.
    async fn held(&self) -> i64 {
        common::held_gauge(self.dashboard, &self.token).await
    }

    async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

async fn dashboard_conn(addr: SocketAddr) -> http1::SendRequest<ReqBody> {
    let s = TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    let (send, conn) = http1::handshake(TokioIo::new(s)).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send
}

/// A CONNECT tunnel through the gate at `proxy` as agent `k`, then TLS to the gate (trusting
/// its CA `ca`) offering `alpn`.
async fn tunnel(
    proxy: SocketAddr,
    ca: CertificateDer<'static>,
    k: usize,
    alpn: &[u8],
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.set_nodelay(true).unwrap();
    let target = format!("{HOST}:443");
    let auth = proxy_auth(&agent_name(k), &agent_token(k));
    s.write_all(
        format!(
            "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nProxy-Authorization: {auth}\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut head = Vec::with_capacity(128);
    let mut chunk = [0u8; 128];
    while !head.ends_with(b"\r\n\r\n") {
        let n = s.read(&mut chunk).await.unwrap();
        assert!(n > 0, "the gate closed during CONNECT");
        head.extend_from_slice(&chunk[..n]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 200"),
        "CONNECT refused: {}",
        String::from_utf8_lossy(&head)
    );
    let cfg = Arc::new(client_tls(ca, &[alpn]));
    TlsConnector::from(cfg)
        .connect(ServerName::try_from(HOST).unwrap(), s)
        .await
        .unwrap()
}

fn issue(seq: usize, absolute: bool) -> Request<ReqBody> {
    let body = format!("{{\"title\":\"held-{seq}\",\"body\":\"bench\"}}");
    let b = if absolute {
        Request::post(format!("https://{HOST}/repos/acme/api/issues"))
    } else {
        Request::post("/repos/acme/api/issues").header("host", HOST)
    };
    b.header("authorization", format!("token {GITHUB_PLACEHOLDER}"))
        .header("content-type", "application/json")
        .header(SEQ, seq)
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    H2,
    H1,
}

/// A connection of agent `k`, through its own tunnel.
enum Conn {
    /// One request will go on it.
    H1(usize, http1::SendRequest<ReqBody>),
    /// All of the agent's requests go on it, as streams.
    H2(usize, http2::SendRequest<ReqBody>),
}

/// Opens the agents' connections (CONNECT, TLS, HTTP handshake), 64 at a time.
async fn open_all(gate: &Gate, mode: Mode) -> Vec<Conn> {
    let opening = Arc::new(Semaphore::new(64));
    let per_agent = match mode {
        Mode::H2 => 1,
        Mode::H1 => PER_AGENT,
    };
    let mut tasks = Vec::with_capacity(AGENTS * per_agent);
    for k in 0..AGENTS {
        for _ in 0..per_agent {
            let opening = opening.clone();
            let (proxy, ca) = (gate.proxy, gate.ca.clone());
            tasks.push(tokio::spawn(async move {
                let _p = opening.acquire().await.unwrap();
                match mode {
                    Mode::H2 => {
                        let io = tunnel(proxy, ca, k, b"h2").await;
                        let (send, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(io))
                            .await
                            .unwrap();
                        tokio::spawn(async move {
                            let _ = conn.await;
                        });
                        Conn::H2(k, send)
                    }
                    Mode::H1 => {
                        let io = tunnel(proxy, ca, k, b"http/1.1").await;
                        let (send, conn) = http1::handshake(TokioIo::new(io)).await.unwrap();
                        tokio::spawn(async move {
                            let _ = conn.await;
                        });
                        Conn::H1(k, send)
                    }
                }
            }));
        }
    }
    let mut conns = Vec::with_capacity(tasks.len());
    for t in tasks {
        conns.push(t.await.unwrap());
    }
    conns
}

/// Sends every agent's requests, which the gate holds; each task ends with the agent's status.
fn send_all(conns: Vec<Conn>) -> Vec<JoinHandle<u16>> {
    let mut next = vec![0usize; AGENTS];
    let mut tasks = Vec::with_capacity(HELD);
    for c in conns {
        match c {
            Conn::H1(k, mut send) => {
                let seq = k * PER_AGENT + next[k];
                next[k] += 1;
                tasks.push(tokio::spawn(async move {
                    finish(send.send_request(issue(seq, false)).await).await
                }));
            }
            Conn::H2(k, send) => {
                for j in 0..PER_AGENT {
                    let mut send = send.clone();
                    let seq = k * PER_AGENT + j;
                    tasks.push(tokio::spawn(async move {
                        finish(send.send_request(issue(seq, true)).await).await
                    }));
                }
            }
        }
    }
    tasks
}

async fn finish(resp: Result<Response<hyper::body::Incoming>, hyper::Error>) -> u16 {
    match resp {
        Ok(r) => {
            let status = r.status().as_u16();
            let _ = r.into_body().collect().await;
            status
        }
        Err(e) => {
            eprintln!("agent request failed: {e}");
            0
        }
    }
}

/// One approval: (request number, call started, answer read), times since `epoch()`.
type Approval = (usize, Duration, Duration);

/// Approves every pending challenge, `APPROVERS` calls at a time.
async fn approve_all(gate: &Gate) -> (Vec<Approval>, Duration) {
    let list: Value =
        serde_json::from_slice(&gate.get("/api/challenges?state=pending").await).unwrap();
    let mut work: Vec<(String, usize)> = list["challenges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let title = c["actions"][0]["params"]["title"].as_str().unwrap();
            let seq = title.trim_start_matches("held-").parse().unwrap();
            (c["id"].as_str().unwrap().to_string(), seq)
        })
        .collect();
    assert_eq!(work.len(), HELD, "pending challenges");
    // Interleave the agents, as reviewers working down a queue would.
    work.sort_by_key(|(_, seq)| (seq % PER_AGENT, seq / PER_AGENT));
    let started = Instant::now();
    let mut approvers = Vec::new();
    for a in 0..APPROVERS {
        let mine: Vec<(String, usize)> = work
            .iter()
            .enumerate()
            .filter(|(i, _)| i % APPROVERS == a)
            .map(|(_, w)| w.clone())
            .collect();
        let (addr, token) = (gate.dashboard, gate.token.clone());
        approvers.push(tokio::spawn(async move {
            let mut send = dashboard_conn(addr).await;
            let mut out = Vec::with_capacity(mine.len());
            for (id, seq) in mine {
                send.ready().await.unwrap();
                let req = Request::post(format!("/api/challenges/{id}/approve"))
                    .header("host", addr.to_string())
                    .header("authorization", format!("Bearer {token}"))
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from_static(b"{\"note\":\"bulk\"}")))
                    .unwrap();
                let t0 = epoch().elapsed();
                let resp = send.send_request(req).await.unwrap();
                let status = resp.status();
                let _ = resp.into_body().collect().await;
                let t1 = epoch().elapsed();
                assert_eq!(status, 200, "approve {id}");
                out.push((seq, t0, t1));
            }
            out
        }));
    }
    let mut all = Vec::with_capacity(HELD);
    for a in approvers {
        all.extend(a.await.unwrap());
    }
    (all, started.elapsed())
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn summary(label: &str, mut ms: Vec<f64>) {
    ms.sort_by(f64::total_cmp);
    println!(
        "  {label}: p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms (n = {})",
        pct(&ms, 50.0),
        pct(&ms, 90.0),
        pct(&ms, 99.0),
        ms.last().copied().unwrap_or(f64::NAN),
        ms.len()
    );
}

fn mb(b: u64) -> String {
    format!("{:.1} MB", b as f64 / 1e6)
}

/// The machine's 1, 5 and 15 minute load averages (other work on the same cores).
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// The soft limit on open files of this process (the gate inherits it).
fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

async fn run(mode: Mode, base: Option<&Path>) {
    println!(
        "== {HELD} held, {mode:?}: {}",
        match mode {
            Mode::H2 => format!("{AGENTS} HTTP/2 connections x {PER_AGENT} streams"),
            Mode::H1 => format!("{HELD} HTTP/1.1 connections"),
        }
    );
    let ca = TestCa::new("held-bench");
    let upstream = Upstream::start(&ca).await;
    let dir = match base {
        Some(b) => {
            let d = b.join(format!("agentgate-held-{}-{mode:?}", std::process::id()));
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir_all(&d).unwrap();
            TempDir(d)
        }
        None => TempDir::new("held-bench"),
    };
    println!(
        "  gate directory: {}; load average {}",
        dir.path().display(),
        loadavg()
    );
    let gate = Gate::start(dir, &upstream, &ca).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (rss0, _) = gate.rss();
    let t = Instant::now();
    let conns = open_all(&gate, mode).await;
    let opened = t.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (rss_conns, _) = gate.rss();
    println!(
        "  connections: {} opened in {:.1} s; gate RSS {} at start, {} with them open (+{})",
        conns.len(),
        opened.as_secs_f64(),
        mb(rss0),
        mb(rss_conns),
        mb(rss_conns.saturating_sub(rss0)),
    );
    let t = Instant::now();
    let agents = send_all(conns);
    let mut held = 0;
    for _ in 0..1200 {
        held = gate.held().await;
        if held >= HELD as i64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(held, HELD as i64, "the gate holds {held}");
    let all_held = t.elapsed();
    // Let allocator and kernel settle before reading.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (rss, hwm) = gate.rss();
    println!(
        "  held: all {HELD} held {:.1} s after the first was sent; gate RSS {} with {HELD} held \
         (+{} over start, {:.1} KB per held request; +{} over the open connections, {:.1} KB), \
         peak {}; {} descriptors open, {} threads",
        all_held.as_secs_f64(),
        mb(rss),
        mb(rss.saturating_sub(rss0)),
        rss.saturating_sub(rss0) as f64 / HELD as f64 / 1e3,
        mb(rss.saturating_sub(rss_conns)),
        rss.saturating_sub(rss_conns) as f64 / HELD as f64 / 1e3,
        mb(hwm),
        gate.fds(),
        gate.threads(),
    );
    let (approvals, took) = approve_all(&gate).await;
    let mut statuses: HashMap<u16, usize> = HashMap::new();
    for a in agents {
        *statuses.entry(a.await.unwrap()).or_default() += 1;
    }
    let seen: HashMap<usize, Duration> = upstream.seen.lock().unwrap().iter().copied().collect();
    assert_eq!(
        upstream.seen.lock().unwrap().len(),
        HELD,
        "requests the upstream received"
    );
    assert_eq!(seen.len(), HELD, "each request once");
    assert_eq!(
        statuses.get(&201),
        Some(&HELD),
        "agents' statuses {statuses:?}"
    );
    println!(
        "  approved {HELD} in {:.2} s ({:.0} approvals/s, {APPROVERS} approvers); every agent got 201",
        took.as_secs_f64(),
        HELD as f64 / took.as_secs_f64()
    );
    let ms = |a: Duration, b: Duration| (a.as_secs_f64() - b.as_secs_f64()) * 1e3;
    summary(
        "approve answered -> upstream has the request",
        approvals
            .iter()
            .map(|(seq, _, done)| ms(seen[seq], *done))
            .collect(),
    );
    summary(
        "approve call started -> upstream has the request",
        approvals
            .iter()
            .map(|(seq, sent, _)| ms(seen[seq], *sent))
            .collect(),
    );
    summary(
        "approve call (start -> answer)",
        approvals
            .iter()
            .map(|(_, sent, done)| ms(*done, *sent))
            .collect(),
    );
    let (rss_end, hwm_end) = gate.rss();
    println!(
        "  gate RSS after all answered {}, peak {}; load average {}",
        mb(rss_end),
        mb(hwm_end),
        loadavg()
    );
    gate.stop().await;
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let modes: Vec<Mode> = match args.first().map(String::as_str) {
        Some("h1") => vec![Mode::H1],
        Some("h2") => vec![Mode::H2],
        _ => vec![Mode::H2, Mode::H1],
    };
    let base = args.get(1).map(PathBuf::from);
    let limit = open_files_limit();
    println!(
        "open files limit (soft): {limit:?}; cores: {:?}",
        std::thread::available_parallelism().map(|n| n.get())
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    for mode in modes {
        if mode == Mode::H1 && limit.is_some_and(|l| l < (HELD + 1_000) as u64) {
            println!(
                "== skipping h1: it needs about {} open files in this process and in the gate; \
                 raise the limit (`ulimit -n 12000`) and run again",
                HELD + 1_000
            );
            continue;
        }
        runtime.block_on(run(mode, base.as_deref()));
    }
}
