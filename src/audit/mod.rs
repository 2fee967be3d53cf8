//! The audit log: one tamper-evident record for every decision and every outcome, durable
//! before the first byte of a request goes upstream.
//!
//! # Records
//! A record is one of three kinds ([`Entry`]):
//! - `decision` ([`DecisionRecord`]): time, agent, request id, host, method, path, the actions
//!   with their params, the decision (`allow`, `block`, `step_up`, or how a step-up was
//!   settled), the rules that made it and their reasons, the rules that fired on an error, the
//!   shadow rules that fired, the credential kind, and for step-ups the challenge id, reviewer
//!   and note.
//! - `outcome` ([`OutcomeRecord`]): what became of a decided request: the upstream status,
//!   the latency, the error. It names its decision by `decision_seq`; records are never
//!   rewritten, so the outcome is a record of its own.
//!
//! A step-up has its `step_up` decision record, then exactly one decision record of each
//! settlement of its challenge, naming it by `challenge_id`: `approved`, `denied`, `expired`,
//! `abandoned` (the held agent went away), `interrupted` (pending when the gate stopped;
//! written at the next start, with no request id or credential), and in the 428 mode
//! `redeemed` for the retry that used an approval; `block` instead of `approved` or
//! `redeemed` when the re-check blocks. A request was forwarded if and only if its decision
//! record has an outcome with a `status`; an approval that found the agent gone has an outcome
//! with no status and the error `not forwarded: the agent had gone ...` (nothing was sent).
//! Who writes them: `proxy::pipeline`'s step-up task, outside the agent's connection.
//! - `checkpoint` ([`Checkpoint`]): written by pruning; see *Retention*.
//!
//! # Records and the chain
//! The log is the sled tree `audit` of the data directory's database
//! ([`crate::store::open`]). Sequence numbers start at 1 and have no gaps.
//!
//! ```text
//! key   = u64_be(seq)
//! value = sha256(body) ++ body                       // 32 raw bytes, then the body
//! body  = {"seq":SEQ,"kind":KIND,<the entry's fields>,"prev":"<hex sha256 of the previous body>"}
//! ```
//!
//! `body` is compact JSON with the fields in a fixed order and object keys sorted (params),
//! with no newline in it: it is also the line `agentgate audit export` prints. The first
//! record of a store has `prev` = 64 zeros. A record's hash is the SHA-256 of its body and is
//! the next record's `prev`, so changing, removing or reordering any record breaks a link.
//! The hash is stored in front of the body as well, so a record changed in place is named
//! itself (its content no longer matches its hash), not only through its successor.
//!
//! [`verify`](Audit::verify) walks the whole chain and names the first broken link: a record
//! whose content does not match its hash, one that does not parse or claims another sequence
//! number, a missing sequence number, a `prev` that is not the predecessor's hash, a start
//! that is neither the genesis nor accounted for by a checkpoint. What a chain cannot show is
//! its end being cut off, or the last record rewritten together with its hash: the report's
//! `head` (the last hash) is what to note elsewhere to catch that. Opening a log
//! ([`Audit::with_sink`]) checks its last [`TAIL_CHECK`] records the same way and refuses a
//! damaged tail (the gate does not start on it), then resumes the sequence and the chain.
//!
//! # Secrets and size
//! Nothing secret enters the store. [`Audit::decision`] and [`Audit::outcome`] pass every
//! field through `redact`, whoever built the record:
//! - params whose key names a credential (last word `token`, `secret`, `password`,
//!   `authorization`, `key`, `cookie`, ...) become `"[redacted]"`;
//! - every token-shaped run in any string (keys, values, path, reasons, notes, errors) becomes
//!   `[redacted]`: `ghp_`, `gho_`, `ghu_`, `ghs_`, `ghr_`, `github_pat_`, `ya29.`, `1//`,
//!   `AIza` and the gate's own `agt_` proxy tokens, each followed by at least 12 token
//!   characters. Bare 40-hex strings (pre-2021 GitHub tokens) are kept: they are
//!   indistinguishable from commit ids, which the log needs;
//! - strings over 1 KiB, arrays and objects over 64 items or 8 levels deep, and whatever
//!   exceeds 16 KiB of strings or 1,024 values per action become
//!   `{"cut":true,"len":N,"sha256":"<hex of the redacted value>"}`; free text over 1 KiB is
//!   truncated with its length and hash appended.
//!
//! The real tokens the gate injects never reach a record: they are fetched after the decision
//! and live in `vault::Secret` only.
//!
//! # Durability
//! Appending ([`Audit::decision`], [`Audit::outcome`], a checkpoint) takes the chain lock,
//! numbers the record, links it to the previous hash, hands it to the store ([`Sink::put`]),
//! and releases the lock; records are therefore stored in sequence order. (In the gate, `put`
//! queues the record for the journal and for the tree, and the tree is written behind, in
//! batches: see [`SledSink`].) [`Audit::decision`] then waits
//! for a *group commit*: a dedicated thread (`audit-commit`) takes every waiter queued so far,
//! syncs the store once ([`Sink::sync`]), and wakes them all with its result. Records appended
//! during a sync share the next one, so 32 concurrent requests pay for a few syncs instead of
//! 32 (`cargo bench --bench audit`, BENCHMARKS.md). Only when its record is durable does
//! `decision` return its sequence number; the proxy sends nothing upstream before that.
//! Outcomes are not awaited: they are made durable by the next commit, and a crash may lose
//! the last outcomes, never a decision whose request was forwarded.
//!
//! In the gate, a sync writes the records appended since the last one to the store's journal
//! (`audit.journal.a`/`.b` beside sled's files: one write and one `fdatasync` of a
//! preallocated file, a single device round trip), and a thread of the store syncs sled itself
//! in the background every 64 KiB or 50 ms, after which the journal's space is reused.
//! Opening the log puts back into the tree whatever the journal holds that sled lost in a
//! crash. See `journal` (the format and recovery) and [`SledSink`].
//! [`Audit::close`] (the gate's shutdown) syncs sled a last time and releases the journal.
//!
//! When the store cannot write (an insert, a journal write or a sync of sled fails), the
//! error reaches every request waiting on it as an [`AuditError::Store`], and the caller
//! refuses the request (fail closed). A sync of sled that fails in the background makes every
//! later commit retry it and fail while it fails, so a store whose sled files cannot be
//! written refuses requests within about a second even though the journal still writes.
//! The first failure is logged at `error` and recovery at `warn`; [`Audit::stats`]
//! (`failing`, `failures`, `last_error`) is what metrics read. A failed insert leaves the
//! chain as it was (the next record takes the same number); a failed sync may leave decision
//! records whose requests were refused, without an outcome. The commit thread does not time
//! out a sync that hangs; the caller's own request deadline does.
//!
//! The sink is the [`Sink`] trait ([`SledSink`] in the gate). Permissions cannot make a store
//! fail under root, which is how the tests run in CI, so `tests/audit.rs` does three things:
//! it wraps [`SledSink`] in a sink whose inserts or syncs fail on demand (failure, then
//! recovery), it runs the real [`SledSink`] on a sled log file that is `/dev/full`, where
//! every write of sled fails with ENOSPC, and it puts the journal on `/dev/full`.
//!
//! # Retention
//! [`Audit::prune`] (the owner calls it periodically) removes the oldest records while they
//! are older than [`Retention::max_age`] or the log's stored bytes (keys and values, counted
//! from the records, not the file size) exceed [`Retention::max_bytes`]. It first checks the
//! records it is about to remove (hashes and links, up to the first record it keeps) and
//! refuses to prune a damaged range, so pruning never hides tampering. It then appends a
//! `checkpoint` record carrying `pruned_through` (the last removed sequence number) and
//! `anchor` (that record's hash, the `prev` of the first record kept), makes it durable, and
//! only then removes the records, oldest first. What remains verifies: the walk starts at the
//! first record kept and checks its `prev` against the checkpoint's anchor; the checkpoint
//! itself is an ordinary chained record, so it cannot be changed or dropped unnoticed either.
//! A pruning cut short by a crash leaves some of the range stored, which still verifies.
//!
//! # Reading
//! [`Audit::export`] and [`Audit::after`] read the tree while the gate runs (the dashboard's
//! `GET /api/audit?after=SEQ&limit=N`); [`cli`] reads the store of a stopped gate for
//! `agentgate audit export` (JSON lines, [`Filter`]) and `agentgate audit verify`.

