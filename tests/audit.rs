//! The audit log: the hash chain and what verify finds (one changed byte anywhere in a record,
//! a record removed), retention leaving a remainder that verifies, resuming after a reopen,
//! concurrent appends, a store that cannot write, no secret in the store's files, export
//! filters and the CLI functions on a stopped gate's data directory.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use agentgate::actions::Action;
use agentgate::audit::{
    Audit, AuditError, DecisionRecord, Entry, Filter, OutcomeRecord, Record, Retention, Scan, Sink,
    SledSink, cli,
};
use agentgate::policy::{Decision, Effect, Fired};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

/// 2026-03-03T10:00:00Z.
const T0: i64 = 1_772_532_000_000;
const MIN: i64 = 60_000;

/// A unique scratch directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("agentgate-audit-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn state(dir: &TempDir) -> PathBuf {
    dir.path().join("state")
}

fn db(dir: &TempDir) -> sled::Db {
    agentgate::store::open_unshared(&state(dir)).unwrap()
}

fn tree(db: &sled::Db) -> sled::Tree {
    db.open_tree(SledSink::TREE).unwrap()
}

/// The gate's store writes its tree behind the journal (see `SledSink`): a checkpoint puts
/// every record appended so far in the tree, as a stopped gate's store holds them, before a
/// test edits the tree the way someone with the files would.
fn settle(audit: &Audit) {
    audit.checkpoint().unwrap();
}

/// A decision about one action, built the way the proxy builds it.
fn decided(t: i64, agent: &str, action: &str, effect: Effect) -> DecisionRecord {
    let mut params = Map::new();
    params.insert("repo".into(), json!("acme/api"));
    params.insert("title".into(), json!("release 1.2"));
    let a = Action {
        host: "api.github.com".into(),
        method: "POST".into(),
        path: "/repos/acme/api/issues".into(),
        ..Action::new(action, params)
    };
    let decision = Decision {
        effect,
        action: action.into(),
        rules: vec!["r1".into()],
        reason: "because".into(),
        fired: vec![Fired {
            rule: "r1".into(),
            effect: effect.as_str(),
            shadow: false,
            fired_on_error: false,
            errors: Vec::new(),
            reason: "because".into(),
            annotations: None,
            action: action.into(),
        }],
    };
    DecisionRecord::new(
        t,
        agent,
        &format!("req-{t}"),
        "placeholder",
        &decision,
        &[a],
    )
}

fn outcome(t: i64) -> OutcomeRecord {
    OutcomeRecord {
        time_ms: t,
        status: Some(201),
        latency_us: 1_500,
        error: None,
    }
}

/// Appends `n` decisions, one a minute from `start`, each followed by its outcome.
async fn fill(audit: &Audit, start: i64, n: i64) -> Vec<u64> {
    let mut seqs = Vec::new();
    for i in 0..n {
        let t = start + i * MIN;
        let seq = audit
            .decision(decided(t, "coder", "github.issues.create", Effect::Allow))
            .await
            .unwrap();
        seqs.push(seq);
        seqs.push(audit.outcome(seq, outcome(t + 1)).unwrap());
    }
    seqs
}

/// The stored records' bytes (keys and values).
fn stored_bytes(tree: &sled::Tree) -> u64 {
    tree.iter()
        .map(|kv| {
            let (k, v) = kv.unwrap();
            (k.len() + v.len()) as u64
        })
        .sum()
}

fn all(audit: &Audit) -> Vec<Record> {
    audit
        .export(&Filter::default())
        .collect::<Result<_, _>>()
        .unwrap()
}

#[test]
fn the_log_is_shared_across_threads_and_its_futures_can_be_spawned() {
    fn send_sync<T: Send + Sync>(_: &T) {}
    fn send<T: Send>(_: &T) {}
    let dir = TempDir::new("send");
    let audit = Audit::open(&db(&dir), &state(&dir), Retention::FOREVER).unwrap();
    send_sync(&audit);
    send(&audit.decision(decided(T0, "coder", "github.issues.create", Effect::Allow)));
    assert!(format!("{audit:?}").starts_with("Audit {"));
}

#[tokio::test]
async fn appended_records_form_a_chain_that_verifies() {
    let dir = TempDir::new("chain");
    let db = db(&dir);
    let audit = Audit::open(&db, &state(&dir), Retention::FOREVER).unwrap();
    let seqs = fill(&audit, T0, 50).await;
    assert_eq!(seqs, (1..=100).collect::<Vec<u64>>());

    let report = audit.verify();
    assert!(report.is_ok(), "{report}");
    assert_eq!(
        (report.records, report.first, report.last),
        (100, Some(1), Some(100))
    );
    let records = all(&audit);
    assert_eq!(report.head.as_deref(), Some(records[99].hash.as_str()));
    assert_eq!(records[0].prev, "0".repeat(64));
    for pair in records.windows(2) {
        assert_eq!(pair[1].prev, pair[0].hash);
        assert_eq!(hex::encode(Sha256::digest(&pair[0].line)), pair[0].hash);
    }
    let Entry::Outcome(o) = &records[1].entry else {
        panic!("{:?}", records[1])
    };
    assert_eq!((o.decision_seq, o.status), (1, Some(201)));

    let page = audit.after(10, 5).unwrap();
    assert_eq!(
        page.iter().map(|r| r.seq).collect::<Vec<_>>(),
        [11, 12, 13, 14, 15]
    );
    assert!(audit.after(100, 5).unwrap().is_empty());
    let stats = audit.stats();
    assert_eq!(
        (stats.last_seq, stats.appended, stats.durable),
        (100, 100, 50)
    );
    assert!(!stats.failing);
}

