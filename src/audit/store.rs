//! Where records are kept: the [`Sink`] trait, and [`SledSink`], its implementation on the data
//! directory's sled database (tree `audit`, key = `u64_be(seq)`, value = `sha256(body) ++
//! body`). The only file of [`crate::audit`] that uses sled.
//!
//! A record is durable once it is in the journal ([`super::journal`]: one write and one
//! `fdatasync` of a preallocated file per group commit) or once sled itself has synced it.
//! [`SledSink::sync`] writes the journal. A thread of its own (`audit-checkpoint`) inserts the
//! records put since its last round into the tree, in sequence order, at least every 25 ms;
//! it switches the journal's two logs every 64 KiB or 50 ms and syncs sled while commits go
//! on, which frees the old log. It also has a log grown ahead of need when one is filling up
//! (*Growing ahead* in [`super::journal`]).
//!
//! # Why the tree is written behind
//! A sled insert costs several microseconds (more when a leaf splits), and records must enter
//! the tree in sequence order (sled recovers a prefix of what was inserted, and the journal's
//! recovery puts back a run at the end). Inserting at [`Sink::put`], under the chain's lock,
//! put that cost on every request and made concurrent requests queue for the lock, blocking
//! their worker threads. So `put` only queues the record, for the journal's next write and
//! for the tree; the checkpoint thread does the inserts in batches, off the requests' path.
//! Durability does not depend on the tree (the journal has every committed record), and every
//! reader ([`Sink::last`], [`Sink::scan`], [`Sink::remove`]) and every sync of sled first
//! inserts whatever is queued, so they see every record put before them.
//!
//! # Failures
//! When sled cannot be synced, or refuses a queued record, every later sync retries it first
//! and fails while it fails: a store sled cannot write to refuses requests, even though the
//! journal could still take them. A batch larger than a log can hold is made durable by
//! syncing sled on the spot.
//!
//! Syncing sled is [`crate::store::Durable::sync`]: sled's flush, then `fdatasync` of its log
//! and `fsync` of new blob files, durable against power loss, not only against a crash of the
//! process.

use std::fmt;
use std::io;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use super::journal::{Journal, Other, Pending};
use super::{Audit, AuditError, Retention};

/// The records of one store, in sequence order, each as `(seq, stored value)`.
pub type Scan<'a> = Box<dyn Iterator<Item = Result<(u64, Vec<u8>), AuditError>> + Send + 'a>;

/// Storage for the chain. [`Audit`] serialises `put`s (in sequence order) and calls `sync`
/// from its commit thread; everything else may run concurrently.
///
/// [`SledSink`] is the implementation the gate uses. Tests wrap it to make writes fail (a real
/// read-only directory does not stop root), which is why the trait is public.
pub trait Sink: Send + Sync + fmt::Debug {
    /// Stores `value` under `seq`.
    fn put(&self, seq: u64, value: &[u8]) -> Result<(), AuditError>;
    /// Returns once everything `put` before the call is on disk (fsync).
    fn sync(&self) -> Result<(), AuditError>;
    /// The stored record with the highest sequence number.
    fn last(&self) -> Result<Option<(u64, Vec<u8>)>, AuditError>;
    /// Stored records with `seq >= from`, ascending.
    fn scan(&self, from: u64) -> Scan<'_>;
    /// Removes record `seq` (absent is fine). Used by pruning only.
    fn remove(&self, seq: u64) -> Result<(), AuditError>;
    /// Like `sync`, and makes everything durable in the store itself rather than in a
    /// journal in front of it (see [`SledSink`]).
    fn checkpoint(&self) -> Result<(), AuditError> {
        self.sync()
    }
    /// Makes everything durable and lets go of what the sink holds exclusively (the
    /// journal); later syncs fail. Called once nothing more is appended.
    fn close(&self) {}
}

/// The audit tree of a sled database, the database's files for `fsync`, and (for the gate)
/// the journal.
#[derive(Clone)]
pub struct SledSink {
    /// Declared before `inner`, so dropped before it: see [`Checkpointer`].
    thread: Option<Arc<Checkpointer>>,
    inner: Arc<Inner>,
}

