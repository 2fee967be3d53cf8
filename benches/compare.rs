//! The comparison (issue 8): one loopback upstream and one load generator, and in the same run
//! four ways to reach it:
//!
//! - **direct**: the client talks TLS to the upstream itself;
//! - **AgentGate, allow path**: `CONNECT api.github.com:443` to the real `agentgate` binary,
//!   which intercepts (TLS with a leaf from its CA), classifies the request
//!   (`github.issues.list-for-repo`), decides it with the shipped `policies/default.policy`
//!   (allowed by `reads`), makes the decision record durable (audit journal, `fdatasync`, data
//!   directory on the disk), swaps the placeholder for the env vault's token and forwards it
//!   over its pooled upstream connection, then records the outcome;
//! - **AgentGate, blind tunnel**: `CONNECT 127.0.0.1:PORT` (not an intercepted host) to a
//!   second `agentgate` process: one `net.connect` decision per tunnel (allowed by the policy,
//!   recorded durably), then bytes copied both ways; the client's TLS session is with the
//!   upstream itself;
//! - **mitmproxy** (`mitmdump` from PyPI, `MITMDUMP`): the peer interception proxy, with `-q`
//!   and no scripts or addons of ours (no policy, no audit, no token swap): `CONNECT
//!   127.0.0.1:PORT`, TLS with mitmproxy's CA (SNI api.github.com), which verifies the upstream
//!   against the test CA (`ssl_verify_upstream_trusted_ca`, never `ssl_insecure`);
//! - for reference, not a goal: a bare TCP relay in this process (tokio's
//!   `copy_bidirectional` on a 2-worker runtime, no CONNECT): what one more user-space hop costs
//!   on this machine, apart from anything the gate does.
//!
//! The upstream is HTTPS (h2 and http/1.1 by ALPN, a certificate for api.github.com from a test
//! CA) and answers a 99-byte JSON body; it runs on a 1-worker runtime of its own. The load
//! generator is a current-thread runtime on the bench's main thread: hyper's HTTP/1.1 client
//! over tokio-rustls, keep-alive, TCP_NODELAY. Each request is `GET
//! /repos/acme/api/issues?state=open&per_page=30` with Octokit's headers and `Authorization:
//! Bearer agentgate-placeholder-github`.
//!
//! Printed: per path at 1 and 32 connections, a closed loop (throughput, latency, the proxy
//! process's CPU per request, by thread too, its context switches per request and its peak RSS,
//! `VmHWM` reset before each window; the CPU other work on the machine used) and paced loads
//! (added p50 / p99 over direct) at half of mitmproxy's closed-loop throughput and at 1,000/s,
//! each connection on its own staggered schedule (`common::Pacer`: a send made late by a slow
//! answer counts its lateness);
//! a new connection (TCP, CONNECT, full TLS handshake, first response) per path; the gate's
//! memory per held step-up request (2,000 held, HTTP/1.1 and HTTP/2); the goals; and the checks
//! that each path did what it claims (the certificate each client saw, the token the upstream
//! got, two audit records per allowed request, one per tunnel).
//!
//! Run: `tools/bench-compare.sh` (installs mitmproxy 11.0.2 into `target/bench-venv` when
//! missing, then `cargo bench --bench compare` with `MITMDUMP` set); `-- SECS` for SECS seconds
//! per measurement instead of 5; `-- SECS DIR` to put the gates' directories (their audit logs)
//! under DIR instead of the system temp dir. Without a runnable `MITMDUMP` the bench fails,
//! naming the script. Every socket is on 127.0.0.1.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/support/mod.rs"]
mod support;

mod common;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{HOST, Load, ReqBody, h1, pct, tcp, tls, tls_config};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rustls::ClientConfig;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use support::{GITHUB_PLACEHOLDER, REAL_GITHUB_TOKEN, TempDir, TestCa, proxy_auth};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::client::TlsStream;

const BIN: &str = env!("CARGO_BIN_EXE_agentgate");
const SCRIPT: &str = "tools/bench-compare.sh";
const REQ_PATH: &str = "/repos/acme/api/issues?state=open&per_page=30";
const BODY: &[u8] = br#"[{"number":1347,"title":"Found a bug","state":"open","user":{"login":"octocat"},"comments":0}]"#;
/// The client names the path a request took in this header; the upstream counts by it.
const TAG: &str = "x-bench-path";
/// Agents in every gate's config; the held measurement uses all of them (100 held each, the
/// gate's per-agent bound), the others agent 0.
const AGENTS: usize = 20;
const PER_AGENT: usize = 100;
const HELD: usize = AGENTS * PER_AGENT;
const NEW_CONNS: usize = 300;
const CONNS: [usize; 2] = [1, 32];
/// The rate allow_path.rs measures the gate at (32 connections together).
const ALLOW_PATH_RATE: u32 = 1000;
/// The blind-tunnel gate's policy: tunnels to the upstream's port on 127.0.0.1 only.
const TUNNEL_POLICY: &str = "default block;\n\
    allow \"bench-upstream\" on net.connect when host == \"127.0.0.1\" and params.port == PORT;\n";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    Direct,
    Gate,
    Tunnel,
    Mitm,
    /// Reference, not a goal: the least any user-space relay does (see [`start_relay`]).
    Relay,
}

/// The number of paths.
const PATHS: usize = 5;

impl Via {
    const ALL: [Via; PATHS] = [Via::Direct, Via::Gate, Via::Tunnel, Via::Mitm, Via::Relay];

    fn idx(self) -> usize {
        self as usize
    }

    fn tag(self) -> &'static str {
        match self {
            Via::Direct => "direct",
            Via::Gate => "gate",
            Via::Tunnel => "tunnel",
            Via::Mitm => "mitm",
            Via::Relay => "relay",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Via::Direct => "direct",
            Via::Gate => "AgentGate allow path",
            Via::Tunnel => "AgentGate blind tunnel",
            Via::Mitm => "mitmproxy 11.0.2",
            Via::Relay => "reference: bare TCP relay",
        }
    }

    fn from_tag(t: &str) -> Option<Via> {
        Via::ALL.into_iter().find(|v| v.tag() == t)
    }
}

/// Requests sent and connections opened by the client, per path (warm-ups included).
static SENT: [AtomicU64; PATHS] = [const { AtomicU64::new(0) }; PATHS];
static OPENED: [AtomicU64; PATHS] = [const { AtomicU64::new(0) }; PATHS];

// ---- the upstream ----------------------------------------------------------------------------

