//! Step-up holds (design.md section 6): pending challenges, their deadlines, and exactly one
//! resolution each.
//!
//! A `step_up` decision creates a [`Challenge`] with [`Holds::create`]; the proxy keeps the
//! request's bytes and parks on the returned [`Waiter`]; this module keeps metadata only.
//!
//! # State machine
//! ```text
//!            approve            redeem (428 mode, once, same agent + digest, before expiry)
//! Pending ──────────> Approved ─────────> Redeemed
//!    │  deny ───────> Denied
//!    │  deadline ───> Expired      (Waiter's timer, Holds::expire_due, or any call after it)
//!    │  Waiter drop ─> Abandoned   (hold mode only: the agent went away)
//!    └─ restart ────> Interrupted  (Holds::open)
//! ```
//! Every transition out of `Pending` (and `Approved -> Redeemed`) is a compare-and-swap under
//! the challenge's own lock: exactly one wins however they race, and the losers get
//! [`HoldError::AlreadyDecided`] with the winner's state. The new state is written to the store
//! and synced (fsync, group-committed) *before* the lock is released, the waiter is woken or an
//! event is sent, so nobody is told an outcome that a crash could undo.
//!
//! When a reviewer's transition (approve, deny, redeem, create) cannot be stored, it fails
//! with [`HoldError::Store`] and nothing changes. Expiry and abandonment happen regardless (the
//! agent is refused either way); a failed write of theirs is logged, and a restart then shows
//! the challenge as interrupted.
//!
//! Decided challenges stay in the store (the dashboard lists them) until [`Holds::prune`]
//! removes those settled longer ago than the retention (`step_up.retention`); pending ones are
//! never pruned.
//!
//! Blocking: `create`, `approve`, `deny`, `expire_due`, `redeem` and dropping a pending
//! [`Waiter`] wait for an fsync (sub-millisecond to a few ms; concurrent callers share one).
//! Async callers that mind should use `spawn_blocking`; [`Waiter::outcome`] already does for
//! its deadline.

mod digest;
mod store;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, watch};
use tokio::time::Instant;

use crate::actions::Action;

pub use digest::digest;
use store::Backing;
pub use store::TREE;

/// How many challenges may be pending at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HoldLimits {
    /// Per agent (default 100).
    pub per_agent: usize,
    /// Across all agents (default 10,000).
    pub total: usize,
}

impl Default for HoldLimits {
    fn default() -> Self {
        HoldLimits {
            per_agent: 100,
            total: 10_000,
        }
    }
}

/// What a `step_up` decision asks for.
#[derive(Debug, Clone)]
pub struct NewChallenge {
    pub agent: String,
    pub actions: Vec<Action>,
    /// The rules that asked for the step-up, and their reasons.
    pub rules: Vec<String>,
    pub reasons: Vec<String>,
    /// [`digest`] of the inspected request.
    pub digest: String,
    /// `true`: the agent's request is held until the outcome. `false` (`agentgate-hold: no`):
    /// the agent got 428 and will retry with `agentgate-challenge: ID` ([`Holds::redeem`]).
    pub hold: bool,
}