/// The checkpoint thread, stopped and waited for when the last handle of the sink goes. A
/// round holds the store for as long as it runs; without the wait, the last handle's drop
/// could leave the round to close the store a little later, on its own thread, and the store
/// (sled's lock on its directory) would still be held just after every handle was dropped.
struct Checkpointer {
    signal: Arc<Signal>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.signal.stop();
        super::commit::join(self.handle.take(), "audit-checkpoint");
    }
}

struct Inner {
    tree: sled::Tree,
    files: crate::store::Durable,
    journal: Option<Journaled>,
}

/// The journal and the records put since its last write.
struct Journaled {
    /// Held for a whole sync: they run one at a time.
    state: Mutex<JournalState>,
    /// What `put` queues. Lock order: `state`, then `storing`, then `queued`.
    queued: Mutex<Queued>,
    /// Held while queued records are inserted into the tree, so that they go in in order.
    storing: Mutex<()>,
    /// Wakes the checkpoint thread, and tells it to stop.
    signal: Arc<Signal>,
}

/// Records put and not yet written to the journal, and not yet inserted into the tree.
#[derive(Default)]
struct Queued {
    /// Taken by each sync of the journal.
    batch: Pending,
    /// Taken by [`Inner::store`], in sequence order.
    unstored: Vec<(u64, sled::IVec)>,
}

struct JournalState {
    /// `None` once the sink is closed.
    journal: Option<Journal>,
    /// Why the last sync of sled failed; while set, syncs retry it first.
    failing: Option<AuditError>,
}

/// The checkpoint thread's doorbell.
#[derive(Default)]
struct Signal {
    stop: Mutex<bool>,
    ring: Condvar,
}

impl Signal {
    fn ring(&self) {
        self.ring.notify_one();
    }

    fn stop(&self) {
        *super::commit::lock(&self.stop) = true;
        self.ring();
    }
}

/// How often the checkpoint thread looks at the journal when nobody rings.
const CHECKPOINT_POLL: Duration = Duration::from_millis(25);

fn journal_err(e: io::Error) -> AuditError {
    AuditError::Store(format!("audit journal: {e}"))
}

impl fmt::Debug for SledSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SledSink")
            .field("dir", &self.inner.files.dir())
            .field("tree", &SledSink::TREE)
            .field("journal", &self.inner.journal.is_some())
            .finish()
    }
}

impl SledSink {
    /// The tree's name.
    pub const TREE: &'static str = "audit";

    /// Opens (or creates) the tree [`SledSink::TREE`] of `db`, which was opened at `dir`, and
    /// the journal in `dir` ([`super::journal::FILES`]): records the journal holds and the
    /// tree lost in a crash are put back first. The journal is locked while the sink lives;
    /// a handle being closed is waited for a few seconds. Starts the checkpoint thread.
    pub fn open(db: &sled::Db, dir: &Path) -> Result<SledSink, AuditError> {
        let mut sink = SledSink::plain(db, dir)?;
        let journal = sink.recover(true)?.ok_or_else(|| {
            AuditError::Store(format!(
                "the audit journal in {} is in use by another audit log of this store",
                dir.display()
            ))
        })?;
        let inner = Arc::get_mut(&mut sink.inner).ok_or_else(|| {
            AuditError::Store("the audit store was shared while it was opened".into())
        })?;
        let signal = Arc::new(Signal::default());
        inner.journal = Some(Journaled {
            state: Mutex::new(JournalState {
                journal: Some(journal),
                failing: None,
            }),
            queued: Mutex::new(Queued::default()),
            storing: Mutex::new(()),
            signal: signal.clone(),
        });
        let weak = Arc::downgrade(&sink.inner);
        let theirs = signal.clone();
        let handle = std::thread::Builder::new()
            .name("audit-checkpoint".into())
            .spawn(move || checkpoints(&weak, &theirs))
            .map_err(|e| AuditError::Store(format!("cannot start the checkpoint thread: {e}")))?;
        sink.thread = Some(Arc::new(Checkpointer {
            signal,
            handle: Some(handle),
        }));
        Ok(sink)
    }

