//! The policy decision corpus (issue 4, point 9): `tests/policy/corpus/*.policy` is one policy
//! set, `tests/policy/corpus/cases.jsonl` the requests it decides and the decisions expected.
//! Every case is checked for its effect, its deciding rules (exact set), the rules that fired
//! on an error and the shadow rules that would have fired. The same corpus, its statements
//! shuffled and split across files, must give identical decisions. And `count` reservations
//! under concurrency: N threads against a limit L admit exactly L.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Barrier};

use agentgate::actions::Action;
use agentgate::counters::{Counters, SeriesKey};
use agentgate::decider::Decider;
use agentgate::policy::schema::Schema;
use agentgate::policy::{self, Active, Counts, Decision, Effect, Program};
use serde::Deserialize;
use serde_json::{Map, Value};

// ---- the corpus ------------------------------------------------------------------------------

/// Rules that the corpus states never fire (their conditions are false for every request).
const NEVER_FIRES: &[&str] = &["durations-false"];

/// What the corpus must cover: every operator of the language table and every semantic rule.
const REQUIRED_TAGS: &[&str] = &[
    "==",
    "!=",
    "<",
    "<=",
    ">",
    ">=",
    "int",
    "string",
    "bool",
    "duration",
    "timestamp",
    "in",
    "not in",
    "named-list",
    "under",
    "domain",
    "glob",
    "regex",
    "starts_with",
    "ends_with",
    "contains",
    "lower",
    "any",
    "all",
    "len",
    "empty-list",
    "??",
    "count",
    "within",
    "weekdays",
    "daily",
    "midnight",
    "dst-london",
    "dst-newyork",
    "and",
    "or",
    "not",
    "precedence",
    "builtins",
    "default",
    "s1-when",
    "s1-unless",
    "s1-exempt",
    "s2-severity",
    "s3-shadow",
    "s4-error-block",
    "s4-error-allow",
    "s4-exempt-unknown",
    "s4-three-valued",
    "s5-multi",
    "s7-approved",
    "s9-budget",
];

const DEFAULT_AT: &str = "2026-01-05T12:00:00Z";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ActionSpec {
    action: String,
    #[serde(default)]
    params: Map<String, Value>,
    method: Option<String>,
    host: Option<String>,
    path: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StatedCount {
    spec: String,
    group: String,
    window_ms: u64,
    n: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    covers: Vec<String>,
    #[serde(flatten)]
    single: Option<ActionSpec>,
    actions: Option<Vec<ActionSpec>>,
    agent: Option<String>,
    at: Option<String>,
    #[serde(default)]
    counts: Vec<StatedCount>,
    #[serde(default)]
    approved: Vec<String>,
    expect: String,
    rules: Vec<String>,
    #[serde(default)]
    on_error: Vec<String>,
    #[serde(default)]
    shadow: Vec<String>,
    fired: Option<Vec<String>>,
    reason: Option<String>,
}

/// The counts a case states; every other count is 0. A count is only found under the window
/// the rule asks for, so a wrong window reads 0.
struct Stated<'a>(&'a [StatedCount]);

impl Counts for Stated<'_> {
    fn count(&self, spec: &str, group: &str, window_ms: u64, _now_ms: i64) -> u64 {
        self.0
            .iter()
            .find(|c| c.spec == spec && c.group == group && c.window_ms == window_ms)
            .map_or(0, |c| c.n)
    }
}

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/policy/corpus")
}

/// The corpus files, by name.
fn corpus_files() -> Vec<(String, String)> {
    let mut files: Vec<(String, String)> = std::fs::read_dir(corpus_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "policy"))
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read_to_string(&p).unwrap(),
            )
        })
        .collect();
    files.sort();
    assert!(files.len() >= 5, "the corpus is several files");
    files
}

fn load(files: &[(String, String)], schema: &Schema) -> Program {
    let sources = files
        .iter()
        .map(|(name, text)| policy::source(name, text))
        .collect();
    match policy::load(sources, schema) {
        Ok(p) => p,
        Err(e) => panic!("the corpus does not load:\n{e}"),
    }
}