#[tokio::test]
async fn changing_any_byte_of_a_record_is_found_and_named() {
    let dir = TempDir::new("flip");
    let db = db(&dir);
    let audit = Audit::open(&db, &state(&dir), Retention::FOREVER).unwrap();
    fill(&audit, T0, 10).await;
    settle(&audit);
    let tree = tree(&db);
    for seq in [1u64, 7, 20] {
        let key = seq.to_be_bytes();
        let original = tree.get(key).unwrap().unwrap().to_vec();
        for pos in 0..original.len() {
            for bit in [0x01, 0x80] {
                let mut v = original.clone();
                v[pos] ^= bit;
                tree.insert(key, v).unwrap();
                let report = audit.verify();
                let broken = report.broken.as_ref().unwrap_or_else(|| {
                    panic!("record {seq}, byte {pos} ^ {bit:#x} not found: {report}")
                });
                assert_eq!(broken.seq, seq, "byte {pos}: {report}");
            }
        }
        tree.insert(key, original).unwrap();
        assert!(audit.verify().is_ok());
    }
}

#[tokio::test]
async fn a_record_rewritten_with_a_fresh_hash_breaks_the_next_link() {
    let dir = TempDir::new("rehash");
    let db = db(&dir);
    let audit = Audit::open(&db, &state(&dir), Retention::FOREVER).unwrap();
    fill(&audit, T0, 10).await;
    settle(&audit);
    let tree = tree(&db);
    let v = tree.get(8u64.to_be_bytes()).unwrap().unwrap();
    let body = String::from_utf8(v[32..].to_vec()).unwrap();
    let forged = body.replace("\"status\":201", "\"status\":200");
    assert_ne!(forged, body);
    let mut value = Sha256::digest(forged.as_bytes()).to_vec();
    value.extend_from_slice(forged.as_bytes());
    tree.insert(8u64.to_be_bytes(), value).unwrap();
    let report = audit.verify();
    let broken = report.broken.unwrap();
    assert_eq!(broken.seq, 9);
    assert!(
        broken.why.contains("does not follow record 8"),
        "{}",
        broken.why
    );
}

#[tokio::test]
async fn a_removed_record_is_found_and_named() {
    let dir = TempDir::new("gap");
    let db = db(&dir);
    let audit = Audit::open(&db, &state(&dir), Retention::FOREVER).unwrap();
    fill(&audit, T0, 10).await;
    settle(&audit);
    let tree = tree(&db);
    tree.remove(9u64.to_be_bytes()).unwrap();
    let report = audit.verify();
    let broken = report.broken.clone().unwrap();
    assert_eq!(broken.seq, 9, "{report}");
    assert!(broken.why.contains("missing"), "{}", broken.why);
    assert!(
        report
            .to_string()
            .starts_with("audit log BROKEN at record 9: "),
        "{report}"
    );

    // The first record, with no checkpoint to account for it.
    tree.remove(1u64.to_be_bytes()).unwrap();
    assert_eq!(audit.verify().broken.unwrap().seq, 1);
}

#[tokio::test]
async fn pruning_by_age_leaves_a_remainder_that_verifies() {
    let dir = TempDir::new("age");
    let db = db(&dir);
    let retention = Retention {
        max_age: Some(Duration::from_secs(3600)),
        max_bytes: None,
    };
    let audit = Audit::open(&db, &state(&dir), retention).unwrap();
    fill(&audit, T0, 100).await;

    // At T0 + 100 min, records before T0 + 40 min are over an hour old: 40 decisions and
    // their outcomes.
    assert_eq!(audit.prune(T0 + 100 * MIN).unwrap(), 80);
    let report = audit.verify();
    assert!(report.is_ok(), "{report}");
    assert_eq!((report.first, report.last), (Some(81), Some(201)));
    let records = all(&audit);
    let Entry::Checkpoint(c) = &records.last().unwrap().entry else {
        panic!("{:?}", records.last())
    };
    assert_eq!((c.pruned_through, c.pruned), (80, 80));
    assert_eq!(c.anchor, records[0].prev);
    assert_eq!(audit.prune(T0 + 100 * MIN).unwrap(), 0);

    // More records and a second pruning: the first checkpoint stays, the chain still holds.
    fill(&audit, T0 + 101 * MIN, 5).await;
    assert_eq!(audit.prune(T0 + 130 * MIN).unwrap(), 60);
    let report = audit.verify();
    assert!(report.is_ok(), "{report}");
    assert_eq!(report.first, Some(141));

    // A pruning cut short (removal goes oldest first) leaves the newest of its range stored,
    // and that still verifies.
    let dir = TempDir::new("age-cut");
    let db = agentgate::store::open_unshared(&state(&dir)).unwrap();
    let audit = Audit::open(&db, &state(&dir), retention).unwrap();
    fill(&audit, T0, 10).await;
    settle(&audit);
    let tree = db.open_tree(SledSink::TREE).unwrap();
    let kept: Vec<_> = (8u64..=10)
        .map(|seq| tree.get(seq.to_be_bytes()).unwrap().unwrap())
        .collect();
    assert_eq!(audit.prune(T0 + 65 * MIN).unwrap(), 10);
    for (seq, v) in (8u64..=10).zip(kept) {
        tree.insert(seq.to_be_bytes(), v).unwrap();
    }
    let report = audit.verify();
    assert!(report.is_ok(), "{report}");
    assert_eq!(report.first, Some(8));

    // Records past the checkpoint's range removed as well: nothing accounts for them.
    for seq in 8u64..=11 {
        tree.remove(seq.to_be_bytes()).unwrap();
    }
    let report = audit.verify();
    assert_eq!(report.broken.as_ref().map(|b| b.seq), Some(11), "{report}");
}