pub mod cli;
mod commit;
mod export;
mod journal;
mod record;
mod redact;
mod store;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::broadcast;

use commit::{Committer, Health, lock};
pub use export::{Broken, Export, Filter, VerifyReport, verify};
pub use record::{
    AuditAction, Checkpoint, DecisionRecord, Entry, GENESIS, HASH_LEN, OutcomeEntry, OutcomeRecord,
    Record, ShadowRule,
};
pub use redact::{REDACTED, is_secret_key, redact_str};
pub use store::{Scan, Sink, SledSink};

/// How many durable-decision notices [`Audit::subscribe`] buffers per subscriber.
pub const DURABLE_FEED: usize = 4096;

/// How many of the newest records opening a log checks.
pub const TAIL_CHECK: u64 = 64;

/// Why the audit log could not do what was asked. Any error from [`Audit::decision`] means the
/// request must be refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuditError {
    #[error("the audit store cannot write: {0}")]
    Store(String),
    #[error("the audit store cannot be read: {0}")]
    Read(String),
    #[error(
        "a key in the audit tree is not a sequence number ({0}): the tree was damaged or holds \
         something else; run `agentgate audit verify`"
    )]
    BadKey(String),
    #[error(
        "the audit log is damaged at record {seq}: {why}; `agentgate audit verify` checks the \
         whole chain"
    )]
    Corrupt { seq: u64, why: String },
    #[error("cannot encode the audit record: {0}")]
    Encode(String),
    #[error("the audit log is closed (the gate is stopping)")]
    Closed,
    #[error(
        "the audit store at {} is in use by a running gate; ask the gate instead (its \
         dashboard API, GET /api/audit)", path.display()
    )]
    Locked { path: std::path::PathBuf },
    #[error(
        "no audit store at {}: no gate has run with this data directory", path.display()
    )]
    NoStore { path: std::path::PathBuf },
    #[error("{0}")]
    Filter(String),
    #[error("cannot write the export: {message}")]
    Output {
        kind: std::io::ErrorKind,
        message: String,
    },
}