/// Where a challenge stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Pending,
    Approved,
    Denied,
    Expired,
    /// The held agent went away before a decision.
    Abandoned,
    /// Pending when the gate stopped.
    Interrupted,
    /// Approved and then used by the agent's retry (428 mode); never again.
    Redeemed,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Approved => "approved",
            State::Denied => "denied",
            State::Expired => "expired",
            State::Abandoned => "abandoned",
            State::Interrupted => "interrupted",
            State::Redeemed => "redeemed",
        }
    }

    /// Parses the API's spelling (`?state=pending`).
    pub fn parse(s: &str) -> Option<State> {
        [
            State::Pending,
            State::Approved,
            State::Denied,
            State::Expired,
            State::Abandoned,
            State::Interrupted,
            State::Redeemed,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One step-up challenge, as stored and as the dashboard API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Challenge {
    /// `chl_` + 32 hex digits (128 random bits).
    pub id: String,
    pub agent: String,
    pub actions: Vec<Action>,
    pub rules: Vec<String>,
    pub reasons: Vec<String>,
    pub digest: String,
    pub hold: bool,
    pub created_ms: i64,
    pub expires_ms: i64,
    pub state: State,
    pub reviewer: Option<String>,
    pub note: Option<String>,
    pub decided_ms: Option<i64>,
    /// When the agent's retry used the approval (428 mode).
    #[serde(default)]
    pub redeemed_ms: Option<i64>,
}

impl Challenge {
    /// The audit record of this challenge's settlement, built from the challenge alone, for a
    /// settlement no request is there to record (interrupted by a restart): its agent,
    /// actions, rules and reasons, its state as the decision, its reviewer and note, decided
    /// at `decided_ms`. The request id and the credential are the original `step_up`
    /// record's, which this record does not repeat (they are empty).
    pub fn settlement_record(&self) -> crate::audit::DecisionRecord {
        let first = self.actions.first();
        let field = |f: fn(&Action) -> &String| first.map(f).cloned().unwrap_or_default();
        crate::audit::DecisionRecord {
            time_ms: self.decided_ms.unwrap_or(self.created_ms),
            agent: self.agent.clone(),
            request_id: String::new(),
            host: field(|a| &a.host),
            method: field(|a| &a.method),
            path: field(|a| &a.path),
            actions: self
                .actions
                .iter()
                .map(|a| crate::audit::AuditAction {
                    name: a.name.clone(),
                    params: a.params.clone(),
                })
                .collect(),
            decision: self.state.as_str().to_string(),
            rules: self.rules.clone(),
            reasons: self.reasons.clone(),
            fired_on_error: Vec::new(),
            shadow: Vec::new(),
            credential: String::new(),
            challenge_id: Some(self.id.clone()),
            reviewer: self.reviewer.clone(),
            note: self.note.clone(),
        }
    }
}

/// Which bound a new challenge would exceed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    Agent,
    Total,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum HoldError {
    /// Over a bound: the proxy answers 429.
    #[error("too many held requests ({scope:?} limit {limit})")]
    TooMany { scope: Scope, limit: usize },
    #[error("no such challenge")]
    Unknown,
    /// The challenge already left `Pending` (or, for `redeem`, `Approved`) as `state`.
    #[error("challenge already {state}")]
    AlreadyDecided { state: State },
    /// `redeem` of a challenge that is not approved (pending, denied, ...).
    #[error("challenge is {state}, not approved")]
    NotApproved { state: State },
    /// `redeem` by another agent or for a different request.
    #[error("the request does not match the challenge")]
    Mismatch,
    /// `redeem` of an approval already used.
    #[error("the approval was already used")]
    Used,
    /// `redeem` after the window closed.
    #[error("the challenge expired")]
    Expired,
    /// `redeem` of a held challenge: its approval went to the held request.
    #[error("the challenge was held; its approval was given to the held request")]
    Held,
    #[error("holds store: {0}")]
    Store(String),
}

/// What the dashboard feed is told, in `seq` order (1, 2, ...; per process).
#[derive(Debug, Clone, Serialize)]
pub struct HoldEvent {
    pub seq: u64,
    pub kind: EventKind,
    pub challenge: Challenge,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Created,
    /// Left `Pending` (any terminal state) or was redeemed.
    Resolved,
}

/// The pending challenges, shared via `Arc`.
#[derive(Debug, Clone)]
pub struct Holds {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    window: Duration,
    limits: HoldLimits,
    backing: Backing,
    index: Mutex<Index>,
    events: Mutex<u64>,
    feed: broadcast::Sender<HoldEvent>,
    /// Challenges [`Holds::open`] marked interrupted, until [`Holds::take_interrupted`].
    interrupted: Mutex<Vec<Challenge>>,
    /// Set by [`Holds::close`]: [`Waiter::settle`] stops waiting.
    closed: watch::Sender<bool>,
}

/// Lock order: an entry's lock before the index's, never the reverse; several entry locks
/// only in ascending id order.
#[derive(Debug, Default)]
struct Index {
    entries: HashMap<String, Arc<Entry>>,
    pending: usize,
    per_agent: HashMap<String, usize>,
}

#[derive(Debug)]
struct Entry {
    rec: Mutex<Challenge>,
    state: watch::Sender<State>,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How many events the feed buffers for a slow subscriber (which then sees `Lagged`).
const FEED_CAPACITY: usize = 4096;

/// A transition out of `Pending`.
struct To<'a> {
    state: State,
    reviewer: Option<&'a str>,
    note: Option<String>,
    now_ms: i64,
    /// A store failure fails the transition (reviewers' actions) rather than being logged.
    strict: bool,
}

impl Holds {
    /// Holds kept in memory only (tests; a gate without a data directory).
    pub fn in_memory(window: Duration, limits: HoldLimits) -> Holds {
        Holds::with_backing(Backing::Memory, window, limits)
    }

    fn with_backing(backing: Backing, window: Duration, limits: HoldLimits) -> Holds {
        let (feed, _) = broadcast::channel(FEED_CAPACITY);
        Holds {
            inner: Arc::new(Inner {
                window,
                limits,
                backing,
                index: Mutex::new(Index::default()),
                events: Mutex::new(0),
                feed,
                interrupted: Mutex::new(Vec::new()),
                closed: watch::Sender::new(false),
            }),
        }
    }

    pub fn window(&self) -> Duration {
        self.inner.window
    }

    pub fn limits(&self) -> HoldLimits {
        self.inner.limits
    }

    /// Creates and stores (durably) a pending challenge expiring one window after `now_ms`.
    /// The [`Waiter`] resolves with its outcome; in hold mode, dropping it while pending marks
    /// the challenge abandoned. Over a bound: [`HoldError::TooMany`] (nothing is stored).
    /// Blocks until the store has synced; async callers use [`Holds::create_async`].
    pub fn create(&self, c: NewChallenge, now_ms: i64) -> Result<(Challenge, Waiter), HoldError> {
        let (challenge, ticket) = self.reserve(c, now_ms)?;
        let stored = self.inner.backing.sync(ticket);
        self.publish(challenge, stored)
    }

    /// [`Holds::create`] for async callers: the task waits for the store's sync, no thread
    /// does (ten thousand requests held at once would otherwise each take one of the blocking
    /// pool's threads while their challenge is written).
    pub async fn create_async(
        &self,
        c: NewChallenge,
        now_ms: i64,
    ) -> Result<(Challenge, Waiter), HoldError> {
        let (challenge, ticket) = self.reserve(c, now_ms)?;
        // Dropped while waiting (the caller's task cancelled): the place is given back. The
        // stored challenge stays pending, with no waiter; the next start marks it
        // interrupted.
        let mut place = Place {
            holds: self,
            agent: Some(challenge.agent.clone()),
        };
        let stored = self.inner.backing.sync_async(ticket).await;
        place.agent = None;
        drop(place);
        self.publish(challenge, stored)
    }

    /// Builds the challenge, takes its place under the bounds and queues its write; returns
    /// it with the write's ticket.
    fn reserve(&self, c: NewChallenge, now_ms: i64) -> Result<(Challenge, u64), HoldError> {
        let inner = &self.inner;
        let window_ms = i64::try_from(inner.window.as_millis()).unwrap_or(i64::MAX);
        let challenge = Challenge {
            id: new_id()?,
            agent: c.agent,
            actions: c.actions,
            rules: c.rules,
            reasons: c.reasons,
            digest: c.digest,
            hold: c.hold,
            created_ms: now_ms,
            expires_ms: now_ms.saturating_add(window_ms),
            state: State::Pending,
            reviewer: None,
            note: None,
            decided_ms: None,
            redeemed_ms: None,
        };
        // Reserve a place under the bounds first, so concurrent creates cannot overshoot.
        {
            let mut ix = lock(&inner.index);
            if ix.pending >= inner.limits.total {
                return Err(HoldError::TooMany {
                    scope: Scope::Total,
                    limit: inner.limits.total,
                });
            }
            let mine = ix.per_agent.get(&challenge.agent).copied().unwrap_or(0);
            if mine >= inner.limits.per_agent {
                return Err(HoldError::TooMany {
                    scope: Scope::Agent,
                    limit: inner.limits.per_agent,
                });
            }
            ix.pending += 1;
            *ix.per_agent.entry(challenge.agent.clone()).or_insert(0) += 1;
        }
        match inner.backing.put(&challenge) {
            Ok(ticket) => Ok((challenge, ticket)),
            Err(e) => {
                lock(&inner.index).release(&challenge.agent);
                Err(e)
            }
        }
    }

    /// Once the challenge is stored (or failed to be: its place is given back), makes it
    /// visible and returns its waiter.
    fn publish(
        &self,
        challenge: Challenge,
        stored: Result<(), HoldError>,
    ) -> Result<(Challenge, Waiter), HoldError> {
        let inner = &self.inner;
        if let Err(e) = stored {
            lock(&inner.index).release(&challenge.agent);
            return Err(e);
        }
        let (tx, rx) = watch::channel(State::Pending);
        let entry = Arc::new(Entry {
            rec: Mutex::new(challenge.clone()),
            state: tx,
        });
        {
            // Held while the entry becomes visible and `Created` is sent, so no resolution of
            // it can be announced first.
            let _rec = lock(&entry.rec);
            lock(&inner.index)
                .entries
                .insert(challenge.id.clone(), entry.clone());
            inner.emit(EventKind::Created, &challenge);
        }
        let window_ms = challenge.expires_ms.saturating_sub(challenge.created_ms);
        let left = Duration::from_millis(u64::try_from(window_ms).unwrap_or(0));
        let waiter = Waiter {
            holds: self.inner.clone(),
            entry,
            rx,
            deadline: Instant::now() + left,
            expires_ms: challenge.expires_ms,
            armed: challenge.hold,
        };
        Ok((challenge, waiter))
    }

    /// Approves a pending challenge: stored durably, then the waiter is woken. A challenge
    /// past its expiry is expired instead ([`HoldError::AlreadyDecided`] `Expired`).
    pub fn approve(
        &self,
        id: &str,
        reviewer: &str,
        note: Option<String>,
        now_ms: i64,
    ) -> Result<Challenge, HoldError> {
        self.decide(id, State::Approved, reviewer, note, now_ms)
    }

    /// Denies a pending challenge (see [`Holds::approve`]).
    pub fn deny(
        &self,
        id: &str,
        reviewer: &str,
        note: Option<String>,
        now_ms: i64,
    ) -> Result<Challenge, HoldError> {
        self.decide(id, State::Denied, reviewer, note, now_ms)
    }

    fn decide(
        &self,
        id: &str,
        state: State,
        reviewer: &str,
        note: Option<String>,
        now_ms: i64,
    ) -> Result<Challenge, HoldError> {
        self.decide_many(&[id], state, reviewer, note, now_ms)
            .pop()
            .map_or(Err(HoldError::Unknown), |(_, r)| r)
    }

    /// Approves several challenges with one fsync: bulk approval from the dashboard. Returns
    /// each id's result (ids sorted and deduplicated).
    pub fn approve_many(
        &self,
        ids: &[&str],
        reviewer: &str,
        note: Option<String>,
        now_ms: i64,
    ) -> Vec<(String, Result<Challenge, HoldError>)> {
        self.decide_many(ids, State::Approved, reviewer, note, now_ms)
    }

    /// Denies several challenges with one fsync.
    pub fn deny_many(
        &self,
        ids: &[&str],
        reviewer: &str,
        note: Option<String>,
        now_ms: i64,
    ) -> Vec<(String, Result<Challenge, HoldError>)> {
        self.decide_many(ids, State::Denied, reviewer, note, now_ms)
    }

    fn decide_many(
        &self,
        ids: &[&str],
        state: State,
        reviewer: &str,
        note: Option<String>,
        now_ms: i64,
    ) -> Vec<(String, Result<Challenge, HoldError>)> {
        let mut ids: Vec<&str> = ids.to_vec();
        ids.sort_unstable();
        ids.dedup();
        let mut out = Vec::with_capacity(ids.len());
        let mut work = Vec::new();
        for id in ids {
            match self.inner.entry(id) {
                Ok(e) => work.push((id, e)),
                Err(e) => out.push((id.to_string(), Err(e))),
            }
        }
        let transitions = work.iter().map(|(_, e)| {
            let due = lock(&e.rec).expires_ms <= now_ms;
            let to = if due {
                To {
                    state: State::Expired,
                    reviewer: None,
                    note: None,
                    now_ms,
                    strict: false,
                }
            } else {
                To {
                    state,
                    reviewer: Some(reviewer),
                    note: note.clone(),
                    now_ms,
                    strict: true,
                }
            };
            (e.as_ref(), to)
        });
        let results = self.inner.transition_all(transitions.collect());
        for ((id, _), r) in work.iter().zip(results) {
            let r = match r {
                Ok((true, c)) if c.state == state => Ok(c),
                Ok((_, c)) => Err(HoldError::AlreadyDecided { state: c.state }),
                Err(e) => Err(e),
            };
            out.push((id.to_string(), r));
        }
        out
    }

    /// Expires every pending challenge whose deadline is at or before `now_ms` (stored, then
    /// waiters are woken) and returns them. The owner calls it on a timer: held challenges
    /// also expire by their waiter's own timer, 428-mode ones only here (or when touched).
    /// Also forgets, from memory, settled challenges past their expiry (they stay stored).
    pub fn expire_due(&self, now_ms: i64) -> Vec<Challenge> {
        let due: Vec<Arc<Entry>> = {
            let mut ix = lock(&self.inner.index);
            let mut due = Vec::new();
            let durable = self.inner.backing.is_durable();
            ix.entries.retain(|_, e| {
                // try_lock: an entry being decided right now is simply looked at next time.
                let Ok(c) = e.rec.try_lock() else { return true };
                if c.expires_ms > now_ms {
                    return true;
                }
                if c.state == State::Pending {
                    due.push(e.clone());
                    return true;
                }
                !durable
            });
            due
        };
        let transitions = due
            .iter()
            .map(|e| {
                let to = To {
                    state: State::Expired,
                    reviewer: None,
                    note: None,
                    now_ms,
                    strict: false,
                };
                (e.as_ref(), to)
            })
            .collect();
        self.inner
            .transition_all(transitions)
            .into_iter()
            .filter_map(|r| match r {
                Ok((true, c)) => Some(c),
                _ => None,
            })
            .collect()
    }

    /// Removes, from the store and from memory, decided challenges settled at least `max_age`
    /// before `now_ms`; "settled" is the latest of their decision, redemption and expiry, so an
    /// approval stays redeemable for its whole window whatever `max_age` is. Pending challenges
    /// are never removed. Returns how many were removed. The owner calls it periodically
    /// (`step_up.retention`); it scans the whole tree.
    pub fn prune(&self, now_ms: i64, max_age: Duration) -> Result<usize, HoldError> {
        let age_ms = i64::try_from(max_age.as_millis()).unwrap_or(i64::MAX);
        let cutoff = now_ms.saturating_sub(age_ms);
        let old = |c: &Challenge| c.state != State::Pending && settled_ms(c) <= cutoff;
        let removed = self.inner.backing.remove_where(old)?;
        let mut forgotten = 0;
        {
            let mut ix = lock(&self.inner.index);
            ix.entries.retain(|_, e| {
                // try_lock: an entry being decided right now is looked at next time.
                let Ok(c) = e.rec.try_lock() else { return true };
                let keep = !old(&c);
                forgotten += usize::from(!keep);
                keep
            });
        }
        Ok(if self.inner.backing.is_durable() {
            removed.len()
        } else {
            forgotten
        })
    }

    /// The 428 mode's retry: an approved, not held challenge of the same `agent` for the same
    /// `digest`, before its expiry, becomes [`State::Redeemed`] (stored durably) exactly once.
    pub fn redeem(
        &self,
        id: &str,
        agent: &str,
        digest: &str,
        now_ms: i64,
    ) -> Result<Challenge, HoldError> {
        let entry = self.inner.entry(id)?;
        let mut rec = lock(&entry.rec);
        if rec.agent != agent || rec.digest != digest {
            return Err(HoldError::Mismatch);
        }
        if rec.hold {
            return Err(HoldError::Held);
        }
        match rec.state {
            State::Approved => {}
            State::Redeemed => return Err(HoldError::Used),
            State::Expired => return Err(HoldError::Expired),
            State::Pending if rec.expires_ms <= now_ms => {
                drop(rec);
                let to = To {
                    state: State::Expired,
                    reviewer: None,
                    note: None,
                    now_ms,
                    strict: false,
                };
                let _ = self.inner.transition_all(vec![(entry.as_ref(), to)]);
                return Err(HoldError::Expired);
            }
            state => return Err(HoldError::NotApproved { state }),
        }
        if rec.expires_ms <= now_ms {
            return Err(HoldError::Expired);
        }
        let mut next = rec.clone();
        next.state = State::Redeemed;
        next.redeemed_ms = Some(now_ms);
        let b = &self.inner.backing;
        b.put(&next).and_then(|n| b.sync(n))?;
        *rec = next.clone();
        entry.state.send_replace(State::Redeemed);
        self.inner.emit(EventKind::Resolved, &next);
        Ok(next)
    }

    /// The challenge `id`, from memory or the store.
    pub fn get(&self, id: &str) -> Option<Challenge> {
        if let Some(e) = lock(&self.inner.index).entries.get(id).cloned() {
            return Some(lock(&e.rec).clone());
        }
        self.inner.backing.get(id).ok().flatten()
    }

    /// Challenges in `state` (all when `None`), oldest first. Pending ones come from memory;
    /// other states from the store (everything since the tree was created), or from memory
    /// for [`Holds::in_memory`].
    pub fn list(&self, state: Option<State>) -> Vec<Challenge> {
        let mut out: Vec<Challenge> =
            if state == Some(State::Pending) || !self.inner.backing.is_durable() {
                let entries: Vec<Arc<Entry>> =
                    lock(&self.inner.index).entries.values().cloned().collect();
                entries.iter().map(|e| lock(&e.rec).clone()).collect()
            } else {
                match self.inner.backing.scan() {
                    Ok(v) => v,
                    Err(e) => {
                        tracing::warn!("holds: cannot list: {e}");
                        Vec::new()
                    }
                }
            };
        out.retain(|c| state.is_none_or(|s| c.state == s));
        out.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
        out
    }

    /// How many are pending, in total and for `agent`.
    pub fn pending(&self, agent: &str) -> (usize, usize) {
        let ix = lock(&self.inner.index);
        (ix.pending, ix.per_agent.get(agent).copied().unwrap_or(0))
    }

    /// The challenges this process's [`Holds::open`] found pending and marked interrupted,
    /// once (later calls return none): the owner records their settlement in the audit log.
    pub fn take_interrupted(&self) -> Vec<Challenge> {
        std::mem::take(&mut *lock(&self.inner.interrupted))
    }

    /// The gate is stopping: every [`Waiter::settle`] still waiting returns `None` at once,
    /// leaving its challenge pending in the store (the next start marks it interrupted and
    /// records that), so that nothing of this instance outlives the gate.
    pub fn close(&self) {
        self.inner.closed.send_replace(true);
    }

    /// The feed of created / resolved events, from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<HoldEvent> {
        self.inner.feed.subscribe()
    }
}

/// A place under the bounds, given back when dropped while still armed.
struct Place<'a> {
    holds: &'a Holds,
    agent: Option<String>,
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        if let Some(agent) = self.agent.take() {
            lock(&self.holds.inner.index).release(&agent);
        }
    }
}

