//! The audit store's memory as the log grows: 32 agents append decision and outcome records as
//! fast as the group commit takes them (the gate's write pattern), and the process's RSS is
//! printed every 100,000 records, with the store opened as the gate opens it
//! (`agentgate::store::open`: sled with its page cache bounded) and, for comparison, with
//! sled's defaults (a 1 GiB cache).
//!
//! Run: `cargo bench --bench audit_memory` (`-- N DIR`: N requests, 2 records each, default
//! 400,000; the store under DIR, default the system temp dir). Nothing leaves the machine.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use agentgate::actions::Action;
use agentgate::audit::{Audit, DecisionRecord, OutcomeRecord, Retention};
use agentgate::policy::{Decision, Effect};

/// A decision record shaped like the allow path's (`github.issues.list-for-repo`).
fn record() -> DecisionRecord {
    let mut params = serde_json::Map::new();
    params.insert("owner".into(), "acme".into());
    params.insert("repo".into(), "acme/api".into());
    params.insert("state".into(), "open".into());
    let action = Action {
        host: "api.github.com".into(),
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
    DecisionRecord::new(
        1,
        "bench",
        "req_0123456789abcdef",
        "placeholder",
        &decision,
        std::slice::from_ref(&action),
    )
}

fn rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb / 1024.0
}

fn disk_bytes(p: &Path) -> u64 {
    std::fs::read_dir(p)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            if m.is_dir() {
                disk_bytes(&e.path())
            } else {
                m.len()
            }
        })
        .sum()
}

/// Appends `n` decision + outcome pairs from 32 tasks; prints the RSS as the log grows.
fn run(label: &str, db: sled::Db, path: &Path, n: u64) {
    let audit = Arc::new(Audit::open(&db, path, Retention::FOREVER).unwrap());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let done = Arc::new(AtomicU64::new(0));
    let mut line = vec![format!("{:.0}", rss_mb())];
    let marks = Arc::new(std::sync::Mutex::new(Vec::new()));
    rt.block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..32 {
            let (audit, done, marks) = (audit.clone(), done.clone(), marks.clone());
            tasks.push(tokio::spawn(async move {
                loop {
                    let k = done.fetch_add(1, Ordering::Relaxed);
                    if k >= n {
                        break;
                    }
                    let seq = audit.decision(record()).await.unwrap();
                    let outcome = OutcomeRecord {
                        time_ms: 1,
                        status: Some(200),
                        latency_us: 100,
                        error: None,
                    };
                    audit.outcome(seq, outcome).unwrap();
                    if k > 0 && k % 50_000 == 0 {
                        marks.lock().unwrap().push((2 * k, rss_mb()));
                    }
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
    let mut marks = marks.lock().unwrap().clone();
    marks.sort_by_key(|m| m.0);
    line.extend(marks.iter().map(|(_, mb)| format!("{mb:.0}")));
    line.push(format!("{:.0}", rss_mb()));
    println!(
        "{label:<28} RSS MB at 0, every 100,000 records, and at {} records: {}; store on disk {} MB",
        2 * n,
        line.join(" "),
        disk_bytes(path) >> 20
    );
    drop(audit);
}

fn main() {
    let mut args = std::env::args().skip(1).filter(|a| !a.starts_with("--"));
    let n: u64 = args.next().map_or(400_000, |a| a.parse().unwrap());
    let dir = args
        .next()
        .map_or_else(std::env::temp_dir, std::path::PathBuf::from);
    let gate_path = dir.join(format!(
        "agentgate-bench-audit-memory-{}",
        std::process::id()
    ));
    let default_path = dir.join(format!(
        "agentgate-bench-audit-memory-d-{}",
        std::process::id()
    ));
    // The gate's way first. The second case starts from the RSS the first left behind: read
    // its growth, not its level.
    run(
        "as the gate opens it",
        agentgate::store::open_unshared(&gate_path).unwrap(),
        &gate_path,
        n,
    );
    let _ = std::fs::remove_dir_all(&gate_path);
    run(
        "sled's defaults (1 GiB cache)",
        sled::open(&default_path).unwrap(),
        &default_path,
        n,
    );
    let _ = std::fs::remove_dir_all(&default_path);
}
