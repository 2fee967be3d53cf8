//! The whole allow path under load (issue 6): 32 concurrent keep-alive HTTP/1.1 connections,
//! each sending `GET /repos/acme/api/issues?state=open&per_page=30` with the GitHub
//! placeholder, through the gate (CONNECT tunnel, TLS to the gate, classified as
//! `github.issues.list-for-repo`, decided by the shipped `policies/default.policy`, decision
//! record made durable by the audit's group commit, placeholder swapped for the token of the
//! `env` vault, the default backend, forwarded over the gate's pooled upstream connection)
//! against the same 32 connections direct to the same local upstream. Targets: added latency
//! <= 0.5 ms at p50; >= 10,000 durable decision records a second.
//!
//! Printed:
//! - per load (closed loop: every connection sends its next request as soon as the last
//!   answer is read; paced: all connections together send N requests a second, evenly
//!   spread, each on its own staggered schedule, `common::Pacer`)
//!   and per path (direct; gate with its data directory on the disk; gate with it on tmpfs,
//!   where `fdatasync` costs nothing): requests a second, latency p50 / p90 / p99 / mean, the
//!   added latency at each, and the request leg's p50 (client send -> upstream handler,
//!   timestamped by the upstream);
//! - one connection, one request at a time, for those paths and for a gate whose vault is a
//!   file (`[vault] backend = "file"`, read on every fetch);
//! - the parts of the allow path timed alone: one durable decision (`Audit::decision` with
//!   nobody to share the commit), its two steps (sled's `flush`, then `fdatasync` of the log),
//!   the raw `fdatasync` of a 1 KiB append, a token fetch from each vault backend;
//! - that every request through a gate left its decision and outcome records (2 per request)
//!   and that each chain verifies.
//!
//! Every socket is on 127.0.0.1. Run: `cargo bench --bench allow_path` (`-- SECS` for SECS
//! seconds per measurement instead of 4; `-- SECS DIR` to put the disk-side data directory in
//! DIR instead of the system temp dir). The bench re-executes itself once with
//! `AGENTGATE_GITHUB_TOKEN` set, for the env vault.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/support/mod.rs"]
mod support;

mod common;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{HOST, Load, TARGET, h1, pct, tcp, tls, tls_config};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use support::{GITHUB_PLACEHOLDER, REAL_GITHUB_TOKEN, TempDir, TestCa, TestGate};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tokio_rustls::TlsAcceptor;

const CONNS: usize = 32;
const PATH: &str = "/repos/acme/api/issues?state=open&per_page=30";
const BODY: &[u8] = b"[]";
/// The client writes the time it sent a request (ns since `epoch()`) in this header; the
/// upstream subtracts it from the time the request reached its handler.
const SENT: &str = "x-bench-sent";

type ReqBody = common::ReqBody;

fn epoch() -> Instant {
    static E: OnceLock<Instant> = OnceLock::new();
    *E.get_or_init(Instant::now)
}

/// The upstream: HTTPS (h2 and http/1.1, like api.github.com), answers `[]`, and keeps the
/// request leg of every request, and the `authorization` values it saw.
struct Upstream {
    addr: SocketAddr,
    legs: Arc<Mutex<Vec<Duration>>>,
    auth: Arc<Mutex<Vec<String>>>,
}