    /// For reading a store (the CLI): recovers what the journal holds when no one else has
    /// it open, then goes on without it (a sync is then sled's own).
    pub(super) fn open_reader(db: &sled::Db, dir: &Path) -> Result<SledSink, AuditError> {
        let sink = SledSink::plain(db, dir)?;
        drop(sink.recover(false)?);
        Ok(sink)
    }

    /// Replays the journal into the tree, syncs sled if anything came back, and starts the
    /// journal over. `Ok(None)`: another handle holds the journal.
    fn recover(&self, wait: bool) -> Result<Option<Journal>, AuditError> {
        let last = self.last()?.map_or(0, |(seq, _)| seq);
        let tree = &self.inner.tree;
        let opened = Journal::open(self.inner.files.dir(), last, wait, &mut |seq, value| {
            tree.insert(seq.to_be_bytes(), value)
                .map(drop)
                .map_err(io::Error::other)
        })
        .map_err(journal_err)?;
        let Some((mut journal, recovered)) = opened else {
            return Ok(None);
        };
        if recovered.restored > 0 {
            tracing::warn!(
                "audit: {} records the store lost in a crash were restored from the journal \
                 (records {} to {})",
                recovered.restored,
                last + 1,
                recovered.last
            );
        }
        if recovered.entries > 0 {
            // Also when nothing came back: sled may hold the logs' records without having
            // synced them, and recycling the logs forgets them.
            self.inner.sled_sync()?;
        }
        journal
            .recycle_all(recovered.last + 1)
            .map_err(journal_err)?;
        Ok(Some(journal))
    }

    /// The tree, without a journal.
    fn plain(db: &sled::Db, dir: &Path) -> Result<SledSink, AuditError> {
        let tree = db.open_tree(SledSink::TREE).map_err(write_err)?;
        let files = crate::store::Durable::open(dir).map_err(AuditError::Store)?;
        Ok(SledSink {
            thread: None,
            inner: Arc::new(Inner {
                tree,
                files,
                journal: None,
            }),
        })
    }

    /// Makes what is pending durable (see [`Inner::commit`]); puts it back if that fails.
    fn sync_journal(&self, j: &Journaled, in_store: bool) -> Result<(), AuditError> {
        let mut st = super::commit::lock(&j.state);
        let mut batch = std::mem::take(&mut super::commit::lock(&j.queued).batch);
        let done = self.inner.commit(&mut st, &mut batch, in_store);
        if done.is_err() {
            super::commit::lock(&j.queued).batch.restore(batch);
        } else if st.journal.as_ref().is_some_and(Journal::switch_due) {
            j.signal.ring();
        }
        done
    }
}

impl Inner {
    /// sled's flush, then `fdatasync` of its log and `fsync` of new blob files, after
    /// inserting what is queued.
    fn sled_sync(&self) -> Result<(), AuditError> {
        self.store()?;
        self.files
            .sync(&self.tree)
            .map_err(|e| AuditError::Store(e.to_string()))
    }

    /// Inserts the records queued so far into the tree, in sequence order. A record sled
    /// refuses stays queued, with those after it, for the next try. Without a journal, `put`
    /// inserts at once and there is nothing to do.
    fn store(&self) -> Result<(), AuditError> {
        let Some(j) = &self.journal else {
            return Ok(());
        };
        let _order = super::commit::lock(&j.storing);
        let queued = std::mem::take(&mut super::commit::lock(&j.queued).unstored);
        let mut records = queued.into_iter();
        while let Some((seq, value)) = records.next() {
            // A clone of an `IVec` this size shares its bytes.
            if let Err(e) = self.tree.insert(seq.to_be_bytes(), value.clone()) {
                let mut q = super::commit::lock(&j.queued);
                let later = std::mem::take(&mut q.unstored);
                q.unstored = std::iter::once((seq, value))
                    .chain(records)
                    .chain(later)
                    .collect();
                return Err(write_err(e));
            }
        }
        Ok(())
    }

