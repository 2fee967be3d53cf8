//! Where challenges are kept: tree `holds` of the data directory's sled database, key = the
//! challenge id, value = the challenge as JSON. The only file of [`crate::holds`] that uses
//! sled.
//!
//! A sync is [`crate::store::Durable::sync`]: sled's flush, then `fdatasync` of its log file and
//! `fsync` of recent blob files and their directory (sled's flush alone survives a crash of the
//! process, not a power loss).
//!
//! Writes go through one thread, `holds-writer`: [`Backing::put`] queues a record and returns
//! its ticket, [`Backing::sync`] waits until the writer has inserted and synced it. The writer
//! takes everything queued while it was syncing as one batch (inserts, one sync): a group
//! commit, so a burst of approvals or step-ups shares a few syncs. One thread also keeps
//! sled's deferred frees in one place: callers are the tokio blocking pool's threads, up to
//! 512 of them under a burst, and sled's inserts on each of those left old tree nodes in its
//! thread-local garbage (about 10 KB per held challenge at 10,000 held, benches/held.rs).

use std::collections::VecDeque;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use super::{Challenge, HoldError, HoldLimits, Holds, State, lock};

/// The tree's name.
pub const TREE: &str = "holds";

/// How many failed batches the writer remembers for callers still to collect their result.
const FAILURES_KEPT: usize = 256;

/// The backing store of a [`Holds`]: sled, or nothing (tests, [`Holds::in_memory`]).
#[derive(Debug)]
pub(super) enum Backing {
    Memory,
    Sled(SledStore),
}

#[derive(Debug)]
pub(super) struct SledStore {
    tree: sled::Tree,
    writer: Writer,
}

/// The writer thread and the queue it serves. Dropping it lets the thread finish the queue
/// and waits for it (so the tree's handle is released with the store).
#[derive(Debug)]
struct Writer {
    queue: Arc<Queue>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Debug)]
struct Queue {
    state: Mutex<Tickets>,
    /// The writer waits here for records.
    work: Condvar,
    /// Callers wait here for their ticket to be finished.
    done: Condvar,
    /// `Tickets::finished`, for async callers (no thread blocked per waiting caller).
    finished: tokio::sync::watch::Sender<u64>,
}

impl Default for Queue {
    fn default() -> Queue {
        Queue {
            state: Mutex::default(),
            work: Condvar::new(),
            done: Condvar::new(),
            finished: tokio::sync::watch::channel(0).0,
        }
    }
}

/// Writes are numbered (tickets) in the order they are queued, and written in that order.
#[derive(Debug, Default)]
struct Tickets {
    queued: Vec<Record>,
    /// The last ticket handed out.
    issued: u64,
    /// Every ticket up to this one is written and synced, or failed.
    finished: u64,
    /// Recent failed batches: first and last ticket, and why.
    failures: VecDeque<(u64, u64, String)>,
    /// The store is going away: the writer finishes the queue and stops.
    closing: bool,
}

#[derive(Debug)]
struct Record {
    ticket: u64,
    key: Vec<u8>,
    value: Vec<u8>,
}

fn store_err(e: impl std::fmt::Display) -> HoldError {
    HoldError::Store(e.to_string())
}

impl Backing {
    /// Queues `c` for writing (not yet durable; see [`Backing::sync`]). Returns its ticket.
    pub(super) fn put(&self, c: &Challenge) -> Result<u64, HoldError> {
        let Backing::Sled(s) = self else {
            return Ok(0);
        };
        let value = serde_json::to_vec(c).map_err(store_err)?;
        Ok(s.writer.submit(c.id.as_bytes().to_vec(), value))
    }

    /// Returns once write `n` (from [`Backing::put`]) and every earlier one is on disk, or
    /// with the error of the batch that carried `n`.
    pub(super) fn sync(&self, n: u64) -> Result<(), HoldError> {
        let Backing::Sled(s) = self else {
            return Ok(());
        };
        s.writer.wait(n)
    }