fn cases() -> Vec<Case> {
    let text = std::fs::read_to_string(corpus_dir().join("cases.jsonl")).unwrap();
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let case: Case =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("cases.jsonl:{}: {e}", i + 1));
        out.push(case);
    }
    let mut names = BTreeSet::new();
    for c in &out {
        assert!(names.insert(c.name.as_str()), "duplicate case {:?}", c.name);
        assert!(
            c.single.is_some() != c.actions.is_some(),
            "case {:?}: give either action or actions",
            c.name
        );
    }
    out
}

fn ms(at: &str) -> i64 {
    at.parse::<jiff::Timestamp>()
        .unwrap_or_else(|e| panic!("{at}: {e}"))
        .as_millisecond()
}

/// A case's request as the classifier would produce it: method, host and path default to the
/// catalog's, as they do in `test` blocks.
fn to_action(spec: &ActionSpec, schema: &Schema) -> Action {
    let described = schema
        .lookup(&spec.action)
        .unwrap_or_else(|| panic!("{} is not in the catalog", spec.action));
    Action {
        name: spec.action.clone(),
        method: spec
            .method
            .clone()
            .unwrap_or_else(|| described.method.to_string()),
        host: spec
            .host
            .clone()
            .unwrap_or_else(|| described.host.to_string()),
        path: spec.path.clone().unwrap_or_else(|| described.path.clone()),
        params: spec.params.clone(),
    }
}

fn decide(program: &Program, case: &Case, schema: &Schema) -> Decision {
    let actions: Vec<Action> = match (&case.single, &case.actions) {
        (Some(one), _) => vec![to_action(one, schema)],
        (None, Some(many)) => many.iter().map(|a| to_action(a, schema)).collect(),
        (None, None) => Vec::new(),
    };
    let agent = case.agent.as_deref().unwrap_or("coder");
    let now_ms = ms(case.at.as_deref().unwrap_or(DEFAULT_AT));
    // `explain` walks every clause of every rule on its own path (with a memo shared by the
    // rules); it must decide exactly as the decision path does, on every case.
    for action in &actions {
        let input = agentgate::policy::Input {
            action,
            agent,
            now_ms,
            approved: &case.approved,
            credential: "placeholder",
        };
        let counts = Stated(&case.counts);
        let fast = agentgate::policy::eval::decide(program, &input, &counts);
        let mut trace = Vec::new();
        let traced =
            agentgate::policy::eval::decide_traced(program, &input, &counts, Some(&mut trace));
        assert_eq!(
            fast, traced,
            "{}: the traced path decides differently",
            case.name
        );
        for f in &fast.fired {
            assert!(
                trace.iter().any(|t| t.rule == *f.rule && t.fired),
                "{}: {} fired but its trace says not",
                case.name,
                f.rule
            );
        }
    }
    program.decide_all(
        &actions,
        agent,
        now_ms,
        &case.approved,
        &Stated(&case.counts),
    )
}

fn sorted(v: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut v: Vec<String> = v.into_iter().collect();
    v.sort();
    v
}

/// Why a decision is not the one the case expects (empty when it is).
fn mismatches(case: &Case, d: &Decision) -> Vec<String> {
    let mut out = Vec::new();
    if d.effect.as_str() != case.expect {
        out.push(format!(
            "effect {} (expected {})",
            d.effect.as_str(),
            case.expect
        ));
    }
    let mut rules: Vec<String> = d.rules.iter().map(|r| r.to_string()).collect();
    rules.sort();
    let before = rules.len();
    rules.dedup();
    if rules.len() != before {
        out.push(format!("duplicate rules {:?}", d.rules));
    }
    if rules != sorted(case.rules.clone()) {
        out.push(format!("rules {:?} (expected {:?})", d.rules, case.rules));
    }
    let on_error = sorted(
        d.fired
            .iter()
            .filter(|f| f.fired_on_error)
            .map(|f| f.rule.to_string()),
    );
    if on_error != sorted(case.on_error.clone()) {
        out.push(format!(
            "fired on error {on_error:?} (expected {:?})",
            case.on_error
        ));
    }
    let shadow = sorted(
        d.fired
            .iter()
            .filter(|f| f.shadow)
            .map(|f| format!("{}:{}", f.effect, f.rule)),
    );
    if shadow != sorted(case.shadow.clone()) {
        out.push(format!("shadow {shadow:?} (expected {:?})", case.shadow));
    }
    for f in &d.fired {
        let prefixed = f.effect.starts_with("would_");
        if f.shadow != prefixed {
            out.push(format!("{} is shadow={} as {}", f.rule, f.shadow, f.effect));
        }
        if f.fired_on_error == f.errors.is_empty() {
            out.push(format!(
                "{} fired_on_error={} with errors {:?}",
                f.rule, f.fired_on_error, f.errors
            ));
        }
    }
    if let Some(fired) = &case.fired {
        let got = sorted(
            d.fired
                .iter()
                .filter(|f| !f.shadow)
                .map(|f| f.rule.to_string()),
        );
        if got != sorted(fired.clone()) {
            out.push(format!("fired {got:?} (expected {fired:?})"));
        }
    }
    if let Some(reason) = &case.reason {
        if &d.reason != reason {
            out.push(format!("reason {:?} (expected {reason:?})", d.reason));
        }
    }
    out
}

