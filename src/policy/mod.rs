//! Decisions: the policy language of docs/policy-language.md.
//!
//! ```text
//! text --parser--> ast --check (lists, types vs the catalog schema, patterns, regexes, zones)-->
//!      Program --tests (every `test` block)--> active set --eval (pure: now + counts in)--> Decision
//! ```
//! Loading is all-or-nothing: any error keeps the last good set (see [`Active`]); with no good
//! set every request is blocked with the reason "no active policy". This module does no I/O
//! and reads no clock: files come in as [`ast::Source`]s, time as unix milliseconds.

pub mod ast;
pub mod check;
pub mod error;
pub mod eval;
pub mod parser;
pub mod pattern;
pub mod schema;
pub mod selftest;

use std::sync::{Arc, RwLock};

pub use check::Program;
pub use error::{LoadError, LoadErrors};
pub use eval::{Counts, Decision, Effect, Fired, Input, NoCounts, SharedStr};

use ast::Source;
use schema::Schema;

use crate::actions::Action;

/// The reason every request gets while no policy set has loaded.
pub const NO_POLICY: &str = "no active policy";

/// Parses and checks a set of files (tests compiled, not run): `policy check`.
pub fn compile(sources: Vec<Source>, schema: &Schema) -> Result<Program, LoadErrors> {
    let mut files = Vec::with_capacity(sources.len());
    let mut errors = Vec::new();
    for (i, src) in sources.iter().enumerate() {
        match parser::parse_file(i, src) {
            Ok(f) => files.push(f),
            Err(e) => errors.push(e),
        }
    }
    if !errors.is_empty() {
        return Err(LoadErrors(errors));
    }
    check::compile(&files, &sources, schema).map_err(LoadErrors)
}

/// The whole load pipeline: parse, check, compile, run every `test` block.
pub fn load(sources: Vec<Source>, schema: &Schema) -> Result<Program, LoadErrors> {
    let program = compile(sources, schema)?;
    let failures: Vec<LoadError> = selftest::run(&program)
        .into_iter()
        .filter_map(|r| r.failure)
        .collect();
    if failures.is_empty() {
        Ok(program)
    } else {
        Err(LoadErrors(failures))
    }
}

impl Program {
    /// Decides one request: every action, the strictest wins (policy-language.md 5). The
    /// request carried the agent's placeholder (`credential` is `placeholder`, as in `test`
    /// blocks); see [`Program::decide_request`].
    pub fn decide_all(
        &self,
        actions: &[Action],
        agent: &str,
        now_ms: i64,
        approved: &[String],
        counts: &dyn Counts,
    ) -> Decision {
        self.decide_request(actions, agent, "placeholder", now_ms, approved, counts)
    }

    /// Decides one request that carried `credential` (`placeholder`, `foreign` or `none`).
    pub fn decide_request(
        &self,
        actions: &[Action],
        agent: &str,
        credential: &str,
        now_ms: i64,
        approved: &[String],
        counts: &dyn Counts,
    ) -> Decision {
        let decisions = actions
            .iter()
            .map(|action| {
                eval::decide(
                    self,
                    &Input {
                        action,
                        agent,
                        now_ms,
                        approved,
                        credential,
                    },
                    counts,
                )
            })
            .collect();
        Decision::strictest(decisions)
    }
}

/// What the last load attempt did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoadStatus {
    /// Nothing loaded yet.
    Never,
    Loaded {
        files: usize,
        rules: usize,
        tests: usize,
    },
    /// The last attempt failed; the previous set (if any) stays active.
    Failed(String),
}

/// The active policy set, swapped atomically by a load; readers take an `Arc` and decide on
/// it without holding any lock.
#[derive(Debug)]
pub struct Active {
    current: RwLock<Option<Arc<Program>>>,
    status: RwLock<LoadStatus>,
}

impl Default for Active {
    fn default() -> Self {
        Active::new()
    }
}

impl Active {
    pub fn new() -> Active {
        Active {
            current: RwLock::new(None),
            status: RwLock::new(LoadStatus::Never),
        }
    }

    /// An active set made of one program (tests, `classify`).
    pub fn with(program: Program) -> Active {
        let a = Active::new();
        a.install(program);
        a
    }

    /// The set in force, if any.
    pub fn current(&self) -> Option<Arc<Program>> {
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub fn status(&self) -> LoadStatus {
        match self.status.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Makes `program` the active set.
    pub fn install(&self, program: Program) {
        let status = LoadStatus::Loaded {
            files: program.sources.len(),
            rules: program.rules.len(),
            tests: program.tests.len(),
        };
        let program = Arc::new(program);
        match self.current.write() {
            Ok(mut g) => *g = Some(program),
            Err(poisoned) => *poisoned.into_inner() = Some(program),
        }
        self.set_status(status);
    }

    /// Records a failed load; the active set is left as it was.
    pub fn failed(&self, errors: &LoadErrors) {
        self.set_status(LoadStatus::Failed(errors.to_string()));
    }

    fn set_status(&self, status: LoadStatus) {
        match self.status.write() {
            Ok(mut g) => *g = status,
            Err(poisoned) => *poisoned.into_inner() = status,
        }
    }

    /// Decides without recording anything (no counter is reserved): `classify`, previews.
    pub fn preview(&self, actions: &[Action], agent: &str, now_ms: i64) -> Decision {
        match self.current() {
            Some(p) => p.decide_all(actions, agent, now_ms, &[], &NoCounts),
            None => no_policy(actions),
        }
    }
}

/// The decision while no policy set is active.
pub fn no_policy(actions: &[Action]) -> Decision {
    Decision::blocked(
        "builtin:no-policy",
        actions.first().map_or("", |a| a.name.as_str()),
        NO_POLICY,
    )
}

/// Reads a policy text given on its own (stdin, a test), as one source named `name`.
pub fn source(name: &str, text: &str) -> Source {
    Source {
        name: name.to_string(),
        text: text.to_string(),
    }
}
