//! Group commit: one thread makes appended records durable in rounds. A round takes every
//! waiter queued so far (their records are already in the store), syncs the store once, and
//! answers them all with the result. Records appended while a sync runs wait for the next
//! round, so under load one fsync serves many requests, and alone a record waits for one.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

use tokio::sync::oneshot;

use super::{AuditError, AuditStats, Sink};

/// Told when its record is durable, or why it is not.
pub(super) type Waiter = oneshot::Sender<Result<(), AuditError>>;

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
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
    closed: bool,
}

#[derive(Default)]
struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
}

/// The commit thread and its queue.
pub(super) struct Committer {
    shared: Arc<Shared>,
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
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("audit-commit".into())
            .spawn(move || run(&s, &*sink, &health))
            .map_err(|e| AuditError::Store(format!("cannot start the commit thread: {e}")))?;
        Ok(Committer {
            shared,
            thread: Some(thread),
        })
    }

    /// Queues `w`, whose record is already stored, for the next round.
    pub(super) fn enqueue(&self, w: Waiter) {
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
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(shared: &Shared, sink: &dyn Sink, health: &Health) {
    loop {
        let round = {
            let mut q = lock(&shared.queue);
            while q.waiting.is_empty() && !q.closed {
                q = shared.wake.wait(q).unwrap_or_else(PoisonError::into_inner);
            }
            if q.waiting.is_empty() {
                return;
            }
            std::mem::take(&mut q.waiting)
        };
        let result = sink.sync();
        match &result {
            Ok(()) => health.committed(round.len() as u64),
            Err(e) => health.failed(e),
        }
        for w in round {
            // A waiter that went away (its request was dropped) needs no answer.
            let _ = w.send(result.clone());
        }
    }
}