    /// [`Backing::sync`] without blocking a thread.
    pub(super) async fn sync_async(&self, n: u64) -> Result<(), HoldError> {
        let Backing::Sled(s) = self else {
            return Ok(());
        };
        s.writer.wait_async(n).await
    }

    pub(super) fn get(&self, id: &str) -> Result<Option<Challenge>, HoldError> {
        let Backing::Sled(s) = self else {
            return Ok(None);
        };
        match s.tree.get(id.as_bytes()).map_err(store_err)? {
            None => Ok(None),
            Some(v) => serde_json::from_slice(&v).map(Some).map_err(store_err),
        }
    }

    /// Every stored challenge (undecodable records are logged and skipped).
    pub(super) fn scan(&self) -> Result<Vec<Challenge>, HoldError> {
        let Backing::Sled(s) = self else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for item in s.tree.iter() {
            let (k, v) = item.map_err(store_err)?;
            match serde_json::from_slice::<Challenge>(&v) {
                Ok(c) => out.push(c),
                Err(e) => tracing::warn!(
                    "holds: skipping undecodable record {}: {e}",
                    String::from_utf8_lossy(&k)
                ),
            }
        }
        Ok(out)
    }

    pub(super) fn is_durable(&self) -> bool {
        matches!(self, Backing::Sled(_))
    }

    /// Removes every stored challenge for which `expired(challenge)` holds, unless it changed
    /// since it was read (compare-and-swap on the stored bytes). Records that cannot be decoded
    /// are left alone. Returns the ids removed. Not synced: a removal lost in a crash is made
    /// again by the next call.
    pub(super) fn remove_where(
        &self,
        expired: impl Fn(&Challenge) -> bool,
    ) -> Result<Vec<String>, HoldError> {
        let Backing::Sled(s) = self else {
            return Ok(Vec::new());
        };
        let mut removed = Vec::new();
        for item in s.tree.iter() {
            let (k, v) = item.map_err(store_err)?;
            let Ok(c) = serde_json::from_slice::<Challenge>(&v) else {
                continue;
            };
            if !expired(&c) {
                continue;
            }
            let swapped = s
                .tree
                .compare_and_swap(&k, Some(&v), None::<&[u8]>)
                .map_err(store_err)?;
            if swapped.is_ok() {
                removed.push(c.id);
            }
        }
        Ok(removed)
    }
}

impl SledStore {
    fn open(db: &sled::Db, dir: &Path) -> Result<SledStore, HoldError> {
        let tree = db.open_tree(TREE).map_err(store_err)?;
        let files = Files {
            tree: tree.clone(),
            durable: crate::store::Durable::open(dir).map_err(store_err)?,
        };
        let queue = Arc::new(Queue::default());
        let q = queue.clone();
        let thread = std::thread::Builder::new()
            .name("holds-writer".into())
            .spawn(move || write_loop(&q, files))
            .map_err(|e| store_err(format!("cannot start the holds writer: {e}")))?;
        Ok(SledStore {
            tree,
            writer: Writer {
                queue,
                thread: Some(thread),
            },
        })
    }
}

impl Writer {
    fn submit(&self, key: Vec<u8>, value: Vec<u8>) -> u64 {
        let mut t = lock(&self.queue.state);
        t.issued += 1;
        let ticket = t.issued;
        t.queued.push(Record { ticket, key, value });
        drop(t);
        self.queue.work.notify_one();
        ticket
    }

    fn wait(&self, n: u64) -> Result<(), HoldError> {
        let mut t = lock(&self.queue.state);
        while t.finished < n {
            t = self
                .queue
                .done
                .wait(t)
                .unwrap_or_else(PoisonError::into_inner);
        }
        Writer::outcome(&t, n)
    }

    /// [`Writer::wait`] for async callers: the task sleeps, no thread does.
    async fn wait_async(&self, n: u64) -> Result<(), HoldError> {
        let mut rx = self.queue.finished.subscribe();
        if rx.wait_for(|f| *f >= n).await.is_err() {
            // The writer is gone (the store closed): what it finished is in `state`.
            let t = lock(&self.queue.state);
            if t.finished < n {
                return Err(HoldError::Store("the holds store closed".into()));
            }
        }
        Writer::outcome(&lock(&self.queue.state), n)
    }