impl Index {
    fn release(&mut self, agent: &str) {
        self.pending = self.pending.saturating_sub(1);
        if let Some(n) = self.per_agent.get_mut(agent) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_agent.remove(agent);
            }
        }
    }
}

impl Inner {
    /// The entry for `id`: in memory, or loaded from the store (and kept, so its lock is the
    /// one every later transition takes).
    fn entry(&self, id: &str) -> Result<Arc<Entry>, HoldError> {
        if let Some(e) = lock(&self.index).entries.get(id) {
            return Ok(e.clone());
        }
        let Some(c) = self.backing.get(id)? else {
            return Err(HoldError::Unknown);
        };
        let (tx, _) = watch::channel(c.state);
        let fresh = Arc::new(Entry {
            rec: Mutex::new(c),
            state: tx,
        });
        let mut ix = lock(&self.index);
        Ok(ix.entries.entry(id.to_string()).or_insert(fresh).clone())
    }

    fn emit(&self, kind: EventKind, c: &Challenge) {
        let mut seq = lock(&self.events);
        *seq += 1;
        let _ = self.feed.send(HoldEvent {
            seq: *seq,
            kind,
            challenge: c.clone(),
        });
    }

    /// Compare-and-swap from `Pending` for each entry (locks taken in the given order, which
    /// callers keep ascending by id), one sync for all, then the new states are published.
    /// Each result is the challenge after the call, with `true` when this call moved it (the
    /// winner) and `false` when it had already left `Pending`.
    fn transition_all(
        &self,
        work: Vec<(&Entry, To<'_>)>,
    ) -> Vec<Result<(bool, Challenge), HoldError>> {
        let mut guards = Vec::with_capacity(work.len());
        let mut last = None;
        for (e, to) in work {
            let rec = lock(&e.rec);
            if rec.state != State::Pending {
                let c = rec.clone();
                guards.push((e, rec, to, Some(Ok((false, c))), None));
                continue;
            }
            let mut next = rec.clone();
            next.state = to.state;
            next.reviewer = to.reviewer.map(str::to_string);
            next.note = to.note.clone();
            next.decided_ms = Some(to.now_ms);
            match self.backing.put(&next) {
                Ok(n) => {
                    last = Some(n);
                    guards.push((e, rec, to, None, Some(next)));
                }
                Err(err) => guards.push((e, rec, to, Some(Err(err)), Some(next))),
            }
        }
        let synced = match last {
            Some(n) => self.backing.sync(n),
            None => Ok(()),
        };
        let mut out = Vec::with_capacity(guards.len());
        for (e, mut rec, to, done, next) in guards {
            let (res, next) = match (done, next) {
                (Some(Ok(c)), _) => {
                    out.push(Ok(c));
                    continue;
                }
                (Some(Err(err)), Some(next)) => (Err(err), next),
                (None, Some(next)) => (synced.clone(), next),
                (_, None) => {
                    out.push(Err(HoldError::Unknown));
                    continue;
                }
            };
            if let Err(err) = res {
                if to.strict {
                    out.push(Err(err));
                    continue;
                }
                tracing::error!(
                    "holds: {} of {} not stored ({err}); it counts anyway",
                    next.state,
                    next.id
                );
            }
            *rec = next.clone();
            lock(&self.index).release(&next.agent);
            e.state.send_replace(next.state);
            self.emit(EventKind::Resolved, &next);
            drop(rec);
            out.push(Ok((true, next)));
        }
        out
    }
}

/// When a challenge stopped mattering: the latest of its decision, redemption and expiry.
fn settled_ms(c: &Challenge) -> i64 {
    c.expires_ms
        .max(c.decided_ms.unwrap_or(c.created_ms))
        .max(c.redeemed_ms.unwrap_or(c.created_ms))
}

/// Unix milliseconds now.
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn new_id() -> Result<String, HoldError> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).map_err(|e| HoldError::Store(format!("no randomness: {e}")))?;
    Ok(format!("chl_{}", hex::encode(b)))
}

