//! Group commit: appended records are made durable in rounds. A round syncs the store once,
//! which covers every record appended before it began.
//!
//! - **Alone, a request leads its own round** ([`Committer::durable`]): when no round runs,
//!   nobody waits and the commits are quiet (the last round ended at least as long ago as it
//!   took: the store is idle at least half the time), the request's task syncs the store
//!   itself, on its worker thread, if the runtime has other workers. No thread is woken to
//!   sync and none to answer: at a few thousand requests a second most commits are alone,
//!   and on a VM each wake-up costs tens of microseconds (BENCHMARKS.md, *Allocator and lone
//!   commits*: 8.3 context switches a request instead of 12.0). The worker is held for the
//!   sync; one round runs at a time, so at most one worker is, and the others take its
//!   queued tasks. `block_in_place` would free it, but handing the worker's core to another
//!   thread cost more than the wake-ups it saves.
//! - **Otherwise it queues** for the commit thread, whose round takes every waiter queued so
//!   far, syncs once and answers them all. Records appended while a sync runs wait for the
//!   next round, so under load (rounds back to back) one fsync serves many requests.
//!
//! Either way a request is answered by a sync that began after its record was appended.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Instant;

use tokio::sync::oneshot;

use super::{AuditError, AuditStats, Sink};

/// Told when its record is durable, or why it is not.
type Waiter = oneshot::Sender<Result<(), AuditError>>;

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Waits for one of the audit's threads (`what`: its name) to end; says so if it panicked.
pub(super) fn join(thread: Option<JoinHandle<()>>, what: &str) {
    if let Some(t) = thread {
        if t.join().is_err() {
            tracing::error!("audit: the {what} thread panicked");
        }
    }
}

/// Counters and the failing/working state, logged on each change.
#[derive(Debug, Default)]
pub(super) struct Health {
    appended: AtomicU64,
    durable: AtomicU64,
    commits: AtomicU64,
    failures: AtomicU64,
    failing: AtomicBool,
    last_error: Mutex<Option<String>>,
}

impl Health {
    pub(super) fn appended(&self) {
        self.appended.fetch_add(1, Ordering::Relaxed);
    }

    /// A write or sync failed: counted, and logged when the store was working until now.
    pub(super) fn failed(&self, e: &AuditError) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        *lock(&self.last_error) = Some(e.to_string());
        if !self.failing.swap(true, Ordering::Relaxed) {
            tracing::error!(
                "audit: {e}; every request is refused until the audit store writes again"
            );
        }
    }

    /// A sync made `records` durable.
    fn committed(&self, records: u64) {
        self.commits.fetch_add(1, Ordering::Relaxed);
        self.durable.fetch_add(records, Ordering::Relaxed);
        if self.failing.swap(false, Ordering::Relaxed) {
            tracing::warn!("audit: the store writes again; requests are decided again");
        }
    }

    pub(super) fn stats(&self, last_seq: u64) -> AuditStats {
        AuditStats {
            last_seq,
            appended: self.appended.load(Ordering::Relaxed),
            durable: self.durable.load(Ordering::Relaxed),
            commits: self.commits.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            failing: self.failing.load(Ordering::Relaxed),
            last_error: lock(&self.last_error).clone(),
        }
    }
}

#[derive(Default)]
struct Queue {
    waiting: Vec<Waiter>,
    /// Rounds running now (the thread's, a leader's; at most one of each).
    running: u32,
    /// When the last round ended plus what it took: a request leads only from then on.
    quiet_from: Option<Instant>,
    closed: bool,
}

impl Queue {
    /// A round that began at `start` has ended.
    fn ended(&mut self, start: Instant) {
        self.running -= 1;
        let now = Instant::now();
        self.quiet_from = Some(now + now.duration_since(start));
    }
}

#[derive(Default)]
struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
}

/// The commit thread and its queue.
pub(super) struct Committer {
    shared: Arc<Shared>,
    sink: Arc<dyn Sink>,
    health: Arc<Health>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Committer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let q = lock(&self.shared.queue);
        f.debug_struct("Committer")
            .field("waiting", &q.waiting.len())
            .field("closed", &q.closed)
            .finish()
    }
}

