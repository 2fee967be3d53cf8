//! Where records are kept: the [`Sink`] trait, and [`SledSink`], its implementation on the data
//! directory's sled database (tree `audit`, key = `u64_be(seq)`, value = `sha256(body) ++
//! body`). The only file of [`crate::audit`] that uses sled.
//!
//! sled 0.34's `flush` writes its log with `sync_file_range` on Linux, which persists neither
//! the file's metadata (the size of an appended log) nor the device's write cache, and it does
//! not sync the separate files it writes large pages to (`blobs/`). So [`SledSink::sync`]
//! follows the flush with `fdatasync` of the log file `db`, and `fsync` of blob files created
//! since the last sync and of their directory: a record is durable against power loss, not
//! only against a crash of the process.

use std::fmt;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

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
}

/// The audit tree of a sled database, and the database's files for `fsync`.
#[derive(Clone)]
pub struct SledSink {
    tree: sled::Tree,
    files: Arc<Files>,
}

/// The sled directory's log file, and what the last blob scan saw.
struct Files {
    dir: PathBuf,
    log: File,
    /// The `blobs/` directory's mtime at the last scan, and when that scan began.
    blobs: Mutex<Option<(SystemTime, SystemTime)>>,
}

impl fmt::Debug for SledSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SledSink")
            .field("dir", &self.files.dir)
            .field("tree", &SledSink::TREE)
            .finish()
    }
}

impl SledSink {
    /// The tree's name.
    pub const TREE: &'static str = "audit";

    /// Opens (or creates) the tree [`SledSink::TREE`] of `db`, which was opened at `dir` (its
    /// log file `dir/db` is synced on every commit).
    pub fn open(db: &sled::Db, dir: &Path) -> Result<SledSink, AuditError> {
        let tree = db.open_tree(SledSink::TREE).map_err(write_err)?;
        let io_err = |what: &str, path: &Path, e: io::Error| {
            AuditError::Store(format!("{what} {}: {e}", path.display()))
        };
        let log_path = dir.join("db");
        let log = File::open(&log_path).map_err(|e| io_err("cannot open the log", &log_path, e))?;
        // The log's directory entry, once.
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io_err("cannot sync", dir, e))?;
        let files = Arc::new(Files {
            dir: dir.to_path_buf(),
            log,
            blobs: Mutex::new(None),
        });
        Ok(SledSink { tree, files })
    }
}

impl Files {
    /// `fsync`s the blob files written since the last scan, and their directory. The
    /// directory's mtime says whether anything was added; a recent mtime is rescanned anyway,
    /// since two files created within one timestamp tick leave the same mtime.
    fn sync_blobs(&self) -> io::Result<()> {
        let dir = self.dir.join("blobs");
        let mtime = match std::fs::metadata(&dir).and_then(|m| m.modified()) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let mut seen = super::commit::lock(&self.blobs);
        let now = SystemTime::now();
        let recent = now.duration_since(mtime).unwrap_or_default() < BLOB_MARGIN;
        if let Some((m, _)) = *seen {
            if m == mtime && !recent {
                return Ok(());
            }
        }
        let since = seen.map_or(SystemTime::UNIX_EPOCH, |(_, at)| {
            at.checked_sub(BLOB_MARGIN)
                .unwrap_or(SystemTime::UNIX_EPOCH)
        });
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            match sync_if_newer(&path, since) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => {} // collected meanwhile
                other => other?,
            }
        }
        File::open(&dir)?.sync_all()?;
        *seen = Some((mtime, now));
        Ok(())
    }
}

/// How far back the blob scan looks past the previous one (timestamp granularity and skew).
const BLOB_MARGIN: Duration = Duration::from_secs(2);

fn sync_if_newer(path: &Path, since: SystemTime) -> io::Result<()> {
    let f = File::open(path)?;
    if f.metadata()?.modified()? >= since {
        f.sync_all()?;
    }
    Ok(())
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
        self.tree
            .insert(seq.to_be_bytes(), value)
            .map_err(write_err)?;
        Ok(())
    }

    fn sync(&self) -> Result<(), AuditError> {
        self.tree.flush().map_err(write_err)?;
        let synced = self
            .files
            .log
            .sync_data()
            .and_then(|()| self.files.sync_blobs());
        synced.map_err(|e| AuditError::Store(format!("fsync: {e}")))
    }

    fn last(&self) -> Result<Option<(u64, Vec<u8>)>, AuditError> {
        match self.tree.last().map_err(read_err)? {
            None => Ok(None),
            Some((k, v)) => Ok(Some((seq_of(&k)?, v.to_vec()))),
        }
    }

    fn scan(&self, from: u64) -> Scan<'_> {
        Box::new(self.tree.range(from.to_be_bytes()..).map(|item| {
            let (k, v) = item.map_err(read_err)?;
            Ok((seq_of(&k)?, v.to_vec()))
        }))
    }

    fn remove(&self, seq: u64) -> Result<(), AuditError> {
        self.tree.remove(seq.to_be_bytes()).map_err(write_err)?;
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
        Ok(db) => SledSink::open(&db, path),
        Err(e) if crate::store::is_lock_contention(&e) => Err(AuditError::Locked {
            path: path.to_path_buf(),
        }),
        Err(e) => Err(read_err(e)),
    }
}
