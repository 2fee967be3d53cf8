//! The data directory's sled database: opened once per process and shared by every component
//! that keeps state in it (counters, the audit log, holds). sled locks its directory, so a gate
//! restarted in the same process (tests, a reload) reuses the open database instead of failing
//! on its own lock.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

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

fn fresh(path: &Path, wait: Duration) -> Result<sled::Db, sled::Error> {
    let deadline = Instant::now() + wait;
    let mut pause = Duration::from_millis(5);
    loop {
        match sled::open(path) {
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
