//! Step-up holds: each transition, exactly-one resolution under races, bounds, restart,
//! the 428 mode's redeem rules, the event feed, and a 1,000-held (10,000 on request)
//! memory and approval-latency measurement.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use agentgate::actions::Action;
use agentgate::holds::{
    EventKind, HoldError, HoldLimits, Holds, NewChallenge, Scope, State, Waiter, digest,
};
use serde_json::{Map, json};

const WINDOW: Duration = Duration::from_secs(15 * 60);
const T0: i64 = 1_700_000_000_000;

fn action() -> Action {
    let mut params = Map::new();
    params.insert("repo".into(), json!("o/r"));
    let mut a = Action::new("github.repos.delete", params);
    a.host = "api.github.com".into();
    a.method = "DELETE".into();
    a.path = "/repos/o/r".into();
    a
}

fn new(agent: &str, hold: bool) -> NewChallenge {
    let actions = vec![action()];
    let d = digest(
        agent,
        &actions,
        "api.github.com",
        "DELETE",
        "/repos/o/r",
        b"",
    );
    NewChallenge {
        agent: agent.into(),
        actions,
        rules: vec!["confirm-deletes".into()],
        reasons: vec!["deleting a repository".into()],
        digest: d,
        hold,
    }
}

fn mem() -> Holds {
    Holds::in_memory(WINDOW, HoldLimits::default())
}