/// What the upstream's `authorization` header held.
const AUTH_REAL: usize = 0;
const AUTH_PLACEHOLDER: usize = 1;
const AUTH_OTHER: usize = 2;

/// The loopback HTTPS upstream: counts requests by (path tag, kind of credential).
struct Upstream {
    addr: SocketAddr,
    /// `[tag * 3 + auth]`; tag `PATHS` is a request without a known tag.
    seen: Arc<[AtomicU64; (PATHS + 1) * 3]>,
}

impl Upstream {
    async fn start(ca: &TestCa) -> Upstream {
        let acceptor =
            TlsAcceptor::from(Arc::new(ca.server_config(&[HOST], &[b"h2", b"http/1.1"])));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<[AtomicU64; (PATHS + 1) * 3]> =
            Arc::new(std::array::from_fn(|_| AtomicU64::new(0)));
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
                                let tag = req
                                    .headers()
                                    .get(TAG)
                                    .and_then(|v| v.to_str().ok())
                                    .and_then(Via::from_tag)
                                    .map_or(PATHS, Via::idx);
                                let auth = match req
                                    .headers()
                                    .get("authorization")
                                    .and_then(|v| v.to_str().ok())
                                {
                                    Some(v) if v == format!("Bearer {REAL_GITHUB_TOKEN}") => {
                                        AUTH_REAL
                                    }
                                    Some(v) if v == format!("Bearer {GITHUB_PLACEHOLDER}") => {
                                        AUTH_PLACEHOLDER
                                    }
                                    _ => AUTH_OTHER,
                                };
                                s[tag * 3 + auth].fetch_add(1, Ordering::Relaxed);
                                let _ = req.into_body().collect().await;
                                let resp = Response::builder()
                                    .header("content-type", "application/json; charset=utf-8")
                                    .body(Full::new(Bytes::from_static(BODY)))
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

    fn seen(&self, via: Via, auth: usize) -> u64 {
        self.seen[via.idx() * 3 + auth].load(Ordering::Relaxed)
    }
}

/// Reference for the blind tunnel: a bare TCP relay on a 2-worker runtime of its own (threads
/// `relay`, as many workers as the gate has here) in this process: each accepted connection is
/// copied to and from a new connection to the upstream with `tokio::io::copy_bidirectional`,
/// TCP_NODELAY on both. No CONNECT, no policy, no audit: what is left is the extra hop itself
/// (two more sockets, a read and a write each way, the wake-ups).
async fn start_relay(upstream: SocketAddr) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut agent, _)) = listener.accept().await {
            agent.set_nodelay(true).unwrap();
            tokio::spawn(async move {
                let Ok(mut up) = TcpStream::connect(upstream).await else {
                    return;
                };
                up.set_nodelay(true).unwrap();
                let _ = tokio::io::copy_bidirectional(&mut agent, &mut up).await;
            });
        }
    });
    addr
}

// ---- the proxies, as processes ---------------------------------------------------------------

/// A proxy process this bench started; killed (by its pid) when dropped.
struct Proc {
    name: String,
    child: Child,
    pid: u32,
}

impl Proc {
    fn spawn(name: &str, mut cmd: Command) -> (Proc, std::sync::mpsc::Receiver<String>) {
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({cmd:?}): {e}"));
        let pid = child.id();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let tag = name.to_string();
        // Read its log (so it never blocks on a full pipe): lines go to the channel while
        // someone listens, then to our stderr.
        std::thread::spawn(move || {
            let mut listening = true;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.trim().is_empty() {
                    continue;
                }
                if listening {
                    listening = tx.send(line.clone()).is_ok();
                }
                if !listening {
                    eprintln!("{tag}: {line}");
                }
            }
        });
        (
            Proc {
                name: name.to_string(),
                child,
                pid,
            },
            rx,
        )
    }

    fn status_kb(&self, key: &str) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with(key))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|v| v.parse().ok())
            })
            .unwrap_or(0)
    }

    /// Resident set now, bytes.
    fn rss(&self) -> u64 {
        self.status_kb("VmRSS:") * 1024
    }

    /// Peak resident set since start or the last [`Proc::reset_peak`], bytes.
    fn peak(&self) -> u64 {
        self.status_kb("VmHWM:") * 1024
    }

    /// Resets `VmHWM` to the current RSS (Linux: `5` to `/proc/PID/clear_refs`).
    fn reset_peak(&self) {
        std::fs::write(format!("/proc/{}/clear_refs", self.pid), "5")
            .unwrap_or_else(|e| panic!("cannot reset the peak RSS of {}: {e}", self.name));
    }

    fn threads(&self) -> u64 {
        self.status_kb("Threads:")
    }

    /// CPU seconds (user + system, all threads, living and exited) used so far.
    fn cpu(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).unwrap();
        stat_cpu(&stat)
    }

    /// Panics when the process has exited (gone, or a zombie not yet reaped).
    fn assert_alive(&self) {
        let state = std::fs::read_to_string(format!("/proc/{}/stat", self.pid))
            .ok()
            .and_then(|s| {
                let close = s.rfind(')')?;
                s[close + 2..].chars().next()
            });
        assert!(
            matches!(state, Some(c) if c != 'Z' && c != 'X'),
            "{} (pid {}) has exited; its log is above",
            self.name,
            self.pid
        );
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// utime + stime of a `/proc/.../stat` line, in seconds (USER_HZ = 100).
fn stat_cpu(stat: &str) -> f64 {
    let Some(close) = stat.rfind(')') else {
        return 0.0;
    };
    let f: Vec<&str> = stat[close + 2..].split(' ').collect();
    // Fields 14 and 15 of stat (utime, stime) are 11 and 12 after the state field.
    let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

/// CPU seconds of the living threads of process `pid` (or `self`), by thread name.
fn threads_cpu(pid: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(t.path().join("stat")) else {
            continue;
        };
        let comm = stat
            .find('(')
            .zip(stat.rfind(')'))
            .map_or("", |(a, b)| &stat[a + 1..b]);
        *out.entry(comm.to_string()).or_insert(0.0) += stat_cpu(&stat);
    }
    out
}

/// Context switches (voluntary and not) of the living threads of process `pid` so far.
fn switches(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    let mut n = 0;
    for t in tasks.flatten() {
        let status = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
        n += status
            .lines()
            .filter(|l| l.contains("ctxt_switches:"))
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum::<u64>();
    }
    n
}

/// CPU seconds of this process's threads: (the upstream's runtime, the relay's, everything
/// else: the client on the main thread).
fn bench_cpu() -> [f64; 3] {
    let mut out = [0.0; 3];
    for (comm, cpu) in threads_cpu("self") {
        out[match comm.as_str() {
            "upstream" => 0,
            "relay" => 1,
            _ => 2,
        }] += cpu;
    }
    out
}

fn delta(after: &BTreeMap<String, f64>, before: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, v)| *v > 0.0)
        .collect()
}