#[test]
fn every_case_of_the_corpus_decides_as_expected() {
    let schema = Schema::builtin();
    let program = load(&corpus_files(), &schema);
    let cases = cases();
    assert!(cases.len() >= 150, "{} cases", cases.len());

    let mut failures = Vec::new();
    let mut fired_anywhere: BTreeSet<String> = BTreeSet::new();
    let mut tags: BTreeMap<&str, usize> = BTreeMap::new();
    let mut effects: BTreeMap<&str, usize> = BTreeMap::new();
    for case in &cases {
        let d = decide(&program, case, &schema);
        let problems = mismatches(case, &d);
        if !problems.is_empty() {
            failures.push(format!(
                "{:?}: {}\n    decision: {} by {:?}: {}\n    fired: {:?}",
                case.name,
                problems.join("; "),
                d.effect.as_str(),
                d.rules,
                d.reason,
                d.fired
                    .iter()
                    .map(|f| format!(
                        "{}:{}{}",
                        f.effect,
                        f.rule,
                        if f.fired_on_error { " (on error)" } else { "" }
                    ))
                    .collect::<Vec<_>>()
            ));
        }
        fired_anywhere.extend(d.fired.iter().map(|f| f.rule.to_string()));
        for t in &case.covers {
            *tags.entry(t.as_str()).or_default() += 1;
        }
        *effects.entry(case.expect.as_str()).or_default() += 1;
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );

    // The corpus covers what it claims to, and exercises every rule it has.
    let missing: Vec<&&str> = REQUIRED_TAGS
        .iter()
        .filter(|t| !tags.contains_key(**t))
        .collect();
    assert!(missing.is_empty(), "no case covers {missing:?}");
    let unknown: Vec<&&str> = tags.keys().filter(|t| !REQUIRED_TAGS.contains(t)).collect();
    assert!(unknown.is_empty(), "unknown tags {unknown:?}");
    for r in &program.rules {
        let fired = fired_anywhere.contains(&*r.id);
        let never = NEVER_FIRES.contains(&r.id.as_str());
        assert!(
            fired != never,
            "rule {:?}: fired in some case = {fired}, listed as never firing = {never}",
            r.id
        );
    }
    for effect in ["allow", "step_up", "block"] {
        assert!(
            effects.get(effect).copied().unwrap_or(0) >= 20,
            "{effects:?}"
        );
    }
    println!(
        "{} cases ({effects:?}), {} rules; cases per tag:",
        cases.len(),
        program.rules.len()
    );
    for (t, n) in &tags {
        println!("  {t:>18} {n}");
    }
}

#[test]
fn the_corpus_test_blocks_run_at_load() {
    let schema = Schema::builtin();
    let program = load(&corpus_files(), &schema);
    assert_eq!(program.tests.len(), 5);
    // A failing test block makes the whole set fail to load.
    let mut files = corpus_files();
    files.push((
        "zz-failing.policy".into(),
        "test \"wrong\" {\n  given github.issues.get { issue_number: 42 }\n  expect block\n}\n"
            .into(),
    ));
    let sources = files.iter().map(|(n, t)| policy::source(n, t)).collect();
    let e = policy::load(sources, &schema).unwrap_err().to_string();
    assert!(
        e.starts_with("zz-failing.policy:1:1: test \"wrong\" failed: expected block, got allow"),
        "{e}"
    );
}