fn temp_dir(tag: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let d = std::env::temp_dir().join(format!(
        "agentgate-holds-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[tokio::test]
async fn approve_wakes_the_waiter_and_the_feed_sees_created_then_resolved() {
    let h = mem();
    let mut feed = h.subscribe();
    let (c, w) = h.create(new("coder", true), T0).unwrap();
    assert!(c.id.starts_with("chl_") && c.id.len() == 4 + 32);
    assert_eq!(c.state, State::Pending);
    assert_eq!(c.expires_ms, T0 + 900_000);
    assert_eq!(h.pending("coder"), (1, 1));
    let task = tokio::spawn(w.outcome());
    let a = h
        .approve(&c.id, "alice", Some("ok".into()), T0 + 5)
        .unwrap();
    assert_eq!(a.state, State::Approved);
    let got = task.await.unwrap();
    assert_eq!(got.state, State::Approved);
    assert_eq!(got.reviewer.as_deref(), Some("alice"));
    assert_eq!(got.note.as_deref(), Some("ok"));
    assert_eq!(got.decided_ms, Some(T0 + 5));
    assert_eq!(h.pending("coder"), (0, 0));
    let e1 = feed.recv().await.unwrap();
    let e2 = feed.recv().await.unwrap();
    assert_eq!(
        (e1.kind, e2.kind),
        (EventKind::Created, EventKind::Resolved)
    );
    assert!(e2.seq > e1.seq);
    assert_eq!(e2.challenge.state, State::Approved);
    // The API's JSON carries the actions' params.
    let v = serde_json::to_value(&got).unwrap();
    assert_eq!(v["state"], "approved");
    assert_eq!(v["actions"][0]["params"]["repo"], "o/r");
    // Losers are told who won.
    assert_eq!(
        h.deny(&c.id, "bob", None, T0 + 6),
        Err(HoldError::AlreadyDecided {
            state: State::Approved
        })
    );
    assert_eq!(
        h.approve(&c.id, "bob", None, T0 + 6),
        Err(HoldError::AlreadyDecided {
            state: State::Approved
        })
    );
    assert_eq!(
        h.approve("chl_nope", "bob", None, T0),
        Err(HoldError::Unknown)
    );
}

#[tokio::test]
async fn deny_carries_the_note() {
    let h = mem();
    let (c, w) = h.create(new("coder", true), T0).unwrap();
    let d = h.deny(&c.id, "bob", Some("no".into()), T0 + 1).unwrap();
    assert_eq!(d.state, State::Denied);
    let got = w.outcome().await;
    assert_eq!(
        (got.state, got.note.as_deref()),
        (State::Denied, Some("no"))
    );
    assert_eq!(h.list(Some(State::Denied)).len(), 1);
    assert!(h.list(Some(State::Pending)).is_empty());
}

#[tokio::test]
async fn the_waiter_expires_the_challenge_at_its_deadline() {
    let h = Holds::in_memory(Duration::from_millis(200), HoldLimits::default());
    let started = Instant::now();
    let (c, w) = h.create(new("coder", true), T0).unwrap();
    let got = w.outcome().await;
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_eq!(got.state, State::Expired);
    assert_eq!(got.decided_ms, Some(T0 + 200));
    assert_eq!(h.get(&c.id).unwrap().state, State::Expired);
    assert_eq!(h.pending("coder"), (0, 0));
}

#[tokio::test]
async fn expire_due_and_late_approvals() {
    let h = Holds::in_memory(Duration::from_secs(60), HoldLimits::default());
    let (a, wa) = h.create(new("coder", true), T0).unwrap();
    let (b, _wb) = h.create(new("coder", false), T0 + 30_000).unwrap();
    assert!(h.expire_due(T0 + 59_999).is_empty());
    let due = h.expire_due(T0 + 60_000);
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].id, a.id);
    assert_eq!(wa.outcome().await.state, State::Expired);
    // An approval after the deadline expires it instead.
    assert_eq!(
        h.approve(&b.id, "alice", None, T0 + 90_000),
        Err(HoldError::AlreadyDecided {
            state: State::Expired
        })
    );
    assert_eq!(h.get(&b.id).unwrap().state, State::Expired);
}

#[tokio::test]
async fn dropping_a_held_waiter_abandons_and_a_428_waiter_does_not() {
    let h = mem();
    let mut feed = h.subscribe();
    let (c, w) = h.create(new("coder", true), T0).unwrap();
    drop(w);
    assert_eq!(h.get(&c.id).unwrap().state, State::Abandoned);
    assert_eq!(
        h.approve(&c.id, "alice", None, T0),
        Err(HoldError::AlreadyDecided {
            state: State::Abandoned
        })
    );
    let (n, w) = h.create(new("coder", false), T0).unwrap();
    drop(w);
    assert_eq!(h.get(&n.id).unwrap().state, State::Pending);
    let kinds: Vec<_> = std::iter::from_fn(|| feed.try_recv().ok())
        .map(|e| (e.kind, e.challenge.state))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (EventKind::Created, State::Pending),
            (EventKind::Resolved, State::Abandoned),
            (EventKind::Created, State::Pending),
        ]
    );
}

#[test]
fn bounds_per_agent_and_total() {
    let h = Holds::in_memory(
        WINDOW,
        HoldLimits {
            per_agent: 2,
            total: 3,
        },
    );
    let (a1, _w1) = h.create(new("a", false), T0).unwrap();
    let (_a2, _w2) = h.create(new("a", false), T0).unwrap();
    assert_eq!(
        h.create(new("a", false), T0).err(),
        Some(HoldError::TooMany {
            scope: Scope::Agent,
            limit: 2
        })
    );
    let (_b1, _w3) = h.create(new("b", false), T0).unwrap();
    assert_eq!(
        h.create(new("c", false), T0).err(),
        Some(HoldError::TooMany {
            scope: Scope::Total,
            limit: 3
        })
    );
    // A decision frees a place.
    h.deny(&a1.id, "r", None, T0).unwrap();
    assert!(h.create(new("a", false), T0).is_ok());
}