/// Busy CPU seconds of the whole machine so far (`/proc/stat`: user, nice, system, irq,
/// softirq; not idle, iowait or steal).
fn machine_busy() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return 0.0;
    };
    let f: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0.0))
        .collect();
    [0, 1, 2, 5, 6]
        .iter()
        .map(|&i| f.get(i).copied().unwrap_or(0.0))
        .sum::<f64>()
        / 100.0
}

/// CPU seconds of this process and of every proxy process: the machine's busy time minus this
/// is what other work (other people's builds and tests) used.
fn ours_cpu(procs: &[&Proc]) -> f64 {
    let me = std::fs::read_to_string("/proc/self/stat")
        .map(|s| stat_cpu(&s))
        .unwrap_or(0.0);
    me + procs.iter().map(|p| p.cpu()).sum::<f64>()
}

fn agent_name(k: usize) -> String {
    format!("agent-{k:02}")
}

fn agent_token(k: usize) -> String {
    format!("agt_bench-compare-agent-{k:02}-0123456789abcdef")
}

/// `agentgate run --config FILE` in a directory of its own under the system temp dir (the disk
/// here: its audit is durable on the disk).
struct Gate {
    proc: Proc,
    proxy: SocketAddr,
    dashboard: SocketAddr,
    token: String,
    ca: CertificateDer<'static>,
    dir: TempDir,
}