impl Upstream {
    async fn start(ca: &TestCa) -> Upstream {
        let cfg = Arc::new(ca.server_config(&[HOST], &[b"h2", b"http/1.1"]));
        let acceptor = TlsAcceptor::from(cfg);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let legs = Arc::new(Mutex::new(Vec::with_capacity(1 << 20)));
        let auth = Arc::new(Mutex::new(Vec::new()));
        let (l, a) = (legs.clone(), auth.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                stream.set_nodelay(true).unwrap();
                let (acceptor, l, a) = (acceptor.clone(), l.clone(), a.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let svc =
                        hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                            let (l, a) = (l.clone(), a.clone());
                            async move {
                                let now = epoch().elapsed();
                                if let Some(sent) = req
                                    .headers()
                                    .get(SENT)
                                    .and_then(|v| v.to_str().ok())
                                    .and_then(|v| v.parse::<u64>().ok())
                                {
                                    l.lock()
                                        .unwrap()
                                        .push(now.saturating_sub(Duration::from_nanos(sent)));
                                }
                                if let Some(v) = req.headers().get("authorization") {
                                    let mut a = a.lock().unwrap();
                                    if a.len() < 16 {
                                        a.push(v.to_str().unwrap_or("").to_string());
                                    }
                                }
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
        Upstream { addr, legs, auth }
    }

    fn take_legs(&self) -> Vec<Duration> {
        std::mem::take(&mut *self.legs.lock().unwrap())
    }
}

/// A gate with the shipped default policy and its data directory in `data`.
struct GateSide {
    name: &'static str,
    gate: TestGate,
    /// Holds the data directory (outside the gate's scratch directory).
    _data: TempDir,
    data_dir: PathBuf,
}

impl GateSide {
    /// `file_vault`: keep the test support's file vault; else the env vault.
    async fn start(
        name: &'static str,
        ca: &TestCa,
        up: SocketAddr,
        data: TempDir,
        file_vault: bool,
    ) -> GateSide {
        let data_dir = data.path().join("data");
        let dd = data_dir.clone();
        let gate = TestGate::start(ca, &[(HOST, up)], move |config| {
            TestGate::only_policy(config, agentgate::app::DEFAULT_POLICY);
            config.data_dir = dd;
            if !file_vault {
                config.vault.source = agentgate::config::VaultSource::Env;
            }
        })
        .await;
        GateSide {
            name,
            gate,
            _data: data,
            data_dir,
        }
    }

    /// `GET /api/audit/verify` on the gate's dashboard: the records walked, and whether the
    /// chain holds.
    async fn audit_verify(&self) -> (u64, bool) {
        let token = std::fs::read_to_string(self.data_dir.join("reviewer.token")).unwrap();
        let mut s = TcpStream::connect(self.gate.gate.dashboard_addr)
            .await
            .unwrap();
        // The dashboard answers only to its own address (DNS-rebinding guard).
        let host = self.gate.gate.dashboard_addr;
        s.write_all(
            format!(
                "GET /api/audit/verify HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
                token.trim()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        let mut raw = String::new();
        s.read_to_string(&mut raw).await.unwrap();
        let v = support::json_body(&raw);
        (v["records"].as_u64().unwrap_or(0), v["broken"].is_null())
    }
}

/// Where the client sends: straight to the upstream, or through a gate.
#[derive(Clone, Copy)]
enum Route {
    Direct(SocketAddr),
    Gate(SocketAddr),
}

struct Client {
    direct: Arc<rustls::ClientConfig>,
    gate: Arc<rustls::ClientConfig>,
}

impl Client {
    async fn connect(&self, path: Route) -> http1::SendRequest<ReqBody> {
        match path {
            Route::Direct(a) => h1(tls(tcp(a).await, &self.direct).await).await,
            Route::Gate(g) => h1(tls(common::tunnel(g, TARGET).await, &self.gate).await).await,
        }
    }
}

/// One request, read in full; its latency.
async fn fetch(s: &mut http1::SendRequest<ReqBody>) -> Duration {
    s.ready().await.unwrap();
    let t = Instant::now();
    let sent = (t - epoch()).as_nanos() as u64;
    let req = Request::get(PATH)
        .header(http::header::HOST, HOST)
        .header("accept", "application/vnd.github+json")
        .header("user-agent", "octokit-rest.js/21.0.2 octokit-core.js/6.1.2")
        .header("x-github-api-version", "2022-11-28")
        .header("authorization", format!("Bearer {GITHUB_PLACEHOLDER}"))
        .header(SENT, sent)
        .body(Full::new(Bytes::new()).boxed())
        .unwrap();
    let resp = s.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], BODY);
    t.elapsed()
}

struct Run {
    lat: Vec<Duration>,
    /// Request legs (client send -> upstream handler) of the measured window, sorted.
    legs: Vec<Duration>,
    secs: f64,
    /// Requests sent, warm-up included.
    sent: u64,
    /// CPU seconds each group of this process's threads used in the measured window.
    cpu: BTreeMap<String, f64>,
}

/// CPU seconds (user + system) used so far by this process's threads, by thread name: the
/// server runtime's threads (`server`: the gates and the upstream), the bench's own thread
/// (the client), `audit-commit`, sled's threads, and the rest.
fn thread_cpu() -> BTreeMap<String, f64> {
    let tick = 100.0; // USER_HZ on Linux
    let mut out = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for t in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(t.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = &stat[open + 1..close];
        let f: Vec<&str> = stat[close + 2..].split(' ').collect();
        // Fields 14 and 15 of stat (utime, stime) are 11 and 12 after the state field.
        let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
            + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
        let group = if comm == "server" || comm == "audit-commit" {
            comm.to_string()
        } else if comm.starts_with("sled") || comm == "log flusher" {
            "sled".to_string()
        } else if comm.starts_with("allow_path") || comm == "main" {
            "client".to_string()
        } else {
            "other".to_string()
        };
        *out.entry(group).or_insert(0.0) += ticks / tick;
    }
    out
}

fn cpu_delta(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
) -> BTreeMap<String, f64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .collect()
}

/// `conns` connections on `path` under `load`: warm-up, then `secs` measured.
#[allow(clippy::too_many_arguments)]
fn measure(
    rt: &Runtime,
    up: &Upstream,
    client: &Client,
    path: Route,
    conns: usize,
    load: Load,
    warmup: Duration,
    secs: f64,
) -> Run {
    rt.block_on(async {
        let mut senders = Vec::new();
        for _ in 0..conns {
            senders.push(client.connect(path).await);
        }
        let measuring = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let start = tokio::time::Instant::now();
        let mut tasks = Vec::new();
        for (i, mut s) in senders.into_iter().enumerate() {
            let (measuring, stop) = (measuring.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::with_capacity(1 << 16);
                let mut sent = 0u64;
                let mut pacer = load.pacer(start, i, conns);
                while !stop.load(Ordering::Relaxed) {
                    let late = match &mut pacer {
                        Some(p) => p.next().await,
                        None => Duration::ZERO,
                    };
                    let d = late + fetch(&mut s).await;
                    sent += 1;
                    if measuring.load(Ordering::Relaxed) {
                        lat.push(d);
                    }
                }
                (lat, sent)
            }));
        }
        tokio::time::sleep(warmup).await;
        up.take_legs();
        let cpu_before = thread_cpu();
        measuring.store(true, Ordering::Relaxed);
        let t = Instant::now();
        tokio::time::sleep(Duration::from_secs_f64(secs)).await;
        measuring.store(false, Ordering::Relaxed);
        let secs = t.elapsed().as_secs_f64();
        let cpu = cpu_delta(&cpu_before, &thread_cpu());
        let legs = sorted(up.take_legs());
        stop.store(true, Ordering::Relaxed);
        let mut lat = Vec::new();
        let mut sent = 0;
        for t in tasks {
            let (l, n) = t.await.unwrap();
            lat.extend(l);
            sent += n;
        }
        lat.sort();
        Run {
            lat,
            legs,
            secs,
            sent,
            cpu,
        }
    })
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn mean(v: &[Duration]) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.iter().sum::<Duration>() / v.len() as u32
}

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1e3)
}