// ---- order independence ------------------------------------------------------------------------

/// Splits a policy file into its statements: each ends with `;` outside brackets, strings and
/// comments, or is a `test "..." { ... }` block. Comments before a statement stay with it.
fn statements(text: &str) -> Vec<String> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut start = 0;
    let mut depth = 0i32;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'#' => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'"' => {
                let raw = i > 0 && b[i - 1] == b'r';
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    if b[i] == b'\\' && !raw {
                        i += 1;
                    }
                    i += 1;
                }
            }
            b'(' | b'[' | b'{' => depth += 1,
            b')' | b']' => depth -= 1,
            b'}' => {
                depth -= 1;
                let stmt = text[start..=i].trim_start();
                let is_test = stmt
                    .lines()
                    .map(str::trim)
                    .find(|l| !l.is_empty() && !l.starts_with('#'))
                    .is_some_and(|l| l.starts_with("test "));
                if depth == 0 && is_test {
                    out.push(text[start..=i].to_string());
                    start = i + 1;
                }
            }
            b';' if depth == 0 => {
                out.push(text[start..=i].to_string());
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    assert_eq!(depth, 0, "unbalanced brackets");
    let rest = &text[start..];
    assert!(
        rest.lines()
            .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#')),
        "text after the last statement: {rest:?}"
    );
    out
}

/// A small deterministic generator (xorshift64*): the permutations are the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn shuffling_and_splitting_the_corpus_never_changes_a_decision() {
    let schema = Schema::builtin();
    let files = corpus_files();
    let program = load(&files, &schema);
    let cases = cases();
    let baseline: Vec<Decision> = cases.iter().map(|c| decide(&program, c, &schema)).collect();

    let all: Vec<String> = files.iter().flat_map(|(_, t)| statements(t)).collect();
    assert_eq!(
        all.len(),
        program.rules.len() + program.lists.len() + program.tests.len() + 1,
        "the splitter finds every statement"
    );

    for seed in 1..=8u64 {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ seed.wrapping_mul(0x0100_0000_01B3));
        let mut shuffled = all.clone();
        if seed == 1 {
            shuffled.reverse();
        } else {
            for i in (1..shuffled.len()).rev() {
                let j = rng.below(i + 1);
                shuffled.swap(i, j);
            }
        }
        let n_files = 1 + (seed as usize - 1) % 6;
        let mut parts = vec![String::new(); n_files];
        for s in &shuffled {
            let k = rng.below(n_files);
            parts[k].push_str(s);
            parts[k].push('\n');
        }
        let split: Vec<(String, String)> = parts
            .into_iter()
            .enumerate()
            .map(|(i, text)| (format!("part-{i}.policy"), text))
            .collect();
        let reloaded = load(&split, &schema);
        assert_eq!(reloaded.rules.len(), program.rules.len());
        for (case, expected) in cases.iter().zip(&baseline) {
            let d = decide(&reloaded, case, &schema);
            assert_eq!(
                &d, expected,
                "seed {seed}, {n_files} files: case {:?} decides differently",
                case.name
            );
        }
    }
}

#[test]
fn the_splitter_splits_rules_lists_and_tests() {
    let text = "# head\nlist a = [\"x;y\"];\ndefault block reason \"a ; b\";\n\
                allow \"r\" on x.y when p matches r\"a;\\\" ;\n\
                test \"t\" { given x.y { a: \"}\" } expect allow }\n# tail\n";
    let s = statements(text);
    assert_eq!(s.len(), 4, "{s:?}");
    assert!(s[0].contains("list a") && s[0].contains("# head"));
    assert!(s[2].trim_end().ends_with("\" ;"));
    assert!(s[3].trim().starts_with("test") && s[3].ends_with('}'));
}

// ---- count reservations under concurrency ------------------------------------------------------

const NOW: i64 = 1_767_614_400_000;

