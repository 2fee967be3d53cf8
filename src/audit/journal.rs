//! The audit journal: the records of the audit tree, written once more to preallocated files
//! of the gate's own (`audit.journal.a` and `.b`, beside sled's files), so that a group commit
//! costs one device round trip instead of two, and sled is synced in the background.
//!
//! # Why
//! Making a sled insert durable takes sled's `flush` (`sync_file_range`: write and wait), then
//! `fdatasync` of its log (the device's cache and the log's size): two round trips, about
//! 0.2 ms on the VM disk this was measured on. Overwriting blocks of a file that are already
//! allocated and written, then `fdatasync`, needs no journal commit of the filesystem (no size
//! or extent change): one round trip, about 0.1 ms there (`cargo bench --bench allow_path`,
//! "parts alone"; BENCHMARKS.md, *Allow path with audit*).
//!
//! # Two logs
//! Each file is a log: a header, then entries from [`HEADER`]. One log is *active*: group
//! commits append to it. When it is [`DUE_BYTES`] full or [`DUE_AGE`] old, a checkpoint
//! *switches*: the other log (empty) becomes active, and the old one *drains*: once sled has
//! synced every record put so far (on the checkpoint thread, while commits go on), it is
//! *recycled* (a new header) and is ready for the next switch. A log that outgrows [`MAX`]
//! before the other is ready is made durable by syncing sled on the spot (the slow path).
//!
//! # Growing ahead
//! A log fills up when sled syncs more slowly than commits arrive (the other log is still
//! draining). Growing it then, under the lock every commit waits for, stalled commits for as
//! long as writing and syncing the new zeros took (milliseconds for a few MiB on a fast disk,
//! more in a slow phase). So a log is grown ahead of need, checked after each commit and on
//! each checkpoint round ([`Journal::tend`]): the active log, once it is three quarters full,
//! to twice its size (not sooner, and not the other log on speculation: zeros written compete
//! with the commits for the disk). A thread of its own (`audit-grow`) writes the zeros past
//! the log's end, syncing every [`GROW_STEP`] and publishing how far it got. Commits go on
//! below the end, and a commit that needs the room waits only until the grower has synced it.
//! A commit grows the log itself only when no growth is under way, or one failed.
//!
//! # Format
//! ```text
//! header (HEADER bytes): MAGIC, u32_le(pass), sha256(the 12 bytes before)[..8], zeros
//! entry:                 u64_le(seq) u32_le(pass) u32_le(len) value[len]   // value as in the tree
//! ```
//! `pass` changes each time a log is recycled. A file is filled with zeros when created or
//! grown, so later writes overwrite allocated blocks. Each group commit's entries are written
//! as whole pages (zeros after the last entry, up to a 4 KiB boundary), so the next batch
//! starts on a page boundary. Whatever lies past the last entry of a
//! pass (zeros, or entries of earlier passes, which carry another `pass`) is not a valid next
//! entry, so a reader stops there. An entry is valid when it belongs to the pass, its `seq`
//! follows the previous entry's, it fits in the file, and its value holds together on its own
//! (the value is `sha256(body) ++ body`, the record's hash in front of it, so a torn write
//! fails the hash).
//!
//! # Recovery
//! At open, the entries of both logs with a sequence number above sled's last record are
//! inserted into the tree in order (sled recovers a prefix of what was inserted into it, so
//! what it lost is a run at the end). They must continue the store without a gap: a journal
//! that starts past the store's end means the store lost records it had synced, and the log
//! does not open. Then sled is synced and both logs are recycled. Opening the log checks the
//! tail's chain as usual.
//!
//! One handle at a time: sled's own lock on its directory keeps other processes out, and a
//! registry keeps a second journal of the same directory in this process from opening (see
//! [`Claim`]).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::HASH_LEN;

/// The journal's file names, in sled's directory.
pub const FILES: [&str; 2] = ["audit.journal.a", "audit.journal.b"];