#[tokio::test]
async fn pruning_by_size_keeps_the_newest_records_within_the_limit() {
    let dir = TempDir::new("size");
    let db = db(&dir);
    let audit = Audit::open(&db, &state(&dir), Retention::FOREVER).unwrap();
    fill(&audit, T0, 100).await;
    drop(audit);
    let tree = tree(&db);
    let total = stored_bytes(&tree);
    let limit = total / 3;

    // Reopened with a size limit: the bytes are counted at open.
    let retention = Retention {
        max_age: None,
        max_bytes: Some(limit),
    };
    let audit = Audit::open(&db, &state(&dir), retention).unwrap();
    let removed = audit.prune(T0 + 200 * MIN).unwrap();
    assert!(removed > 100 && removed < 200, "{removed}");
    let records = all(&audit);
    let checkpoint_len = 32 + 8 + records.last().unwrap().line.len() as u64;
    let left = stored_bytes(&tree);
    assert!(left <= limit + checkpoint_len, "{left} > {limit}");
    assert!(left + 2000 > limit, "pruned too much: {left} of {limit}");
    let report = audit.verify();
    assert!(report.is_ok(), "{report}");
    assert_eq!(report.first, Some(removed as u64 + 1));

    // Nothing over the limit any more.
    fill(&audit, T0 + 300 * MIN, 1).await;
    settle(&audit);
    let before = tree.len();
    audit.prune(T0 + 301 * MIN).unwrap();
    assert!(tree.len() <= before);
    assert!(audit.verify().is_ok());
}

#[tokio::test]
async fn pruning_refuses_a_damaged_range() {
    let dir = TempDir::new("prune-damaged");
    let db = db(&dir);
    let retention = Retention {
        max_age: Some(Duration::from_secs(60)),
        max_bytes: None,
    };
    let audit = Audit::open(&db, &state(&dir), retention).unwrap();
    fill(&audit, T0, 10).await;
    settle(&audit);
    let tree = tree(&db);
    let mut v = tree.get(5u64.to_be_bytes()).unwrap().unwrap().to_vec();
    let n = v.len();
    v[n - 10] ^= 1;
    tree.insert(5u64.to_be_bytes(), v).unwrap();
    let err = audit.prune(T0 + 100 * MIN).unwrap_err();
    assert!(matches!(err, AuditError::Corrupt { seq: 5, .. }), "{err}");
    assert_eq!(tree.len(), 20);
    assert_eq!(audit.verify().broken.unwrap().seq, 5);
}

#[tokio::test]
async fn reopening_resumes_the_chain() {
    let dir = TempDir::new("reopen");
    let path = dir.path().join("state");
    {
        let db = agentgate::store::open_unshared(&path).unwrap();
        let audit = Audit::open(&db, &state(&dir), Retention::FOREVER).unwrap();
        fill(&audit, T0, 5).await;
    }
    {
        let db = agentgate::store::open_unshared(&path).unwrap();
        let audit = Audit::open(&db, &state(&dir), Retention::FOREVER).unwrap();
        assert_eq!(audit.stats().last_seq, 10);
        let seqs = fill(&audit, T0 + 10 * MIN, 5).await;
        assert_eq!(seqs[0], 11);
        let report = audit.verify();
        assert!(report.is_ok(), "{report}");
        assert_eq!(report.records, 20);

        // A damaged tail stops the log from opening (the gate does not start on it).
        drop(audit);
        let tree = tree(&db);
        let mut v = tree.get(19u64.to_be_bytes()).unwrap().unwrap().to_vec();
        v[40] ^= 1;
        tree.insert(19u64.to_be_bytes(), v).unwrap();
        let err = Audit::open(&db, &state(&dir), Retention::FOREVER).unwrap_err();
        assert!(matches!(err, AuditError::Corrupt { seq: 19, .. }), "{err}");
        assert!(err.to_string().contains("agentgate audit verify"), "{err}");
    }
}