impl Gate {
    fn start(
        name: &str,
        base: &Path,
        upstream: SocketAddr,
        upstream_ca: &TestCa,
        policy: &str,
    ) -> Gate {
        let dir = base.join(format!("agentgate-compare-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let dir = TempDir(dir);
        let root = dir.path();
        upstream_ca.write_pem(root, "upstream-ca.pem");
        std::fs::create_dir_all(root.join("policies")).unwrap();
        std::fs::write(root.join("policies/bench.policy"), policy).unwrap();
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
             [upstream.overrides]\n\"{HOST}\" = \"{upstream}\"\n\
             [limits]\nmax_connections = {}\n\
             [step_up]\nwindow = \"30m\"\n[vault]\nbackend = \"env\"\n",
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
        let mut cmd = Command::new(BIN);
        cmd.args(["run", "--config"])
            .arg(&config)
            .env("AGENTGATE_GITHUB_TOKEN", REAL_GITHUB_TOKEN)
            .env("RUST_LOG", "agentgate=warn");
        let (proc, lines) = Proc::spawn(name, cmd);
        let mut banner = String::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while let Ok(line) = lines.recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            banner.push_str(&line);
            banner.push('\n');
            if line.contains("eval \"$(agentgate env") {
                break;
            }
        }
        drop(lines);
        assert!(
            banner.contains(&format!("proxy listening on {proxy}")),
            "{name} did not start:\n{banner}"
        );
        let token = std::fs::read_to_string(root.join("data/reviewer.token"))
            .unwrap()
            .trim()
            .to_string();
        let ca = CertificateDer::from_pem_file(root.join("certs/ca.pem")).unwrap();
        Gate {
            proc,
            proxy,
            dashboard,
            token,
            ca,
            dir,
        }
    }

    /// A GET to the dashboard as the reviewer.
    async fn get(&self, path: &str) -> Bytes {
        common::dashboard_get(self.dashboard, &self.token, path).await
    }

    /// The `held_requests` gauge of `/metrics`.
    async fn held(&self) -> i64 {
        common::held_gauge(self.dashboard, &self.token).await
    }

    /// `GET /api/audit/verify`: records walked, and whether the chain holds.
    async fn audit_verify(&self) -> (u64, bool) {
        let v: serde_json::Value =
            serde_json::from_slice(&self.get("/api/audit/verify").await).unwrap();
        (v["records"].as_u64().unwrap_or(0), v["broken"].is_null())
    }
}

/// `mitmdump -q` on 127.0.0.1 with a fresh confdir (its CA is made there on first start).
struct Mitm {
    proc: Proc,
    addr: SocketAddr,
    ca: CertificateDer<'static>,
    _dir: TempDir,
}

impl Mitm {
    fn start(mitmdump: &Path, upstream_ca: &TestCa) -> Mitm {
        let dir = TempDir::new("compare-mitm");
        let ca_file = upstream_ca.write_pem(dir.path(), "upstream-ca.pem");
        let confdir = dir.path().join("conf");
        let port = support::free_port();
        let mut cmd = Command::new(mitmdump);
        cmd.arg("-q")
            .args(["--listen-host", "127.0.0.1", "--listen-port"])
            .arg(port.to_string())
            .arg("--set")
            .arg(format!("confdir={}", confdir.display()))
            .arg("--set")
            .arg(format!(
                "ssl_verify_upstream_trusted_ca={}",
                ca_file.display()
            ));
        let (proc, lines) = Proc::spawn("mitmdump", cmd);
        drop(lines);
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let ca_pem = confdir.join("mitmproxy-ca-cert.pem");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            proc.assert_alive();
            if ca_pem.exists() && std::net::TcpStream::connect(addr).is_ok() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "mitmdump did not listen on {addr} within 60 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let ca = CertificateDer::from_pem_file(&ca_pem).unwrap();
        Mitm {
            proc,
            addr,
            ca,
            _dir: dir,
        }
    }
}

/// The mitmdump to run: `MITMDUMP`, which the script sets. Missing or not runnable: fail,
/// naming the script (the comparison is never run without its peer).
fn mitmdump() -> (PathBuf, String) {
    let Some(path) = std::env::var_os("MITMDUMP").map(PathBuf::from) else {
        panic!(
            "MITMDUMP is not set: this bench compares against mitmproxy's mitmdump. Run \
             `{SCRIPT}` (it installs mitmproxy 11.0.2 into target/bench-venv and sets MITMDUMP), \
             or set MITMDUMP to a mitmdump executable"
        );
    };
    let out = Command::new(&path).arg("--version").output();
    match out {
        Ok(o) if o.status.success() => {
            let v = String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_string();
            (path, v)
        }
        Ok(o) => panic!(
            "MITMDUMP={} does not run ({}): run `{SCRIPT}`",
            path.display(),
            o.status
        ),
        Err(e) => panic!(
            "MITMDUMP={} not found or not executable ({e}): run `{SCRIPT}`",
            path.display()
        ),
    }
}

// ---- the client --------------------------------------------------------------------------------

struct Client {
    upstream: SocketAddr,
    gate: SocketAddr,
    tunnel_gate: SocketAddr,
    mitm: SocketAddr,
    relay: SocketAddr,
    /// Trusts the upstream's test CA only (direct and the blind tunnel).
    upstream_tls: Arc<ClientConfig>,
    /// Trusts the allow gate's CA only.
    gate_tls: Arc<ClientConfig>,
    /// Trusts mitmproxy's CA only.
    mitm_tls: Arc<ClientConfig>,
    auth: String,
}

/// `CONNECT target` on a new connection to `proxy`; the response head is read in bulk (neither
/// proxy sends anything after it before the client's ClientHello).
async fn connect(proxy: SocketAddr, target: &str, auth: Option<&str>) -> TcpStream {
    let mut s = tcp(proxy).await;
    let auth = auth.map_or(String::new(), |a| format!("Proxy-Authorization: {a}\r\n"));
    s.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{auth}\r\n").as_bytes())
        .await
        .unwrap();
    let mut head = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    while !head.ends_with(b"\r\n\r\n") {
        let n = s.read(&mut chunk).await.unwrap();
        assert!(n > 0, "{proxy} closed during CONNECT {target}");
        head.extend_from_slice(&chunk[..n]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 200"),
        "CONNECT {target} refused by {proxy}: {}",
        String::from_utf8_lossy(&head)
    );
    s
}

impl Client {
    /// A new TLS session to "api.github.com" by `via`, and how long its two stages took:
    /// TCP connect (+ CONNECT exchange), TLS handshake.
    async fn session(&self, via: Via) -> (TlsStream<TcpStream>, Duration, Duration) {
        OPENED[via.idx()].fetch_add(1, Ordering::Relaxed);
        let upstream = self.upstream.to_string();
        let t0 = Instant::now();
        let (s, cfg) = match via {
            Via::Direct => (tcp(self.upstream).await, &self.upstream_tls),
            Via::Gate => (
                connect(self.gate, &format!("{HOST}:443"), Some(&self.auth)).await,
                &self.gate_tls,
            ),
            Via::Tunnel => (
                connect(self.tunnel_gate, &upstream, Some(&self.auth)).await,
                &self.upstream_tls,
            ),
            Via::Mitm => (connect(self.mitm, &upstream, None).await, &self.mitm_tls),
            Via::Relay => (tcp(self.relay).await, &self.upstream_tls),
        };
        let t1 = Instant::now();
        let io = tls(s, cfg).await;
        let t2 = Instant::now();
        (io, t1 - t0, t2 - t1)
    }

    async fn open(&self, via: Via) -> http1::SendRequest<ReqBody> {
        h1(self.session(via).await.0).await
    }
}

/// One request, read in full; its latency.
async fn fetch(s: &mut http1::SendRequest<ReqBody>, via: Via) -> Duration {
    s.ready().await.unwrap();
    SENT[via.idx()].fetch_add(1, Ordering::Relaxed);
    let t = Instant::now();
    let req = Request::get(REQ_PATH)
        .header(http::header::HOST, HOST)
        .header("accept", "application/vnd.github+json")
        .header("user-agent", "octokit-rest.js/21.0.2 octokit-core.js/6.1.2")
        .header("x-github-api-version", "2022-11-28")
        .header("authorization", format!("Bearer {GITHUB_PLACEHOLDER}"))
        .header(TAG, via.tag())
        .body(Full::new(Bytes::new()).boxed())
        .unwrap();
    let resp = s.send_request(req).await.unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(
        status == StatusCode::OK && &body[..] == BODY,
        "{}: {status} {}",
        via.label(),
        String::from_utf8_lossy(&body)
    );
    t.elapsed()
}

/// One measured window.
struct Run {
    /// Latencies of the requests completed in the window, sorted.
    lat: Vec<Duration>,
    secs: f64,
    /// CPU seconds of the proxy process in the window (the relay's threads for the relay).
    proxy_cpu: Option<f64>,
    /// The same by thread name (living threads only).
    proxy_threads: BTreeMap<String, f64>,
    /// Context switches of the proxy's threads in the window.
    proxy_switches: Option<u64>,
    /// CPU seconds of this process's threads (upstream, relay, client) in the window.
    bench_cpu: [f64; 3],
    /// The proxy's peak RSS from the connections' opening to the window's end, bytes.
    proxy_peak: Option<u64>,
    /// CPUs that other work on the machine used in the window, on average.
    others: f64,
}

impl Run {
    fn rate(&self) -> f64 {
        self.lat.len() as f64 / self.secs
    }

    fn per_req_us(&self, cpu: f64) -> f64 {
        cpu * 1e6 / self.lat.len().max(1) as f64
    }
}

/// `conns` keep-alive connections by `via` under `load`: warm-up, then `secs` measured.
#[allow(clippy::too_many_arguments)]
fn measure(
    rt: &Runtime,
    client: &Arc<Client>,
    via: Via,
    all: &[&Proc],
    proxy: Option<&Proc>,
    conns: usize,
    load: Load,
    warmup: Duration,
    secs: f64,
) -> Run {
    if let Some(p) = proxy {
        p.reset_peak();
    }
    rt.block_on(async {
        let mut senders = Vec::new();
        for _ in 0..conns {
            senders.push(client.open(via).await);
        }
        let measuring = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let start = tokio::time::Instant::now();
        let mut tasks = Vec::new();
        for (i, mut s) in senders.into_iter().enumerate() {
            let (measuring, stop) = (measuring.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::with_capacity(4096);
                let mut pacer = load.pacer(start, i, conns);
                while !stop.load(Ordering::Relaxed) {
                    let late = match &mut pacer {
                        Some(p) => p.next().await,
                        None => Duration::ZERO,
                    };
                    let d = late + fetch(&mut s, via).await;
                    if measuring.load(Ordering::Relaxed) {
                        lat.push(d);
                    }
                }
                lat
            }));
        }
        tokio::time::sleep(warmup).await;
        let proxy_before = proxy.map(Proc::cpu);
        let threads_before = proxy.map(|p| threads_cpu(&p.pid.to_string()));
        let switches_before = proxy.map(|p| switches(p.pid));
        let bench_before = bench_cpu();
        let (machine_before, ours_before) = (machine_busy(), ours_cpu(all));
        measuring.store(true, Ordering::Relaxed);
        let t = Instant::now();
        tokio::time::sleep(Duration::from_secs_f64(secs)).await;
        measuring.store(false, Ordering::Relaxed);
        let secs = t.elapsed().as_secs_f64();
        let others = ((machine_busy() - machine_before) - (ours_cpu(all) - ours_before)) / secs;
        let mut proxy_cpu = proxy.map(Proc::cpu).zip(proxy_before).map(|(a, b)| a - b);
        let proxy_threads = match (proxy, threads_before) {
            (Some(p), Some(before)) => delta(&threads_cpu(&p.pid.to_string()), &before),
            _ => BTreeMap::new(),
        };
        let proxy_switches = proxy
            .map(|p| switches(p.pid))
            .zip(switches_before)
            .map(|(a, b)| a.saturating_sub(b));
        let bench_after = bench_cpu();
        let bench_cpu: [f64; 3] = std::array::from_fn(|k| bench_after[k] - bench_before[k]);
        if via == Via::Relay {
            proxy_cpu = Some(bench_cpu[1]);
        }
        let proxy_peak = proxy.map(Proc::peak);
        stop.store(true, Ordering::Relaxed);
        let mut lat = Vec::new();
        for t in tasks {
            lat.extend(t.await.unwrap());
        }
        lat.sort();
        Run {
            lat,
            secs,
            proxy_cpu,
            proxy_threads,
            proxy_switches,
            bench_cpu,
            proxy_peak,
            others: others.max(0.0),
        }
    })
}

