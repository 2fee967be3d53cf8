//! Where challenges are kept: tree `holds` of the data directory's sled database, key = the
//! challenge id, value = the challenge as JSON. The only file of [`crate::holds`] that uses
//! sled.
//!
//! Durability follows [`crate::audit`]'s store: sled 0.34's `flush` persists neither the log
//! file's size nor the device cache, and does not sync the separate files it writes large
//! values to (`blobs/`), so [`Backing::sync`] follows the flush with `fdatasync` of the log
//! file `db` and `fsync` of recent blob files and their directory. Syncs are group-committed:
//! a caller whose write is already covered by a sync that started after it returns with that
//! sync, so a burst of approvals on many threads shares a few syncs.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, SystemTime};

use super::{Challenge, HoldError, HoldLimits, Holds, State, lock};

/// The tree's name.
pub const TREE: &str = "holds";

/// The backing store of a [`Holds`]: sled, or nothing (tests, [`Holds::in_memory`]).
#[derive(Debug)]
pub(super) enum Backing {
    Memory,
    Sled(SledStore),
}

#[derive(Debug)]
pub(super) struct SledStore {
    tree: sled::Tree,
    dir: PathBuf,
    log: File,
    group: Mutex<Group>,
    done: Condvar,
    /// The `blobs/` directory's mtime at the last scan, and when that scan began.
    blobs: Mutex<Option<(SystemTime, SystemTime)>>,
}

/// Group-commit bookkeeping: writes are numbered; `synced` is the last number a finished sync
/// covered.
#[derive(Debug, Default)]
struct Group {
    written: u64,
    synced: u64,
    syncing: bool,
    /// The error of the last sync, with the write number it covered.
    failed: Option<(u64, String)>,
}

fn store_err(e: impl std::fmt::Display) -> HoldError {
    HoldError::Store(e.to_string())
}

impl Backing {
    /// Writes `c` (not yet durable; see [`Backing::sync`]). Returns the write's number.
    pub(super) fn put(&self, c: &Challenge) -> Result<u64, HoldError> {
        let Backing::Sled(s) = self else {
            return Ok(0);
        };
        let value = serde_json::to_vec(c).map_err(store_err)?;
        s.tree.insert(c.id.as_bytes(), value).map_err(store_err)?;
        let mut g = lock(&s.group);
        g.written += 1;
        Ok(g.written)
    }

    /// Returns once write `n` (from [`Backing::put`]) and every earlier one is on disk.
    pub(super) fn sync(&self, n: u64) -> Result<(), HoldError> {
        let Backing::Sled(s) = self else {
            return Ok(());
        };
        let mut g = lock(&s.group);
        loop {
            if g.synced >= n {
                return match &g.failed {
                    Some((upto, e)) if *upto >= n => Err(HoldError::Store(e.clone())),
                    _ => Ok(()),
                };
            }
            if !g.syncing {
                g.syncing = true;
                let target = g.written;
                drop(g);
                let result = s.sync_now();
                g = lock(&s.group);
                g.syncing = false;
                g.synced = target;
                g.failed = result.err().map(|e| (target, e.to_string()));
                s.done.notify_all();
                continue;
            }
            g = s
                .done
                .wait(g)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
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
        let log_path = dir.join("db");
        let log = File::open(&log_path)
            .map_err(|e| store_err(format!("cannot open {}: {e}", log_path.display())))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| store_err(format!("cannot sync {}: {e}", dir.display())))?;
        Ok(SledStore {
            tree,
            dir: dir.to_path_buf(),
            log,
            group: Mutex::new(Group::default()),
            done: Condvar::new(),
            blobs: Mutex::new(None),
        })
    }

    fn sync_now(&self) -> Result<(), HoldError> {
        self.tree.flush().map_err(store_err)?;
        self.log
            .sync_data()
            .and_then(|()| self.sync_blobs())
            .map_err(|e| store_err(format!("fsync: {e}")))
    }

    /// `fsync`s the blob files written since the last scan, and their directory (as the audit
    /// store does: a recent directory mtime is rescanned, two files may share a tick).
    fn sync_blobs(&self) -> io::Result<()> {
        const MARGIN: Duration = Duration::from_secs(2);
        let dir = self.dir.join("blobs");
        let mtime = match std::fs::metadata(&dir).and_then(|m| m.modified()) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let mut seen = lock(&self.blobs);
        let now = SystemTime::now();
        let recent = now.duration_since(mtime).unwrap_or_default() < MARGIN;
        if let Some((m, _)) = *seen {
            if m == mtime && !recent {
                return Ok(());
            }
        }
        let since = seen.map_or(SystemTime::UNIX_EPOCH, |(_, at)| {
            at.checked_sub(MARGIN).unwrap_or(SystemTime::UNIX_EPOCH)
        });
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            let synced = File::open(&path).and_then(|f| {
                if f.metadata()?.modified()? >= since {
                    f.sync_all()?;
                }
                Ok(())
            });
            match synced {
                Err(e) if e.kind() == io::ErrorKind::NotFound => {} // collected meanwhile
                other => other?,
            }
        }
        File::open(&dir)?.sync_all()?;
        *seen = Some((mtime, now));
        Ok(())
    }
}

impl Holds {
    /// Opens the holds of `db`, the sled database opened at `dir` (tree [`TREE`]). Challenges
    /// a previous run left pending are marked [`State::Interrupted`] (decided at `now_ms`) and
    /// stored durably before this returns; they are not kept in memory.
    pub fn open(
        db: &sled::Db,
        dir: &Path,
        window: Duration,
        limits: HoldLimits,
        now_ms: i64,
    ) -> Result<Holds, HoldError> {
        let backing = Backing::Sled(SledStore::open(db, dir)?);
        let mut last = 0;
        let mut interrupted = 0usize;
        for mut c in backing.scan()? {
            if c.state == State::Pending {
                c.state = State::Interrupted;
                c.decided_ms = Some(now_ms);
                last = backing.put(&c)?;
                interrupted += 1;
            }
        }
        if interrupted > 0 {
            backing.sync(last)?;
            tracing::warn!(
                "holds: {interrupted} challenge(s) left pending by the last run are now interrupted"
            );
        }
        Ok(Holds::with_backing(backing, window, limits))
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

    fn temp_dir() -> PathBuf {
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