#[tokio::test]
async fn large_records_go_to_sled_blob_files_and_still_verify() {
    let dir = TempDir::new("blobs");
    let db = db(&dir);
    let audit = Audit::open(&db, &state(&dir), Retention::FOREVER).unwrap();
    // 40 actions of 15 KB each: a 600 KB record, which sled writes to a file of its own.
    let actions: Vec<Action> = (0..40)
        .map(|i| {
            let mut params = Map::new();
            for j in 0..15 {
                params.insert(
                    format!("f{j}"),
                    json!(format!("{i}-{j}-{}", "v".repeat(1000))),
                );
            }
            Action::new("gmail.users.messages.batchModify", params)
        })
        .collect();
    let decision = Decision::blocked("r", "gmail.users.messages.batchModify", "big");
    for i in 0..4 {
        let rec = DecisionRecord::new(T0 + i, "coder", "big", "none", &decision, &actions);
        audit.decision(rec).await.unwrap();
    }
    let blobs = std::fs::read_dir(state(&dir).join("blobs"))
        .unwrap()
        .count();
    assert!(blobs > 0, "no blob files");
    let records = all(&audit);
    assert!(records[0].line.len() > 500_000, "{}", records[0].line.len());
    let report = audit.verify();
    assert!(report.is_ok(), "{report}");
    drop(audit);
    let audit = Audit::open(&db, &state(&dir), Retention::FOREVER).unwrap();
    assert_eq!(audit.stats().last_seq, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_get_distinct_numbers_and_one_chain() {
    let dir = TempDir::new("concurrent");
    let db = db(&dir);
    let audit = Arc::new(Audit::open(&db, &state(&dir), Retention::FOREVER).unwrap());
    let mut tasks = Vec::new();
    for agent in 0..32 {
        let audit = audit.clone();
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..50 {
                let name = format!("agent-{agent}");
                let rec = decided(T0 + i, &name, "github.issues.create", Effect::Allow);
                let seq = audit.decision(rec).await.unwrap();
                seqs.push(seq);
                seqs.push(audit.outcome(seq, outcome(T0 + i)).unwrap());
            }
            seqs
        }));
    }
    let mut seqs = Vec::new();
    for t in tasks {
        seqs.extend(t.await.unwrap());
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=3200).collect::<Vec<u64>>());
    let report = audit.verify();
    assert!(report.is_ok(), "{report}");
    assert_eq!(report.records, 3200);
    let stats = audit.stats();
    assert_eq!(stats.durable, 1600);
    // Group commit: flushes are shared.
    assert!(stats.commits < 1600, "{stats:?}");
}

/// A sled sink that notes the name of the thread each sync runs on, and how long it took.
#[derive(Debug)]
struct Watched {
    inner: SledSink,
    syncs: std::sync::Mutex<Vec<(String, Duration)>>,
}

impl Watched {
    fn threads(&self) -> Vec<String> {
        let syncs = self.syncs.lock().unwrap();
        syncs.iter().map(|(name, _)| name.clone()).collect()
    }

    fn last_took(&self) -> Duration {
        let syncs = self.syncs.lock().unwrap();
        syncs.last().map_or(Duration::ZERO, |(_, took)| *took)
    }
}

impl Sink for Watched {
    fn put(&self, seq: u64, value: &[u8]) -> Result<(), AuditError> {
        self.inner.put(seq, value)
    }
    fn sync(&self) -> Result<(), AuditError> {
        let name = std::thread::current().name().unwrap_or("").to_owned();
        let start = std::time::Instant::now();
        let done = self.inner.sync();
        self.syncs.lock().unwrap().push((name, start.elapsed()));
        done
    }
    fn last(&self) -> Result<Option<(u64, Vec<u8>)>, AuditError> {
        self.inner.last()
    }
    fn scan(&self, from: u64) -> Scan<'_> {
        self.inner.scan(from)
    }
    fn remove(&self, seq: u64) -> Result<(), AuditError> {
        self.inner.remove(seq)
    }
}

