//! Audit log throughput: concurrent agents each appending durable decision records (and the
//! outcome after each), on a real sled store in the temp directory, as the proxy does. Target:
//! at least 10,000 durable decision records a second with 32 concurrent agents.
//!
//! Each agent is a tokio task on a 2-worker multi-thread runtime that loops: build a
//! `DecisionRecord` from a `Decision` and an action with four params (a 300-byte issue body
//! among them), `Audit::decision(..).await` (returns once the record is flushed to disk by a
//! group commit), then `Audit::outcome(..)`. One second of warm-up, then the measured window.
//!
//! Reported per case: durable decisions per second, all records per second (decisions and
//! outcomes), group commits (fsyncs) per second and decisions per commit, the latency of
//! `decision()` (p50, p99, max), and the stored bytes per decision record.
//!
//! Run: `cargo bench --bench audit` (`-- SECS` to measure SECS seconds per case instead of 5).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use agentgate::actions::Action;
use agentgate::audit::{Audit, DecisionRecord, OutcomeRecord, Retention};
use agentgate::policy::{Decision, Effect, Fired};
use serde_json::{Map, json};

/// 2026-03-03T10:00:00Z.
const T0: i64 = 1_772_532_000_000;
const WARMUP: Duration = Duration::from_secs(1);

fn record(agent: &str, i: i64) -> DecisionRecord {
    let mut params = Map::new();
    params.insert("owner".into(), json!("acme"));
    params.insert("repo".into(), json!("acme/api"));
    params.insert("title".into(), json!(format!("Flaky test in CI run {i}")));
    params.insert("body".into(), json!("x".repeat(300)));
    let action = Action {
        host: "api.github.com".into(),
        method: "POST".into(),
        path: "/repos/acme/api/issues".into(),
        ..Action::new("github.issues.create", params)
    };
    let decision = Decision {
        effect: Effect::Allow,
        action: "github.issues.create".into(),
        rules: vec!["issues-ok".into()],
        reason: "issues in acme repos are fine".into(),
        fired: vec![Fired {
            rule: "issues-ok".into(),
            effect: "allow",
            shadow: false,
            fired_on_error: false,
            errors: Vec::new(),
            reason: "issues in acme repos are fine".into(),
            annotations: None,
            action: "github.issues.create".into(),
        }],
    };
    let id = format!("{agent}-{i}");
    DecisionRecord::new(T0 + i, agent, &id, "placeholder", &decision, &[action])
}

struct Row {
    agents: usize,
    decisions: u64,
    records: u64,
    commits: u64,
    secs: f64,
    lat: Vec<Duration>,
    bytes_per_decision: u64,
}

/// `agents` tasks appending for `secs` seconds after the warm-up.
fn run(agents: usize, secs: u64, outcomes: bool) -> Row {
    let dir = std::env::temp_dir().join(format!(
        "agentgate-bench-audit-{}-{agents}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    let db = sled::open(&dir).unwrap();
    let audit = Arc::new(Audit::open(&db, &dir, Retention::FOREVER).unwrap());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let (lat, before, after, window) = rt.block_on(async {
        let mut tasks = Vec::new();
        for a in 0..agents {
            let (audit, measuring, stop) = (audit.clone(), measuring.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                let agent = format!("agent-{a}");
                let mut lat = Vec::new();
                let mut i = 0i64;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let rec = record(&agent, i);
                    let start = Instant::now();
                    let seq = audit.decision(rec).await.unwrap();
                    let took = start.elapsed();
                    if outcomes {
                        let out = OutcomeRecord {
                            time_ms: T0 + i,
                            status: Some(201),
                            latency_us: 900,
                            error: None,
                        };
                        audit.outcome(seq, out).unwrap();
                    }
                    if measuring.load(Ordering::Relaxed) {
                        lat.push(took);
                    }
                }
                lat
            }));
        }
        tokio::time::sleep(WARMUP).await;
        let before = audit.stats();
        let t = Instant::now();
        measuring.store(true, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs(secs)).await;
        measuring.store(false, Ordering::Relaxed);
        let after = audit.stats();
        let window = t.elapsed();
        stop.store(true, Ordering::Relaxed);
        let mut lat = Vec::new();
        for t in tasks {
            lat.extend(t.await.unwrap());
        }
        (lat, before, after, window)
    });
    let report = audit.verify();
    assert!(report.is_ok(), "{report}");
    let stored: u64 = db
        .open_tree("audit")
        .unwrap()
        .iter()
        .take(1000)
        .map(|kv| {
            let (k, v) = kv.unwrap();
            (k.len() + v.len()) as u64
        })
        .sum();
    drop(audit);
    drop(db);
    let _ = std::fs::remove_dir_all(&dir);
    let per = if outcomes { 2 } else { 1 };
    Row {
        agents,
        decisions: after.durable - before.durable,
        records: after.appended - before.appended,
        commits: after.commits - before.commits,
        secs: window.as_secs_f64(),
        lat,
        bytes_per_decision: stored * per / 1000,
    }
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn main() {
    let secs: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(5);
    println!(
        "{secs} s per case after {} s of warm-up; 2-worker tokio runtime; sled in {}",
        WARMUP.as_secs(),
        std::env::temp_dir().display()
    );
    println!(
        "{:<26} {:>11} {:>11} {:>10} {:>9} {:>9} {:>9} {:>9} {:>8}",
        "case",
        "decisions/s",
        "records/s",
        "commits/s",
        "per fsync",
        "p50 us",
        "p99 us",
        "max us",
        "B/req"
    );
    for (agents, outcomes) in [(1, true), (8, true), (32, true), (32, false), (128, true)] {
        let mut r = run(agents, secs, outcomes);
        r.lat.sort();
        let pick = |q: f64| {
            r.lat
                .get(((r.lat.len() as f64 * q) as usize).min(r.lat.len().saturating_sub(1)))
                .copied()
                .unwrap_or_default()
        };
        let label = format!(
            "{} agents{}",
            r.agents,
            if outcomes {
                " + outcomes"
            } else {
                ", decisions only"
            }
        );
        println!(
            "{:<26} {:>11.0} {:>11.0} {:>10.0} {:>9.1} {:>9.0} {:>9.0} {:>9.0} {:>8}",
            label,
            r.decisions as f64 / r.secs,
            r.records as f64 / r.secs,
            r.commits as f64 / r.secs,
            r.decisions as f64 / r.commits.max(1) as f64,
            us(pick(0.5)),
            us(pick(0.99)),
            us(r.lat.last().copied().unwrap_or_default()),
            r.bytes_per_decision,
        );
    }
}