impl From<serde_json::Error> for AuditError {
    fn from(e: serde_json::Error) -> AuditError {
        AuditError::Encode(e.to_string())
    }
}

/// How long records are kept. `None` is no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Records older than this are pruned.
    pub max_age: Option<Duration>,
    /// The oldest records are pruned while the records' bytes exceed this.
    pub max_bytes: Option<u64>,
}

impl Retention {
    /// Keep everything.
    pub const FOREVER: Retention = Retention {
        max_age: None,
        max_bytes: None,
    };
}

impl Default for Retention {
    /// 90 days, and 1 GiB of records.
    fn default() -> Retention {
        Retention {
            max_age: Some(Duration::from_secs(90 * 24 * 3600)),
            max_bytes: Some(1 << 30),
        }
    }
}

/// The log's counters, for metrics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditStats {
    /// The newest record's sequence number (0: none yet).
    pub last_seq: u64,
    /// Records appended by this process.
    pub appended: u64,
    /// Decision records confirmed durable.
    pub durable: u64,
    /// Group commits (flushes) that succeeded.
    pub commits: u64,
    /// Failed inserts and flushes.
    pub failures: u64,
    /// The last write failed and none has succeeded since: requests are being refused.
    pub failing: bool,
    pub last_error: Option<String>,
}