/// Decides 5 records apart, then 32 at once, on the test's runtime; returns the
/// threads the first 5 syncs ran on, after checking that all 37 decisions are durable and the
/// chain verifies.
async fn sync_threads(tag: &str) -> Vec<String> {
    let dir = TempDir::new(tag);
    let db = db(&dir);
    let sink = Arc::new(Watched {
        inner: SledSink::open(&db, &state(&dir)).unwrap(),
        syncs: std::sync::Mutex::new(Vec::new()),
    });
    let audit = Arc::new(Audit::with_sink(sink.clone(), Retention::FOREVER).unwrap());
    // In a task, as the gate's requests are (the test's body runs on no worker thread), and
    // apart: a decision leads its own round only when the commits are quiet (the last round
    // ended at least as long ago as it took).
    let (a, s) = (audit.clone(), sink.clone());
    tokio::spawn(async move {
        for i in 0..5 {
            tokio::time::sleep(s.last_took() + Duration::from_millis(20)).await;
            fill(&a, T0 + i * MIN, 1).await;
        }
    })
    .await
    .unwrap();
    let alone = sink.threads();
    let mut tasks = Vec::new();
    for i in 0..32 {
        let audit = audit.clone();
        tasks.push(tokio::spawn(async move {
            let rec = decided(T0 + i, "coder", "github.issues.create", Effect::Allow);
            audit.decision(rec).await.unwrap()
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let stats = audit.stats();
    assert_eq!(stats.durable, 37, "{stats:?}");
    assert_eq!(stats.last_seq, 42);
    assert!(stats.commits <= sink.threads().len() as u64);
    let report = audit.verify();
    assert!(report.is_ok(), "{report}");
    alone
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_decision_is_made_durable_by_its_own_task_without_a_handoff() {
    let alone = sync_threads("lone-multi").await;
    assert_eq!(alone.len(), 5, "{alone:?}");
    for name in &alone {
        assert_eq!(name, "tokio-rt-worker", "{alone:?}");
    }
}

#[tokio::test(flavor = "current_thread")]
async fn on_a_current_thread_runtime_the_commit_thread_syncs() {
    // Blocking its one thread would stop every task: the commit thread does every round.
    let alone = sync_threads("lone-current").await;
    assert_eq!(alone, vec!["audit-commit"; 5]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn on_a_one_worker_runtime_the_commit_thread_syncs() {
    // No other worker would take the blocked one's tasks.
    let alone = sync_threads("lone-one-worker").await;
    assert_eq!(alone, vec!["audit-commit"; 5]);
}

/// A sled sink whose writes fail on demand (root ignores a read-only directory).
#[derive(Debug)]
struct Flaky {
    inner: SledSink,
    fail_put: AtomicBool,
    fail_sync: AtomicBool,
}

impl Sink for Flaky {
    fn put(&self, seq: u64, value: &[u8]) -> Result<(), AuditError> {
        if self.fail_put.load(Ordering::SeqCst) {
            return Err(AuditError::Store(
                "No space left on device (os error 28)".into(),
            ));
        }
        self.inner.put(seq, value)
    }
    fn sync(&self) -> Result<(), AuditError> {
        if self.fail_sync.load(Ordering::SeqCst) {
            return Err(AuditError::Store("Input/output error (os error 5)".into()));
        }
        self.inner.sync()
    }
    fn last(&self) -> Result<Option<(u64, Vec<u8>)>, AuditError> {
        self.inner.last()
    }
    fn scan(&self, from: u64) -> Scan<'_> {
        self.inner.scan(from)
    }
    fn remove(&self, seq: u64) -> Result<(), AuditError> {
        self.inner.remove(seq)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_cannot_write_refuses_every_decision() {
    let dir = TempDir::new("failing");
    let db = db(&dir);
    let flaky = Arc::new(Flaky {
        inner: SledSink::open(&db, &state(&dir)).unwrap(),
        fail_put: AtomicBool::new(false),
        fail_sync: AtomicBool::new(false),
    });
    let audit = Arc::new(Audit::with_sink(flaky.clone(), Retention::FOREVER).unwrap());
    fill(&audit, T0, 2).await;

    // Inserts fail: every decision (32 at once) is refused, with the reason.
    flaky.fail_put.store(true, Ordering::SeqCst);
    let mut tasks = Vec::new();
    for i in 0..32 {
        let audit = audit.clone();
        tasks.push(tokio::spawn(async move {
            audit
                .decision(decided(
                    T0 + i,
                    "coder",
                    "github.repos.delete",
                    Effect::Allow,
                ))
                .await
        }));
    }
    for t in tasks {
        let err = t.await.unwrap().unwrap_err();
        assert_eq!(
            err.to_string(),
            "the audit store cannot write: No space left on device (os error 28)"
        );
    }
    assert!(audit.outcome(1, outcome(T0)).is_err());
    let stats = audit.stats();
    assert!(stats.failing && stats.failures >= 33, "{stats:?}");
    assert_eq!(stats.last_seq, 4);

    // Flushes fail: the record is stored but not durable, so the decision is refused.
    flaky.fail_put.store(false, Ordering::SeqCst);
    flaky.fail_sync.store(true, Ordering::SeqCst);
    let rec = decided(T0, "coder", "github.repos.delete", Effect::Allow);
    let err = audit.decision(rec).await.unwrap_err();
    assert!(matches!(err, AuditError::Store(_)), "{err}");
    assert!(audit.stats().failing);

    // Writable again: decisions go through, numbered on from the stored records.
    flaky.fail_sync.store(false, Ordering::SeqCst);
    let rec = decided(T0, "coder", "github.repos.delete", Effect::Allow);
    assert_eq!(audit.decision(rec).await.unwrap(), 6);
    let stats = audit.stats();
    assert!(!stats.failing, "{stats:?}");
    assert!(stats.last_error.unwrap().contains("os error 5"));
    let report = audit.verify();
    assert!(report.is_ok(), "{report}");
    assert_eq!(report.records, 6);
}

/// A real write failure under root: sled's log file is `/dev/full`, so every write of it
/// fails with ENOSPC. Decisions are durable in the journal until the store's checkpoint
/// fails; from then on every decision is refused with the reason.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn a_full_disk_refuses_decisions_with_the_reason() {
    let dir = TempDir::new("full");
    let path = dir.path().join("state");
    std::fs::create_dir_all(&path).unwrap();
    std::os::unix::fs::symlink("/dev/full", path.join("db")).unwrap();
    // No background flush: the first write of the log is the audit's own.
    let opened = sled::Config::new().path(&path).flush_every_ms(None).open();
    // sled may already write its log while opening (seen once on a loaded machine): then the
    // store fails at open, which is the same failure reported earlier, and the gate does not
    // start on it.
    let db = match opened {
        Ok(db) => db,
        Err(e) => {
            let text = e.to_string();
            assert!(
                text.contains("os error 28") || text.to_lowercase().contains("space"),
                "{text}"
            );
            return;
        }
    };
    let audit = Audit::open(&db, &state(&dir), Retention::FOREVER).unwrap();
    let first = audit
        .decision(decided(T0, "coder", "github.repos.delete", Effect::Allow))
        .await
        .unwrap();
    assert_eq!(first, 1);
    let err = audit.checkpoint().unwrap_err();
    assert!(err.to_string().contains("No space left on device"), "{err}");
    for i in 1..4 {
        let rec = decided(T0 + i, "coder", "github.repos.delete", Effect::Allow);
        let err = audit.decision(rec).await.unwrap_err();
        assert!(matches!(err, AuditError::Store(_)), "{err}");
        assert!(err.to_string().contains("No space left on device"), "{err}");
    }
    let stats = audit.stats();
    assert!(stats.failing && stats.failures >= 4, "{stats:?}");
    assert_eq!(stats.durable, 1);
}

/// A closed log refuses appends, answers what was queued, and lets go of the store's journal:
/// a log opened next on the same store (a gate restarted in this process) takes over while
/// the first one is still referenced, and continues its chain.
#[tokio::test]
async fn a_closed_log_hands_the_store_over() {
    let dir = TempDir::new("close");
    let db = db(&dir);
    let first = Audit::open(&db, &state(&dir), Retention::FOREVER).unwrap();
    for i in 0..3 {
        let rec = decided(T0 + i, "coder", "github.issues.create", Effect::Allow);
        first.decision(rec).await.unwrap();
    }
    first.close();
    let rec = decided(T0 + 5, "coder", "github.issues.create", Effect::Allow);
    assert_eq!(first.decision(rec).await.unwrap_err(), AuditError::Closed);
    let second = Audit::open(&db, &state(&dir), Retention::FOREVER).unwrap();
    let rec = decided(T0 + 6, "coder", "github.issues.create", Effect::Allow);
    assert_eq!(second.decision(rec).await.unwrap(), 4);
    let report = second.verify();
    assert!(report.is_ok(), "{report}");
    assert_eq!(report.records, 4);
    drop(first);
}

/// The journal itself on a full disk: the log does not open, and says why.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn a_journal_that_cannot_be_written_stops_the_log_from_opening() {
    let dir = TempDir::new("journal-full");
    let db = db(&dir);
    std::os::unix::fs::symlink("/dev/full", state(&dir).join("audit.journal.a")).unwrap();
    let err = Audit::open(&db, &state(&dir), Retention::FOREVER).unwrap_err();
    assert!(matches!(err, AuditError::Store(_)), "{err}");
    assert!(err.to_string().contains("audit journal"), "{err}");
    assert!(err.to_string().contains("No space left on device"), "{err}");
}

/// Records the store lost in a crash (appended and committed, but sled never flushed) come
/// back from the journal when the log is opened again, and the chain verifies.
#[tokio::test]
async fn records_sled_lost_come_back_from_the_journal() {
    let dir = TempDir::new("journal-replay");
    {
        let db = sled::Config::new()
            .path(state(&dir))
            .flush_every_ms(None)
            .open()
            .unwrap();
        let audit = Audit::open(&db, &state(&dir), Retention::FOREVER).unwrap();
        for i in 0..5 {
            let rec = decided(T0 + i, "coder", "github.issues.create", Effect::Allow);
            audit.decision(rec).await.unwrap();
        }
        // What a crash leaves: the journal as written, sled's tree as last flushed (by the
        // checkpoint opening took: empty). Copy the directory away while both are open.
        let copy = dir.path().join("crashed");
        std::fs::create_dir_all(&copy).unwrap();
        for entry in std::fs::read_dir(state(&dir)).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_file() {
                std::fs::copy(entry.path(), copy.join(entry.file_name())).unwrap();
            }
        }
        std::mem::forget(audit);
        std::mem::forget(db);
    }
    let crashed = dir.path().join("crashed");
    let db = agentgate::store::open_unshared(&crashed).unwrap();
    // Before the journal is read, the copied tree has lost the five records.
    assert_eq!(tree(&db).len(), 0, "sled was expected to have lost them");
    let audit = Audit::open(&db, &crashed, Retention::FOREVER).unwrap();
    let report = audit.verify();
    assert!(report.is_ok(), "{report}");
    assert_eq!(report.records, 5);
    let next = audit
        .decision(decided(
            T0 + 9,
            "coder",
            "github.issues.create",
            Effect::Allow,
        ))
        .await
        .unwrap();
    assert_eq!(next, 6);
}

/// Secrets in every field the agent or a reviewer controls.
const SECRETS: &[&str] = &[
    "ghp_R3alT0kenValueThatMustNeverBeStored01",
    "github_pat_11AAAAAAA0aaaaaaaaaaaa_bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb",
    "gho_0therT0kenValueThatMustNeverBeStored",
    "ghs_Inst4llationT0kenNeverStored00000000",
    "ya29.a0AfH6SMC-GoogleAccessTokenNeverStored_x",
    "1//0gRefreshTokenNeverStored-abcdefghij",
    "AIzaSyApiKeyNeverStored-0123456789abcde",
    "agt_AgentProxyTokenNeverStored0123456789abcd",
];
/// Not token-shaped, but under a key that names a credential.
const PASSWORD: &str = "hunter2-correct-horse-battery";
/// Kept: proves the scan reads what the store holds.
const CANARY: &str = "canary-7f3e-visible-in-the-store";

#[tokio::test]
async fn secrets_never_reach_the_stores_files() {
    let dir = TempDir::new("secrets");
    let path = dir.path().join("state");
    {
        let db = agentgate::store::open_unshared(&path).unwrap();
        let audit = Audit::open(&db, &state(&dir), Retention::FOREVER).unwrap();
        for (i, s) in SECRETS.iter().enumerate() {
            let mut params = Map::new();
            params.insert("title".into(), json!(CANARY));
            params.insert(
                "body".into(),
                json!(format!("here is my token: {s} thanks")),
            );
            params.insert("password".into(), json!(PASSWORD));
            params.insert("accessToken".into(), json!(PASSWORD));
            params.insert(
                "nested".into(),
                json!({"list": [s, {"deep": s}], "Authorization": format!("Bearer {PASSWORD}")}),
            );
            params.insert("long".into(), json!(format!("{} {s}", "x".repeat(5000))));
            params.insert(s.to_string(), json!("a key that is a token"));
            let a = Action {
                host: "api.github.com".into(),
                method: "POST".into(),
                path: format!("/repos/acme/{s}/issues"),
                ..Action::new("github.issues.create", params)
            };
            let decision = Decision {
                effect: Effect::StepUp,
                action: "github.issues.create".into(),
                rules: vec!["watch".into()],
                reason: format!("the body mentions {s}"),
                fired: Vec::new(),
            };
            let mut rec =
                DecisionRecord::new(T0 + i as i64, "coder", "req", "foreign", &decision, &[a]);
            rec.note = Some(format!("approved, the token {s} is fine"));
            rec.reviewer = Some("alice".into());
            rec.challenge_id = Some("ch-1".into());
            let seq = audit.decision(rec).await.unwrap();
            let out = OutcomeRecord {
                error: Some(format!("upstream said: bad credentials {s}")),
                ..outcome(T0)
            };
            audit.outcome(seq, out).unwrap();
        }
        let stored = all(&audit);
        assert_eq!(stored.len(), 2 * SECRETS.len());
        let Entry::Decision(d) = &stored[0].entry else {
            panic!()
        };
        let p = &d.actions[0].params;
        assert_eq!(p["password"], "[redacted]");
        assert_eq!(p["body"], "here is my token: [redacted] thanks");
        assert_eq!(p["long"]["cut"], true);
        assert_eq!(d.path, "/repos/acme/[redacted]/issues");
        assert_eq!(d.reasons, ["the body mentions [redacted]"]);
        db.flush().unwrap();
    }
    let files = files_under(&path);
    assert!(!files.is_empty());
    let mut canary_seen = false;
    for f in &files {
        let bytes = std::fs::read(f).unwrap();
        canary_seen |= contains(&bytes, CANARY.as_bytes());
        for s in SECRETS.iter().chain([&PASSWORD]) {
            assert!(
                !contains(&bytes, s.as_bytes()),
                "{s} found in {}",
                f.display()
            );
        }
    }
    assert!(canary_seen, "the scan did not see the stored records");
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Decisions by two agents on three actions, one a minute; every third blocked.
async fn varied(audit: &Audit) {
    let actions = [
        "github.repos.delete",
        "github.issues.create",
        "gmail.users.messages.send",
    ];
    for i in 0..30i64 {
        let agent = if i % 2 == 0 { "coder" } else { "mailer" };
        let effect = if i % 3 == 0 {
            Effect::Block
        } else {
            Effect::Allow
        };
        let t = T0 + i * MIN;
        let seq = audit
            .decision(decided(t, agent, actions[(i % 3) as usize], effect))
            .await
            .unwrap();
        if effect == Effect::Allow {
            audit.outcome(seq, outcome(t + 5)).unwrap();
        }
    }
}

fn decisions(audit: &Audit, f: &Filter) -> (Vec<DecisionRecord>, usize) {
    let mut out = Vec::new();
    let mut outcomes = 0;
    let mut kept = std::collections::HashSet::new();
    for r in audit.export(f) {
        let r = r.unwrap();
        match r.entry {
            Entry::Decision(d) => {
                kept.insert(r.seq);
                out.push(*d);
            }
            Entry::Outcome(o) => {
                assert!(
                    kept.contains(&o.decision_seq),
                    "outcome without its decision"
                );
                outcomes += 1;
            }
            Entry::Checkpoint(_) => panic!("checkpoint in a selective export"),
        }
    }
    (out, outcomes)
}

#[tokio::test]
async fn export_filters_by_time_agent_action_and_decision() {
    let dir = TempDir::new("filters");
    let db = db(&dir);
    let audit = Audit::open(&db, &state(&dir), Retention::FOREVER).unwrap();
    varied(&audit).await;
    let parse =
        |s: Option<&str>, u: Option<&str>, a: Option<&str>, x: Option<&str>, d: Option<&str>| {
            Filter::parse(s, u, a, x, d).unwrap()
        };

    let (d, o) = decisions(&audit, &parse(None, None, Some("coder"), None, None));
    assert_eq!(d.len(), 15);
    assert!(d.iter().all(|d| d.agent == "coder"));
    assert_eq!(o, 10);

    let (d, o) = decisions(
        &audit,
        &parse(None, None, None, Some("github.**"), Some("block")),
    );
    assert_eq!(d.len(), 10);
    assert!(
        d.iter()
            .all(|d| d.decision == "block" && d.actions[0].name.starts_with("github."))
    );
    assert_eq!(o, 0);

    let (d, _) = decisions(
        &audit,
        &parse(None, None, None, Some("gmail.users.*.send"), None),
    );
    assert_eq!(d.len(), 10);

    // [10:05, 10:10): five decisions, and the outcomes of the allowed ones.
    let f = parse(
        Some("2026-03-03T10:05:00Z"),
        Some("2026-03-03T11:10:00+01:00"),
        None,
        None,
        None,
    );
    let kept: Vec<Record> = audit.export(&f).collect::<Result<_, _>>().unwrap();
    let times: Vec<i64> = kept.iter().map(|r| r.entry.time_ms()).collect();
    assert_eq!(kept.len(), 5 + 3, "{times:?}");
    assert!(
        times
            .iter()
            .all(|t| (T0 + 5 * MIN..T0 + 10 * MIN).contains(t))
    );

    let all = parse(None, None, None, None, None);
    assert_eq!(audit.export(&all).count(), 30 + 20);

    let err = Filter::parse(Some("yesterday"), None, None, None, None).unwrap_err();
    assert!(err.to_string().contains("RFC 3339"), "{err}");
    let err = Filter::parse(None, None, None, Some("github..x"), None).unwrap_err();
    assert!(err.to_string().contains("--action github..x"), "{err}");
}

#[tokio::test]
async fn the_cli_functions_read_a_stopped_gates_data_directory() {
    let dir = TempDir::new("cli");
    {
        let db = db(&dir);
        let audit = Audit::open(&db, &state(&dir), Retention::FOREVER).unwrap();
        varied(&audit).await;
    }
    let mut out = Vec::new();
    let summary = cli::export(dir.path(), &Filter::default(), &mut out).unwrap();
    assert_eq!(summary.lines, 50);
    assert!(summary.unreadable.is_empty());
    // Each line is the stored body: its SHA-256 is the next line's prev.
    let lines: Vec<&str> = std::str::from_utf8(&out).unwrap().lines().collect();
    assert_eq!(lines.len(), 50);
    for pair in lines.windows(2) {
        let next: Value = serde_json::from_str(pair[1]).unwrap();
        assert_eq!(next["prev"], hex::encode(Sha256::digest(pair[0])));
    }
    let first: Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(first["seq"], 1);
    assert_eq!(first["kind"], "decision");
    assert_eq!(first["agent"], "coder");

    let f = Filter::parse(None, None, Some("mailer"), None, Some("allow")).unwrap();
    let mut out = Vec::new();
    assert_eq!(cli::export(dir.path(), &f, &mut out).unwrap().lines, 20);

    let report = cli::verify(dir.path()).unwrap();
    assert!(report.is_ok(), "{report}");
    assert_eq!(report.records, 50);
    assert!(
        report
            .to_string()
            .starts_with("audit log OK: 50 records (seq 1 to 50), head ")
    );

    // The same store, damaged: verify names the record, export skips it and says so.
    let db = agentgate::store::open(&cli::store_path(dir.path())).unwrap();
    let tree = tree(&db);
    tree.insert(
        12u64.to_be_bytes(),
        &b"not a record at all, longer than a hash"[..],
    )
    .unwrap();
    assert_eq!(cli::verify(dir.path()).unwrap().broken.unwrap().seq, 12);
    let summary = cli::export(dir.path(), &Filter::default(), &mut Vec::new()).unwrap();
    assert_eq!((summary.lines, summary.unreadable.len()), (49, 1));
    assert_eq!(summary.unreadable[0].seq, 12);
}

#[test]
fn the_cli_functions_say_when_the_gate_holds_the_store_or_there_is_none() {
    let dir = TempDir::new("cli-locked");
    let held = db(&dir);
    let err = cli::verify(dir.path()).unwrap_err();
    assert!(matches!(err, AuditError::Locked { .. }), "{err}");
    assert!(
        err.to_string().contains("in use by a running gate"),
        "{err}"
    );
    drop(held);

    let none = TempDir::new("cli-none");
    let err = cli::export(none.path(), &Filter::default(), &mut Vec::new()).unwrap_err();
    assert!(matches!(err, AuditError::NoStore { .. }), "{err}");
    assert!(!cli::store_path(none.path()).exists(), "nothing is created");
}