/// Held by the parked request. [`Waiter::outcome`] resolves when the challenge leaves
/// `Pending`, expiring it at its deadline if nobody else did. Dropping it while the challenge
/// is pending (the agent went away) marks it [`State::Abandoned`], in hold mode; a 428-mode
/// waiter may simply be dropped.
pub struct Waiter {
    holds: Arc<Inner>,
    entry: Arc<Entry>,
    rx: watch::Receiver<State>,
    deadline: Instant,
    expires_ms: i64,
    /// Abandon on drop.
    armed: bool,
}

/// How [`Waiter::settle`] stopped waiting.
enum Settled {
    Decided(Box<Challenge>),
    Gone,
    Closed,
}

impl fmt::Debug for Waiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Waiter")
            .field("id", &lock(&self.entry.rec).id)
            .field("deadline", &self.deadline)
            .finish()
    }
}

impl Waiter {
    /// The challenge once it is no longer pending.
    pub async fn outcome(mut self) -> Challenge {
        let c = self.wait().await;
        self.armed = false;
        c
    }

    /// The challenge once it is settled, whoever settles it: a decision, the expiry, or, when
    /// `gone` completes first (the agent went away), abandonment. Abandoning is a transition
    /// like the others: if a decision won the race, the challenge is returned as that
    /// decision left it (an approval that came first stays approved; the caller then knows
    /// the approval found nobody to answer). `gone` is ignored for a 428-mode challenge.
    ///
    /// `None` when the holds were [closed](Holds::close) (the gate is stopping) while the
    /// challenge was pending: it stays pending in the store, and a restart marks it
    /// interrupted. Unlike [`Waiter::outcome`] and dropping the waiter, dropping this future
    /// before it is done leaves the challenge pending too. The caller is the one that records
    /// the settlement, and it is meant to run in a task of its own, not in the agent's
    /// connection.
    pub async fn settle(
        mut self,
        gone: impl std::future::Future<Output = ()>,
    ) -> Option<Challenge> {
        let hold = self.armed;
        self.armed = false;
        let mut closed = self.holds.closed.subscribe();
        let how = tokio::select! {
            c = self.wait() => Settled::Decided(Box::new(c)),
            () = gone, if hold => Settled::Gone,
            _ = closed.wait_for(|c| *c) => Settled::Closed,
        };
        match how {
            Settled::Decided(c) => Some(*c),
            Settled::Gone => Some(self.abandon().await),
            // Settled just as the gate stopped: recorded like any other settlement.
            Settled::Closed => {
                Some(lock(&self.entry.rec).clone()).filter(|c| c.state != State::Pending)
            }
        }
    }