#[test]
fn redeem_rules() {
    let h = mem();
    let n = new("coder", false);
    let d = n.digest.clone();
    let (c, _w) = h.create(n, T0).unwrap();
    assert_eq!(
        h.redeem(&c.id, "coder", &d, T0 + 1),
        Err(HoldError::NotApproved {
            state: State::Pending
        })
    );
    h.approve(&c.id, "alice", None, T0 + 2).unwrap();
    assert_eq!(
        h.redeem(&c.id, "other", &d, T0 + 3),
        Err(HoldError::Mismatch)
    );
    assert_eq!(
        h.redeem(&c.id, "coder", &"0".repeat(64), T0 + 3),
        Err(HoldError::Mismatch)
    );
    assert_eq!(
        h.redeem("chl_x", "coder", &d, T0 + 3),
        Err(HoldError::Unknown)
    );
    let r = h.redeem(&c.id, "coder", &d, T0 + 4).unwrap();
    assert_eq!((r.state, r.redeemed_ms), (State::Redeemed, Some(T0 + 4)));
    assert_eq!(h.redeem(&c.id, "coder", &d, T0 + 5), Err(HoldError::Used));

    // Approved but retried after the window.
    let (late, _w) = h.create(new("coder", false), T0).unwrap();
    h.approve(&late.id, "alice", None, T0 + 1).unwrap();
    assert_eq!(
        h.redeem(&late.id, "coder", &d, T0 + 900_000),
        Err(HoldError::Expired)
    );
    // Denied.
    let (den, _w) = h.create(new("coder", false), T0).unwrap();
    h.deny(&den.id, "alice", None, T0 + 1).unwrap();
    assert_eq!(
        h.redeem(&den.id, "coder", &d, T0 + 2),
        Err(HoldError::NotApproved {
            state: State::Denied
        })
    );
    // Pending past the window: expired by the attempt.
    let (p, _w) = h.create(new("coder", false), T0).unwrap();
    assert_eq!(
        h.redeem(&p.id, "coder", &d, T0 + 900_000),
        Err(HoldError::Expired)
    );
    assert_eq!(h.get(&p.id).unwrap().state, State::Expired);
    // A held challenge's approval went to the held request: no replay by header.
    let (held, w) = h.create(new("coder", true), T0).unwrap();
    h.approve(&held.id, "alice", None, T0 + 1).unwrap();
    drop(w);
    assert_eq!(
        h.redeem(&held.id, "coder", &d, T0 + 2),
        Err(HoldError::Held)
    );
}

type Contender = Box<dyn FnOnce(&Holds) -> Result<State, HoldError> + Send>;

/// approve vs deny vs expiry vs the agent going away (or waiting), on threads: one winner,
/// and the waiter (when waiting) sees exactly the winner's state.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_resolutions_have_exactly_one_winner() {
    let h = mem();
    let mut feed = h.subscribe();
    for i in 0..500 {
        let (c, w) = h.create(new("coder", true), T0).unwrap();
        let barrier = Arc::new(std::sync::Barrier::new(4));
        let wait_instead = i % 2 == 0;
        let waiter_task = if wait_instead {
            Some(tokio::spawn(w.outcome()))
        } else {
            let b = barrier.clone();
            let _ = std::thread::spawn(move || {
                b.wait();
                let w: Waiter = w;
                drop(w);
            });
            None
        };
        let spawn = |f: Contender| {
            let h = h.clone();
            let b = barrier.clone();
            std::thread::spawn(move || {
                b.wait();
                f(&h)
            })
        };
        let id = c.id.clone();
        let id2 = c.id.clone();
        let id3 = c.id.clone();
        let ta = spawn(Box::new(move |h| {
            h.approve(&id, "a", None, T0 + 1).map(|c| c.state)
        }));
        let td = spawn(Box::new(move |h| {
            h.deny(&id2, "d", None, T0 + 1).map(|c| c.state)
        }));
        let te = spawn(Box::new(move |h| {
            let due = h.expire_due(T0 + 900_000);
            match due.iter().find(|c| c.id == id3) {
                Some(c) => Ok(c.state),
                None => Err(HoldError::Unknown),
            }
        }));
        if wait_instead {
            barrier.wait();
        }
        let results = [ta.join().unwrap(), td.join().unwrap(), te.join().unwrap()];
        let winners: Vec<State> = results.iter().filter_map(|r| r.clone().ok()).collect();
        let final_state = h.get(&c.id).unwrap().state;
        assert_ne!(final_state, State::Pending);
        if let Some(t) = waiter_task {
            assert_eq!(winners.len(), 1, "iteration {i}: {results:?}");
            assert_eq!(t.await.unwrap().state, final_state);
        } else {
            // Abandonment is the fourth contender.
            let abandoned = usize::from(final_state == State::Abandoned);
            assert_eq!(winners.len() + abandoned, 1, "iteration {i}: {results:?}");
        }
        if let Some(&s) = winners.first() {
            assert_eq!(s, final_state);
        }
        for r in &results {
            if let Err(HoldError::AlreadyDecided { state }) = r {
                assert_eq!(*state, final_state);
            }
        }
        // The feed: created, then one resolution with the final state.
        let created = feed.recv().await.unwrap();
        let resolved = feed.recv().await.unwrap();
        assert_eq!(created.kind, EventKind::Created);
        assert_eq!(
            (
                resolved.kind,
                resolved.challenge.state,
                &resolved.challenge.id
            ),
            (EventKind::Resolved, final_state, &c.id)
        );
        assert!(resolved.seq == created.seq + 1);
    }
    assert!(feed.try_recv().is_err());
    assert_eq!(h.pending("coder"), (0, 0));
}

