//! Admission: the active policy set decides, and the counters behind `count(...)` reserve the
//! request atomically when it is admitted (policy-language.md, semantics 6). The proxy asks this
//! module, never the policy or the counters directly.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::actions::Action;
use crate::counters::{CountView, Counters, SeriesKey};
use crate::policy::{self, Active, Counts, Decision, Effect, Program, eval};

/// The active policy and the counters, shared by every connection.
pub struct Decider {
    pub active: Arc<Active>,
    pub counters: Arc<Counters>,
}

impl std::fmt::Debug for Decider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decider")
            .field("active", &self.active)
            .finish_non_exhaustive()
    }
}

/// The policy's view of the counters inside an admission.
struct View<'a>(&'a dyn CountView);

impl Counts for View<'_> {
    fn count(&self, spec: &str, group: &str, window_ms: u64, now_ms: i64) -> u64 {
        self.0
            .count(&SeriesKey::new(spec, group), window_ms, now_ms)
    }
}

/// Plain reads of the counters (previews: nothing is reserved).
struct Peek<'a>(&'a Counters);

impl Counts for Peek<'_> {
    fn count(&self, spec: &str, group: &str, window_ms: u64, now_ms: i64) -> u64 {
        self.0
            .count(&SeriesKey::new(spec, group), window_ms, now_ms)
    }
}

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl Decider {
    pub fn new(active: Arc<Active>, counters: Arc<Counters>) -> Decider {
        Decider { active, counters }
    }

    /// Decides a request and, when it is admitted, counts it (under the counters' locks, so
    /// concurrent requests see distinct counts).
    pub fn admit(
        &self,
        actions: &[Action],
        agent: &str,
        credential: &str,
        now_ms: i64,
    ) -> Decision {
        self.admit_approved(actions, agent, credential, now_ms, &[])
    }

    /// [`Decider::admit`] for a request a reviewer approved: the step-up rules in `approved` no
    /// longer fire, and a block that fires now still blocks (policy-language.md, semantics 7).
    pub fn admit_approved(
        &self,
        actions: &[Action],
        agent: &str,
        credential: &str,
        now_ms: i64,
        approved: &[String],
    ) -> Decision {
        let Some(program) = self.active.current() else {
            return policy::no_policy(actions);
        };
        let (lock, record) = series(&program, actions, agent);
        let decided = self.counters.admit(
            &lock,
            now_ms,
            |view| {
                let d = program.decide_request(
                    actions,
                    agent,
                    credential,
                    now_ms,
                    approved,
                    &View(view),
                );
                let admitted = d.effect == Effect::Allow;
                (d, admitted)
            },
            &record,
        );
        match decided {
            Ok(d) => d,
            Err(e) => Decision::blocked(
                "builtin:counters",
                actions.first().map_or("", |a| a.name.as_str()),
                format!("the gate could not count the request for its rate limits: {e}"),
            ),
        }
    }

    /// Decides without counting or reserving (`agentgate classify`, explanations).
    pub fn preview(&self, actions: &[Action], agent: &str, now_ms: i64) -> Decision {
        match self.active.current() {
            Some(p) => p.decide_all(actions, agent, now_ms, &[], &Peek(&self.counters)),
            None => policy::no_policy(actions),
        }
    }
}

/// The series a request's decision reads (to lock) and those it counts toward when admitted.
fn series(program: &Program, actions: &[Action], agent: &str) -> (Vec<SeriesKey>, Vec<SeriesKey>) {
    let mut lock = Vec::new();
    let mut record = Vec::new();
    for a in actions {
        for spec in eval::read_specs(program, &a.name) {
            if let Some(k) = key(program, spec, a, agent) {
                lock.push(k);
            }
        }
        for spec in eval::counted_specs(program, &a.name) {
            if let Some(k) = key(program, spec, a, agent) {
                record.push(k);
            }
        }
    }
    (lock, record)
}

fn key(program: &Program, spec: usize, action: &Action, agent: &str) -> Option<SeriesKey> {
    let group = eval::group_of(program, spec, action, agent)?;
    let spec = program.counts.get(spec)?;
    Some(SeriesKey::new(spec.key.clone(), group))
}