/// Where the next record goes.
#[derive(Debug)]
struct Chain {
    next: u64,
    prev: [u8; HASH_LEN],
    /// Set by [`Audit::close`]: nothing more is appended.
    closed: bool,
}

/// The audit log. `Send + Sync`; share it with an `Arc`. Dropping it answers the waiters
/// already queued and stops the commit thread.
pub struct Audit {
    sink: Arc<dyn Sink>,
    chain: Mutex<Chain>,
    health: Arc<Health>,
    retention: Retention,
    /// Stored bytes (keys and values); counted only when `retention.max_bytes` is set.
    bytes: AtomicU64,
    /// Pruning and whole-chain walks do not overlap.
    walk: Mutex<()>,
    committer: Committer,
    /// Decision records, sent once each is durable ([`Audit::subscribe`]).
    durable: broadcast::Sender<Durable>,
}

/// A decision record that is now durable, in its API form (the stored body plus its `hash`,
/// as [`Audit::after`] gives it), for the dashboard's live feed.
#[derive(Debug, Clone)]
pub struct Durable {
    pub seq: u64,
    pub json: Arc<str>,
}

/// The API form of a stored `value` whose body's SHA-256 is `hash`: the body with `"hash"`
/// added as its last field (`None` if the body is not a UTF-8 JSON object, which `encode`
/// never makes).
fn api_json(value: &[u8], hash: &[u8; record::HASH_LEN]) -> Option<Arc<str>> {
    let body = std::str::from_utf8(value.get(record::HASH_LEN..)?).ok()?;
    let open = body.strip_suffix('}')?;
    let mut out = String::with_capacity(open.len() + 2 * record::HASH_LEN + 12);
    out.push_str(open);
    out.push_str(",\"hash\":\"");
    out.push_str(&hex::encode(hash));
    out.push_str("\"}");
    Some(Arc::from(out))
}

impl std::fmt::Debug for Audit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Audit")
            .field("sink", &self.sink)
            .field("chain", &*lock(&self.chain))
            .field("retention", &self.retention)
            .field("committer", &self.committer)
            .finish_non_exhaustive()
    }
}

impl Audit {
    /// Opens the log kept in `sink`: checks its tail, resumes its sequence and chain, and
    /// starts the commit thread. With a size limit in `retention`, it also reads the whole log
    /// once to count its bytes.
    pub fn with_sink(sink: Arc<dyn Sink>, retention: Retention) -> Result<Audit, AuditError> {
        let (next, prev) = resume(&*sink)?;
        let bytes = match retention.max_bytes {
            Some(_) => stored_bytes(&*sink)?,
            None => 0,
        };
        let health = Arc::new(Health::default());
        let committer = Committer::start(sink.clone(), health.clone())?;
        Ok(Audit {
            sink,
            chain: Mutex::new(Chain {
                next,
                prev,
                closed: false,
            }),
            health,
            retention,
            bytes: AtomicU64::new(bytes),
            walk: Mutex::new(()),
            committer,
            durable: broadcast::channel(DURABLE_FEED).0,
        })
    }

    /// Appends the decision (redacted, see the module doc) and returns its sequence number
    /// once it is durable. An error means the request must be refused. Dropping the future
    /// after the record was appended leaves the record in the log.
    pub async fn decision(&self, rec: DecisionRecord) -> Result<u64, AuditError> {
        let json = Entry::Decision(Box::new(rec.redacted())).to_json()?;
        let (seq, value, hash) = self.append(&json)?;
        self.committer.durable().await?;
        if self.durable.receiver_count() > 0
            && let Some(json) = api_json(&value, &hash)
        {
            let _ = self.durable.send(Durable { seq, json });
        }
        Ok(seq)
    }

