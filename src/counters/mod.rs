//! The counters behind the policy language's `count(PATTERN, by: agent|params.F, window: D)`:
//! how many requests of one series were admitted in the sliding window `(now - D, now]`, the
//! request being decided excluded.
//!
//! # Model
//! A *series* ([`SeriesKey`]) is one count spec (pattern text and `by` selector) and one group
//! value (the agent name or the parameter's value). It holds its admitted requests as a list of
//! *entries* in time order, each `(t_first, t_last, cumulative count)`. A request admitted at
//! `now` joins the newest entry if `now < t_first + COALESCE_MS` (or if the clock went back,
//! see below), and otherwise starts a new entry. Each entry keeps the running total of all
//! entries up to it, so a count is one binary search plus one subtraction:
//! O(log entries), whatever the window and however many events it holds.
//!
//! # Resolution
//! An entry is counted when its `t_last` is inside the window. A request alone in its entry
//! (the usual case: requests of one series more than [`COALESCE_MS`] apart) is therefore
//! counted exactly, to the millisecond: the window is `(now - window, now]`, an event at
//! exactly `now - window` is outside. Requests less than [`COALESCE_MS`] after the start of the
//! newest entry are coalesced into it and counted as if they had all happened at the last of
//! them, so they stay in a window up to `COALESCE_MS - 1` ms longer than they should. The
//! count is exact to that bucket, and the error is only ever an over-count: no request inside
//! the window is ever missed, so a limit can only hold early, never late.
//! Windows longer than [`MAX_WINDOW_MS`] are clamped to it.
//!
//! # Memory
//! - Per series: the entries' `t_first` are at least `COALESCE_MS` apart, and every record
//!   drops the series' entries whose `t_last <= now - MAX_WINDOW_MS` (no window can reach
//!   them). A series therefore holds at most `MAX_WINDOW_MS / COALESCE_MS + 1` = 86,401
//!   entries of 32 bytes (about 2.8 MB) however fast requests arrive, and one entry per
//!   request when they are sparse.
//! - Series: one exists only while it has an event in the last 24 h. [`Counters::prune`]
//!   (the owner calls it periodically, say once a minute) drops the rest, in memory and on
//!   disk. At most `max_series` series exist (default [`DEFAULT_MAX_SERIES`], see
//!   [`Counters::with_max_series`]); when full, a record that would start a new series first
//!   prunes its own shard, and if that frees nothing it fails with
//!   [`CounterError::TooManySeries`] and records nothing. The engine treats an error as it
//!   treats any other (fail closed), so an agent that spreads requests over a million group
//!   values is refused further new values instead of growing the gate's memory or silently
//!   resetting someone's limit by eviction.
//!
//! # Concurrency
//! Series live in [`SHARDS`] striped shards, each a `Mutex<HashMap<SeriesKey, Series>>`.
//! [`Counters::admit`] locks the shards of every key it is given, in shard order and once
//! each (so two admissions never deadlock), runs the decision, records, and unlocks: the
//! count a decision sees and the record of its admission are one atomic step, and N
//! concurrent requests against a limit L see the counts 0, 1, 2, ... and exactly L are
//! admitted. Unrelated series share a lock only when they hash to the same shard. Locks are
//! held across the sled write of the same series (that keeps memory and disk in the same
//! order); no lock covers all series.
//!
//! # Persistence
//! With [`Counters::open`], every change to an entry is written to the sled tree before the
//! lock is released (a plain insert, no batch: sled batches take a process-wide lock). Layout,
//! one sled key per entry:
//!
//! ```text
//! key   = u64_be(len(spec)) ++ spec ++ u64_be(len(group)) ++ group ++ time_be(t_first)
//! value = u64_be(count of the entry) ++ time_be(t_last)
//! time_be(t) = u64_be((t as u64) ^ (1 << 63))   // order-preserving, negative times too
//! ```
//!
//! Opening reads every entry back, so a restart gives the same counts; entries older than
//! 24 h are dropped then. sled writes its log every 500 ms by default and on drop, and
//! [`Counters::flush`] forces it; a crash can lose at most the admissions since the last
//! write of the log. A store error fails the admission ([`CounterError::Store`]); with several
//! series, those written before the error stay counted (an over-count, never an under-count).
//!
//! # Clock
//! This module never reads the clock; every call takes `now` in unix milliseconds. If the
//! clock goes back (`now` earlier than a series' newest event), a new event joins the newest
//! entry (it counts as having happened then, later than it did: stricter, and the entry list
//! stays sorted), and events stamped after `now` are counted as current (the window is
//! `(now - window, now + 24 h]`), so a clock step back never resets a limit. Entries stamped
//! more than 24 h after `now` (the clock was far ahead, then corrected) are not counted and are
//! dropped on the next record or prune: a clock that was wrong by more than a day resets the
//! series rather than holding its limits saturated for as long as it was wrong.

mod store;

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use store::Store;

/// The longest window `count(...)` accepts (24 h), and how long events are kept.
pub const MAX_WINDOW_MS: u64 = 24 * 3600 * 1000;

/// Events of one series less than this many milliseconds after the start of its newest entry
/// are coalesced into that entry (see the module doc, *Resolution*).
pub const COALESCE_MS: i64 = 1000;

/// How many series a [`Counters`] holds at most unless told otherwise.
pub const DEFAULT_MAX_SERIES: usize = 1_000_000;