// ---- new connections ---------------------------------------------------------------------------

/// Per path: (TCP + CONNECT, TLS handshake, first request to its full response, total) of `n`
/// new connections, interleaved across the paths; and the CPU seconds each proxy used.
fn new_connections(
    rt: &Runtime,
    client: &Arc<Client>,
    procs: &[Option<&Proc>; PATHS],
    n: usize,
) -> ([[Vec<Duration>; 4]; PATHS], [Option<f64>; PATHS]) {
    let mut out: [[Vec<Duration>; 4]; PATHS] = Default::default();
    let once = |via: Via| async move {
        let t0 = Instant::now();
        let (io, connect, handshake) = client.session(via).await;
        let t2 = Instant::now();
        let mut send = h1(io).await;
        fetch(&mut send, via).await;
        let t3 = Instant::now();
        [connect, handshake, t3 - t2, t3 - t0]
    };
    rt.block_on(async {
        // Warm the gates' certificate cache and upstream pool.
        for _ in 0..20 {
            for via in Via::ALL {
                once(via).await;
            }
        }
    });
    let cpu_before = procs.map(|p| p.map(Proc::cpu));
    let relay_before = bench_cpu()[1];
    rt.block_on(async {
        for i in 0..n {
            for k in 0..PATHS {
                let via = Via::ALL[(i + k) % PATHS];
                let stages = once(via).await;
                for (s, d) in stages.into_iter().enumerate() {
                    out[via.idx()][s].push(d);
                }
            }
        }
    });
    let mut cpu: [Option<f64>; PATHS] = std::array::from_fn(|k| {
        procs[k]
            .map(Proc::cpu)
            .zip(cpu_before[k])
            .map(|(a, b)| a - b)
    });
    cpu[Via::Relay.idx()] = Some(bench_cpu()[1] - relay_before);
    for v in out.iter_mut() {
        for s in v.iter_mut() {
            s.sort();
        }
    }
    (out, cpu)
}

// ---- held requests -----------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HoldMode {
    /// One HTTP/1.1 connection (tunnel, TLS session) per held request.
    H1,
    /// One HTTP/2 connection per agent, its 100 held requests as streams.
    H2,
}

struct Held {
    mode: HoldMode,
    conns: usize,
    rss_start: u64,
    rss_conns: u64,
    rss_held: u64,
    peak: u64,
    threads: u64,
    secs_to_hold: f64,
}

fn issue(k: usize, j: usize, absolute: bool) -> Request<Full<Bytes>> {
    let body = format!("{{\"title\":\"held-{k}-{j}\",\"body\":\"bench\"}}");
    let b = if absolute {
        Request::post(format!("https://{HOST}/repos/acme/api/issues"))
    } else {
        Request::post("/repos/acme/api/issues").header("host", HOST)
    };
    b.header("authorization", format!("Bearer {GITHUB_PLACEHOLDER}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

/// A fresh gate (the shipped policy, which steps up `github.issues.create`), `HELD` requests
/// held in it, its RSS before and after.
fn held(rt: &Runtime, base: &Path, upstream: &Upstream, ca: &TestCa, mode: HoldMode) -> Held {
    let gate = Gate::start(
        &format!("gate-held-{mode:?}"),
        base,
        upstream.addr,
        ca,
        agentgate::app::DEFAULT_POLICY,
    );
    std::thread::sleep(Duration::from_millis(500));
    let rss_start = gate.proc.rss();
    let (proxy, gate_ca) = (gate.proxy, gate.ca.clone());
    let alpn: &[u8] = match mode {
        HoldMode::H1 => b"http/1.1",
        HoldMode::H2 => b"h2",
    };
    let cfg = tls_config(gate_ca, &[alpn], false);
    let per_agent = match mode {
        HoldMode::H1 => PER_AGENT,
        HoldMode::H2 => 1,
    };
    enum Conn {
        H1(http1::SendRequest<Full<Bytes>>),
        H2(http2::SendRequest<Full<Bytes>>),
    }
    let conns: Vec<(usize, Conn)> = rt.block_on(async {
        let opening = Arc::new(tokio::sync::Semaphore::new(64));
        let mut tasks = Vec::new();
        for k in 0..AGENTS {
            for _ in 0..per_agent {
                let (opening, cfg) = (opening.clone(), cfg.clone());
                tasks.push(tokio::spawn(async move {
                    let _p = opening.acquire().await.unwrap();
                    let auth = proxy_auth(&agent_name(k), &agent_token(k));
                    let io = tls(
                        connect(proxy, &format!("{HOST}:443"), Some(&auth)).await,
                        &cfg,
                    )
                    .await;
                    let conn = match mode {
                        HoldMode::H1 => {
                            let (send, conn) = http1::handshake(TokioIo::new(io)).await.unwrap();
                            tokio::spawn(async move {
                                let _ = conn.await;
                            });
                            Conn::H1(send)
                        }
                        HoldMode::H2 => {
                            let (send, conn) =
                                http2::handshake(TokioExecutor::new(), TokioIo::new(io))
                                    .await
                                    .unwrap();
                            tokio::spawn(async move {
                                let _ = conn.await;
                            });
                            Conn::H2(send)
                        }
                    };
                    (k, conn)
                }));
            }
        }
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    });
    let n_conns = conns.len();
    std::thread::sleep(Duration::from_secs(1));
    let rss_conns = gate.proc.rss();
    let t = Instant::now();
    let (held_now, tasks) = rt.block_on(async {
        let mut next = [0usize; AGENTS];
        let mut tasks = Vec::with_capacity(HELD);
        for (k, c) in conns {
            match c {
                Conn::H1(mut send) => {
                    let j = next[k];
                    next[k] += 1;
                    tasks.push(tokio::spawn(async move {
                        // The gate is stopped with the request held: an error is expected.
                        let _ = send.send_request(issue(k, j, false)).await;
                    }));
                }
                Conn::H2(send) => {
                    for j in 0..PER_AGENT {
                        let mut send = send.clone();
                        tasks.push(tokio::spawn(async move {
                            let _ = send.send_request(issue(k, j, true)).await;
                        }));
                    }
                }
            }
        }
        let mut held = 0;
        for _ in 0..600 {
            held = gate.held().await;
            if held >= HELD as i64 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        (held, tasks)
    });
    assert_eq!(held_now, HELD as i64, "the gate holds {held_now}");
    let secs_to_hold = t.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(1));
    let out = Held {
        mode,
        conns: n_conns,
        rss_start,
        rss_conns,
        rss_held: gate.proc.rss(),
        peak: gate.proc.peak(),
        threads: gate.proc.threads(),
        secs_to_hold,
    };
    drop(gate);
    rt.block_on(async {
        for t in tasks {
            let _ = t.await;
        }
    });
    out
}

// ---- reporting ---------------------------------------------------------------------------------

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1e3)
}

fn us(d: Duration) -> String {
    format!("{:.0}", d.as_secs_f64() * 1e6)
}

fn mb(b: u64) -> String {
    format!("{:.1}", b as f64 / 1e6)
}

fn added_us(a: Duration, b: Duration) -> f64 {
    (a.as_secs_f64() - b.as_secs_f64()) * 1e6
}

/// The machine's 1, 5 and 15 minute load averages.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn leaf_issuer(der: &[u8]) -> String {
    x509_parser::parse_x509_certificate(der)
        .map(|(_, c)| c.issuer().to_string())
        .unwrap_or_else(|_| "?".into())
}