fn decider(text: &str) -> Decider {
    let schema = Schema::builtin();
    let program = policy::load(vec![policy::source("t.policy", text)], &schema)
        .unwrap_or_else(|e| panic!("{e}"));
    Decider::new(
        Arc::new(Active::with(program)),
        Arc::new(Counters::in_memory()),
    )
}

fn action(name: &str, params: Value) -> Action {
    let Value::Object(params) = params else {
        panic!("params are an object")
    };
    Action::new(name, params)
}

/// Runs `attempts` admissions on each of `threads` threads, all released at once; `request(t, i)`
/// gives the actions and agent of attempt `i` of thread `t`. Returns every decision.
fn hammer(
    d: &Decider,
    threads: usize,
    attempts: usize,
    now: i64,
    request: impl Fn(usize, usize) -> (Vec<Action>, String) + Sync,
) -> Vec<(String, Decision)> {
    let barrier = Barrier::new(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (barrier, request) = (&barrier, &request);
                s.spawn(move || {
                    barrier.wait();
                    (0..attempts)
                        .map(|i| {
                            let (actions, agent) = request(t, i);
                            let decision = d.admit(&actions, &agent, "placeholder", now);
                            (agent, decision)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    })
}

#[test]
fn concurrent_requests_against_a_limit_admit_exactly_the_limit() {
    const L: u64 = 37;
    let d = decider(&format!(
        "default block;\n\
         block \"rate\" on gmail.users.messages.send\n\
           when count(gmail.users.messages.send, by: agent, window: 1h) >= {L}\n\
           reason \"at most {L} an hour\";\n\
         allow \"send\" on gmail.users.messages.send;\n"
    ));
    let send = || action("gmail.users.messages.send", serde_json::json!({}));
    // 16 threads x 25 attempts, two agents interleaved: each agent has its own limit.
    let out = hammer(&d, 16, 25, NOW, |t, _| {
        (vec![send()], if t % 2 == 0 { "a" } else { "b" }.to_string())
    });
    assert_eq!(out.len(), 400);
    for agent in ["a", "b"] {
        let mine: Vec<&Decision> = out
            .iter()
            .filter(|(a, _)| a == agent)
            .map(|(_, d)| d)
            .collect();
        let allowed = mine.iter().filter(|d| d.effect == Effect::Allow).count();
        assert_eq!(allowed as u64, L, "agent {agent}");
        for blocked in mine.iter().filter(|d| d.effect != Effect::Allow) {
            assert_eq!(blocked.effect, Effect::Block);
            assert_eq!(blocked.rules, vec!["rate".to_string()]);
            assert_eq!(blocked.reason, format!("at most {L} an hour"));
        }
        let key = SeriesKey::new("gmail.users.messages.send|agent", agent);
        assert_eq!(d.counters.count(&key, 3_600_000, NOW), L);
    }

    // The window is (now - 1h, now]: admissions at NOW leave it exactly an hour later.
    let one = [send()];
    assert_eq!(
        d.admit(&one, "a", "placeholder", NOW + 3_599_999).effect,
        Effect::Block
    );
    assert_eq!(d.preview(&one, "a", NOW + 3_600_000).effect, Effect::Allow);
    assert_eq!(
        d.admit(&one, "a", "placeholder", NOW + 3_600_000).effect,
        Effect::Allow
    );
    let key = SeriesKey::new("gmail.users.messages.send|agent", "a");
    assert_eq!(d.counters.count(&key, 3_600_000, NOW + 3_600_000), 1);
}

#[test]
fn concurrent_counts_grouped_by_a_param() {
    let d = decider(
        "default block;\n\
         block \"per-repo\" on github.issues.create\n\
           when count(github.issues.create, by: params.repo, window: 10m) >= 3;\n\
         allow \"issues\" on github.issues.create;\n",
    );
    let repos = ["api", "web", "docs", ""];
    // 12 threads x 12 attempts over three repos and requests without a repo.
    let out = hammer(&d, 12, 12, NOW, |t, i| {
        let repo = repos[(t + i) % repos.len()];
        let params = if repo.is_empty() {
            serde_json::json!({"owner": "acme"})
        } else {
            serde_json::json!({"owner": "acme", "repo": repo})
        };
        (
            vec![action("github.issues.create", params)],
            format!("agent-{t}"),
        )
    });
    let allowed = out
        .iter()
        .filter(|(_, d)| d.effect == Effect::Allow)
        .count();
    assert_eq!(allowed, 9, "three per repo");
    for repo in &repos[..3] {
        let key = SeriesKey::new("github.issues.create|params.repo", *repo);
        assert_eq!(d.counters.count(&key, 600_000, NOW), 3, "{repo}");
    }
    // Without the param the count is an error: the block fires on it, nothing is counted.
    let no_repo = [action(
        "github.issues.create",
        serde_json::json!({"owner": "acme"}),
    )];
    let dec = d.admit(&no_repo, "x", "placeholder", NOW);
    assert_eq!(dec.effect, Effect::Block);
    assert!(
        dec.fired
            .iter()
            .any(|f| f.rule == "per-repo" && f.fired_on_error)
    );
    assert_eq!(
        d.counters.series_count(),
        3,
        "no series for a missing group"
    );
}

#[test]
fn only_admitted_requests_count() {
    // A shadow allow never admits and a step_up is not admitted: neither counts. A preview
    // reserves nothing.
    let d = decider(
        "default block;\n\
         allow \"send\" on gmail.users.messages.send when agent == \"a\";\n\
         allow \"shadow-send\" on gmail.users.messages.send mode shadow;\n\
         step_up \"review\" on gmail.users.messages.send when agent == \"c\";\n\
         allow \"c-send\" on gmail.users.messages.send when agent == \"c\";\n\
         block \"rate\" on gmail.users.messages.send\n\
           when count(gmail.users.messages.send, by: agent, window: 1h) >= 2 mode shadow;\n",
    );
    let send = [action("gmail.users.messages.send", serde_json::json!({}))];
    let count = |agent: &str| {
        d.counters.count(
            &SeriesKey::new("gmail.users.messages.send|agent", agent),
            3_600_000,
            NOW,
        )
    };
    for _ in 0..3 {
        let b = d.admit(&send, "b", "placeholder", NOW);
        assert_eq!(b.effect, Effect::Block);
        assert_eq!(b.rules, vec!["default".to_string()]);
        assert!(b.fired.iter().any(|f| f.effect == "would_allow"));
        assert_eq!(
            d.admit(&send, "c", "placeholder", NOW).effect,
            Effect::StepUp
        );
        assert_eq!(d.preview(&send, "a", NOW).effect, Effect::Allow);
    }
    assert_eq!((count("b"), count("c"), count("a")), (0, 0, 0));
    for i in 0..3 {
        let a = d.admit(&send, "a", "placeholder", NOW);
        assert_eq!(a.effect, Effect::Allow, "the shadow rate never blocks");
        let would = a.fired.iter().any(|f| f.effect == "would_block");
        assert_eq!(would, i >= 2, "attempt {i}");
    }
    assert_eq!(count("a"), 3);
}

#[test]
fn several_actions_reserve_together() {
    // A request with several actions is admitted or refused as a whole.
    let d = decider(
        "default block;\n\
         block \"rate\" on github.graphql.*\n\
           when count(github.graphql.*, by: agent, window: 1h) >= 3;\n\
         allow \"mutations\" on github.graphql.*;\n",
    );
    let m = |f: &str| action(&format!("github.graphql.{f}"), serde_json::json!({}));
    assert_eq!(
        d.admit(&[m("addStar"), m("addReaction")], "a", "placeholder", NOW)
            .effect,
        Effect::Allow
    );
    // A request counts once, however many of its actions match the pattern.
    let key = SeriesKey::new("github.graphql.*|agent", "a");
    assert_eq!(d.counters.count(&key, 3_600_000, NOW), 1);
    // Concurrent two-mutation requests: exactly the limit is admitted.
    let out = hammer(&d, 8, 4, NOW, |_, _| {
        (vec![m("addStar"), m("removeStar")], "b".to_string())
    });
    let allowed = out
        .iter()
        .filter(|(_, d)| d.effect == Effect::Allow)
        .count();
    assert_eq!(allowed, 3);
    let key_b = SeriesKey::new("github.graphql.*|agent", "b");
    assert_eq!(d.counters.count(&key_b, 3_600_000, NOW), 3);
}
