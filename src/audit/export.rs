//! Reading the log back: [`Filter`]s and the [`Export`] iterator behind `agentgate audit
//! export`, and [`verify`], the chain walk behind `agentgate audit verify`. Both read any
//! [`Sink`], so they run inside the gate (through its API) and on a stopped gate's store alike.

use std::collections::HashSet;
use std::fmt;

use serde::Serialize;

use super::record::{self, Entry, GENESIS, Record};
use super::store::Scan;
use super::{AuditError, DecisionRecord, Sink};
use crate::policy::pattern::Pattern;

/// Which records an export keeps. Every criterion that is set must hold.
///
/// - Decisions are kept when they match every criterion.
/// - An outcome is kept when its decision was (it follows its decision even past `until`).
/// - With no agent, action or decision criterion, every record is also kept by its own time
///   (so with no criterion at all, everything is): outcomes whose decision was pruned or
///   cannot be read, and checkpoints.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Records at or after this time (unix ms).
    pub since_ms: Option<i64>,
    /// Records before this time (unix ms).
    pub until_ms: Option<i64>,
    pub agent: Option<String>,
    /// Decisions with at least one action whose name matches.
    pub action: Option<Pattern>,
    /// `allow`, `block`, `step_up`, ... (the stored `decision`, compared exactly).
    pub decision: Option<String>,
}

impl Filter {
    /// A filter from the CLI's flags: `--since`/`--until` are RFC 3339 timestamps
    /// (`2026-03-03T10:00:00Z`), `--action` an action pattern (`github.repos.*`).
    pub fn parse(
        since: Option<&str>,
        until: Option<&str>,
        agent: Option<&str>,
        action: Option<&str>,
        decision: Option<&str>,
    ) -> Result<Filter, AuditError> {
        let time = |flag: &str, s: Option<&str>| -> Result<Option<i64>, AuditError> {
            s.map(|s| {
                s.parse::<jiff::Timestamp>()
                    .map(|t| t.as_millisecond())
                    .map_err(|e| {
                        AuditError::Filter(format!(
                            "--{flag} {s}: not an RFC 3339 time such as 2026-03-03T10:00:00Z ({e})"
                        ))
                    })
            })
            .transpose()
        };
        let action = action
            .map(|p| Pattern::new(p).map_err(|e| AuditError::Filter(format!("--action {p}: {e}"))))
            .transpose()?;
        Ok(Filter {
            since_ms: time("since", since)?,
            until_ms: time("until", until)?,
            agent: agent.map(str::to_string),
            action,
            decision: decision.map(str::to_string),
        })
    }

    /// Whether a criterion other than time is set.
    fn selects(&self) -> bool {
        self.agent.is_some() || self.action.is_some() || self.decision.is_some()
    }

    fn in_time(&self, t: i64) -> bool {
        self.since_ms.is_none_or(|s| t >= s) && self.until_ms.is_none_or(|u| t < u)
    }

    fn keeps_decision(&self, d: &DecisionRecord) -> bool {
        self.in_time(d.time_ms)
            && self.agent.as_ref().is_none_or(|a| *a == d.agent)
            && self.decision.as_ref().is_none_or(|x| *x == d.decision)
            && self
                .action
                .as_ref()
                .is_none_or(|p| d.actions.iter().any(|a| p.matches(&a.name)))
    }
}

/// How many kept decisions an export remembers while waiting for their outcomes before it
/// forgets those more than [`OUTCOME_HORIZON`] records back.
const OPEN_MAX: usize = 100_000;
/// An outcome this many records after its decision is no longer matched to it by a filtered
/// export (minutes of traffic at full speed; a request's outcome comes within its timeout).
const OUTCOME_HORIZON: u64 = 10_000_000;

/// The records a [`Filter`] keeps, in sequence order. A record that cannot be read is an `Err`
/// item and the iteration goes on past it.
pub struct Export<'a> {
    scan: Scan<'a>,
    filter: Filter,
    /// Kept decisions whose outcome has not been seen yet.
    open: HashSet<u64>,
}

impl fmt::Debug for Export<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Export")
            .field("filter", &self.filter)
            .finish_non_exhaustive()
    }
}

/// Exports from `sink`.
pub fn export<'a>(sink: &'a dyn Sink, filter: &Filter) -> Export<'a> {
    Export {
        scan: sink.scan(0),
        filter: filter.clone(),
        open: HashSet::new(),
    }
}

impl Export<'_> {
    fn keeps(&mut self, r: &Record) -> bool {
        let f = &self.filter;
        match &r.entry {
            Entry::Decision(d) => {
                let keep = f.keeps_decision(d);
                if keep {
                    if self.open.len() >= OPEN_MAX {
                        // Decisions that never got an outcome (refused requests, a crash).
                        let horizon = r.seq.saturating_sub(OUTCOME_HORIZON);
                        self.open.retain(|s| *s > horizon);
                    }
                    self.open.insert(r.seq);
                }
                keep
            }
            Entry::Outcome(o) => {
                self.open.remove(&o.decision_seq) || (!f.selects() && f.in_time(o.time_ms))
            }
            Entry::Checkpoint(c) => !f.selects() && f.in_time(c.time_ms),
        }
    }
}

impl Iterator for Export<'_> {
    type Item = Result<Record, AuditError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let (seq, value) = match self.scan.next()? {
                Ok(x) => x,
                Err(e) => return Some(Err(e)),
            };
            match record::decode(seq, &value, false) {
                Ok(r) if self.keeps(&r) => return Some(Ok(r)),
                Ok(_) => {}
                Err(why) => {
                    return Some(Err(AuditError::Corrupt {
                        seq,
                        why: why.to_string(),
                    }));
                }
            }
        }
    }
}