fn fs_type(dir: &Path) -> String {
    Command::new("df")
        .arg("-T")
        .arg(dir)
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| {
            let line = s.lines().nth(1)?.to_string();
            let f: Vec<&str> = line.split_whitespace().collect();
            Some(format!("{} on {}", f.get(1)?, f.first()?))
        })
        .unwrap_or_else(|| "?".into())
}

fn main() {
    let (mitmdump_path, mitm_version) = mitmdump();
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let secs: f64 = args.first().and_then(|a| a.parse().ok()).unwrap_or(5.0);
    let base: PathBuf = args
        .get(1)
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let warmup = Duration::from_secs(1);
    let started = Instant::now();
    let load_start = loadavg();

    let upstream_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("upstream")
        .enable_all()
        .build()
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let relay_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("relay")
        .enable_all()
        .build()
        .unwrap();
    let ca = TestCa::new("compare");
    let up = upstream_rt.block_on(Upstream::start(&ca));
    let relay = relay_rt.block_on(start_relay(up.addr));
    let gate = Gate::start(
        "gate-allow",
        &base,
        up.addr,
        &ca,
        agentgate::app::DEFAULT_POLICY,
    );
    let tunnel_policy = TUNNEL_POLICY.replace("PORT", &up.addr.port().to_string());
    let tunnel = Gate::start("gate-tunnel", &base, up.addr, &ca, &tunnel_policy);
    let mitm = Mitm::start(&mitmdump_path, &ca);
    std::thread::sleep(Duration::from_millis(500));
    let idle_rss = [
        None,
        Some(gate.proc.rss()),
        Some(tunnel.proc.rss()),
        Some(mitm.proc.rss()),
        None,
    ];
    let client = Arc::new(Client {
        upstream: up.addr,
        gate: gate.proxy,
        tunnel_gate: tunnel.proxy,
        mitm: mitm.addr,
        relay,
        upstream_tls: tls_config(ca.cert_der.clone(), common::H1, false),
        gate_tls: tls_config(gate.ca.clone(), common::H1, false),
        mitm_tls: tls_config(mitm.ca.clone(), common::H1, false),
        auth: proxy_auth(&agent_name(0), &agent_token(0)),
    });
    let all_procs = [&gate.proc, &tunnel.proc, &mitm.proc];
    let procs: [Option<&Proc>; PATHS] = [
        None,
        Some(&gate.proc),
        Some(&tunnel.proc),
        Some(&mitm.proc),
        None,
    ];

    println!("== comparison: direct, AgentGate allow path, AgentGate blind tunnel, mitmproxy");
    println!(
        "load average at start {load_start}; {} CPUs; {secs} s per measurement after {} s of \
         warm-up",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        warmup.as_secs()
    );
    println!("mitmdump: {} ({mitm_version})", mitmdump_path.display());
    println!(
        "gate data directories: {} ({}), {}",
        gate.dir.path().display(),
        fs_type(gate.dir.path()),
        tunnel.dir.path().display()
    );
    println!("upstream: https://{HOST} at {} (h2, http/1.1)", up.addr);

    // Each path does what it claims: the certificate its client saw.
    let leaves: Vec<Vec<u8>> = rt.block_on(async {
        let mut out = Vec::new();
        for via in Via::ALL {
            let (io, _, _) = client.session(via).await;
            let leaf = io.get_ref().1.peer_certificates().unwrap()[0].to_vec();
            let mut send = h1(io).await;
            fetch(&mut send, via).await;
            out.push(leaf);
        }
        out
    });
    println!();
    println!("certificates the client saw (each client trusts one CA only):");
    for via in Via::ALL {
        println!(
            "  {:<24} leaf issued by {}{}",
            via.label(),
            leaf_issuer(&leaves[via.idx()]),
            if leaves[via.idx()] == leaves[0] {
                " (the upstream's own certificate)"
            } else {
                ""
            }
        );
    }
    assert_eq!(
        leaves[Via::Tunnel.idx()],
        leaves[0],
        "the tunnel's client must see the upstream's own certificate"
    );
    assert_eq!(
        leaves[Via::Relay.idx()],
        leaves[0],
        "the relay does not decrypt"
    );
    assert_ne!(
        leaves[Via::Gate.idx()],
        leaves[0],
        "the gate must intercept"
    );
    assert_ne!(
        leaves[Via::Mitm.idx()],
        leaves[0],
        "mitmproxy must intercept"
    );
    assert_eq!(
        up.seen(Via::Gate, AUTH_REAL),
        1,
        "the upstream did not get the vault's token from the gate"
    );

    // Closed loop: throughput, CPU, peak RSS.
    let mut closed: BTreeMap<(usize, usize), Run> = BTreeMap::new();
    for conns in CONNS {
        for via in Via::ALL {
            mitm.proc.assert_alive();
            let r = measure(
                &rt,
                &client,
                via,
                &all_procs,
                procs[via.idx()],
                conns,
                Load::Closed,
                warmup,
                secs,
            );
            eprintln!(
                "{}, {conns} conn(s), {}: {:.0}/s (load average {}; other work {:.2} CPUs)",
                Load::Closed.label(),
                via.label(),
                r.rate(),
                loadavg(),
                r.others
            );
            closed.insert((conns, via.idx()), r);
        }
    }
    let load_closed = loadavg();

    // Paced: half of mitmproxy's closed-loop throughput at each connection count, and 1,000/s
    // at 32 connections.
    let half = |conns: usize| {
        let r = closed[&(conns, Via::Mitm.idx())].rate() * 0.5;
        ((r / 10.0).floor() * 10.0).max(10.0) as u32
    };
    let mut loads: Vec<(usize, u32)> = CONNS.iter().map(|&c| (c, half(c))).collect();
    loads.push((32, ALLOW_PATH_RATE));
    let mut paced: BTreeMap<(usize, u32, usize), Run> = BTreeMap::new();
    for &(conns, rate) in &loads {
        for via in Via::ALL {
            let r = measure(
                &rt,
                &client,
                via,
                &all_procs,
                procs[via.idx()],
                conns,
                Load::Paced(rate),
                warmup,
                secs,
            );
            eprintln!(
                "{}, {conns} conn(s), {}: p50 {} ms (load average {}; other work {:.2} CPUs)",
                Load::Paced(rate).label(),
                via.label(),
                ms(pct(&r.lat, 50.0)),
                loadavg(),
                r.others
            );
            paced.insert((conns, rate, via.idx()), r);
        }
    }
    let load_paced = loadavg();

    // New connections.
    let (newc, newc_cpu) = new_connections(&rt, &client, &procs, NEW_CONNS);
    let load_newc = loadavg();

    // Each path did what it claims: the token the upstream got, the audit records.
    let sent = |v: Via| SENT[v.idx()].load(Ordering::Relaxed);
    let opened = |v: Via| OPENED[v.idx()].load(Ordering::Relaxed);
    let (gate_records, gate_chain) = rt.block_on(gate.audit_verify());
    let (tunnel_records, tunnel_chain) = rt.block_on(tunnel.audit_verify());
    mitm.proc.assert_alive();
    let end_rss = [gate.proc.rss(), tunnel.proc.rss(), mitm.proc.rss()];

    // Held requests, each in a fresh gate.
    let held_runs = [
        held(&rt, &base, &up, &ca, HoldMode::H1),
        held(&rt, &base, &up, &ca, HoldMode::H2),
    ];
    let load_end = loadavg();

    // ---- the report ----
    println!();
    println!("checks:");
    for via in Via::ALL {
        println!(
            "  {:<24} sent {:>7} requests on {:>5} connections; the upstream saw {:>7} with the \
             vault token, {:>7} with the placeholder, {} other",
            via.label(),
            sent(via),
            opened(via),
            up.seen(via, AUTH_REAL),
            up.seen(via, AUTH_PLACEHOLDER),
            up.seen(via, AUTH_OTHER),
        );
    }
    println!(
        "  allow gate audit: {gate_records} records for {} requests (2 each: decision, outcome); \
         chain verifies: {gate_chain}",
        sent(Via::Gate)
    );
    println!(
        "  tunnel gate audit: {tunnel_records} records for {} tunnels (1 each: the net.connect \
         decision); chain verifies: {tunnel_chain}",
        opened(Via::Tunnel)
    );
    println!(
        "  RSS after all the above: allow gate {} MB (its audit store holds {gate_records} \
         records), tunnel gate {} MB, mitmdump {} MB",
        mb(end_rss[0]),
        mb(end_rss[1]),
        mb(end_rss[2])
    );
    assert_eq!(up.seen(Via::Gate, AUTH_REAL), sent(Via::Gate));
    assert_eq!(
        up.seen(Via::Gate, AUTH_PLACEHOLDER) + up.seen(Via::Gate, AUTH_OTHER),
        0
    );
    for via in [Via::Direct, Via::Tunnel, Via::Mitm, Via::Relay] {
        assert_eq!(up.seen(via, AUTH_PLACEHOLDER), sent(via), "{}", via.label());
        assert_eq!(up.seen(via, AUTH_REAL) + up.seen(via, AUTH_OTHER), 0);
    }
    assert!(gate_chain && tunnel_chain, "an audit chain does not verify");
    assert_eq!(
        gate_records,
        2 * sent(Via::Gate),
        "allow gate audit records"
    );
    assert_eq!(
        tunnel_records,
        opened(Via::Tunnel),
        "tunnel gate audit records"
    );

    println!();
    println!("== closed loop (each connection sends as soon as it has its answer)");
    println!(
        "| path | conns | req/s | p50 ms | p99 ms | proxy CPU us/req | bench CPU us/req \
         (upstream + client) | proxy peak RSS MB (idle) | other work, CPUs |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for conns in CONNS {
        for via in Via::ALL {
            let r = &closed[&(conns, via.idx())];
            println!(
                "| {} | {conns} | {:.0} | {} | {} | {} | {:.0} ({:.0} + {:.0}) | {} | {:.2} |",
                via.label(),
                r.rate(),
                ms(pct(&r.lat, 50.0)),
                ms(pct(&r.lat, 99.0)),
                r.proxy_cpu
                    .map_or("-".into(), |c| format!("{:.0}", r.per_req_us(c))),
                r.per_req_us(r.bench_cpu[0] + r.bench_cpu[2]),
                r.per_req_us(r.bench_cpu[0]),
                r.per_req_us(r.bench_cpu[2]),
                r.proxy_peak.map_or("-".into(), |p| format!(
                    "{} ({})",
                    mb(p),
                    mb(idle_rss[via.idx()].unwrap_or(0))
                )),
                r.others,
            );
        }
    }

    println!();
    println!(
        "proxy CPU per request by thread name, closed loop (us; living threads), and the proxy's \
         context switches per request:"
    );
    for conns in CONNS {
        for via in [Via::Gate, Via::Tunnel, Via::Mitm] {
            let r = &closed[&(conns, via.idx())];
            let mut parts: Vec<(&String, &f64)> = r.proxy_threads.iter().collect();
            parts.sort_by(|a, b| b.1.total_cmp(a.1));
            let parts: Vec<String> = parts
                .iter()
                .map(|(k, v)| format!("{k} {:.0}", r.per_req_us(**v)))
                .collect();
            println!(
                "  {} at {conns}: {}; {:.1} context switches per request",
                via.label(),
                parts.join(", "),
                r.proxy_switches.unwrap_or(0) as f64 / r.lat.len().max(1) as f64
            );
        }
    }

    println!();
    println!(
        "== paced (all connections together send N requests a second, evenly spread); added = \
         path minus direct in the same load"
    );
    println!(
        "| path | conns | target/s | achieved/s | p50 ms | p99 ms | added p50 us | added p99 us \
         | other work, CPUs |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for &(conns, rate) in &loads {
        let d = &paced[&(conns, rate, 0)];
        for via in Via::ALL {
            let r = &paced[&(conns, rate, via.idx())];
            let (p50, p99) = (pct(&r.lat, 50.0), pct(&r.lat, 99.0));
            let added = |p: f64| {
                if via == Via::Direct {
                    "-".to_string()
                } else {
                    format!("{:+.0}", added_us(pct(&r.lat, p), pct(&d.lat, p)))
                }
            };
            println!(
                "| {} | {conns} | {rate} | {:.0}{} | {} | {} | {} | {} | {:.2} |",
                via.label(),
                r.rate(),
                if r.rate() < 0.95 * rate as f64 {
                    " (not sustained)"
                } else {
                    ""
                },
                ms(p50),
                ms(p99),
                added(50.0),
                added(99.0),
                r.others,
            );
        }
    }

    println!();
    println!(
        "== new connection: TCP connect (+ CONNECT), full TLS handshake, first GET to its full \
         response ({NEW_CONNS} per path, interleaved; us)"
    );
    println!(
        "| path | total p50 | total p99 | added p50 | TCP+CONNECT p50 | TLS p50 | first response \
         p50 | proxy CPU per connection |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for via in Via::ALL {
        let s = &newc[via.idx()];
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            via.label(),
            us(pct(&s[3], 50.0)),
            us(pct(&s[3], 99.0)),
            if via == Via::Direct {
                "-".to_string()
            } else {
                format!("{:+.0}", added_us(pct(&s[3], 50.0), pct(&newc[0][3], 50.0)))
            },
            us(pct(&s[0], 50.0)),
            us(pct(&s[1], 50.0)),
            us(pct(&s[2], 50.0)),
            newc_cpu[via.idx()]
                .map_or("-".into(), |c| format!("{:.0}", c * 1e6 / NEW_CONNS as f64)),
        );
    }

    println!();
    println!(
        "== memory per held request: {HELD} step-up requests (POST /repos/acme/api/issues, the \
         shipped policy's default step_up) held in a fresh gate ({AGENTS} agents x {PER_AGENT})"
    );
    println!(
        "| mode | connections | RSS at start MB | with connections open | with {HELD} held | \
         per held request over start KB | over open connections KB | peak MB | threads |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for h in &held_runs {
        println!(
            "| {} | {} | {} | {} | {} | {:.1} | {:.1} | {} | {} |",
            match h.mode {
                HoldMode::H1 => "HTTP/1.1, a connection each",
                HoldMode::H2 => "HTTP/2, 100 streams a connection",
            },
            h.conns,
            mb(h.rss_start),
            mb(h.rss_conns),
            mb(h.rss_held),
            h.rss_held.saturating_sub(h.rss_start) as f64 / HELD as f64 / 1e3,
            h.rss_held.saturating_sub(h.rss_conns) as f64 / HELD as f64 / 1e3,
            mb(h.peak),
            h.threads,
        );
    }
    for h in &held_runs {
        println!(
            "{:?}: all {HELD} held {:.1} s after the first was sent",
            h.mode, h.secs_to_hold
        );
    }
    println!("mitmproxy has no step-up (no policy, nothing to hold): no figure for it.");

    // Goals.
    let tput = |via: Via, c: usize| closed[&(c, via.idx())].rate();
    let ratio32 = tput(Via::Gate, 32) / tput(Via::Mitm, 32);
    let ratio1 = tput(Via::Gate, 1) / tput(Via::Mitm, 1);
    let added_p50 = |conns: usize, rate: u32, via: Via| {
        added_us(
            pct(&paced[&(conns, rate, via.idx())].lat, 50.0),
            pct(&paced[&(conns, rate, 0)].lat, 50.0),
        )
    };
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    let data_fs = fs_type(gate.dir.path());
    let durable = if data_fs.starts_with("tmpfs") {
        "audit on tmpfs: NOT durable, for attribution only"
    } else {
        "durable audit"
    };
    println!();
    println!("== goals");
    println!(
        "1. allow-path throughput >= 20x mitmproxy's: 32 connections {:.0} vs {:.0}/s = {ratio32:.1}x \
         ({}); 1 connection {:.0} vs {:.0}/s = {ratio1:.1}x ({})",
        tput(Via::Gate, 32),
        tput(Via::Mitm, 32),
        verdict(ratio32 >= 20.0),
        tput(Via::Gate, 1),
        tput(Via::Mitm, 1),
        verdict(ratio1 >= 20.0),
    );
    for &(conns, rate) in loads.iter().filter(|(c, _)| *c == 32) {
        let a = added_p50(conns, rate, Via::Gate);
        println!(
            "2. allow path ({durable}, {data_fs}) added p50 <= 500 us at 32 connections, paced \
             {rate}/s: {a:+.0} us ({})",
            verdict(a <= 500.0)
        );
    }
    for &(conns, rate) in &loads {
        let a = added_p50(conns, rate, Via::Tunnel);
        println!(
            "3. blind tunnel added p50 <= 50 us, {conns} connection(s), paced {rate}/s: {a:+.0} us \
             ({}; the bare TCP relay in the same load: {:+.0} us)",
            verdict(a <= 50.0),
            added_p50(conns, rate, Via::Relay)
        );
    }
    println!();
    println!(
        "load average: start {load_start}; after the closed loops {load_closed}; after the paced \
         loads {load_paced}; after the new connections {load_newc}; end {load_end}; took {:.0} s",
        started.elapsed().as_secs_f64()
    );
    drop(mitm);
    drop(tunnel);
    drop(gate);
}