    async fn wait(&mut self) -> Challenge {
        loop {
            let sleep = tokio::time::sleep_until(self.deadline);
            let decided = tokio::select! {
                changed = self.rx.wait_for(|s| *s != State::Pending) => changed.is_ok(),
                () = sleep => false,
            };
            // Not decided: the deadline passed (or, not reached, the sender went away; the
            // sender lives in the entry this waiter holds).
            if decided || lock(&self.entry.rec).state != State::Pending {
                break;
            }
            self.expire().await;
        }
        lock(&self.entry.rec).clone()
    }

    /// Marks the challenge abandoned if it is still pending; returns it as settled.
    async fn abandon(&self) -> Challenge {
        let holds = self.holds.clone();
        let entry = self.entry.clone();
        let run = move || {
            let to = To {
                state: State::Abandoned,
                reviewer: None,
                note: None,
                now_ms: now_ms(),
                strict: false,
            };
            let _ = holds.transition_all(vec![(entry.as_ref(), to)]);
        };
        if let Err(e) = tokio::task::spawn_blocking(run).await {
            tracing::error!("holds: abandonment task failed: {e}");
        }
        lock(&self.entry.rec).clone()
    }

    async fn expire(&self) {
        let holds = self.holds.clone();
        let entry = self.entry.clone();
        let at = self.expires_ms;
        let run = move || {
            let to = To {
                state: State::Expired,
                reviewer: None,
                note: None,
                now_ms: at,
                strict: false,
            };
            let _ = holds.transition_all(vec![(entry.as_ref(), to)]);
        };
        if let Err(e) = tokio::task::spawn_blocking(run).await {
            tracing::error!("holds: expiry task failed: {e}");
        }
    }

    /// The challenge's current state.
    pub fn state(&self) -> State {
        *self.rx.borrow()
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        if !self.armed || *self.rx.borrow() != State::Pending {
            return;
        }
        let to = To {
            state: State::Abandoned,
            reviewer: None,
            note: None,
            now_ms: now_ms(),
            strict: false,
        };
        let _ = self.holds.transition_all(vec![(self.entry.as_ref(), to)]);
    }
}