    fn outcome(t: &Tickets, n: u64) -> Result<(), HoldError> {
        match t.failures.iter().find(|(a, b, _)| (*a..=*b).contains(&n)) {
            Some((_, _, e)) => Err(HoldError::Store(e.clone())),
            None => Ok(()),
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        lock(&self.queue.state).closing = true;
        self.queue.work.notify_all();
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                tracing::error!("holds: the writer thread failed");
            }
        }
    }
}

/// The writer: takes everything queued, inserts it in ticket order, syncs once, tells the
/// callers; until the store closes and the queue is empty.
fn write_loop(queue: &Queue, mut files: Files) {
    loop {
        let batch = {
            let mut t = lock(&queue.state);
            while t.queued.is_empty() && !t.closing {
                t = queue.work.wait(t).unwrap_or_else(PoisonError::into_inner);
            }
            if t.queued.is_empty() {
                return;
            }
            std::mem::take(&mut t.queued)
        };
        let (Some(first), Some(last)) = (batch.first(), batch.last()) else {
            continue;
        };
        let (first, last) = (first.ticket, last.ticket);
        let mut result = Ok(());
        for r in batch {
            if let Err(e) = files.tree.insert(r.key, r.value) {
                result = Err(e.to_string());
            }
        }
        let result = result.and_then(|()| files.sync().map_err(|e| e.to_string()));
        let mut t = lock(&queue.state);
        t.finished = last;
        if let Err(e) = result {
            tracing::error!("holds: writing {} record(s) failed: {e}", last - first + 1);
            t.failures.push_back((first, last, e));
            if t.failures.len() > FAILURES_KEPT {
                t.failures.pop_front();
            }
        }
        drop(t);
        queue.done.notify_all();
        queue.finished.send_replace(last);
    }
}

/// What the writer syncs: the tree's database and its files.
struct Files {
    tree: sled::Tree,
    durable: crate::store::Durable,
}

impl Files {
    fn sync(&mut self) -> Result<(), HoldError> {
        self.durable.sync(&self.tree).map_err(store_err)
    }
}