/// Durations of one durable decision at a time (a journal write and its `fdatasync`, through
/// the audit's commit thread with nobody to share it: the probe runs on a current-thread
/// runtime), on the filesystem of `dir`.
fn durable_record_alone(dir: &Path, n: usize) -> Vec<Duration> {
    use agentgate::actions::Action;
    use agentgate::audit::{Audit, DecisionRecord, Retention};
    use agentgate::policy::{Decision, Effect};
    let path = dir.join("probe-state");
    let db = sled::open(&path).unwrap();
    let audit = Audit::open(&db, &path, Retention::FOREVER).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut params = serde_json::Map::new();
    params.insert("owner".into(), "acme".into());
    params.insert("repo".into(), "acme/api".into());
    params.insert("state".into(), "open".into());
    params.insert("per_page".into(), 30.into());
    let action = Action {
        host: HOST.into(),
        method: "GET".into(),
        path: "/repos/acme/api/issues".into(),
        ..Action::new("github.issues.list-for-repo", params)
    };
    let decision = Decision {
        effect: Effect::Allow,
        action: action.name.clone(),
        rules: vec!["reads".into()],
        reason: String::new(),
        fired: Vec::new(),
    };
    let mut out = Vec::with_capacity(n);
    rt.block_on(async {
        for i in 0..n + 100 {
            let rec = DecisionRecord::new(
                i as i64,
                "bench",
                "req",
                "placeholder",
                &decision,
                std::slice::from_ref(&action),
            );
            let t = Instant::now();
            audit.decision(rec).await.unwrap();
            if i >= 100 {
                out.push(t.elapsed());
            }
        }
    });
    drop(audit);
    drop(db);
    let _ = std::fs::remove_dir_all(&path);
    out.sort();
    out
}