    /// The decision records from now on, each sent once it is durable, in the form
    /// [`Audit::after`] gives (the dashboard's live feed). A subscriber more than
    /// [`DURABLE_FEED`] behind gets `Lagged`.
    pub fn subscribe(&self) -> broadcast::Receiver<Durable> {
        self.durable.subscribe()
    }

    /// Appends the outcome of the request decided in record `decision_seq`. Not awaited for
    /// durability (the next group commit covers it).
    pub fn outcome(&self, decision_seq: u64, rec: OutcomeRecord) -> Result<u64, AuditError> {
        let json = Entry::Outcome(OutcomeEntry::new(decision_seq, &rec)).to_json()?;
        self.append(&json).map(|(seq, _, _)| seq)
    }

    /// Numbers, chains and stores one record (not yet durable). Returns the sequence number,
    /// the stored value and its body's hash.
    fn append(&self, json: &[u8]) -> Result<(u64, Vec<u8>, [u8; record::HASH_LEN]), AuditError> {
        let mut chain = lock(&self.chain);
        if chain.closed {
            return Err(AuditError::Closed);
        }
        let seq = chain.next;
        let (value, hash) = record::encode(seq, json, &chain.prev);
        if let Err(e) = self.sink.put(seq, &value) {
            drop(chain);
            self.health.failed(&e);
            return Err(e);
        }
        chain.next = seq + 1;
        chain.prev = hash;
        drop(chain);
        self.health.appended();
        if self.retention.max_bytes.is_some() {
            self.bytes
                .fetch_add(8 + value.len() as u64, Ordering::Relaxed);
        }
        Ok((seq, value, hash))
    }

    /// The records a filter keeps, in sequence order (see [`Filter`]). This and the other
    /// readers ([`verify`](Audit::verify), [`after`](Audit::after)) and [`prune`](Audit::prune)
    /// block on store reads; call them from a blocking thread in async code.
    pub fn export(&self, filter: &Filter) -> Export<'_> {
        export::export(&*self.sink, filter)
    }

    /// Walks the whole chain (see the module doc). Pruning waits until it is done.
    pub fn verify(&self) -> VerifyReport {
        let _walk = lock(&self.walk);
        export::verify(&*self.sink)
    }

    /// Up to `limit` records after sequence number `seq`, in order.
    pub fn after(&self, seq: u64, limit: usize) -> Result<Vec<Record>, AuditError> {
        self.sink
            .scan(seq.saturating_add(1))
            .take(limit)
            .map(|item| {
                let (seq, value) = item?;
                record::decode(seq, &value, false).map_err(|why| AuditError::Corrupt {
                    seq,
                    why: why.to_string(),
                })
            })
            .collect()
    }

    /// Makes every record appended so far durable in the store itself and starts the journal
    /// over (see [`SledSink`]); the commit thread does this on its own every few MiB or
    /// seconds. An error is counted like a failed commit, and the next decisions are refused
    /// until a checkpoint succeeds.
    pub fn checkpoint(&self) -> Result<(), AuditError> {
        let done = self.sink.checkpoint();
        if let Err(e) = &done {
            self.health.failed(e);
        }
        done
    }

    /// Closes the log for writing: later appends fail with [`AuditError::Closed`], what was
    /// appended is made durable in the store, and the store lets go of its journal, so that
    /// a log opened next on the same store (a gate restarted in the same process) can take
    /// it even while something still holds this one. Reading goes on working.
    pub fn close(&self) {
        let mut chain = lock(&self.chain);
        chain.closed = true;
        // Under the chain lock: no append is between its insert and its queueing.
        self.sink.close();
    }

    /// The log's counters.
    pub fn stats(&self) -> AuditStats {
        let last_seq = lock(&self.chain).next - 1;
        self.health.stats(last_seq)
    }

    /// Applies the retention at `now_ms` (see the module doc); returns how many records were
    /// removed. Nothing is removed from a range that does not verify.
    pub fn prune(&self, now_ms: i64) -> Result<usize, AuditError> {
        let _walk = lock(&self.walk);
        let victims = self.victims(now_ms)?;
        let Some(last) = victims.last() else {
            return Ok(0);
        };
        let checkpoint = Checkpoint {
            time_ms: now_ms,
            pruned_through: last.seq,
            anchor: hex::encode(last.hash),
            pruned: victims.len() as u64,
        };
        self.append(&Entry::Checkpoint(checkpoint).to_json()?)?;
        if let Err(e) = self.sink.sync() {
            self.health.failed(&e);
            return Err(e);
        }
        for v in &victims {
            self.sink.remove(v.seq)?;
            if self.retention.max_bytes.is_some() {
                self.bytes.fetch_sub(v.size, Ordering::Relaxed);
            }
        }
        Ok(victims.len())
    }

    /// The oldest records the retention removes, checked (hashes, and links up to the first
    /// record kept).
    fn victims(&self, now_ms: i64) -> Result<Vec<Victim>, AuditError> {
        let cutoff = self
            .retention
            .max_age
            .map(|d| now_ms.saturating_sub(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)));
        let mut excess = match self.retention.max_bytes {
            Some(max) => self.bytes.load(Ordering::Relaxed).saturating_sub(max),
            None => 0,
        };
        let mut victims: Vec<Victim> = Vec::new();
        for item in self.sink.scan(0) {
            let (seq, value) = item?;
            let corrupt = |why: String| AuditError::Corrupt { seq, why };
            let rec = record::decode(seq, &value, true).map_err(|b| corrupt(b.to_string()))?;
            if let Some(p) = victims.last() {
                if seq != p.seq + 1 || rec.prev != hex::encode(p.hash) {
                    return Err(corrupt(format!(
                        "it does not follow record {} (pruning stopped; nothing was removed)",
                        p.seq
                    )));
                }
            }
            let old = cutoff.is_some_and(|c| rec.entry.time_ms() < c);
            if !old && excess == 0 {
                break;
            }
            let size = 8 + value.len() as u64;
            excess = excess.saturating_sub(size);
            let (hash, _) = record::split(&value, false).map_err(|b| corrupt(b.to_string()))?;
            victims.push(Victim { seq, hash, size });
        }
        Ok(victims)
    }
}