const MAGIC: &[u8; 8] = b"AGJRNL02";
/// The unit of writing: each batch is written as whole pages (see [`Journal::write`]).
const PAGE: usize = 4096;
/// Bytes before the first entry.
const HEADER: u64 = PAGE as u64;
/// Bytes of the header that are read.
const HEADER_USED: usize = 20;
/// Bytes in front of each value: `u64_le(seq) u32_le(pass) u32_le(len)`.
const ENTRY_HEAD: usize = 16;
/// The size a log is created with.
const INITIAL: u64 = 256 << 10;
/// The most a log grows to; a batch that does not fit then is made durable by syncing sled.
const MAX: u64 = 32 << 20;
/// A switch is due once the active log holds this much, or holds anything and is this old.
/// The age bounds how long a store sled cannot write to goes unnoticed (and how much the
/// journal holds that sled has not synced). Small and frequent: sled's writes compete with
/// the journal's for the disk, and on the VM disk measured (BENCHMARKS.md, *Allow path with
/// audit*) a sync of sled every 0.5 s stalled some commits for tens of milliseconds, while
/// one every 50 ms did not.
const DUE_BYTES: u64 = 64 << 10;
const DUE_AGE: Duration = Duration::from_millis(50);
/// How long opening waits for a journal locked by a handle that is being closed.
const LOCK_WAIT: Duration = Duration::from_secs(3);
/// Bytes a growth ahead writes between two syncs: a commit's `fdatasync` of the same file
/// never has more of the grower's zeros to write out than this.
const GROW_STEP: u64 = 256 << 10;
/// How long after a failed growth the next one may start.
const GROW_RETRY: Duration = Duration::from_secs(1);

/// Records put since the last write, each as its sequence number and value. The pass is
/// filled in when the batch is written.
#[derive(Debug, Default)]
pub(super) struct Pending {
    buf: Vec<u8>,
    /// Where each entry starts in `buf`.
    starts: Vec<usize>,
    /// The sequence number of the last entry (meaningful when not empty).
    pub(super) last: u64,
}

impl Pending {
    pub(super) fn push(&mut self, seq: u64, value: &[u8]) {
        self.starts.push(self.buf.len());
        self.buf.extend_from_slice(&seq.to_le_bytes());
        self.buf.extend_from_slice(&[0; 4]);
        // Values are far below 4 GiB (records are cut to a few hundred KiB at most).
        let len = u32::try_from(value.len()).unwrap_or(u32::MAX);
        self.buf.extend_from_slice(&len.to_le_bytes());
        self.buf.extend_from_slice(value);
        self.last = seq;
    }

    /// Puts `earlier` (entries that could not be written) back in front of what came since.
    pub(super) fn restore(&mut self, mut earlier: Pending) {
        if earlier.buf.is_empty() {
            return;
        }
        if !self.buf.is_empty() {
            let shift = earlier.buf.len();
            earlier.buf.extend_from_slice(&self.buf);
            earlier.starts.extend(self.starts.iter().map(|s| s + shift));
            earlier.last = self.last;
        }
        *self = earlier;
    }

    pub(super) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    fn stamp(&mut self, pass: u32) {
        for &s in &self.starts {
            self.buf[s + 8..s + 12].copy_from_slice(&pass.to_le_bytes());
        }
    }
}

/// One file of the journal.
#[derive(Debug)]
struct Log {
    path: PathBuf,
    /// Shared with a grower (see [`Growth`]), which writes only past `len`.
    file: Arc<File>,
    /// The file's length: everything up to it has been written (zeros at least).
    len: u64,
    /// Where the next entry goes.
    offset: u64,
    pass: u32,
    /// When the first entry of the pass was written.
    since: Option<Instant>,
    /// A growth ahead of this log under way.
    growth: Option<Growth>,
}

/// What the inactive log is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Other {
    /// Empty, with a fresh pass: the next switch makes it active.
    Ready,
    /// Holds records up to this sequence number, which sled has not been seen to sync.
    Draining(u64),
}

/// An open journal, the only one of its directory in this process.
#[derive(Debug)]
pub(super) struct Journal {
    /// Declared before `_claim`, so that dropping the journal waits for a log's grower (see
    /// [`Growth`]) before the directory is given up.
    logs: [Log; 2],
    /// The last growth ahead that failed, and when; reported once by [`Journal::tend`].
    grow_failed: Option<(Instant, Option<io::Error>)>,
    /// Tests: the next growth starts held, until the test lets it go (see
    /// [`Progress::held`]).
    #[cfg(test)]
    hold_growth: bool,
    _claim: Claim,
    active: usize,
    other: Other,
    /// The sequence number after the last one written.
    next: u64,
}