/// The two steps of the audit's commit, timed apart on the filesystem of `dir`: after a
/// 1 KiB insert, sled's `flush` (its log written with `sync_file_range`), then `fdatasync` of
/// the log file (what `SledSink::sync` does); and the raw `fdatasync` after appending 1 KiB
/// to a plain file.
fn commit_parts(dir: &Path, n: usize) -> [Vec<Duration>; 3] {
    use std::io::Write;
    let path = dir.join("probe-commit");
    let db = sled::open(&path).unwrap();
    let tree = db.open_tree("audit").unwrap();
    let log = std::fs::File::open(path.join("db")).unwrap();
    let plain_path = dir.join("probe-fdatasync");
    let mut plain = std::fs::File::create(&plain_path).unwrap();
    let block = vec![b'r'; 1024];
    let mut out: [Vec<Duration>; 3] = Default::default();
    for i in 0..n + 100 {
        tree.insert((i as u64).to_be_bytes(), block.as_slice())
            .unwrap();
        let t0 = Instant::now();
        tree.flush().unwrap();
        let t1 = Instant::now();
        log.sync_data().unwrap();
        let t2 = Instant::now();
        plain.write_all(&block).unwrap();
        let t3 = Instant::now();
        plain.sync_data().unwrap();
        let t4 = Instant::now();
        if i >= 100 {
            out[0].push(t1 - t0);
            out[1].push(t2 - t1);
            out[2].push(t4 - t3);
        }
    }
    drop((tree, db, log, plain));
    let _ = std::fs::remove_dir_all(&path);
    let _ = std::fs::remove_file(&plain_path);
    out.map(sorted)
}

/// Token fetches from a vault backend, one at a time.
fn vault_fetches(source: agentgate::config::VaultSource, n: usize) -> Vec<Duration> {
    let vault = agentgate::vault::build(&agentgate::config::VaultConfig {
        timeout: Duration::from_secs(5),
        source,
    })
    .unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut out = Vec::with_capacity(n);
    rt.block_on(async {
        for i in 0..n + 100 {
            let t = Instant::now();
            let token = vault
                .token(support::TEST_USER, agentgate::vault::Provider::Github)
                .await
                .unwrap();
            let d = t.elapsed();
            drop(token);
            if i >= 100 {
                out.push(d);
            }
        }
    });
    sorted(out)
}

fn fs_type(dir: &Path) -> String {
    std::process::Command::new("df")
        .arg("-T")
        .arg(dir)
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| {
            let line = s.lines().nth(1)?.to_string();
            let f: Vec<&str> = line.split_whitespace().collect();
            Some(format!("{} ({})", f.get(1)?, f.first()?))
        })
        .unwrap_or_else(|| "?".into())
}

/// The env vault reads the token from the process environment, which this process may not
/// change (no `unsafe`): without the variable, the bench runs itself again with it set.
const VAULT_VAR: &str = "AGENTGATE_GITHUB_TOKEN";