/// A record pruning removes.
struct Victim {
    seq: u64,
    hash: [u8; HASH_LEN],
    size: u64,
}

/// The next sequence number and `prev` of a stored log, after checking its last
/// [`TAIL_CHECK`] records.
fn resume(sink: &dyn Sink) -> Result<(u64, [u8; HASH_LEN]), AuditError> {
    let Some((last, _)) = sink.last()? else {
        return Ok((1, GENESIS));
    };
    let mut prev: Option<(u64, [u8; HASH_LEN])> = None;
    for item in sink.scan(last.saturating_sub(TAIL_CHECK - 1)) {
        let (seq, value) = item?;
        let corrupt = |why: String| AuditError::Corrupt { seq, why };
        let rec = record::decode(seq, &value, true).map_err(|b| corrupt(b.to_string()))?;
        if let Some((p, h)) = prev {
            if seq != p + 1 {
                return Err(AuditError::Corrupt {
                    seq: p + 1,
                    why: format!("it is missing (the next stored record is {seq})"),
                });
            }
            if rec.prev != hex::encode(h) {
                return Err(corrupt(format!("it does not follow record {p}")));
            }
        }
        let (hash, _) = record::split(&value, false).map_err(|b| corrupt(b.to_string()))?;
        prev = Some((seq, hash));
    }
    match prev {
        Some((seq, hash)) => Ok((seq + 1, hash)),
        None => Err(AuditError::Read(format!(
            "record {last} vanished while the log was opened"
        ))),
    }
}

/// Bytes the log's records take (keys and values).
fn stored_bytes(sink: &dyn Sink) -> Result<u64, AuditError> {
    let mut total = 0;
    for item in sink.scan(0) {
        let (_, value) = item?;
        total += 8 + value.len() as u64;
    }
    Ok(total)
}