    /// Makes `batch` (and everything put before it) durable: in the journal; by syncing sled
    /// when `in_store` is set, when the journal cannot take it, or when the last sync of sled
    /// failed (which is retried first, and fails the commit while it fails).
    fn commit(
        &self,
        st: &mut JournalState,
        batch: &mut Pending,
        in_store: bool,
    ) -> Result<(), AuditError> {
        let Some(journal) = st.journal.as_mut() else {
            // Closing synced everything put before it, and nothing is put after.
            return if batch.is_empty() {
                Ok(())
            } else {
                Err(AuditError::Closed)
            };
        };
        if st.failing.is_none() && !in_store {
            if batch.is_empty() {
                return Ok(());
            }
            if journal.write(batch).map_err(journal_err)? {
                return Ok(());
            }
        }
        let through = if batch.is_empty() {
            journal.next() - 1
        } else {
            batch.last
        };
        let done = self
            .sled_sync()
            .and_then(|()| journal.recycle_all(through + 1).map_err(journal_err));
        st.failing = done.as_ref().err().cloned();
        done
    }

    /// One round of the checkpoint thread, outside the journal's lock: inserts what is
    /// queued into the tree, and drains the inactive log (switching first when the active
    /// one is due) by syncing sled.
    fn checkpoint_round(&self, j: &Journaled) {
        let through = {
            let mut st = super::commit::lock(&j.state);
            let Some(journal) = st.journal.as_mut() else {
                return;
            };
            if let Err(e) = journal.tend() {
                // Not a failure of the store: a commit that needs the room grows the log
                // itself, and fails if it cannot.
                tracing::warn!(
                    "audit journal: a log could not be grown ahead of the commits ({e}); \
                     commits grow it when they need the room"
                );
            }
            match journal.other() {
                Other::Draining(t) => Some(t),
                Other::Ready if journal.switch_due() => Some(journal.switch()),
                Other::Ready => None,
            }
        };
        let Some(through) = through else {
            if let Err(e) = self.store() {
                Inner::failed(&mut super::commit::lock(&j.state), e);
            }
            return;
        };
        let synced = self.sled_sync();
        let mut st = super::commit::lock(&j.state);
        let Some(journal) = st.journal.as_mut() else {
            return;
        };
        match synced.and_then(|()| journal.drained(through).map_err(journal_err)) {
            Ok(()) => st.failing = None,
            Err(e) => Inner::failed(&mut st, e),
        }
    }

    /// Sets the error every later commit fails with until sled is synced again.
    fn failed(st: &mut JournalState, e: AuditError) {
        if st.failing.is_none() {
            tracing::error!("audit: {e}; requests are refused until it succeeds");
        }
        st.failing = Some(e);
    }
}

/// The checkpoint thread: a round when rung or every [`CHECKPOINT_POLL`], until the sink is
/// dropped.
fn checkpoints(inner: &std::sync::Weak<Inner>, signal: &Signal) {
    loop {
        {
            let stop = super::commit::lock(&signal.stop);
            if *stop {
                return;
            }
            let (stop, _) = signal
                .ring
                .wait_timeout(stop, CHECKPOINT_POLL)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if *stop {
                return;
            }
        }
        let Some(inner) = inner.upgrade() else { return };
        if let Some(j) = &inner.journal {
            inner.checkpoint_round(j);
        }
    }
}

