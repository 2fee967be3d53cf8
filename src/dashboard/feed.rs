//! The dashboard's event feed: one sequence over everything the page shows live.
//!
//! The holds and the audit log number their own events (`HoldEvent::seq`, record `seq`), so
//! the feed gives every event it publishes its own `seq` (1, 2, ... per gate process, named by
//! [`Feed::boot`]) and keeps the newest in a ring, bounded by [`RING_EVENTS`] events and
//! [`RING_BYTES`] bytes. A WebSocket client that asks for the events after `seq` gets them
//! from the ring, then live ones; one that asks for an event the ring no longer holds (or of
//! another process) gets a `resync` instead: reload the lists through the REST API.
//!
//! ```text
//! {"seq":N,"type":"challenge_created","challenge":{..}}   Holds: a step-up is waiting
//! {"seq":N,"type":"challenge_resolved","challenge":{..}}  Holds: approved, denied, expired, ...
//! {"seq":N,"type":"decision","record":{..}}               Audit: a durable decision record
//! {"seq":N,"type":"policy","policy":{..}}                 the policy status changed
//! {"seq":N,"type":"resync","reason":".."}                 events were lost: reload
//! ```
//!
//! A challenge whose JSON is over [`MAX_EVENT_BYTES`] is sent as a summary with
//! `"truncated": true`; `GET /api/challenges` has it whole.
//!
//! [`pump`] moves events from the sources into the feed. When it falls behind a source (a
//! broadcast `Lagged`), it publishes a `resync`. Clients never slow the pump: each reads the
//! ring at its own pace and is told to resync when it falls out of it (see `ws`).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{broadcast, watch};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::lock;
use super::policy::PolicyView;
use crate::holds::{Challenge, EventKind, HoldEvent};

/// Most events the ring keeps.
pub const RING_EVENTS: usize = 4096;
/// Most bytes (of event JSON) the ring keeps.
pub const RING_BYTES: usize = 32 << 20;
/// A challenge event over this is sent as a summary.
pub const MAX_EVENT_BYTES: usize = 256 << 10;
/// Most audit notices read from the store in one go.
const AUDIT_BATCH: usize = 512;

/// One published event: its number and its JSON text.
#[derive(Debug, Clone)]
pub struct Event {
    pub seq: u64,
    pub text: Utf8Bytes,
}

/// What a client gets when it asks for the events after a number.
#[derive(Debug)]
pub enum Since {
    /// Every event after it, in order (possibly none).
    Events(Vec<Arc<Event>>),
    /// Some are gone (or the number is not this process's): resync up to `head`.
    Gap { head: u64 },
}

#[derive(Debug)]
pub struct Feed {
    ring: Mutex<Ring>,
    head: watch::Sender<u64>,
    closed: watch::Sender<bool>,
    boot: String,
}

#[derive(Debug, Default)]
struct Ring {
    events: VecDeque<Arc<Event>>,
    bytes: usize,
    /// The newest seq published (0: none).
    head: u64,
}

impl Default for Feed {
    fn default() -> Self {
        Feed::new()
    }
}

impl Feed {
    pub fn new() -> Feed {
        let mut b = [0u8; 8];
        // A fixed id only weakens the detection of a restarted gate, which `after` beyond
        // the head also catches.
        let boot = match getrandom::fill(&mut b) {
            Ok(()) => hex::encode(b),
            Err(_) => format!("{:x}", crate::decider::now_ms()),
        };
        Feed {
            ring: Mutex::new(Ring::default()),
            head: watch::channel(0).0,
            closed: watch::channel(false).0,
            boot,
        }
    }

    /// Names this process's sequence.
    pub fn boot(&self) -> &str {
        &self.boot
    }

    /// The newest seq published (0: none yet).
    pub fn head(&self) -> u64 {
        lock(&self.ring).head
    }

