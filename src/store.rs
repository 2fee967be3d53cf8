//! The data directory's sled database: opened once per process and shared by every component
//! that keeps state in it (counters, the audit log, holds). sled locks its directory, so a gate
//! restarted in the same process (tests, a reload) reuses the open database instead of failing
//! on its own lock.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant, SystemTime};

static OPEN: OnceLock<Mutex<HashMap<PathBuf, sled::Db>>> = OnceLock::new();

/// How long an open waits for a lock that is being released.
const LOCK_WAIT: Duration = Duration::from_secs(3);

/// Opens (or returns the already open) database at `path`, waiting briefly for a lock that is
/// being released (see [`open_unshared`]).
pub fn open(path: &Path) -> Result<sled::Db, sled::Error> {
    shared(path, LOCK_WAIT)
}

/// [`open`] without the wait: for tools that have somewhere else to go when a running gate
/// holds the database (the audit CLI asks the gate's API).
pub fn try_open(path: &Path) -> Result<sled::Db, sled::Error> {
    shared(path, Duration::ZERO)
}

fn shared(path: &Path, wait: Duration) -> Result<sled::Db, sled::Error> {
    let open = OPEN.get_or_init(Default::default);
    let mut map = match open.lock() {
        Ok(m) => m,
        Err(poisoned) => poisoned.into_inner(),
    };
    if let Some(db) = map.get(path) {
        return Ok(db.clone());
    }
    let db = fresh(path, wait)?;
    map.insert(path.to_path_buf(), db.clone());
    Ok(db)
}

/// Opens a new handle on the database at `path`, outside the shared map: for tools and tests
/// that close a database and open it again.
///
/// sled releases its directory lock from a background thread some moments after the last
/// handle is dropped (and the kernel releases a killed process's lock when it reaps it), so a
/// lock held by someone else is waited for, briefly: a gate restarted by its supervisor while
/// the old process exits still starts. Any other error, or a lock still held after
/// [`LOCK_WAIT`] (another gate really is running on this data dir), is returned as it is.
pub fn open_unshared(path: &Path) -> Result<sled::Db, sled::Error> {
    fresh(path, LOCK_WAIT)
}

/// sled's page cache. Its default, 1 GiB, lets a long-running gate's memory grow with its
/// audit log; the gate appends and reads back recent records, which this holds many times over.
const CACHE_BYTES: u64 = 64 << 20;

fn fresh(path: &Path, wait: Duration) -> Result<sled::Db, sled::Error> {
    let deadline = Instant::now() + wait;
    let mut pause = Duration::from_millis(5);
    loop {
        match sled::Config::new()
            .path(path)
            .cache_capacity(CACHE_BYTES)
            .open()
        {
            Err(e) if is_lock_contention(&e) && Instant::now() < deadline => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(100));
            }
            other => return other,
        }
    }
}

/// Whether `e` is sled failing to take its directory lock because another handle holds it.
pub fn is_lock_contention(e: &sled::Error) -> bool {
    match e {
        sled::Error::Io(io) => {
            io.kind() == std::io::ErrorKind::WouldBlock
                || io.to_string().contains("could not acquire lock")
        }
        _ => false,
    }
}

/// Makes what was inserted into a sled database durable against power loss, for the stores
/// that promise it (the audit log, the holds).
///
/// sled 0.34's `flush` writes its log with `sync_file_range` on Linux, which persists neither
/// the file's metadata (the size of an appended log) nor the device's write cache, and it does
/// not sync the separate files it writes large values to (`blobs/`). [`Durable::sync`] follows
/// the flush with `fdatasync` of the log file `db`, and `fsync` of the blob files written since
/// the last sync and of their directory.
#[derive(Debug)]
pub struct Durable {
    dir: PathBuf,
    log: std::fs::File,
    /// The `blobs/` directory's mtime at the last scan, and when that scan began.
    blobs: Mutex<Option<(SystemTime, SystemTime)>>,
}

/// Why [`Durable::sync`] failed.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("{0}")]
    Flush(#[from] sled::Error),
    #[error("fsync: {0}")]
    Fsync(#[from] std::io::Error),
}

/// How far back a blob scan looks past the previous one (timestamp granularity and skew).
const BLOB_MARGIN: Duration = Duration::from_secs(2);

impl Durable {
    /// For the database opened at `dir`: opens its log file and syncs the directory (the log's
    /// entry in it) once.
    pub fn open(dir: &Path) -> Result<Durable, String> {
        let log_path = dir.join("db");
        let log = std::fs::File::open(&log_path)
            .map_err(|e| format!("cannot open the log {}: {e}", log_path.display()))?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| format!("cannot sync {}: {e}", dir.display()))?;
        Ok(Durable {
            dir: dir.to_path_buf(),
            log,
            blobs: Mutex::new(None),
        })
    }

    /// The database's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Flushes `tree`'s database, then syncs its files (see the type's doc).
    pub fn sync(&self, tree: &sled::Tree) -> Result<(), SyncError> {
        tree.flush()?;
        self.log.sync_data()?;
        self.sync_blobs()?;
        Ok(())
    }

    /// `fsync`s the blob files written since the last scan, and their directory. The
    /// directory's mtime says whether anything was added; a recent mtime is rescanned anyway,
    /// since two files created within one timestamp tick leave the same mtime.
    fn sync_blobs(&self) -> std::io::Result<()> {
        use std::io::ErrorKind::NotFound;
        let dir = self.dir.join("blobs");
        let mtime = match std::fs::metadata(&dir).and_then(|m| m.modified()) {
            Ok(t) => t,
            Err(e) if e.kind() == NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let mut seen = self.blobs.lock().unwrap_or_else(PoisonError::into_inner);
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
            let synced = std::fs::File::open(&path).and_then(|f| {
                if f.metadata()?.modified()? >= since {
                    f.sync_all()?;
                }
                Ok(())
            });
            match synced {
                Err(e) if e.kind() == NotFound => {} // collected meanwhile
                other => other?,
            }
        }
        std::fs::File::open(&dir)?.sync_all()?;
        *seen = Some((mtime, now));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_held_elsewhere_is_waited_for_then_reported() {
        let dir = std::env::temp_dir().join(format!("agentgate-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let first = sled::open(&dir).unwrap();
        // Released after a moment: the second open waits for it and succeeds.
        let releaser = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            drop(first);
        });
        let second = open_unshared(&dir).unwrap();
        releaser.join().unwrap();
        // Held for good: the wait ends and the lock error is reported.
        let started = Instant::now();
        let err = open_unshared(&dir).unwrap_err();
        assert!(is_lock_contention(&err), "{err}");
        assert!(started.elapsed() >= LOCK_WAIT, "{:?}", started.elapsed());
        // And without the wait it is reported at once.
        let started = Instant::now();
        assert!(is_lock_contention(&try_open(&dir).unwrap_err()));
        assert!(started.elapsed() < LOCK_WAIT, "{:?}", started.elapsed());
        drop(second);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
