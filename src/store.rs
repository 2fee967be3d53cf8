//! The data directory's sled database: opened once per process and shared by every component
//! that keeps state in it (the counters today; the audit log and holds next). sled locks its
//! directory, so a gate restarted in the same process (tests, a future reload) reuses the open
//! database instead of failing on its own lock.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

static OPEN: OnceLock<Mutex<HashMap<PathBuf, sled::Db>>> = OnceLock::new();

/// Opens (or returns the already open) database at `path`.
pub fn open(path: &Path) -> Result<sled::Db, sled::Error> {
    let open = OPEN.get_or_init(Default::default);
    let mut map = match open.lock() {
        Ok(m) => m,
        Err(poisoned) => poisoned.into_inner(),
    };
    if let Some(db) = map.get(path) {
        return Ok(db.clone());
    }
    let db = sled::open(path)?;
    map.insert(path.to_path_buf(), db.clone());
    Ok(db)
}