    /// Publishes `{"seq":N,"type":KIND,"KEY":PAYLOAD}`; `payload` is JSON text.
    pub fn publish(&self, kind: &str, key: &str, payload: &str) -> u64 {
        let mut ring = lock(&self.ring);
        let seq = ring.head + 1;
        let text = format!(
            "{{\"seq\":{seq},\"type\":{},{}:{payload}}}",
            serde_json::Value::from(kind),
            serde_json::Value::from(key)
        );
        ring.bytes += text.len();
        ring.events.push_back(Arc::new(Event {
            seq,
            text: Utf8Bytes::from(text),
        }));
        ring.head = seq;
        while ring.events.len() > RING_EVENTS || (ring.bytes > RING_BYTES && ring.events.len() > 1)
        {
            if let Some(old) = ring.events.pop_front() {
                ring.bytes -= old.text.len();
            }
        }
        drop(ring);
        self.head.send_replace(seq);
        seq
    }

    /// Publishes a `resync` with `reason`.
    pub fn resync(&self, reason: &str) -> u64 {
        self.publish(
            "resync",
            "reason",
            &serde_json::Value::from(reason).to_string(),
        )
    }

    /// The events after `after`, or a gap when the ring no longer holds all of them.
    pub fn since(&self, after: u64) -> Since {
        let ring = lock(&self.ring);
        if after > ring.head {
            return Since::Gap { head: ring.head };
        }
        let first = ring.events.front().map_or(ring.head + 1, |e| e.seq);
        if after + 1 < first {
            return Since::Gap { head: ring.head };
        }
        let skip = usize::try_from(after + 1 - first).unwrap_or(usize::MAX);
        Since::Events(ring.events.iter().skip(skip).cloned().collect())
    }

    /// Changes (to the newest seq) whenever an event is published.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.head.subscribe()
    }

    /// Ends the feed: clients close their sockets, the pump stops.
    pub fn close(&self) {
        self.closed.send_replace(true);
    }

    /// Becomes `true` when the feed is closed.
    pub fn closed(&self) -> watch::Receiver<bool> {
        self.closed.subscribe()
    }

    fn challenge(&self, ev: &HoldEvent) {
        let kind = match ev.kind {
            EventKind::Created => "challenge_created",
            EventKind::Resolved => "challenge_resolved",
        };
        let text = match serde_json::to_string(&ev.challenge) {
            Ok(t) if t.len() <= MAX_EVENT_BYTES => t,
            Ok(_) => summary(&ev.challenge).to_string(),
            Err(e) => {
                tracing::warn!("dashboard feed: cannot encode a challenge: {e}");
                summary(&ev.challenge).to_string()
            }
        };
        self.publish(kind, "challenge", &text);
    }
}

/// A challenge without its actions' params (too large for the feed).
fn summary(c: &Challenge) -> serde_json::Value {
    let actions: Vec<serde_json::Value> = c
        .actions
        .iter()
        .map(|a| {
            serde_json::json!({
                "name": a.name, "host": a.host, "method": a.method, "path": a.path,
                "params": {},
            })
        })
        .collect();
    serde_json::json!({
        "id": c.id, "agent": c.agent, "actions": actions, "rules": c.rules,
        "reasons": c.reasons, "digest": c.digest, "hold": c.hold, "created_ms": c.created_ms,
        "expires_ms": c.expires_ms, "state": c.state, "reviewer": c.reviewer, "note": c.note,
        "decided_ms": c.decided_ms, "redeemed_ms": c.redeemed_ms, "truncated": true,
    })
}

/// The feed's sources, subscribed when the dashboard is built so that nothing published
/// before the pump starts is lost.
#[derive(Debug)]
pub struct Sources {
    pub holds: broadcast::Receiver<HoldEvent>,
    pub audit: broadcast::Receiver<crate::audit::Durable>,
}

/// How often the policy status is looked at.
const POLICY_POLL: Duration = Duration::from_secs(1);