impl Committer {
    pub(super) fn start(sink: Arc<dyn Sink>, health: Arc<Health>) -> Result<Committer, AuditError> {
        let shared = Arc::new(Shared::default());
        let (s, sk, h) = (shared.clone(), sink.clone(), health.clone());
        let thread = std::thread::Builder::new()
            .name("audit-commit".into())
            .spawn(move || run(&s, &*sk, &h))
            .map_err(|e| AuditError::Store(format!("cannot start the commit thread: {e}")))?;
        Ok(Committer {
            shared,
            sink,
            health,
            thread: Some(thread),
        })
    }

    /// Resolves once every record appended before the call is durable, or with why it is
    /// not: a round of its own when it is alone (see the module doc), else the commit
    /// thread's next round.
    pub(super) async fn durable(&self) -> Result<(), AuditError> {
        if let Some(done) = self.lead() {
            return done;
        }
        let (tx, rx) = oneshot::channel();
        self.enqueue(tx);
        rx.await.unwrap_or(Err(AuditError::Closed))
    }

    /// Syncs on the calling thread when it is a task of a runtime with other workers to take
    /// its tasks meanwhile (on a current-thread or one-worker runtime, blocking would stop
    /// every task), no round runs, nobody waits and the commits are quiet (see the module
    /// doc); `None` otherwise.
    fn lead(&self) -> Option<Result<(), AuditError>> {
        let others_work = tokio::runtime::Handle::try_current().is_ok_and(|h| {
            h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread
                && h.metrics().num_workers() > 1
        });
        if !others_work {
            return None;
        }
        let start = Instant::now();
        {
            let mut q = lock(&self.shared.queue);
            if q.closed
                || q.running > 0
                || !q.waiting.is_empty()
                || q.quiet_from.is_some_and(|t| start < t)
            {
                return None;
            }
            q.running += 1;
        }
        let done = round(&*self.sink, &self.health, 1);
        // Those who queued while this ran woke the thread already (the queue was empty).
        lock(&self.shared.queue).ended(start);
        Some(done)
    }

    /// Queues `w`, whose record is already stored, for the next round.
    fn enqueue(&self, w: Waiter) {
        let mut q = lock(&self.shared.queue);
        if q.closed {
            // Dropping `w` tells its waiter the log is closed.
            return;
        }
        // The thread sleeps only on an empty queue, so only the first waiter of a round needs
        // to wake it (a notify is a syscall).
        let was_empty = q.waiting.is_empty();
        q.waiting.push(w);
        drop(q);
        if was_empty {
            self.shared.wake.notify_one();
        }
    }
}

impl Drop for Committer {
    /// Answers what is queued (one last round), then stops the thread.
    fn drop(&mut self) {
        lock(&self.shared.queue).closed = true;
        self.shared.wake.notify_one();
        join(self.thread.take(), "audit-commit");
    }
}

/// One sync of the store for `waiters` requests, counted in `health`.
fn round(sink: &dyn Sink, health: &Health, waiters: u64) -> Result<(), AuditError> {
    let result = sink.sync();
    match &result {
        Ok(()) => health.committed(waiters),
        Err(e) => health.failed(e),
    }
    result
}

fn run(shared: &Shared, sink: &dyn Sink, health: &Health) {
    loop {
        let waiting = {
            let mut q = lock(&shared.queue);
            while q.waiting.is_empty() && !q.closed {
                q = shared.wake.wait(q).unwrap_or_else(PoisonError::into_inner);
            }
            if q.waiting.is_empty() {
                return;
            }
            q.running += 1;
            std::mem::take(&mut q.waiting)
        };
        let start = Instant::now();
        let result = round(sink, health, waiting.len() as u64);
        lock(&shared.queue).ended(start);
        for w in waiting {
            // A waiter that went away (its request was dropped) needs no answer.
            let _ = w.send(result.clone());
        }
    }
}