/// What a [`CountView`] inside [`Counters::admit`] answers for a key it was not given: large
/// enough that every `count(...) >= N` holds and every `count(...) < N` fails, and still
/// positive as an `i64`. Asking about an unlisted key is a caller bug; this makes it visible
/// (and strict) rather than racy.
pub const UNLISTED: u64 = i64::MAX as u64;

/// Lock stripes.
pub const SHARDS: usize = 128;

const MAX_WINDOW: i64 = MAX_WINDOW_MS as i64;

/// Identifies one counted series: the count spec (the pattern text and the `by` selector, e.g.
/// `"gmail.users.messages.send|agent"`) and the group value (e.g. the agent name or the param
/// value).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Ord, PartialOrd)]
pub struct SeriesKey {
    pub spec: String,
    pub group: String,
}

impl SeriesKey {
    pub fn new(spec: impl Into<String>, group: impl Into<String>) -> SeriesKey {
        SeriesKey {
            spec: spec.into(),
            group: group.into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CounterError {
    #[error("counter store: {0}")]
    Store(#[from] sled::Error),
    #[error("counter store: malformed record (key {key:?}): {why}")]
    Corrupt { key: Vec<u8>, why: &'static str },
    #[error("too many counted series (limit {limit}); refusing to start another")]
    TooManySeries { limit: usize },
}

/// Answers counts: inside [`Counters::admit`] for the keys being decided (under their locks),
/// and [`Counters`] itself (a plain read, for previews such as `agentgate classify`).
pub trait CountView {
    /// Admitted requests of `key` in `(now_ms - window_ms, now_ms]` (see the module doc for
    /// coalescing and a clock that went back).
    fn count(&self, key: &SeriesKey, window_ms: u64, now_ms: i64) -> u64;
}

/// One coalesced entry: events from `t_first` to `t_last`; `cum` is the count of all events
/// of the series up to and including this entry (since it was created or loaded).
#[derive(Clone, Copy, Debug)]
struct Entry {
    t_first: i64,
    t_last: i64,
    cum: u128,
}

/// One series' entries, oldest first, `t_last` non-decreasing. `base` is the cumulative count
/// before the first entry (what pruning has dropped).
#[derive(Debug, Default)]
struct Series {
    entries: VecDeque<Entry>,
    base: u128,
}

/// Where an event goes, and what that entry holds afterwards.
#[derive(Debug)]
struct Planned {
    t_first: i64,
    t_last: i64,
    count: u64,
    merge: bool,
}

fn window_start(window_ms: u64, now_ms: i64) -> i64 {
    let window = i64::try_from(window_ms.min(MAX_WINDOW_MS)).unwrap_or(MAX_WINDOW);
    now_ms.saturating_sub(window)
}

fn as_u64(n: u128) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

impl Series {
    fn total(&self) -> u128 {
        self.entries.back().map_or(self.base, |e| e.cum)
    }

    /// The cumulative count before entry `i`.
    fn before(&self, i: usize) -> u128 {
        match i.checked_sub(1).and_then(|j| self.entries.get(j)) {
            Some(e) => e.cum,
            None => self.base,
        }
    }

    fn count(&self, window_ms: u64, now_ms: i64) -> u64 {
        let lo = window_start(window_ms, now_ms);
        let first_inside = self.entries.partition_point(|e| e.t_last <= lo);
        // Entries stamped after `now_ms` count (the clock went back), unless more than a day
        // ahead (see the module doc, *Clock*); `t_first` is increasing too.
        let ahead = now_ms.saturating_add(MAX_WINDOW);
        let end = self.entries.partition_point(|e| e.t_first <= ahead);
        if end <= first_inside {
            return 0;
        }
        as_u64(self.before(end).saturating_sub(self.before(first_inside)))
    }

    /// Drops the entries no window at `now_ms` can reach: older than 24 h, or stamped more than
    /// 24 h ahead. Pushes the `t_first` of each dropped entry (for the store).
    fn prune(&mut self, now_ms: i64, dropped: &mut Vec<i64>) {
        let old = now_ms.saturating_sub(MAX_WINDOW);
        while let Some(e) = self.entries.front().copied() {
            if e.t_last > old {
                break;
            }
            self.base = e.cum;
            dropped.push(e.t_first);
            self.entries.pop_front();
        }
        let ahead = now_ms.saturating_add(MAX_WINDOW);
        while let Some(e) = self.entries.back().copied() {
            if e.t_first <= ahead {
                break;
            }
            dropped.push(e.t_first);
            self.entries.pop_back();
        }
    }

    /// Where an event at `now_ms` goes: into the newest entry if it started less than
    /// `COALESCE_MS` ago or if the clock went back (`now_ms <= t_last`), else a new entry.
    fn plan(&self, now_ms: i64) -> Planned {
        let last = self.entries.len().checked_sub(1);
        match last.and_then(|i| self.entries.get(i).map(|e| (i, e))) {
            Some((i, e))
                if now_ms < e.t_first.saturating_add(COALESCE_MS) || now_ms <= e.t_last =>
            {
                Planned {
                    t_first: e.t_first,
                    t_last: e.t_last.max(now_ms),
                    count: as_u64(e.cum.saturating_sub(self.before(i)).saturating_add(1)),
                    merge: true,
                }
            }
            _ => Planned {
                t_first: now_ms,
                t_last: now_ms,
                count: 1,
                merge: false,
            },
        }
    }

    fn apply(&mut self, p: &Planned) {
        let cum = self.total().saturating_add(1);
        match self.entries.back_mut() {
            Some(e) if p.merge => {
                e.t_last = p.t_last;
                e.cum = cum;
            }
            _ => self.entries.push_back(Entry {
                t_first: p.t_first,
                t_last: p.t_last,
                cum,
            }),
        }
    }
}

#[derive(Debug, Default)]
struct Shard {
    map: HashMap<SeriesKey, Series>,
}

fn lock(m: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    // A panic in a caller's `decide` poisons the shard; its data is still consistent (every
    // change is applied whole, after the store write), so carry on with it.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The rate-limit counters, shared via `Arc`.
pub struct Counters {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    store: Option<Store>,
    /// Series currently held, across shards.
    series: AtomicUsize,
    max_series: usize,
}

/// A key held by an admission: its shard, the position of that shard's guard, and whether the
/// admission records it.
struct Held<'a> {
    shard: usize,
    key: &'a SeriesKey,
    guard: usize,
    record: bool,
}

/// The shards locked by one admission, and the keys it may ask about.
struct Locked<'a> {
    counters: &'a Counters,
    /// Sorted by (shard, key), each key once.
    keys: Vec<Held<'a>>,
    /// One per distinct shard, in shard order.
    guards: Vec<MutexGuard<'a, Shard>>,
}

impl CountView for Locked<'_> {
    fn count(&self, key: &SeriesKey, window_ms: u64, now_ms: i64) -> u64 {
        let shard = self.counters.shard_of(key);
        let found = self
            .keys
            .binary_search_by(|h| (h.shard, h.key).cmp(&(shard, key)));
        let Ok(i) = found else {
            return UNLISTED;
        };
        self.keys
            .get(i)
            .and_then(|h| self.guards.get(h.guard))
            .and_then(|g| g.map.get(key))
            .map_or(0, |s| s.count(window_ms, now_ms))
    }
}

impl CountView for Counters {
    fn count(&self, key: &SeriesKey, window_ms: u64, now_ms: i64) -> u64 {
        Counters::count(self, key, window_ms, now_ms)
    }
}

impl Counters {
    fn with_store(store: Option<Store>) -> Counters {
        Counters {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
            store,
            series: AtomicUsize::new(0),
            max_series: DEFAULT_MAX_SERIES,
        }
    }

    /// Counters that live only as long as the process (tests, `policy test`, previews).
    pub fn in_memory() -> Counters {
        Counters::with_store(None)
    }

    /// Counters kept in `tree`: loads every persisted entry and drops (also from the tree)
    /// those no window at `now_ms` can reach. `now_ms` is a parameter because this module never
    /// reads the clock; pass the current time.
    pub fn open(tree: sled::Tree, now_ms: i64) -> Result<Counters, CounterError> {
        let store = Store::new(tree);
        let loaded = store.load()?;
        let counters = Counters::with_store(None);
        let mut dropped = Vec::new();
        for (key, stored) in loaded {
            let mut series = Series::default();
            let mut cum: u128 = 0;
            let mut t_last = i64::MIN;
            for s in stored {
                // Keep `t_last` non-decreasing and at least `t_first` whatever the disk says
                // (a later `t_last` only makes the count stricter).
                t_last = t_last.max(s.t_first).max(s.t_last);
                cum = cum.saturating_add(u128::from(s.count));
                series.entries.push_back(Entry {
                    t_first: s.t_first,
                    t_last,
                    cum,
                });
            }
            dropped.clear();
            series.prune(now_ms, &mut dropped);
            for &t in &dropped {
                store.remove(&key, t)?;
            }
            if !series.entries.is_empty() {
                let shard = counters.shard_of(&key);
                if let Some(m) = counters.shards.get(shard) {
                    lock(m).map.insert(key, series);
                    counters.series.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        Ok(Counters {
            store: Some(store),
            ..counters
        })
    }

    /// Sets the most series held at once (see the module doc, *Memory*).
    pub fn with_max_series(mut self, max: usize) -> Counters {
        self.max_series = max;
        self
    }

    /// How many series are held.
    pub fn series_count(&self) -> usize {
        self.series.load(Ordering::Relaxed)
    }

    fn shard_of(&self, key: &SeriesKey) -> usize {
        (self.hasher.hash_one(key) as usize) % SHARDS
    }

    fn shard(&self, key: &SeriesKey) -> MutexGuard<'_, Shard> {
        // `shard_of` is below `SHARDS`, the length of `shards`.
        lock(&self.shards[self.shard_of(key)])
    }

    /// Admitted requests of `key` in `(now_ms - window_ms, now_ms]`. `now_ms` is unix
    /// milliseconds (the engine passes the clock). A plain read: for a decision, use
    /// [`Counters::admit`], which reserves.
    pub fn count(&self, key: &SeriesKey, window_ms: u64, now_ms: i64) -> u64 {
        self.shard(key)
            .map
            .get(key)
            .map_or(0, |s| s.count(window_ms, now_ms))
    }

    /// Runs `decide` holding the locks of `lock_keys` and `record` (taken in shard order, each
    /// once), giving it a view that answers counts of those keys (any other key reads as
    /// [`UNLISTED`]). If `decide` returns `(result, true)`, i.e. admitted, records one event at
    /// `now_ms` for every distinct key in `record` and writes it to the store, still under the
    /// locks, then returns `result`. This is the atomic reservation: N concurrent callers with
    /// limit L see distinct counts, and exactly L are admitted.
    ///
    /// An error (store failure, too many series) means the admission could not be recorded;
    /// the caller must not forward the request.
    pub fn admit<R>(
        &self,
        lock_keys: &[SeriesKey],
        now_ms: i64,
        decide: impl FnOnce(&dyn CountView) -> (R, bool),
        record: &[SeriesKey],
    ) -> Result<R, CounterError> {
        let mut locked = self.lock_all(lock_keys, record);
        let (result, admitted) = decide(&locked);
        if admitted {
            self.record_locked(&mut locked, now_ms)?;
        }
        Ok(result)
    }

    /// Records one event at `now_ms` for every distinct key in `keys`, without deciding (a held
    /// request that a reviewer approved and released).
    pub fn record(&self, keys: &[SeriesKey], now_ms: i64) -> Result<(), CounterError> {
        let mut locked = self.lock_all(&[], keys);
        self.record_locked(&mut locked, now_ms)
    }

    /// Drops, in memory and in the store, every entry no window at `now_ms` can reach, and
    /// every series left empty. Returns how many series were dropped. Call it periodically.
    pub fn prune(&self, now_ms: i64) -> Result<usize, CounterError> {
        let mut gone = 0;
        for m in self.shards.iter() {
            gone += self.prune_shard(&mut lock(m), now_ms)?;
        }
        Ok(gone)
    }

    /// Writes the store's log to disk now (sled also does so every 500 ms and on drop).
    pub fn flush(&self) -> Result<(), CounterError> {
        match &self.store {
            Some(store) => store.flush(),
            None => Ok(()),
        }
    }

    fn lock_all<'a>(&'a self, lock_keys: &'a [SeriesKey], record: &'a [SeriesKey]) -> Locked<'a> {
        let mut keys: Vec<Held<'a>> = lock_keys
            .iter()
            .map(|k| (k, false))
            .chain(record.iter().map(|k| (k, true)))
            .map(|(key, record)| Held {
                shard: self.shard_of(key),
                key,
                guard: 0,
                record,
            })
            .collect();
        keys.sort_unstable_by(|a, b| (a.shard, a.key).cmp(&(b.shard, b.key)));
        // `dedup_by` passes (later, earlier); keep the earlier, recording if either does.
        keys.dedup_by(|b, a| {
            let same = a.shard == b.shard && a.key == b.key;
            if same {
                a.record |= b.record;
            }
            same
        });
        let mut guards: Vec<MutexGuard<'a, Shard>> = Vec::new();
        let mut last = None;
        for h in &mut keys {
            if last != Some(h.shard) {
                if let Some(m) = self.shards.get(h.shard) {
                    guards.push(lock(m));
                }
                last = Some(h.shard);
            }
            h.guard = guards.len().saturating_sub(1);
        }
        Locked {
            counters: self,
            keys,
            guards,
        }
    }

    fn record_locked(&self, locked: &mut Locked<'_>, now_ms: i64) -> Result<(), CounterError> {
        for h in locked.keys.iter().filter(|h| h.record) {
            if let Some(shard) = locked.guards.get_mut(h.guard) {
                self.record_one(shard, h.key, now_ms)?;
            }
        }
        Ok(())
    }

    /// Records one event of `key` at `now_ms`; `shard` is its locked shard. The store is written
    /// first, memory changed only if that succeeded.
    fn record_one(
        &self,
        shard: &mut Shard,
        key: &SeriesKey,
        now_ms: i64,
    ) -> Result<(), CounterError> {
        if let Some(series) = shard.map.get_mut(key) {
            let mut dropped = Vec::new();
            series.prune(now_ms, &mut dropped);
            if let Some(store) = &self.store {
                for &t in &dropped {
                    store.remove(key, t)?;
                }
            }
            let plan = series.plan(now_ms);
            if let Some(store) = &self.store {
                store.put(key, plan.t_first, plan.count, plan.t_last)?;
            }
            series.apply(&plan);
            return Ok(());
        }
        self.reserve_series(shard, now_ms)?;
        let mut series = Series::default();
        let plan = series.plan(now_ms);
        if let Some(store) = &self.store {
            if let Err(e) = store.put(key, plan.t_first, plan.count, plan.t_last) {
                self.series.fetch_sub(1, Ordering::Relaxed);
                return Err(e);
            }
        }
        series.apply(&plan);
        shard.map.insert(key.clone(), series);
        Ok(())
    }

    /// Takes a place for a new series, pruning `shard` once if the limit is reached.
    fn reserve_series(&self, shard: &mut Shard, now_ms: i64) -> Result<(), CounterError> {
        let take = || {
            self.series
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                    (n < self.max_series).then_some(n + 1)
                })
                .is_ok()
        };
        if take() {
            return Ok(());
        }
        self.prune_shard(shard, now_ms)?;
        if take() {
            Ok(())
        } else {
            Err(CounterError::TooManySeries {
                limit: self.max_series,
            })
        }
    }

    fn prune_shard(&self, shard: &mut Shard, now_ms: i64) -> Result<usize, CounterError> {
        let before = shard.map.len();
        let mut first_error = None;
        let mut dropped = Vec::new();
        shard.map.retain(|key, series| {
            dropped.clear();
            series.prune(now_ms, &mut dropped);
            if let Some(store) = &self.store {
                for &t in &dropped {
                    if let Err(e) = store.remove(key, t) {
                        first_error.get_or_insert(e);
                    }
                }
            }
            !series.entries.is_empty()
        });
        let gone = before - shard.map.len();
        self.series.fetch_sub(gone, Ordering::Relaxed);
        match first_error {
            Some(e) => Err(e),
            None => Ok(gone),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::sync::Arc;

    const H: u64 = 3600 * 1000;
    /// 2026-03-03T10:00:00Z.
    const T0: i64 = 1_772_532_000_000;

    fn key(group: &str) -> SeriesKey {
        SeriesKey::new("gmail.users.messages.send|agent", group)
    }

    fn entries(c: &Counters, k: &SeriesKey) -> Vec<Entry> {
        c.shard(k)
            .map
            .get(k)
            .map(|s| s.entries.iter().copied().collect())
            .unwrap_or_default()
    }

    /// One admission against `limit` in a one-hour window: the count it saw, if admitted.
    fn try_admit(c: &Counters, k: &SeriesKey, limit: u64, now: i64) -> Option<u64> {
        c.admit(
            std::slice::from_ref(k),
            now,
            |v| {
                let n = v.count(k, H, now);
                (Some(n).filter(|&n| n < limit), n < limit)
            },
            std::slice::from_ref(k),
        )
        .unwrap()
    }

    #[test]
    fn window_is_half_open_at_the_millisecond() {
        let c = Counters::in_memory();
        let k = key("coder");
        c.record(std::slice::from_ref(&k), T0).unwrap();
        // (now - window, now]: an event exactly at now - window is outside.
        assert_eq!(c.count(&k, 500, T0 + 500), 0);
        assert_eq!(c.count(&k, 500, T0 + 499), 1);
        // An event at now is inside.
        assert_eq!(c.count(&k, 500, T0), 1);
        assert_eq!(c.count(&k, 1, T0), 1);
        // A window of zero holds nothing.
        assert_eq!(c.count(&k, 0, T0), 0);
        // Another series, another group: nothing.
        assert_eq!(c.count(&key("other"), H, T0), 0);
        assert_eq!(c.count(&SeriesKey::new("x|agent", "coder"), H, T0), 0);
        // Windows beyond 24 h are clamped.
        assert_eq!(c.count(&k, u64::MAX, T0 + 1), 1);
        assert_eq!(c.count(&k, u64::MAX, T0 + MAX_WINDOW), 0);
    }

    #[test]
    fn the_request_being_decided_is_not_counted() {
        let c = Counters::in_memory();
        let k = key("coder");
        let seen: Vec<u64> = (0..5)
            .map(|i| {
                c.admit(
                    std::slice::from_ref(&k),
                    T0 + i * 10_000,
                    |v| (v.count(&k, H, T0 + i * 10_000), true),
                    std::slice::from_ref(&k),
                )
                .unwrap()
            })
            .collect();
        assert_eq!(seen, [0, 1, 2, 3, 4]);
        assert_eq!(c.count(&k, H, T0 + 40_000), 5);
    }

    #[test]
    fn a_refused_request_is_not_counted() {
        let c = Counters::in_memory();
        let k = key("coder");
        for _ in 0..3 {
            let r = c.admit(
                std::slice::from_ref(&k),
                T0,
                |_| ((), false),
                std::slice::from_ref(&k),
            );
            r.unwrap();
        }
        assert_eq!(c.count(&k, H, T0), 0);
        assert_eq!(c.series_count(), 0);
        // Locking a key without recording it creates nothing either.
        c.admit(std::slice::from_ref(&k), T0, |_| ((), true), &[])
            .unwrap();
        assert_eq!(c.series_count(), 0);
    }

    #[test]
    fn the_rate_limit_from_the_language_doc() {
        // block when count(gmail.users.messages.send, by: agent, window: 1h) >= 20
        let c = Counters::in_memory();
        let k = key("coder");
        let admitted = (0..30)
            .filter(|i| try_admit(&c, &k, 20, T0 + i * 60_000).is_some())
            .count();
        assert_eq!(admitted, 20);
        // An hour after the first send (at T0) it has left the window: one more may go.
        assert_eq!(try_admit(&c, &k, 20, T0 + H as i64 - 1), None);
        assert_eq!(try_admit(&c, &k, 20, T0 + H as i64), Some(19));
        assert_eq!(try_admit(&c, &k, 20, T0 + H as i64 + 1), None);
    }

    #[test]
    fn an_unlisted_key_reads_as_unlisted() {
        let c = Counters::in_memory();
        let (a, b) = (key("a"), key("b"));
        c.record(std::slice::from_ref(&b), T0).unwrap();
        let seen = c
            .admit(
                std::slice::from_ref(&a),
                T0,
                |v| ((v.count(&a, H, T0), v.count(&b, H, T0)), false),
                &[],
            )
            .unwrap();
        assert_eq!(seen, (0, UNLISTED));
        // Record keys are listed too.
        let seen = c
            .admit(
                &[],
                T0,
                |v| (v.count(&b, H, T0), false),
                std::slice::from_ref(&b),
            )
            .unwrap();
        assert_eq!(seen, 1);
        // Counters itself is a view (a plain read).
        assert_eq!(CountView::count(&c, &b, H, T0), 1);
    }

    #[test]
    fn duplicate_keys_are_locked_and_recorded_once() {
        let c = Counters::in_memory();
        let k = key("coder");
        let ks = [k.clone(), k.clone(), k.clone()];
        c.admit(&ks, T0, |_| ((), true), &ks).unwrap();
        c.record(&ks, T0 + 5_000).unwrap();
        assert_eq!(c.count(&k, H, T0 + 5_000), 2);
    }

    #[test]
    fn events_older_than_a_day_are_pruned() {
        let c = Counters::in_memory();
        let (k, idle) = (key("busy"), key("idle"));
        c.record(&[k.clone(), idle.clone()], T0).unwrap();
        c.record(std::slice::from_ref(&k), T0 + 10_000).unwrap();
        assert_eq!(c.count(&k, MAX_WINDOW_MS, T0 + MAX_WINDOW - 1), 2);
        // Exactly 24 h later the first event is outside every window and goes on the next record.
        let now = T0 + MAX_WINDOW;
        assert_eq!(c.count(&k, MAX_WINDOW_MS, now), 1);
        c.record(std::slice::from_ref(&k), now).unwrap();
        let e = entries(&c, &k);
        assert_eq!(
            e.iter().map(|e| e.t_first).collect::<Vec<_>>(),
            [T0 + 10_000, now]
        );
        assert_eq!(c.count(&k, MAX_WINDOW_MS, now), 2);
        // The idle series is still held until a prune.
        assert_eq!(c.series_count(), 2);
        assert_eq!(c.prune(now).unwrap(), 1);
        assert_eq!(c.series_count(), 1);
        assert_eq!(c.count(&idle, MAX_WINDOW_MS, now), 0);
        assert_eq!(c.prune(now + MAX_WINDOW + 10_000).unwrap(), 1);
        assert_eq!(c.series_count(), 0);
    }

    #[test]
    fn coalescing_bounds_memory_per_series() {
        let c = Counters::in_memory();
        let k = key("flood");
        // 100,000 requests in 100 s: 100 entries.
        for i in 0..100_000 {
            c.record(std::slice::from_ref(&k), T0 + i).unwrap();
        }
        assert_eq!(entries(&c, &k).len(), 100);
        assert_eq!(c.count(&k, H, T0 + 100_000), 100_000);
        // One every 400 ms for 30 h: never more than a day's worth of 1 s entries.
        let c = Counters::in_memory();
        let mut most = 0;
        let mut now = T0;
        for _ in 0..(30 * 3600 * 1000 / 400) {
            c.record(std::slice::from_ref(&k), now).unwrap();
            now += 400;
            most = most.max(c.shard(&k).map.get(&k).map_or(0, |s| s.entries.len()));
        }
        let bound = (MAX_WINDOW / COALESCE_MS + 1) as usize;
        assert!(most <= bound, "{most} entries > {bound}");
        // Sparse requests are not coalesced: one entry each.
        let c = Counters::in_memory();
        for i in 0..10 {
            c.record(std::slice::from_ref(&k), T0 + i * COALESCE_MS)
                .unwrap();
        }
        assert_eq!(entries(&c, &k).len(), 10);
    }

    #[test]
    fn coalesced_events_only_ever_over_count() {
        let c = Counters::in_memory();
        let k = key("burst");
        c.record(std::slice::from_ref(&k), T0).unwrap();
        c.record(std::slice::from_ref(&k), T0 + 400).unwrap();
        assert_eq!(entries(&c, &k).len(), 1);
        // At T0 + 1200 with a 1 s window only the second is inside; both are counted.
        assert_eq!(c.count(&k, 1000, T0 + 1200), 2);
        // Once the last of them is out, none is.
        assert_eq!(c.count(&k, 1000, T0 + 1399), 2);
        assert_eq!(c.count(&k, 1000, T0 + 1400), 0);
    }

    /// Pseudo-random event times checked against a brute-force count: never under the exact
    /// count, never over the count of a window `COALESCE_MS - 1` longer, exact when alone.
    #[test]
    fn counts_agree_with_a_brute_force_model() {
        let mut rng: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let c = Counters::in_memory();
        let k = key("model");
        let mut times = Vec::new();
        let mut now = T0;
        for _ in 0..5_000 {
            now += match next() % 4 {
                0 => 0,
                1 => (next() % 300) as i64,
                2 => (next() % 5_000) as i64,
                _ => (next() % 600_000) as i64,
            };
            c.record(std::slice::from_ref(&k), now).unwrap();
            times.push(now);
            for window in [1_000, 60_000, H, MAX_WINDOW_MS] {
                let q = now + (next() % 2_000) as i64;
                let lo = q - window as i64;
                let exact = times.iter().filter(|&&t| t > lo && t <= q).count() as u64;
                let wider = times
                    .iter()
                    .filter(|&&t| t > lo - (COALESCE_MS - 1) && t <= q)
                    .count() as u64;
                let got = c.count(&k, window, q);
                assert!(exact <= got && got <= wider, "{exact} <= {got} <= {wider}");
            }
        }
    }

    #[test]
    fn concurrent_admissions_see_distinct_counts() {
        const LIMIT: u64 = 50;
        let c = Arc::new(Counters::in_memory());
        let k = key("coder");
        let seen: Vec<u64> = (0..16)
            .map(|t| {
                let (c, k) = (Arc::clone(&c), k.clone());
                std::thread::spawn(move || {
                    (0..200)
                        .filter_map(|i| try_admit(&c, &k, LIMIT, T0 + (i % 7) + t))
                        .collect::<Vec<_>>()
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        assert_eq!(seen.len() as u64, LIMIT);
        assert_eq!(
            seen.iter().copied().collect::<BTreeSet<_>>(),
            (0..LIMIT).collect()
        );
        assert_eq!(c.count(&k, H, T0 + 100), LIMIT);
    }

    #[test]
    fn concurrent_multi_key_admissions_do_not_deadlock() {
        // Each request counts against its agent and a shared recipient; threads list the keys
        // in different orders. Limit: 30 per recipient.
        let c = Arc::new(Counters::in_memory());
        let shared = SeriesKey::new("gmail.users.messages.send|params.to", "bob@acme.com");
        let admitted: usize = (0..16)
            .map(|t| {
                let (c, shared) = (Arc::clone(&c), shared.clone());
                std::thread::spawn(move || {
                    let mine = key(&format!("agent-{}", t % 4));
                    let keys = if t % 2 == 0 {
                        [mine.clone(), shared.clone()]
                    } else {
                        [shared.clone(), mine.clone()]
                    };
                    (0..200)
                        .filter(|_| {
                            let decide = |v: &dyn CountView| {
                                let ok =
                                    v.count(&shared, H, T0) < 30 && v.count(&mine, H, T0) < 1_000;
                                (ok, ok)
                            };
                            c.admit(&keys, T0, decide, &keys).unwrap()
                        })
                        .count()
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap())
            .sum();
        assert_eq!(admitted, 30);
        assert_eq!(c.count(&shared, H, T0), 30);
        let per_agent: u64 = (0..4)
            .map(|a| c.count(&key(&format!("agent-{a}")), H, T0))
            .sum();
        assert_eq!(per_agent, 30);
    }

    #[test]
    fn a_panicking_decision_does_not_break_the_shard() {
        let c = Counters::in_memory();
        let k = key("coder");
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            c.admit(
                std::slice::from_ref(&k),
                T0,
                |_| -> ((), bool) { panic!("engine bug") },
                &[],
            )
        }));
        assert!(r.is_err());
        assert_eq!(try_admit(&c, &k, 5, T0), Some(0));
        assert_eq!(c.count(&k, H, T0), 1);
    }

    #[test]
    fn the_clock_going_back_neither_panics_nor_resets_a_limit() {
        let c = Counters::in_memory();
        let k = key("coder");
        for t in [T0, T0 + 10_000, T0 + 20_000] {
            c.record(std::slice::from_ref(&k), t).unwrap();
        }
        // Back 15 s: the events "after now" still count, the new one joins the newest entry.
        let back = T0 + 5_000;
        assert_eq!(c.count(&k, H, back), 3);
        assert_eq!(try_admit(&c, &k, 10, back), Some(3));
        let e = entries(&c, &k);
        assert_eq!(e.len(), 3);
        assert!(
            e.windows(2)
                .all(|w| w[0].t_last <= w[1].t_last && w[0].t_first < w[1].t_first)
        );
        assert_eq!(e.last().map(|e| e.t_last), Some(T0 + 20_000));
        // Forward again: counts as before plus the one recorded.
        assert_eq!(c.count(&k, H, T0 + 20_000), 4);
        assert_eq!(c.count(&k, 1, T0 + 20_000), 2);
        // Back by more than a day: the entries stamped in the future no longer count (exactly
        // those more than 24 h ahead), and go on the next record.
        assert_eq!(c.count(&k, H, T0 - 2 * MAX_WINDOW), 0);
        assert_eq!(c.count(&k, H, T0 + 20_000 - MAX_WINDOW), 4);
        assert_eq!(c.count(&k, H, T0 + 20_000 - MAX_WINDOW - 1), 2);
        let far = T0 - 2 * MAX_WINDOW;
        c.record(std::slice::from_ref(&k), far).unwrap();
        assert_eq!(c.count(&k, H, far), 1);
        assert_eq!(entries(&c, &k).len(), 1);
        // Extreme times neither overflow nor panic.
        assert_eq!(c.count(&k, MAX_WINDOW_MS, i64::MIN), 0);
        assert_eq!(c.count(&k, MAX_WINDOW_MS, i64::MAX), 0);
        c.record(std::slice::from_ref(&k), i64::MIN).unwrap();
        c.record(std::slice::from_ref(&k), i64::MAX).unwrap();
        assert_eq!(c.count(&k, u64::MAX, i64::MAX), 1);
    }

    #[test]
    fn the_number_of_series_is_bounded() {
        let c = Counters::in_memory().with_max_series(2);
        c.record(&[key("a"), key("b")], T0).unwrap();
        let err = c
            .record(std::slice::from_ref(&key("c")), T0 + 1)
            .unwrap_err();
        assert!(
            matches!(err, CounterError::TooManySeries { limit: 2 }),
            "{err}"
        );
        assert_eq!(c.count(&key("c"), H, T0 + 1), 0);
        // Existing series still record.
        c.record(std::slice::from_ref(&key("a")), T0 + 2).unwrap();
        // A day later the stale series go on prune and make room.
        let later = T0 + MAX_WINDOW + 3;
        c.prune(later).unwrap();
        c.record(std::slice::from_ref(&key("c")), later).unwrap();
        assert_eq!(c.series_count(), 1);
    }

    fn temp_db() -> sled::Db {
        sled::Config::new().temporary(true).open().unwrap()
    }

    /// Records a mix of sparse and coalesced events, with the counts they give at `probe`.
    fn fill(c: &Counters) -> Vec<(SeriesKey, u64, i64, u64)> {
        let (a, b) = (key("a"), SeriesKey::new("x|params.to", "nul\0inside"));
        // Old but still inside a day at the probes and at the reopen.
        c.record(std::slice::from_ref(&b), T0 - MAX_WINDOW + 60_000)
            .unwrap();
        for i in 0..50 {
            c.record(std::slice::from_ref(&a), T0 + i * 2_000).unwrap();
            c.record(&[a.clone(), b.clone()], T0 + i * 2_000 + 300)
                .unwrap();
        }
        let mut probes = Vec::new();
        for k in [&a, &b] {
            for (w, now) in [
                (1_000, T0 + 50_000),
                (H, T0 + 98_000),
                (MAX_WINDOW_MS, T0 + 98_300),
            ] {
                probes.push((k.clone(), w, now, c.count(k, w, now)));
            }
        }
        probes
    }

    #[test]
    fn counts_survive_reopening_the_tree() {
        let db = temp_db();
        let c = Counters::open(db.open_tree("counters").unwrap(), T0).unwrap();
        let probes = fill(&c);
        assert!(probes.iter().any(|p| p.3 > 0));
        c.flush().unwrap();
        drop(c);
        let c = Counters::open(db.open_tree("counters").unwrap(), T0 + 98_300).unwrap();
        for (k, w, now, n) in &probes {
            assert_eq!(c.count(k, *w, *now), *n, "{k:?} {w} {now}");
        }
        assert_eq!(c.series_count(), 2);
        // The admissions continue from the loaded entries.
        assert_eq!(try_admit(&c, &key("a"), 1_000, T0 + 98_400), Some(100));
    }

    #[test]
    fn counts_survive_a_restart_on_disk() {
        let dir = std::env::temp_dir().join(format!("agentgate-counters-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let probes = {
            let db = sled::Config::new().path(&dir).open().unwrap();
            let c = Counters::open(db.open_tree("counters").unwrap(), T0).unwrap();
            let probes = fill(&c);
            drop(c);
            db.flush().unwrap();
            probes
        };
        // sled's flusher thread may still hold the directory's lock for a moment after the
        // last handle is dropped: the store's open waits for it.
        let db = crate::store::open_unshared(&dir).unwrap();
        let c = Counters::open(db.open_tree("counters").unwrap(), T0 + 98_300).unwrap();
        for (k, w, now, n) in &probes {
            assert_eq!(c.count(k, *w, *now), *n, "{k:?} {w} {now}");
        }
        drop(c);
        drop(db);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn opening_drops_what_is_older_than_a_day() {
        let db = temp_db();
        let tree = db.open_tree("counters").unwrap();
        let c = Counters::open(tree.clone(), T0).unwrap();
        let (a, b) = (key("a"), key("b"));
        c.record(std::slice::from_ref(&a), T0).unwrap();
        c.record(std::slice::from_ref(&b), T0 + H as i64).unwrap();
        drop(c);
        assert_eq!(tree.len(), 2);
        let c = Counters::open(tree.clone(), T0 + MAX_WINDOW).unwrap();
        assert_eq!(c.series_count(), 1);
        assert_eq!(c.count(&a, MAX_WINDOW_MS, T0 + MAX_WINDOW), 0);
        assert_eq!(c.count(&b, MAX_WINDOW_MS, T0 + MAX_WINDOW), 1);
        assert_eq!(tree.len(), 1);
    }

    #[test]
    fn the_store_follows_pruning_and_coalescing() {
        let db = temp_db();
        let tree = db.open_tree("counters").unwrap();
        let c = Counters::open(tree.clone(), T0).unwrap();
        let k = key("a");
        for i in 0..10 {
            c.record(std::slice::from_ref(&k), T0 + i * 100).unwrap();
        }
        assert_eq!(tree.len(), 1);
        c.record(std::slice::from_ref(&k), T0 + 5_000).unwrap();
        assert_eq!(tree.len(), 2);
        // A day after the first entry's last event: it goes, from the tree too.
        c.record(std::slice::from_ref(&k), T0 + MAX_WINDOW + 900)
            .unwrap();
        assert_eq!(tree.len(), 2);
        c.prune(T0 + 3 * MAX_WINDOW).unwrap();
        assert_eq!(tree.len(), 0);
        assert_eq!(c.series_count(), 0);
    }

    #[test]
    fn concurrent_admissions_with_a_store() {
        let db = temp_db();
        let c = Arc::new(Counters::open(db.open_tree("counters").unwrap(), T0).unwrap());
        let k = key("coder");
        let admitted: usize = (0..16)
            .map(|t| {
                let (c, k) = (Arc::clone(&c), k.clone());
                std::thread::spawn(move || {
                    (0..100)
                        .filter_map(|i| try_admit(&c, &k, 25, T0 + i * 37 + t))
                        .count()
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap())
            .sum();
        assert_eq!(admitted, 25);
        drop(c);
        let c = Counters::open(db.open_tree("counters").unwrap(), T0 + 4_000).unwrap();
        assert_eq!(c.count(&k, H, T0 + 4_000), 25);
    }

    #[test]
    fn counters_are_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Counters>();
    }
}