/// The first broken link of a chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Broken {
    /// The record that is changed, missing, or does not follow its predecessor.
    pub seq: u64,
    pub why: String,
}

/// What [`verify`] found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// Records checked.
    pub records: u64,
    /// The lowest and highest sequence numbers stored.
    pub first: Option<u64>,
    pub last: Option<u64>,
    /// Hex SHA-256 of the last record. The chain cannot show that records were cut off its end
    /// or that the last one was rewritten with a fresh hash; comparing this with a head noted
    /// earlier elsewhere can.
    pub head: Option<String>,
    /// The lowest-numbered problem, if any.
    pub broken: Option<Broken>,
}

impl VerifyReport {
    pub fn is_ok(&self) -> bool {
        self.broken.is_none()
    }
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let span = match (self.first, self.last) {
            (Some(a), Some(b)) => format!(" (seq {a} to {b})"),
            _ => String::new(),
        };
        match &self.broken {
            Some(b) => write!(
                f,
                "audit log BROKEN at record {}: {}; {} records checked{span}",
                b.seq, b.why, self.records
            ),
            None => {
                write!(f, "audit log OK: {} records{span}", self.records)?;
                match &self.head {
                    Some(h) => write!(f, ", head {h}"),
                    None => Ok(()),
                }
            }
        }
    }
}

/// The state of one chain walk.
#[derive(Default)]
struct Walk {
    records: u64,
    /// The lowest stored record, and its `prev` when it parsed.
    first: Option<(u64, Option<String>)>,
    /// The previous record and its hash (hex).
    last: Option<(u64, String)>,
    /// `(pruned_through, anchor)` of every checkpoint seen.
    checkpoints: Vec<(u64, String)>,
    broken: Option<Broken>,
}

impl Walk {
    fn broke(&mut self, seq: u64, why: impl Into<String>) {
        if self.broken.as_ref().is_none_or(|b| seq < b.seq) {
            self.broken = Some(Broken {
                seq,
                why: why.into(),
            });
        }
    }

    fn record(&mut self, seq: u64, value: &[u8]) {
        self.records += 1;
        let prev = self.last.take();
        if let Some((p, _)) = &prev {
            if seq != p + 1 {
                let why = format!("it is missing (the next stored record is {seq})");
                self.broke(p + 1, why);
            }
        }
        // The next record links to the stored hash, whether or not this one still matches it.
        let stored =
            record::split(value, false).map_or_else(|_| String::new(), |(h, _)| hex::encode(h));
        self.last = Some((seq, stored));
        if let Err(bad) = record::split(value, true) {
            self.broke(seq, bad.to_string());
            self.first.get_or_insert((seq, None));
            return;
        }
        let rec = match record::decode(seq, value, false) {
            Ok(r) => r,
            Err(bad) => {
                self.broke(seq, bad.to_string());
                self.first.get_or_insert((seq, None));
                return;
            }
        };
        self.first.get_or_insert((seq, Some(rec.prev.clone())));
        if let Some((p, h)) = prev {
            if p + 1 == seq && rec.prev != h {
                let why = format!(
                    "it does not follow record {p}: its prev is not that record's hash \
                     (record {p} was replaced, or this record's link was changed)"
                );
                self.broke(seq, why);
            }
        }
        if let Entry::Checkpoint(c) = rec.entry {
            self.checkpoints.push((c.pruned_through, c.anchor));
        }
    }

    /// Checks where the chain starts: at the genesis, or right after a pruned record that a
    /// checkpoint accounts for.
    fn start(&mut self) {
        let Some((first, Some(prev))) = self.first.clone() else {
            return;
        };
        if first <= 1 {
            if prev != hex::encode(GENESIS) {
                self.broke(first, "the first record's prev is not the start of a chain");
            }
            return;
        }
        let before = first - 1;
        if let Some((_, anchor)) = self.checkpoints.iter().find(|(t, _)| *t == before) {
            if *anchor != prev {
                let why = format!(
                    "it does not follow the pruned record {before}: its prev is not the \
                     anchor its checkpoint carries"
                );
                self.broke(first, why);
            }
        } else if !self.checkpoints.iter().any(|(t, _)| *t > before) {
            let why = format!(
                "it is missing: the log starts at {first} and no checkpoint accounts for the \
                 records before it"
            );
            self.broke(before, why);
        }
    }

    fn finish(mut self) -> VerifyReport {
        self.start();
        VerifyReport {
            records: self.records,
            first: self.first.as_ref().map(|f| f.0),
            last: self.last.as_ref().map(|l| l.0),
            head: self.last.map(|l| l.1),
            broken: self.broken,
        }
    }
}

/// Walks the whole chain of `sink` and names its first broken link: a record whose content
/// does not match its hash, one that does not parse or sits under another number, one
/// missing from the sequence, one whose `prev` is not its predecessor's hash, and a start that
/// is neither the genesis nor accounted for by a checkpoint.
pub fn verify(sink: &dyn Sink) -> VerifyReport {
    let mut walk = Walk::default();
    for item in sink.scan(0) {
        match item {
            Ok((seq, value)) => walk.record(seq, &value),
            Err(e) => {
                let at = walk.last.as_ref().map_or(0, |l| l.0 + 1);
                walk.broke(at, e.to_string());
            }
        }
    }
    walk.finish()
}