impl Holds {
    /// Opens the holds of `db`, the sled database opened at `dir` (tree [`TREE`]). Challenges
    /// a previous run left pending are marked [`State::Interrupted`] (decided at `now_ms`) and
    /// stored durably before this returns; they are not kept in memory, and
    /// [`Holds::take_interrupted`] hands them to the owner for the audit log.
    pub fn open(
        db: &sled::Db,
        dir: &Path,
        window: Duration,
        limits: HoldLimits,
        now_ms: i64,
    ) -> Result<Holds, HoldError> {
        let backing = Backing::Sled(SledStore::open(db, dir)?);
        let mut last = 0;
        let mut interrupted = Vec::new();
        for mut c in backing.scan()? {
            if c.state == State::Pending {
                c.state = State::Interrupted;
                c.decided_ms = Some(now_ms);
                last = backing.put(&c)?;
                interrupted.push(c);
            }
        }
        if !interrupted.is_empty() {
            backing.sync(last)?;
            tracing::warn!(
                "holds: {} challenge(s) left pending by the last run are now interrupted",
                interrupted.len()
            );
        }
        let holds = Holds::with_backing(backing, window, limits);
        *lock(&holds.inner.interrupted) = interrupted;
        Ok(holds)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use crate::holds::NewChallenge;

    const WINDOW: Duration = Duration::from_secs(15 * 60);
    const WINDOW_MS: i64 = 15 * 60 * 1000;
    const WEEK: Duration = Duration::from_secs(7 * 24 * 3600);
    const WEEK_MS: i64 = 7 * 24 * 3600 * 1000;
    const T0: i64 = 1_700_000_000_000;

    fn new(hold: bool) -> NewChallenge {
        NewChallenge {
            agent: "coder".into(),
            actions: Vec::new(),
            rules: vec!["r".into()],
            reasons: vec!["why".into()],
            digest: "d".into(),
            hold,
        }
    }

    fn temp_dir() -> std::path::PathBuf {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let d = std::env::temp_dir().join(format!(
            "agentgate-holds-retention-{}-{n}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    /// One challenge in each state a retention pass sees: pending (never touched, so pending
    /// even after its window), denied early, approved in 428 mode and never redeemed,
    /// redeemed, expired (by an approval that came too late).
    fn populate(h: &Holds) -> [String; 5] {
        let ids: Vec<String> = (0..5)
            .map(|_| h.create(new(false), T0).unwrap().0.id)
            .collect();
        h.deny(&ids[1], "alice", Some("no".into()), T0 + 1).unwrap();
        h.approve(&ids[2], "alice", None, T0 + 2).unwrap();
        h.approve(&ids[3], "alice", None, T0 + 3).unwrap();
        h.redeem(&ids[3], "coder", "d", T0 + 4).unwrap();
        assert_eq!(
            h.approve(&ids[4], "alice", None, T0 + WINDOW_MS),
            Err(HoldError::AlreadyDecided {
                state: State::Expired
            })
        );
        [
            ids[0].clone(),
            ids[1].clone(),
            ids[2].clone(),
            ids[3].clone(),
            ids[4].clone(),
        ]
    }

    #[test]
    fn decided_challenges_past_the_retention_are_removed_and_pending_ones_kept() {
        let dir = temp_dir();
        let db = crate::store::open_unshared(&dir).unwrap();
        let h = Holds::open(&db, &dir, WINDOW, HoldLimits::default(), T0).unwrap();
        let [pending, denied, approved, redeemed, expired] = populate(&h);
        // Everything was settled by the end of the window at the latest: nothing is a week
        // past that yet.
        assert_eq!(h.prune(T0 + WINDOW_MS + WEEK_MS - 1, WEEK).unwrap(), 0);
        for id in [&denied, &approved, &redeemed, &expired] {
            assert!(h.get(id).is_some(), "{id} removed too early");
        }
        // A week after the window closed, every decided challenge goes; the pending one stays.
        assert_eq!(h.prune(T0 + WINDOW_MS + WEEK_MS, WEEK).unwrap(), 4);
        for id in [&denied, &approved, &redeemed, &expired] {
            assert_eq!(h.get(id), None, "{id} kept past the retention");
        }
        let listed = |h: &Holds| -> Vec<(String, State)> {
            h.list(None).into_iter().map(|c| (c.id, c.state)).collect()
        };
        assert_eq!(listed(&h), [(pending.clone(), State::Pending)]);
        assert_eq!(h.prune(T0 + 100 * WEEK_MS, WEEK).unwrap(), 0);
        assert_eq!(h.pending("coder"), (1, 1));
        drop(h);
        drop(db);
        // Gone from the store, not only from memory: a restart does not bring them back (and
        // marks the pending one interrupted, which a later pass removes in its turn).
        let db = crate::store::open_unshared(&dir).unwrap();
        let h = Holds::open(&db, &dir, WINDOW, HoldLimits::default(), T0 + 10).unwrap();
        assert_eq!(listed(&h), [(pending, State::Interrupted)]);
        assert_eq!(h.prune(T0 + WINDOW_MS + WEEK_MS, WEEK).unwrap(), 1);
        assert!(h.list(None).is_empty());
        drop(h);
        drop(db);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_approval_stays_redeemable_for_its_window_whatever_the_retention() {
        let h = Holds::in_memory(WINDOW, HoldLimits::default());
        let (a, _) = h.create(new(false), T0).unwrap();
        h.approve(&a.id, "alice", None, T0 + 1).unwrap();
        // A retention shorter than the window removes nothing before the window closes.
        assert_eq!(h.prune(T0 + 60_000, Duration::from_secs(1)).unwrap(), 0);
        assert_eq!(
            h.redeem(&a.id, "coder", "d", T0 + 60_001).unwrap().state,
            State::Redeemed
        );
        assert_eq!(
            h.prune(T0 + WINDOW_MS + 1_000, Duration::from_secs(1))
                .unwrap(),
            1
        );
        assert_eq!(h.get(&a.id), None);
    }
}
