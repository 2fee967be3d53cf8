//! Runs a set's `test` blocks: each is a request decided by the set, checked against the
//! expectation the block states.

use serde::Serialize;

use super::check::{CTest, Program};
use super::error::LoadError;
use super::eval::{self, Counts, Decision, Effect, Input};
use crate::actions::Action;

/// How one test block came out.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TestResult {
    pub name: String,
    pub location: String,
    pub passed: bool,
    pub decision: Decision,
    /// Why it failed, as a load error at the test's location.
    #[serde(skip)]
    pub failure: Option<LoadError>,
}

/// The counts a test states; every other count is 0.
struct Stated<'a> {
    program: &'a Program,
    test: &'a CTest,
}

impl Counts for Stated<'_> {
    fn count(&self, spec: &str, _group: &str, window_ms: u64, _now_ms: i64) -> u64 {
        self.test
            .counts
            .iter()
            .find(|(s, w, _)| {
                *w == window_ms && self.program.counts.get(*s).is_some_and(|c| c.key == spec)
            })
            .map_or(0, |(_, _, n)| *n)
    }
}

/// Runs every test block of `program`.
pub fn run(program: &Program) -> Vec<TestResult> {
    program.tests.iter().map(|t| run_one(program, t)).collect()
}

fn run_one(program: &Program, t: &CTest) -> TestResult {
    let action = Action {
        name: t.action.clone(),
        host: t.host.clone(),
        method: t.method.clone(),
        path: t.path.clone(),
        params: t.params.clone(),
    };
    let decision = eval::decide(
        program,
        &Input {
            action: &action,
            agent: &t.agent,
            now_ms: t.now_ms,
            approved: &t.approved,
            credential: &t.credential,
        },
        &Stated { program, test: t },
    );
    let mut problems = Vec::new();
    let expected: Effect = t.expect.into();
    if decision.effect != expected {
        problems.push(format!(
            "expected {}, got {}",
            expected.as_str(),
            decision.effect.as_str()
        ));
    }
    if let Some(by) = &t.expect_by {
        if !decision.rules.iter().any(|r| **r == **by) {
            problems.push(format!("expected rule {by:?} to decide"));
        }
    }
    for text in &t.reason_contains {
        if !decision.reason.contains(text.as_str()) {
            problems.push(format!("expected the reason to contain {text:?}"));
        }
    }
    let failure = (!problems.is_empty()).then(|| {
        let (file, line, col) = split_location(&t.location);
        LoadError {
            file,
            line,
            col,
            message: format!(
                "test {:?} failed: {}; the decision was {} by [{}]: {}",
                t.name,
                problems.join(", "),
                decision.effect.as_str(),
                decision.rules.join(", "),
                decision.reason
            ),
        }
    });
    TestResult {
        name: t.name.clone(),
        location: t.location.clone(),
        passed: failure.is_none(),
        decision,
        failure,
    }
}

fn split_location(loc: &str) -> (String, usize, usize) {
    let mut parts = loc.rsplitn(3, ':');
    let col = parts.next().and_then(|c| c.parse().ok()).unwrap_or(0);
    let line = parts.next().and_then(|l| l.parse().ok()).unwrap_or(0);
    let file = parts.next().unwrap_or(loc).to_string();
    (file, line, col)
}