/// What recovery found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Recovered {
    /// Valid entries found in the logs, restored or not.
    pub(super) entries: u64,
    /// Records given to `restore` (above the store's last record).
    pub(super) restored: u64,
    /// The last of them (the store's last record when none).
    pub(super) last: u64,
}

impl Journal {
    /// Opens (or creates) the journal in `dir`, and passes every valid entry with a sequence
    /// number above `last` (the store's last record, 0 for none) to `restore`, in order. The
    /// caller then makes the restored records durable and calls [`Journal::recycle_all`]
    /// before writing. `Ok(None)` when another handle holds the lock.
    pub(super) fn open(
        dir: &Path,
        last: u64,
        wait: bool,
        restore: &mut dyn FnMut(u64, &[u8]) -> io::Result<()>,
    ) -> io::Result<Option<(Journal, Recovered)>> {
        let Some(claim) = Claim::take(dir, wait) else {
            return Ok(None);
        };
        let a = open_file(&dir.join(FILES[0]))?;
        let b = open_file(&dir.join(FILES[1]))?;
        let mut logs = [
            Log::load(dir.join(FILES[0]), a)?,
            Log::load(dir.join(FILES[1]), b)?,
        ];
        let mut found: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
        let mut entries = 0;
        for log in &logs {
            log.read(&mut |seq, value| {
                entries += 1;
                if seq > last {
                    found.insert(seq, value.to_vec());
                }
            })?;
        }
        let mut recovered = Recovered {
            entries,
            restored: 0,
            last,
        };
        for (seq, value) in &found {
            if *seq != recovered.last + 1 {
                return Err(damaged(
                    &logs[0].path,
                    &format!(
                        "it holds record {seq}, but the store ends at record {}: records {} to \
                         {} are missing",
                        recovered.last,
                        recovered.last + 1,
                        seq - 1
                    ),
                ));
            }
            restore(*seq, value)?;
            recovered.restored += 1;
            recovered.last = *seq;
        }
        for log in &mut logs {
            if log.len < INITIAL {
                log.grow_to(INITIAL)?;
            }
        }
        if found.is_empty() && logs.iter().all(|l| l.pass == 0) {
            // New files: their directory entries.
            File::open(dir)?.sync_all()?;
        }
        let journal = Journal {
            logs,
            grow_failed: None,
            #[cfg(test)]
            hold_growth: false,
            _claim: claim,
            active: 0,
            other: Other::Draining(recovered.last),
            next: recovered.last + 1,
        };
        Ok(Some((journal, recovered)))
    }

    /// Starts both logs over, after everything before `next` was made durable elsewhere
    /// (sled synced).
    pub(super) fn recycle_all(&mut self, next: u64) -> io::Result<()> {
        for log in &mut self.logs {
            log.recycle()?;
        }
        self.active = 0;
        self.other = Other::Ready;
        self.next = next;
        Ok(())
    }

    /// The sequence number after the last one written (or covered by a sync of sled).
    pub(super) fn next(&self) -> u64 {
        self.next
    }

    /// Writes `batch` (entries `self.next ..= batch.last`) to the active log and syncs it.
    /// `Ok(false)`: it does not fit even grown to [`MAX`]; nothing was written (sync sled,
    /// then [`Journal::recycle_all`]).
    pub(super) fn write(&mut self, batch: &mut Pending) -> io::Result<bool> {
        let end = self.logs[self.active].offset + padded(batch.buf.len()) as u64;
        if end > self.logs[self.active].len {
            if end > MAX {
                return Ok(false);
            }
            // A growth ahead of this log: wait for the room it is making.
            let waited = self.logs[self.active].absorb(Some(end));
            self.note(waited);
            let log = &mut self.logs[self.active];
            if end > log.len {
                log.grow_to(end.next_power_of_two().clamp(INITIAL, MAX))?;
            }
        }
        let log = &mut self.logs[self.active];
        batch.stamp(log.pass);
        // Whole pages only: no page is read back to be modified, and each write dirties
        // exactly the pages it covers.
        let used = batch.buf.len();
        batch.buf.resize(padded(used), 0);
        let written = log
            .file
            .write_all_at(&batch.buf, log.offset)
            .and_then(|()| log.file.sync_data());
        batch.buf.truncate(used);
        written?;
        log.offset = end;
        log.since.get_or_insert_with(Instant::now);
        self.next = batch.last + 1;
        // Started here, not only by the checkpoint thread: under load a log fills from three
        // quarters to full faster than the thread's rounds come, and a round waits for a sync
        // of sled.
        self.grow_ahead();
        Ok(true)
    }