#[test]
fn stored_durably_and_interrupted_on_restart() {
    let dir = temp_dir("restart");
    let (pending, approved, denied);
    {
        let db = agentgate::store::open_unshared(&dir).unwrap();
        let h = Holds::open(&db, &dir, WINDOW, HoldLimits::default(), T0).unwrap();
        let (p, _w1) = h.create(new("coder", false), T0).unwrap();
        let (a, _w2) = h.create(new("coder", false), T0).unwrap();
        let (d, _w3) = h.create(new("coder", false), T0).unwrap();
        h.approve(&a.id, "alice", None, T0 + 1).unwrap();
        h.deny(&d.id, "alice", Some("no".into()), T0 + 1).unwrap();
        pending = p.id;
        approved = a.id;
        denied = d.id;
    }
    let db = agentgate::store::open_unshared(&dir).unwrap();
    let h = Holds::open(&db, &dir, WINDOW, HoldLimits::default(), T0 + 10).unwrap();
    let p = h.get(&pending).unwrap();
    assert_eq!((p.state, p.decided_ms), (State::Interrupted, Some(T0 + 10)));
    assert_eq!(h.get(&denied).unwrap().note.as_deref(), Some("no"));
    assert_eq!(h.list(Some(State::Interrupted)).len(), 1);
    assert_eq!(h.list(None).len(), 3);
    assert!(h.list(Some(State::Pending)).is_empty());
    assert_eq!(h.pending("coder"), (0, 0));
    assert_eq!(
        h.approve(&pending, "alice", None, T0 + 11),
        Err(HoldError::AlreadyDecided {
            state: State::Interrupted
        })
    );
    // An approval given before the restart is still redeemable once, within the window.
    let d = new("coder", false).digest;
    assert_eq!(
        h.redeem(&approved, "coder", &d, T0 + 12).unwrap().state,
        State::Redeemed
    );
    drop(h);
    drop(db);
    // The interruption and the redemption were stored.
    let db = agentgate::store::open_unshared(&dir).unwrap();
    let h = Holds::open(&db, &dir, WINDOW, HoldLimits::default(), T0 + 20).unwrap();
    assert_eq!(h.get(&pending).unwrap().decided_ms, Some(T0 + 10));
    assert_eq!(
        h.redeem(&approved, "coder", &d, T0 + 21),
        Err(HoldError::Used)
    );
    drop(h);
    drop(db);
    let _ = std::fs::remove_dir_all(&dir);
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// Creates `n` held challenges on a sled store, each with a task parked on its waiter; then
/// approves them all (`bulk`: one `approve_many` call; else 8 threads approving one by one)
/// and reports RSS growth and approve-call-to-waiter-wake latencies.
async fn held_at_once(n: usize, bulk: bool) {
    let dir = temp_dir("bench");
    let db = agentgate::store::open_unshared(&dir).unwrap();
    let limits = HoldLimits {
        per_agent: n,
        total: n,
    };
    let h = Holds::open(&db, &dir, WINDOW, limits, T0).unwrap();
    let before = rss_bytes();
    let started = Instant::now();
    // 8 threads create (as concurrent step-ups do); each waiter is parked on a task.
    let made: Vec<_> = (0..8)
        .map(|k| {
            let h = h.clone();
            let count = n / 8 + usize::from(k < n % 8);
            std::thread::spawn(move || {
                (0..count)
                    .map(|_| h.create(new("coder", true), T0).unwrap())
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut ids = Vec::with_capacity(n);
    let mut tasks = Vec::with_capacity(n);
    for t in made {
        for (c, w) in t.join().unwrap() {
            ids.push(c.id);
            tasks.push(tokio::spawn(async move {
                w.outcome().await;
                Instant::now()
            }));
        }
    }
    let create_time = started.elapsed();
    tokio::task::yield_now().await;
    let after = rss_bytes();
    // 8 reviewer threads; each approves `batch` ids per call (1: one by one).
    let batch = if bulk { 64 } else { 1 };
    let approve_started = Instant::now();
    let threads: Vec<_> = (0..8)
        .map(|k| {
            let h = h.clone();
            let mine: Vec<(usize, String)> = ids
                .iter()
                .cloned()
                .enumerate()
                .filter(|(i, _)| i % 8 == k)
                .collect();
            std::thread::spawn(move || {
                let mut asked = Vec::with_capacity(mine.len());
                for chunk in mine.chunks(batch) {
                    let at = Instant::now();
                    let refs: Vec<&str> = chunk.iter().map(|(_, id)| id.as_str()).collect();
                    for (_, r) in h.approve_many(&refs, "alice", None, T0 + 1) {
                        r.unwrap();
                    }
                    asked.extend(chunk.iter().map(|(i, _)| (*i, at)));
                }
                asked
            })
        })
        .collect();
    let mut asked = vec![approve_started; n];
    for t in threads {
        for (i, at) in t.join().unwrap() {
            asked[i] = at;
        }
    }
    let mut lat = Vec::with_capacity(n);
    for (i, t) in tasks.into_iter().enumerate() {
        let woke = t.await.unwrap();
        lat.push(woke.saturating_duration_since(asked[i]));
    }
    let total = approve_started.elapsed();
    lat.sort();
    println!(
        "{n} held ({}): create {:?} ({:.1} us each); RSS +{:.1} MB ({} B per held challenge incl. its parked task); \
         approve all {:?}; approve-call-to-wake p50 {:?} p99 {:?} max {:?}",
        if bulk {
            "8 threads, approve_many of 64"
        } else {
            "8 threads, approve each"
        },
        create_time,
        create_time.as_secs_f64() * 1e6 / n as f64,
        (after.saturating_sub(before)) as f64 / 1e6,
        after.saturating_sub(before) / n as u64,
        total,
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        lat[n - 1],
    );
    assert_eq!(h.pending("coder"), (0, 0));
    drop(h);
    drop(db);
    let _ = std::fs::remove_dir_all(&dir);
}

/// 1,000 held at once by default; the speed figures (10,000 held, BENCHMARKS.md) come from
/// `AGENTGATE_HELD=10000 cargo test --release --test holds held_then_approved -- --nocapture
/// --test-threads=1`, run alone for a meaningful RSS.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn held_then_approved() {
    let n = std::env::var("AGENTGATE_HELD")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000);
    held_at_once(n, true).await;
    held_at_once(n, false).await;
}