fn main() {
    if std::env::var(VAULT_VAR).ok().as_deref() != Some(REAL_GITHUB_TOKEN) {
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args(std::env::args_os().skip(1))
            .env(VAULT_VAR, REAL_GITHUB_TOKEN)
            .status()
            .unwrap();
        std::process::exit(status.code().unwrap_or(1));
    }
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let secs: f64 = args.first().and_then(|a| a.parse().ok()).unwrap_or(4.0);
    let disk_base: PathBuf = args
        .get(1)
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let tmpfs_base = PathBuf::from("/dev/shm");
    epoch();

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
    let ca = TestCa::new("allow-path");
    let (up, disk, tmpfs, file) = server_rt.block_on(async {
        let up = Upstream::start(&ca).await;
        let disk = GateSide::start(
            "gate, data on disk",
            &ca,
            up.addr,
            scratch(&disk_base, "disk"),
            false,
        )
        .await;
        let tmpfs = GateSide::start(
            "gate, data on tmpfs",
            &ca,
            up.addr,
            scratch(&tmpfs_base, "tmpfs"),
            false,
        )
        .await;
        let file = GateSide::start(
            "gate, tmpfs, file vault",
            &ca,
            up.addr,
            scratch(&tmpfs_base, "file"),
            true,
        )
        .await;
        (up, disk, tmpfs, file)
    });
    let direct_tls = tls_config(ca.cert_der.clone(), common::H1, false);
    let sides = [&disk, &tmpfs, &file];
    let clients: Vec<Client> = sides
        .iter()
        .map(|s| Client {
            direct: direct_tls.clone(),
            gate: tls_config(s.gate.ca_der(), common::H1, false),
        })
        .collect();
    let client = &clients[0];

    println!(
        "allow path: {CONNS} keep-alive HTTP/1.1 connections, GET {PATH} with the placeholder; \
         {secs} s per measurement after 1 s of warm-up"
    );
    for s in sides {
        println!(
            "{}: {} on {}",
            s.name,
            s.data_dir.display(),
            fs_type(&s.data_dir)
        );
    }
    println!(
        "{} CPUs; server runtime: 2 workers (the gates and the upstream); client: 1 thread",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    // The placeholder is swapped for the vault's token on the way through.
    let mut sent = [0u64; 3];
    for (k, s) in sides.iter().enumerate() {
        client_rt.block_on(async {
            let mut c = clients[k].connect(Route::Gate(s.gate.addr())).await;
            fetch(&mut c).await;
        });
        sent[k] += 1;
        let seen = up.auth.lock().unwrap().clone();
        assert_eq!(
            seen.last().map(String::as_str),
            Some(format!("Bearer {REAL_GITHUB_TOKEN}").as_str()),
            "the upstream did not get the vault token"
        );
    }
    up.take_legs();

    let direct = Route::Direct(up.addr);
    let warmup = Duration::from_secs(1);
    let mut cpu_rows: Vec<(&str, BTreeMap<String, f64>)> = Vec::new();
    println!();
    println!(
        "{:<13} {:<20} {:>6} {:>29} {:>29} {:>9}",
        "load",
        "path",
        "req/s",
        "p50 / p90 / p99 / mean ms",
        "added p50/p90/p99/mean ms",
        "req leg"
    );
    for load in [
        Load::Closed,
        Load::Paced(500),
        Load::Paced(1000),
        Load::Paced(2000),
    ] {
        let d = measure(&client_rt, &up, client, direct, CONNS, load, warmup, secs);
        row(load, "direct", &d, None);
        if let Load::Closed = load {
            cpu_rows.push(("direct", cpu_per_request(&d)));
        }
        for (k, s) in sides.iter().enumerate().take(2) {
            let g = measure(
                &client_rt,
                &up,
                &clients[k],
                Route::Gate(s.gate.addr()),
                CONNS,
                load,
                warmup,
                secs,
            );
            sent[k] += g.sent;
            row(load, s.name, &g, Some(&d));
            if let Load::Closed = load {
                cpu_rows.push((s.name, cpu_per_request(&g)));
            }
        }
    }
    println!();
    println!(
        "CPU per request in the closed-loop windows (us; `server` runs the gate and the upstream):"
    );
    for (name, groups) in &cpu_rows {
        let parts: Vec<String> = groups.iter().map(|(g, v)| format!("{g} {v:.0}")).collect();
        let total: f64 = groups.values().sum();
        println!("  {name:<20} total {total:.0}: {}", parts.join(", "));
    }

    // One connection, one request at a time.
    println!();
    println!("one connection, one request at a time:");
    let d = measure(
        &client_rt,
        &up,
        client,
        direct,
        1,
        Load::Closed,
        warmup,
        secs,
    );
    row(Load::Closed, "direct", &d, None);
    for (k, s) in sides.iter().enumerate() {
        let r = measure(
            &client_rt,
            &up,
            &clients[k],
            Route::Gate(s.gate.addr()),
            1,
            Load::Closed,
            warmup,
            secs,
        );
        sent[k] += r.sent;
        row(Load::Closed, s.name, &r, Some(&d));
    }

    // Every request through a gate left its decision and its outcome, and the chain holds.
    println!();
    for (k, s) in sides.iter().enumerate() {
        let (records, ok) = server_rt.block_on(s.audit_verify());
        println!(
            "{}: {} requests sent through it, {} audit records, chain verifies: {ok}",
            s.name, sent[k], records
        );
        assert!(ok, "the audit chain does not verify");
        assert_eq!(records, 2 * sent[k], "a decision or an outcome is missing");
    }

    // The parts, alone.
    println!();
    println!("parts alone, 2,000 each (p50 / p90 / p99 us):");
    let f = |v: &[Duration]| {
        format!(
            "{:.0} / {:.0} / {:.0}",
            us(pct(v, 50.0)),
            us(pct(v, 90.0)),
            us(pct(v, 99.0))
        )
    };
    for (name, base) in [("disk", &disk_base), ("tmpfs", &tmpfs_base)] {
        let dir = scratch(base, "probe");
        let a = durable_record_alone(dir.path(), 2000);
        let [flush, sync, raw] = commit_parts(dir.path(), 2000);
        println!(
            "  {name:<6} Audit::decision alone (journal + fdatasync)     {}",
            f(&a)
        );
        println!(
            "  {name:<6}   sled flush after a 1 KiB insert              {}",
            f(&flush)
        );
        println!(
            "  {name:<6}   fdatasync of sled's log after it             {}",
            f(&sync)
        );
        println!(
            "  {name:<6} fdatasync after appending 1 KiB to a file      {}",
            f(&raw)
        );
    }
    let vault_file = support::write_vault_file(file.gate.dir.path());
    println!(
        "  vault env:  token fetch                             {}",
        f(&vault_fetches(agentgate::config::VaultSource::Env, 2000))
    );
    println!(
        "  vault file: token fetch                             {}",
        f(&vault_fetches(
            agentgate::config::VaultSource::File { path: vault_file },
            2000
        ))
    );
}

/// CPU microseconds per measured request, by thread group.
fn cpu_per_request(r: &Run) -> BTreeMap<String, f64> {
    let n = r.lat.len().max(1) as f64;
    r.cpu
        .iter()
        .filter(|(_, v)| **v > 0.0)
        .map(|(k, v)| (k.clone(), v * 1e6 / n))
        .collect()
}

fn scratch(base: &Path, tag: &str) -> TempDir {
    let dir = base.join(format!(
        "agentgate-bench-allow-{tag}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    TempDir(dir)
}

fn sorted(mut v: Vec<Duration>) -> Vec<Duration> {
    v.sort();
    v
}

fn row(load: Load, path: &str, r: &Run, direct: Option<&Run>) {
    let l = &r.lat;
    let at = |v: &[Duration], p: f64| if p > 100.0 { mean(v) } else { pct(v, p) };
    let qs = [50.0, 90.0, 99.0, 101.0];
    let lat = qs.map(|p| ms(at(l, p))).join(" / ");
    let added = match direct {
        Some(d) => qs
            .map(|p| format!("{:.3}", (us(at(l, p)) - us(at(&d.lat, p))) / 1e3))
            .join(" / "),
        None => "-".into(),
    };
    println!(
        "{:<13} {:<20} {:>6.0} {:>29} {:>29} {:>6} ms",
        load.label(),
        path,
        l.len() as f64 / r.secs,
        lat,
        added,
        ms(pct(&r.legs, 50.0)),
    );
}