/// Moves events from the holds, the audit log and the policy status into `feed` until it is
/// closed.
pub async fn pump(feed: Arc<Feed>, policy: Arc<PolicyView>, src: Sources) {
    let Sources {
        holds: mut holds_rx,
        audit: mut audit_rx,
    } = src;
    let mut closed = feed.closed();
    let mut tick = tokio::time::interval(POLICY_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut holds_open, mut audit_open) = (true, true);
    loop {
        tokio::select! {
            r = holds_rx.recv(), if holds_open => match r {
                Ok(ev) => feed.challenge(&ev),
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    feed.resync(&format!("the feed missed {n} challenge events"));
                }
                Err(broadcast::error::RecvError::Closed) => holds_open = false,
            },
            r = audit_rx.recv(), if audit_open => match r {
                Ok(first) => decisions(&feed, first, &mut audit_rx),
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    feed.resync(&format!("the feed missed {n} decisions"));
                }
                Err(broadcast::error::RecvError::Closed) => audit_open = false,
            },
            _ = tick.tick() => {
                let now = crate::decider::now_ms();
                if policy.observe(now) {
                    let p = policy.clone();
                    if let Ok(report) = tokio::task::spawn_blocking(move || p.report()).await {
                        feed.publish("policy", "policy", &report.to_string());
                    }
                }
            }
            () = until_closed(&mut closed) => break,
        }
    }
}

/// Resolves once the feed is closed (or its sender is gone).
pub async fn until_closed(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|c| *c).await;
}

/// Publishes the durable decision `first` and whichever others are already queued, in
/// sequence order. The records come as the audit made them: nothing is read back.
fn decisions(
    feed: &Feed,
    first: crate::audit::Durable,
    rx: &mut broadcast::Receiver<crate::audit::Durable>,
) {
    let mut batch = vec![first];
    let mut lagged = None;
    while batch.len() < AUDIT_BATCH {
        match rx.try_recv() {
            Ok(d) => batch.push(d),
            Err(broadcast::error::TryRecvError::Lagged(n)) => lagged = Some(n),
            Err(_) => break,
        }
    }
    batch.sort_unstable_by_key(|d| d.seq);
    for d in &batch {
        feed.publish("decision", "record", &d.json);
    }
    if let Some(n) = lagged {
        feed.resync(&format!("the feed missed {n} decisions"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seqs(s: Since) -> Vec<u64> {
        match s {
            Since::Events(v) => v.iter().map(|e| e.seq).collect(),
            Since::Gap { head } => panic!("gap at {head}"),
        }
    }

    #[test]
    fn events_are_numbered_and_replayed_after_a_seq() {
        let f = Feed::new();
        assert!(seqs(f.since(0)).is_empty());
        for i in 0..5 {
            assert_eq!(f.publish("x", "n", &i.to_string()), i + 1);
        }
        assert_eq!(seqs(f.since(0)), [1, 2, 3, 4, 5]);
        assert_eq!(seqs(f.since(3)), [4, 5]);
        assert!(seqs(f.since(5)).is_empty());
        assert!(matches!(f.since(6), Since::Gap { head: 5 }));
        let Since::Events(v) = f.since(4) else {
            panic!()
        };
        let parsed: serde_json::Value = serde_json::from_str(v[0].text.as_str()).unwrap();
        assert_eq!(parsed, serde_json::json!({"seq": 5, "type": "x", "n": 4}));
    }

    #[test]
    fn the_ring_is_bounded_and_older_numbers_are_a_gap() {
        let f = Feed::new();
        for _ in 0..RING_EVENTS + 10 {
            f.publish("x", "n", "0");
        }
        assert_eq!(lock(&f.ring).events.len(), RING_EVENTS);
        assert!(matches!(f.since(9), Since::Gap { .. }));
        assert_eq!(seqs(f.since(10)).len(), RING_EVENTS);
        let big = format!("\"{}\"", "a".repeat(RING_BYTES / 4));
        for _ in 0..8 {
            f.publish("x", "n", &big);
        }
        let ring = lock(&f.ring);
        assert!(ring.bytes <= RING_BYTES, "{}", ring.bytes);
        assert!(ring.events.len() <= 4);
    }
}