    /// What the inactive log is doing.
    pub(super) fn other(&self) -> Other {
        self.other
    }

    /// Whether the active log should be switched out (it is big or old, and the other is
    /// ready).
    pub(super) fn switch_due(&self) -> bool {
        let log = &self.logs[self.active];
        self.other == Other::Ready
            && (log.offset - HEADER >= DUE_BYTES
                || log.since.is_some_and(|t| t.elapsed() >= DUE_AGE))
    }

    /// Makes the ready log active; the old one drains. Returns the last sequence number it
    /// holds: a sync of sled that starts after this call covers it.
    pub(super) fn switch(&mut self) -> u64 {
        let through = self.next - 1;
        self.active = 1 - self.active;
        self.other = Other::Draining(through);
        through
    }

    /// Sled has synced every record up to `through`: the draining log, if that covers it,
    /// is recycled.
    pub(super) fn drained(&mut self, through: u64) -> io::Result<()> {
        if let Other::Draining(t) = self.other {
            if t <= through {
                self.logs[1 - self.active].recycle()?;
                self.other = Other::Ready;
            }
        }
        Ok(())
    }

    /// Whether nothing is written that sled may not have synced.
    pub(super) fn is_clean(&self) -> bool {
        self.other == Other::Ready && self.logs[self.active].offset == HEADER
    }

    /// The checkpoint thread's part of *Growing ahead* (module doc): takes in the growers'
    /// progress and starts a growth that is due (see [`Journal::grow_ahead`]). `Err`: a
    /// growth failed (reported once for each failure; the next try comes [`GROW_RETRY`]
    /// later).
    pub(super) fn tend(&mut self) -> io::Result<()> {
        self.grow_ahead();
        match self.grow_failed.as_mut().and_then(|(_, e)| e.take()) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Starts a growth of the active log when it is three quarters full, to twice its size,
    /// on a thread of its own, and returns at once. At most one growth per log at a time.
    fn grow_ahead(&mut self) {
        for i in 0..2 {
            let done = self.logs[i].absorb(None);
            self.note(done);
        }
        if let Some((at, _)) = &self.grow_failed {
            if at.elapsed() < GROW_RETRY {
                return;
            }
            self.grow_failed = None;
        }
        let active = &self.logs[self.active];
        let (used, room) = (
            active.offset.saturating_sub(HEADER),
            active.len.saturating_sub(HEADER),
        );
        if active.len >= MAX || used <= room / 4 * 3 {
            return;
        }
        let to = active.len.saturating_mul(2).min(MAX);
        #[cfg(test)]
        let held = std::mem::take(&mut self.hold_growth);
        #[cfg(not(test))]
        let held = false;
        let started = self.logs[self.active].grow_behind(to, held);
        self.note(started.err());
    }

    /// Keeps the error of a growth that failed, for [`Journal::tend`].
    fn note(&mut self, failed: Option<io::Error>) {
        if let Some(e) = failed {
            self.grow_failed = Some((Instant::now(), Some(e)));
        }
    }
}

impl Log {
    /// Starts a thread that grows the log to `to` (see [`Growth`]), unless one is already
    /// growing it. `held`: tests only, see [`Progress::held`].
    fn grow_behind(&mut self, to: u64, held: bool) -> io::Result<()> {
        if self.growth.is_some() || to <= self.len {
            return Ok(());
        }
        let from = self.len;
        let file = Arc::clone(&self.file);
        let progress = Arc::new(Grown {
            progress: Mutex::new(Progress {
                len: from,
                done: false,
                error: None,
                #[cfg(test)]
                held,
            }),
            more: Condvar::new(),
        });
        #[cfg(not(test))]
        let _ = held;
        let theirs = Arc::clone(&progress);
        let handle = std::thread::Builder::new()
            .name("audit-grow".into())
            .spawn(move || extend(&file, from, to, &theirs))?;
        self.growth = Some(Growth {
            progress,
            handle: Some(handle),
        });
        Ok(())
    }