impl Inner {
    /// Stops the checkpoint thread, syncs sled a last time (so that the next start has
    /// nothing to recover) and releases the journal. Later syncs fail with
    /// [`AuditError::Closed`].
    fn close(&self) {
        let Some(j) = &self.journal else { return };
        j.signal.stop();
        let mut st = super::commit::lock(&j.state);
        let Some(mut journal) = st.journal.take() else {
            return;
        };
        let pending = std::mem::take(&mut super::commit::lock(&j.queued).batch);
        if journal.is_clean() && pending.is_empty() {
            // Everything put was written to the journal, and sled has synced (so inserted)
            // every record the journal held.
            return;
        }
        let next = pending.last.max(journal.next() - 1) + 1;
        let done = self
            .sled_sync()
            .and_then(|()| journal.recycle_all(next).map_err(journal_err));
        if let Err(e) = done {
            tracing::warn!(
                "audit: the last sync of the store failed ({e}); the next start recovers from \
                 the journal"
            );
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.close();
    }
}

fn write_err(e: sled::Error) -> AuditError {
    AuditError::Store(e.to_string())
}

fn read_err(e: sled::Error) -> AuditError {
    AuditError::Read(e.to_string())
}

fn seq_of(key: &[u8]) -> Result<u64, AuditError> {
    let bytes: [u8; 8] = key
        .try_into()
        .map_err(|_| AuditError::BadKey(hex::encode(key)))?;
    Ok(u64::from_be_bytes(bytes))
}

impl Sink for SledSink {
    fn put(&self, seq: u64, value: &[u8]) -> Result<(), AuditError> {
        let Some(j) = &self.inner.journal else {
            self.inner
                .tree
                .insert(seq.to_be_bytes(), value)
                .map_err(write_err)?;
            return Ok(());
        };
        let stored = sled::IVec::from(value);
        let mut q = super::commit::lock(&j.queued);
        q.batch.push(seq, value);
        q.unstored.push((seq, stored));
        Ok(())
    }

    fn sync(&self) -> Result<(), AuditError> {
        match &self.inner.journal {
            None => self.inner.sled_sync(),
            Some(j) => self.sync_journal(j, false),
        }
    }

    fn checkpoint(&self) -> Result<(), AuditError> {
        match &self.inner.journal {
            None => self.inner.sled_sync(),
            Some(j) => self.sync_journal(j, true),
        }
    }

    fn close(&self) {
        self.inner.close();
    }

    fn last(&self) -> Result<Option<(u64, Vec<u8>)>, AuditError> {
        self.inner.store()?;
        match self.inner.tree.last().map_err(read_err)? {
            None => Ok(None),
            Some((k, v)) => Ok(Some((seq_of(&k)?, v.to_vec()))),
        }
    }

    fn scan(&self, from: u64) -> Scan<'_> {
        if let Err(e) = self.inner.store() {
            return Box::new(std::iter::once(Err(e)));
        }
        Box::new(self.inner.tree.range(from.to_be_bytes()..).map(|item| {
            let (k, v) = item.map_err(read_err)?;
            Ok((seq_of(&k)?, v.to_vec()))
        }))
    }

    fn remove(&self, seq: u64) -> Result<(), AuditError> {
        self.inner.store()?;
        self.inner
            .tree
            .remove(seq.to_be_bytes())
            .map_err(write_err)?;
        Ok(())
    }
}

impl Audit {
    /// Opens the audit log in `db`, the sled database opened at `dir` (tree
    /// [`SledSink::TREE`]): see [`Audit::with_sink`] and [`SledSink::open`].
    pub fn open(db: &sled::Db, dir: &Path, retention: Retention) -> Result<Audit, AuditError> {
        Audit::with_sink(Arc::new(SledSink::open(db, dir)?), retention)
    }
}

/// The audit tree of the sled database at `path`, for the CLI. A database held by a running
/// gate (sled locks its directory) is [`AuditError::Locked`]; a missing one
/// [`AuditError::NoStore`] (nothing is created).
pub(super) fn open_path(path: &Path) -> Result<SledSink, AuditError> {
    if !path.join("db").is_file() && !path.join("conf").is_file() {
        return Err(AuditError::NoStore {
            path: path.to_path_buf(),
        });
    }
    match crate::store::try_open(path) {
        Ok(db) => SledSink::open_reader(&db, path),
        Err(e) if crate::store::is_lock_contention(&e) => Err(AuditError::Locked {
            path: path.to_path_buf(),
        }),
        Err(e) => Err(read_err(e)),
    }
}
