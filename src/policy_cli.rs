//! `agentgate policy check|test|explain`: what a security engineer runs while writing policy.
//! Each returns the text to print and whether it succeeded (the binary maps that to exit 1).

use std::collections::BTreeSet;
use std::path::Path;

use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::actions::Action;
use crate::policy::eval::{self, Counts, Input};
use crate::policy::schema::Schema;
use crate::policy::{self, Program, selftest};
use crate::policy_files;

/// The output of a command and whether it succeeded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub text: String,
    pub ok: bool,
}

/// Parse, type-check and lint a policy directory (tests are compiled, not run).
pub fn check(dir: &Path) -> Report {
    let schema = Schema::builtin();
    let program = match policy_files::read_dir(dir).and_then(|s| policy::compile(s, &schema)) {
        Ok(p) => p,
        Err(e) => {
            return Report {
                text: e.to_string(),
                ok: false,
            };
        }
    };
    let mut text = String::new();
    for w in lint(&program) {
        text.push_str(&w);
        text.push('\n');
    }
    text.push_str(&format!(
        "ok: {} files, {} rules, {} tests",
        program.sources.len(),
        program.rules.len(),
        program.tests.len()
    ));
    Report { text, ok: true }
}

/// Warnings that do not stop a load: rules no test names.
fn lint(program: &Program) -> Vec<String> {
    let tested: BTreeSet<&str> = program
        .tests
        .iter()
        .filter_map(|t| t.expect_by.as_deref())
        .collect();
    program
        .rules
        .iter()
        .filter(|r| !tested.contains(&*r.id))
        .map(|r| {
            format!(
                "{}: warning: no test expects rule {:?} (add `expect ... by \"{}\"`)",
                r.location, r.id, r.id
            )
        })
        .collect()
}

/// Run every `test` block; fails on a load error or any failing test.
pub fn test(dir: &Path) -> Report {
    let schema = Schema::builtin();
    let program = match policy_files::read_dir(dir).and_then(|s| policy::compile(s, &schema)) {
        Ok(p) => p,
        Err(e) => {
            return Report {
                text: e.to_string(),
                ok: false,
            };
        }
    };
    let results = selftest::run(&program);
    let mut text = String::new();
    let mut failed = 0;
    for r in &results {
        match &r.failure {
            None => text.push_str(&format!("ok   {} ({})\n", r.name, r.location)),
            Some(f) => {
                failed += 1;
                text.push_str(&format!("FAIL {f}\n"));
            }
        }
    }
    text.push_str(&format!(
        "{} tests: {} passed, {failed} failed",
        results.len(),
        results.len() - failed
    ));
    Report {
        text,
        ok: failed == 0,
    }
}

/// What `explain` reads: one action (or the `actions` of `agentgate classify`'s output).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExplainInput {
    action: Option<String>,
    #[serde(default)]
    params: Map<String, Value>,
    actions: Option<Vec<Action>>,
    /// `agentgate classify` prints the decision too; it is ignored here.
    #[serde(default)]
    decision: Option<Value>,
    #[serde(default)]
    agent: String,
    method: Option<String>,
    host: Option<String>,
    path: Option<String>,
    /// RFC 3339; default: now.
    at: Option<String>,
    #[serde(default)]
    approved: Vec<String>,
    /// `placeholder` (default), `foreign` or `none`.
    credential: Option<String>,
    /// Count values by series (`"PATTERN|by"`, as `count(PATTERN, by: BY, ...)` names it).
    #[serde(default)]
    counts: std::collections::BTreeMap<String, u64>,
}

struct Given<'a>(&'a std::collections::BTreeMap<String, u64>);

impl Counts for Given<'_> {
    fn count(&self, spec: &str, _: &str, _: u64, _: i64) -> u64 {
        self.0.get(spec).copied().unwrap_or(0)
    }
}

/// Decide an action given as JSON against the set in `dir`, with every applicable rule's
/// clauses and how each came out.
pub fn explain(dir: &Path, input: &str, now_ms: i64) -> Report {
    let fail = |text: String| Report { text, ok: false };
    let schema = Schema::builtin();
    let program = match policy_files::load_dir(dir, &schema) {
        Ok(p) => p,
        Err(e) => return fail(e.to_string()),
    };
    let input: ExplainInput = match serde_json::from_str(input) {
        Ok(i) => i,
        Err(e) => {
            return fail(format!(
                "the input is not an explain request: {e}\nexpected JSON such as \
                 {{\"action\": \"git.push\", \"params\": {{\"repo\": \"acme/api\"}}, \"agent\": \"coder\"}}"
            ));
        }
    };
    let _ = &input.decision;
    let now_ms = match &input.at {
        Some(at) => match at.parse::<jiff::Timestamp>() {
            Ok(t) => t.as_millisecond(),
            Err(e) => return fail(format!("at: {e}")),
        },
        None => now_ms,
    };
    let actions = match (&input.action, &input.actions) {
        (Some(name), None) => {
            let Some(s) = schema.lookup(name) else {
                return fail(format!("{name} is not an action of the catalog"));
            };
            vec![Action {
                name: name.clone(),
                method: input.method.clone().unwrap_or_else(|| s.method.to_string()),
                host: input.host.clone().unwrap_or_else(|| s.host.to_string()),
                path: input.path.clone().unwrap_or_else(|| s.path.clone()),
                params: input.params.clone(),
            }]
        }
        (None, Some(list)) if !list.is_empty() => list.clone(),
        _ => {
            return fail(
                "give either \"action\" (with \"params\") or a non-empty \"actions\" list".into(),
            );
        }
    };
    let counts = Given(&input.counts);
    let mut explained = Vec::new();
    let mut decisions = Vec::new();
    for action in &actions {
        let mut trace = Vec::new();
        let d = eval::decide_traced(
            &program,
            &Input {
                action,
                agent: &input.agent,
                now_ms,
                approved: &input.approved,
                credential: input.credential.as_deref().unwrap_or("placeholder"),
            },
            &counts,
            Some(&mut trace),
        );
        explained.push(json!({ "action": action.name, "decision": d.effect, "rules": trace }));
        decisions.push(d);
    }
    let decision = policy::Decision::strictest(decisions);
    let out = json!({ "decision": decision, "actions": explained });
    Report {
        text: serde_json::to_string_pretty(&out).unwrap_or_default(),
        ok: true,
    }
}