    /// Takes in how far the growth under way got; with `Some(end)`, first waits until it has
    /// made room up to `end` or ended. Returns the error it ended with, if any.
    fn absorb(&mut self, need: Option<u64>) -> Option<io::Error> {
        let growth = self.growth.as_mut()?;
        let (len, done, error) = {
            let mut p = super::commit::lock(&growth.progress.progress);
            if let Some(end) = need {
                while p.len < end && !p.done {
                    p = growth
                        .progress
                        .more
                        .wait(p)
                        .unwrap_or_else(PoisonError::into_inner);
                }
            }
            (p.len, p.done, p.error.take())
        };
        self.len = self.len.max(len);
        if done {
            // The thread has ended: joining it does not wait.
            self.growth = None;
        }
        error
    }
}

/// A growth ahead under way (see *Growing ahead* in the module doc): a thread writing zeros
/// past the log's `len`, which commits do not write to until the grower has synced them.
#[derive(Debug)]
struct Growth {
    progress: Arc<Grown>,
    handle: Option<JoinHandle<()>>,
}

impl Drop for Growth {
    fn drop(&mut self) {
        super::commit::join(self.handle.take(), "audit-grow");
    }
}

/// What a grower shares with the journal.
#[derive(Debug)]
struct Grown {
    progress: Mutex<Progress>,
    /// Notified each time `progress` changes.
    more: Condvar,
}

#[derive(Debug)]
struct Progress {
    /// The file holds synced zeros (or entries) up to here.
    len: u64,
    /// The grower has ended, having reached its size or failed.
    done: bool,
    error: Option<io::Error>,
    /// Tests: the grower waits while this is set, so that a test can commit before any of
    /// the growth's zeros are written.
    #[cfg(test)]
    held: bool,
}

/// The grower's thread: writes zeros to `file` from `from` to `to`, syncing and publishing
/// every [`GROW_STEP`].
fn extend(file: &File, from: u64, to: u64, shared: &Grown) {
    #[cfg(test)]
    {
        let mut p = super::commit::lock(&shared.progress);
        while p.held {
            p = shared.more.wait(p).unwrap_or_else(PoisonError::into_inner);
        }
    }
    let mut at = from;
    loop {
        let end = at.saturating_add(GROW_STEP).min(to);
        let result = write_zeros(file, at, end).and_then(|()| file.sync_data());
        let mut p = super::commit::lock(&shared.progress);
        match result {
            Ok(()) => {
                at = end;
                p.len = at;
                p.done = at >= to;
            }
            Err(e) => {
                p.done = true;
                p.error = Some(e);
            }
        }
        let done = p.done;
        drop(p);
        shared.more.notify_all();
        if done {
            return;
        }
    }
}

/// Writes zeros to `file` from `from` to `to`, page by page: a file written in large pieces
/// gets large page-cache folios, and a small write into one then dirties (and `fdatasync`
/// writes out) the whole folio, up to hundreds of KiB for each commit.
fn write_zeros(file: &File, from: u64, to: u64) -> io::Result<()> {
    let zeros = [0u8; PAGE];
    let mut at = from;
    while at < to {
        let n = usize::try_from(to - at).unwrap_or(PAGE).min(PAGE);
        file.write_all_at(&zeros[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

impl Log {
    /// Reads the header of `file`: an all-zero or missing header is an empty log (a new file,
    /// or one whose creator died before writing the header, so before any entry).
    fn load(path: PathBuf, file: File) -> io::Result<Log> {
        let len = file.metadata()?.len();
        let mut head = [0u8; HEADER_USED];
        let got = if len >= HEADER_USED as u64 {
            file.read_exact_at(&mut head, 0)?;
            true
        } else {
            false
        };
        let pass = if !got || head.iter().all(|&b| b == 0) {
            0
        } else {
            parse_header(&head).ok_or_else(|| {
                damaged(
                    &path,
                    "its header is damaged, so the records in it cannot be trusted",
                )
            })?
        };
        Ok(Log {
            path,
            file: Arc::new(file),
            len,
            offset: HEADER,
            pass,
            since: None,
            growth: None,
        })
    }

    /// Calls `each` with the entries of the current pass, in order.
    fn read(&self, each: &mut dyn FnMut(u64, &[u8])) -> io::Result<()> {
        if self.pass == 0 || self.len <= HEADER {
            return Ok(());
        }
        let mut data = Vec::new();
        io::Read::read_to_end(&mut &*self.file, &mut data)?;
        let mut at = usize::try_from(HEADER).unwrap_or(usize::MAX);
        let mut prev: Option<u64> = None;
        // A batch ends with zeros up to a page boundary; the next one starts there.
        while let Some((seq, value, end)) =
            entry_at(&data, at, self.pass).or_else(|| entry_at(&data, padded(at), self.pass))
        {
            if prev.is_some_and(|p| seq != p + 1) {
                break;
            }
            each(seq, value);
            prev = Some(seq);
            at = end;
        }
        Ok(())
    }

    /// A new pass: what the log held no longer counts.
    ///
    /// The new header is written, not synced. Until it reaches the disk, a crash leaves the
    /// old pass in place, whose entries sled has all synced (a log is recycled only then), so
    /// recovery skips them. The first batch of the new pass is synced with `fdatasync` of the
    /// same file, which writes the header too: no entry of a pass is durable before its
    /// header. This saves a device round trip per switch, taken under the journal's lock
    /// that every commit waits for.
    fn recycle(&mut self) -> io::Result<()> {
        let pass = match self.pass.wrapping_add(1) {
            0 => 1,
            p => p,
        };
        let mut h = [0u8; HEADER_USED];
        h[..8].copy_from_slice(MAGIC);
        h[8..12].copy_from_slice(&pass.to_le_bytes());
        let check = Sha256::digest(&h[..12]);
        h[12..].copy_from_slice(&check[..8]);
        self.file.write_all_at(&h, 0)?;
        self.pass = pass;
        self.offset = HEADER;
        self.since = None;
        Ok(())
    }

    /// Extends the file with zeros to `to` bytes and syncs it, so that later writes overwrite
    /// allocated blocks (no extent or size change to commit).
    fn grow_to(&mut self, to: u64) -> io::Result<()> {
        write_zeros(&self.file, self.len, to)?;
        self.file.sync_data()?;
        self.len = to;
        Ok(())
    }
}

/// `n` rounded up to a whole number of pages.
fn padded(n: usize) -> usize {
    n.div_ceil(PAGE) * PAGE
}

fn open_file(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
}

/// The pass of a sound header.
fn parse_header(h: &[u8; HEADER_USED]) -> Option<u32> {
    if &h[..8] != MAGIC || Sha256::digest(&h[..12])[..8] != h[12..] {
        return None;
    }
    let pass = u32::from_le_bytes(h[8..12].try_into().ok()?);
    (pass != 0).then_some(pass)
}

/// The entry of pass `pass` at `at`, if one holds together there: `(seq, value, end)`.
fn entry_at(data: &[u8], at: usize, pass: u32) -> Option<(u64, &[u8], usize)> {
    let head = data.get(at..at.checked_add(ENTRY_HEAD)?)?;
    let seq = u64::from_le_bytes(head[..8].try_into().ok()?);
    if u32::from_le_bytes(head[8..12].try_into().ok()?) != pass {
        return None;
    }
    let len = usize::try_from(u32::from_le_bytes(head[12..16].try_into().ok()?)).ok()?;
    let start = at + ENTRY_HEAD;
    let end = start.checked_add(len)?;
    let value = data.get(start..end)?;
    if value.len() <= HASH_LEN
        || Sha256::digest(&value[HASH_LEN..]).as_slice() != &value[..HASH_LEN]
    {
        return None;
    }
    Some((seq, value, end))
}

fn damaged(path: &Path, why: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "the audit journal {} is damaged: {why}. Check the log with `agentgate audit \
             verify`; if the gate last stopped cleanly the journal holds nothing the store \
             lacks, and moving its files aside lets the gate start",
            path.display()
        ),
    )
}

/// The directories whose journal is open in this process.
static OPEN: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// This process's claim on a directory's journal, given up when dropped. (Other processes are
/// kept out by sled's lock on the directory, taken before a journal is opened.)
#[derive(Debug)]
struct Claim(PathBuf);

impl Claim {
    /// Claims `dir`; when `wait` is set, waits up to [`LOCK_WAIT`] for a handle being closed.
    fn take(dir: &Path, wait: bool) -> Option<Claim> {
        let deadline = Instant::now() + if wait { LOCK_WAIT } else { Duration::ZERO };
        loop {
            {
                let mut open = OPEN.lock().unwrap_or_else(PoisonError::into_inner);
                if !open.iter().any(|d| d == dir) {
                    open.push(dir.to_path_buf());
                    return Some(Claim(dir.to_path_buf()));
                }
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        let mut open = OPEN.lock().unwrap_or_else(PoisonError::into_inner);
        open.retain(|d| d != &self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(seq: u64) -> Vec<u8> {
        let body = format!("{{\"seq\":{seq},\"kind\":\"outcome\"}}").into_bytes();
        let mut v = Sha256::digest(&body).to_vec();
        v.extend_from_slice(&body);
        v
    }

    /// Opens the journal as the store does: restores, then starts over.
    fn open(dir: &Path, last: u64) -> (Journal, Vec<u64>) {
        let mut got = Vec::new();
        let (mut j, r) = Journal::open(dir, last, false, &mut |seq, v| {
            assert_eq!(v, value(seq));
            got.push(seq);
            Ok(())
        })
        .unwrap()
        .unwrap();
        assert_eq!(r.restored as usize, got.len());
        j.recycle_all(r.last + 1).unwrap();
        (j, got)
    }

    fn batch(seqs: std::ops::RangeInclusive<u64>) -> Pending {
        let mut p = Pending::default();
        for s in seqs {
            p.push(s, &value(s));
        }
        p
    }

    fn tempdir(name: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("agentgate-journal-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn entries_above_the_store_are_restored_in_order_from_both_logs() {
        let dir = tempdir("restore");
        let (mut j, got) = open(&dir, 4);
        assert!(got.is_empty());
        assert!(j.write(&mut batch(5..=7)).unwrap());
        // A switch whose drain never finished: the old log still counts.
        assert_eq!(j.switch(), 7);
        assert!(j.write(&mut batch(8..=9)).unwrap());
        drop(j);
        // The store kept up to 6: 7, 8 and 9 come back.
        let (_, got) = open(&dir, 6);
        assert_eq!(got, vec![7, 8, 9]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A journal that wrote 1 to 3, switched, and wrote 4 and 5 to the other log.
    fn switched_after_3(dir: &Path) -> Journal {
        let (mut j, _) = open(dir, 0);
        assert!(j.write(&mut batch(1..=3)).unwrap());
        assert_eq!(j.switch(), 3);
        assert!(j.write(&mut batch(4..=5)).unwrap());
        j
    }

    #[test]
    fn a_drained_log_is_recycled_and_no_longer_counts() {
        let dir = tempdir("drained");
        let mut j = switched_after_3(&dir);
        assert_eq!(j.other(), Other::Draining(3));
        j.drained(3).unwrap();
        assert_eq!(j.other(), Other::Ready);
        drop(j);
        // Only 4 and 5 are read back (the store is said to have nothing: a gap).
        let err = Journal::open(&dir, 0, false, &mut |_, _| Ok(())).unwrap_err();
        assert!(
            err.to_string().contains("records 1 to 3 are missing"),
            "{err}"
        );
        let (_, got) = open(&dir, 3);
        assert_eq!(got, vec![4, 5]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_recycled_header_lost_in_a_crash_leaves_only_entries_the_store_has() {
        let dir = tempdir("unsynced-header");
        let mut j = switched_after_3(&dir);
        let mut old = [0u8; HEADER_USED];
        j.logs[0].file.read_exact_at(&mut old, 0).unwrap();
        j.drained(3).unwrap();
        // The crash comes before the new header (not synced) reached the disk: the drained
        // log still reads as its old pass, entries 1 to 3, which sled synced before the drain.
        j.logs[0].file.write_all_at(&old, 0).unwrap();
        drop(j);
        let (_, got) = open(&dir, 3);
        assert_eq!(got, vec![4, 5]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_torn_entry_ends_the_log_and_older_passes_are_ignored() {
        let dir = tempdir("torn");
        let (mut j, _) = open(&dir, 0);
        assert!(j.write(&mut batch(1..=20)).unwrap());
        // Recycled: a shorter pass over the older one.
        j.recycle_all(21).unwrap();
        assert!(j.write(&mut batch(21..=22)).unwrap());
        let torn_at = j.logs[j.active].offset;
        assert!(j.write(&mut batch(23..=23)).unwrap());
        // The last entry's value loses a byte on the way to the disk.
        j.logs[j.active]
            .file
            .write_all_at(b"X", torn_at + 40)
            .unwrap();
        drop(j);
        let (_, got) = open(&dir, 20);
        assert_eq!(got, vec![21, 22]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn logs_grown_ahead_take_commits_while_they_grow_and_lose_none() {
        let dir = tempdir("ahead");
        let (mut j, _) = open(&dir, 0);
        let mut seq = 0;
        // Each batch of one entry takes a page.
        let mut commit = move |j: &mut Journal, n: u64| {
            for _ in 0..n {
                seq += 1;
                assert!(j.write(&mut batch(seq..=seq)).unwrap());
            }
            seq
        };
        let pages = (INITIAL - HEADER) / PAGE as u64;
        let due = pages * 3 / 4 + 1;
        commit(&mut j, due - 1);
        assert!(
            j.logs[0].growth.is_none(),
            "three quarters full is not yet due"
        );
        j.hold_growth = true;
        commit(&mut j, 1);
        let grower = j.logs[0].growth.as_ref().map(|g| Arc::clone(&g.progress));
        let grower = grower.expect("a commit past three quarters starts a growth");
        // Full, and the growth has not written anything yet.
        commit(&mut j, pages - due);
        assert_eq!(j.logs[0].offset, INITIAL);
        // Commits go on past the old end: they wait for the room.
        let committing = std::thread::spawn(move || {
            let last = commit(&mut j, 8);
            (j, last)
        });
        std::thread::sleep(Duration::from_millis(100));
        let waiting = !committing.is_finished();
        crate::audit::commit::lock(&grower.progress).held = false;
        grower.more.notify_all();
        assert!(waiting, "a commit did not wait for the room");
        let (mut j, last) = committing.join().unwrap();
        for log in &mut j.logs {
            assert!(log.absorb(Some(u64::MAX)).is_none());
        }
        j.tend().unwrap();
        let len = |i: usize| std::fs::metadata(dir.join(FILES[i])).unwrap().len();
        assert_eq!([len(0), len(1)], [2 * INITIAL, INITIAL]);
        assert_eq!([j.logs[0].len, j.logs[1].len], [2 * INITIAL, INITIAL]);
        drop(j);
        // Nothing the commits wrote was overwritten by a growth's zeros.
        let (_, got) = open(&dir, 0);
        assert_eq!(got, (1..=last).collect::<Vec<_>>());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_damaged_header_is_an_error() {
        let dir = tempdir("header");
        let (j, _) = open(&dir, 0);
        j.logs[1].file.write_all_at(b"junk", 0).unwrap();
        drop(j);
        let err = Journal::open(&dir, 0, false, &mut |_, _| Ok(())).unwrap_err();
        assert!(err.to_string().contains("header is damaged"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_batch_beyond_the_largest_size_is_refused_unwritten() {
        let dir = tempdir("full");
        let (mut j, _) = open(&dir, 0);
        let mut big = Pending::default();
        let v = vec![7u8; 1 << 20];
        for s in 1..=33 {
            big.push(s, &v);
        }
        assert!(!j.write(&mut big).unwrap());
        assert!(j.is_clean());
        assert!(j.write(&mut batch(1..=3)).unwrap());
        assert_eq!(j.next(), 4);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn one_handle_at_a_time() {
        let dir = tempdir("lock");
        let (j, _) = open(&dir, 0);
        assert!(
            Journal::open(&dir, 0, false, &mut |_, _| Ok(()))
                .unwrap()
                .is_none()
        );
        drop(j);
        assert!(
            Journal::open(&dir, 0, false, &mut |_, _| Ok(()))
                .unwrap()
                .is_some()
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
