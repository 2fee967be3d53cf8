//! Policy cost: one decision on a realistic 1,000-rule set, and loading that set. Targets: p50
//! <= 5 us for one decision (`Program::decide_all` on one action), <= 100 ms to load and check
//! the whole set.
//!
//! The set is generated (deterministically: a fixed xorshift seed) from the built-in catalog:
//! exact action names and wildcard patterns built from real names (`github.repos.*`,
//! `github.repos.**`, `github.**`, `github.*.get*`, `**.update`); `when` clauses with `==`, `in`
//! and `not in` named or literal lists, `any()`/`all()` over refs, recipients and attachments,
//! `domain() under`, `matches glob` and regexes, `starts_with`, `??`, `len`, `count` and `within`
//! (a wildcard rule reads only params its whole family has); about 10% shadow rules, some
//! `exempt` clauses, 60% with a reason template; twelve named lists, a `default step_up` and
//! three tests. 5% of the rules are on `git.push`, 5% on Gmail sends, 20% are wildcards over
//! `github.repos.*`: a real set has families of rules on its hot actions. `--dump` prints it.
//!
//! Cases (one action each, `NoCounts`, no approvals; the bench prints how many rules apply and
//! fire for each):
//! - `decide_git_push_3_refs`: a push updating main, creating a branch and deleting a tag.
//! - `decide_gmail_send_5_recipients`: a send to five addresses, two outside.
//! - `decide_rest_wildcards`: `github.repos.update`, which about 200 (mostly wildcard) rules
//!   apply to.
//! - `load_1000_rules` (`policy::load`: parse, check, compile, run the tests) and, as parts,
//!   `compile_1000_rules` (no tests) and `parse_1000_rules` (the grammar alone).
//!
//! Criterion measures each case; a second pass then times single calls, one `Instant` pair per
//! call (200,000 decisions after 20,000 of warm-up; 30 loads after 3), and prints p50, p90 and
//! p99.
//!
//! Run: `cargo bench --bench policy`. One case: `cargo bench --bench policy -- decide_rest`.
//! Instruction counts: `valgrind --tool=callgrind --toggle-collect='*decide_all*' <bench binary>
//! --calls N CASE` (N decisions, or N loads for `load_1000_rules` / `compile_1000_rules`, and
//! nothing else).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "estimates/mod.rs"]
mod estimates;

use std::fmt::Write as _;
use std::hint::black_box;
use std::time::{Duration, Instant};

use estimates::{median_us, name_filter, output_dir};

use agentgate::actions::Action;
use agentgate::policy::eval::{self, NoCounts};
use agentgate::policy::pattern::Pattern;
use agentgate::policy::schema::{ActionSchema, Schema, Ty};
use agentgate::policy::{self, Effect, Program, parser};
use criterion::Criterion;
use serde_json::{Value, json};

/// Rules in the generated set.
const RULES: usize = 1_000;
/// 2026-03-03T10:00:00Z, a Tuesday.
const NOW_MS: i64 = 1_772_532_000_000;
const AGENT: &str = "coder";

/// xorshift64*: a fixed, dependency-free sequence, so every run benches the same set.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
    /// True with probability `pct`%.
    fn chance(&mut self, pct: usize) -> bool {
        self.below(100) < pct
    }
}

const LISTS: &str = r#"list internal_domains = ["acme.com", "corp.acme.net", "acme.co.uk", "acme-labs.io"];
list partner_domains = ["partner.example", "vendor.example", "auditor.example"];
list protected_branches = ["refs/heads/main", "refs/heads/master", "refs/heads/release", "refs/heads/production"];
list release_repos = ["acme/api", "acme/web", "acme/infra", "acme/docs", "acme/mobile", "acme/sdk"];
list sandbox_repos = ["acme/sandbox", "acme/playground", "acme/scratch"];
list bots = ["release-bot", "deps-bot", "docs-bot", "triage-bot"];
list trusted_agents = ["coder", "reviewer", "planner", "release-bot"];
list read_methods = ["GET", "HEAD", "OPTIONS"];
list orgs = ["acme", "acme-labs", "acme-oss"];
list labels = ["bug", "ci", "flaky-test", "security", "docs", "release"];
list words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"];
list sizes = [1, 10, 100, 1000];

default step_up reason "No rule covers {action} on {host}: a human decides";
"#;

/// One `when` condition on `params.<name>` of type `ty`, or `None` for a type not used here.
fn param_cond(rng: &mut Rng, name: &str, ty: &Ty) -> Option<String> {
    let p = format!("params.{name}");
    Some(match ty {
        Ty::Str => match rng.below(7) {
            0 => format!("{p} == \"{}\"", rng.pick(&["acme", "main", "open", "x"])),
            1 => format!("({p} ?? \"\") in release_repos"),
            2 => format!("({p} ?? \"\") not in sandbox_repos"),
            3 => format!("{p} matches glob \"acme/**\""),
            4 => format!("{p} matches r\"[a-z0-9._-]+/(api|web|infra)-[0-9]+\""),
            5 => format!("lower({p} ?? \"\") starts_with \"acme\""),
            _ => format!("{p} in [\"alpha\", \"beta\", \"{}\"]", rng.below(100)),
        },
        Ty::Int => format!("({p} ?? 0) > {}", rng.pick(&[0, 10, 100, 1000])),
        Ty::Bool => format!("{p} == {}", rng.chance(50)),
        Ty::List(e) if **e == Ty::Str => match rng.below(3) {
            0 => format!("any(x in {p}: x in labels)"),
            1 => format!("len({p}) > {}", rng.below(5)),
            _ => format!("all(x in {p}: x matches glob \"*\")"),
        },
        _ => return None,
    })
}

/// A condition on the request rather than its params.
fn builtin_cond(rng: &mut Rng) -> String {
    match rng.below(8) {
        0 => "method in read_methods".into(),
        1 => "agent in bots".into(),
        2 => "agent not in trusted_agents".into(),
        3 => "path matches glob \"/repos/*/*/**\"".into(),
        4 => "host == \"api.github.com\"".into(),
        5 => "now within weekdays 08:00..19:00 in \"Europe/London\"".into(),
        6 => format!(
            "count({}, by: agent, window: {}) >= {}",
            rng.pick(&["github.**", "github.repos.*", "github.issues.**", "**"]),
            rng.pick(&["1m", "10m", "1h", "24h"]),
            rng.pick(&[50, 100, 1000])
        ),
        _ => "action matches r\"github\\.(repos|issues|pulls)\\..*\"".into(),
    }
}

/// A wildcard pattern derived from a real action name (so it always matches something).
fn wildcard(rng: &mut Rng, name: &str) -> String {
    let segs: Vec<&str> = name.split('.').collect();
    let n = segs.len();
    match rng.below(10) {
        // github.repos.*
        0..=2 if n >= 2 => format!("{}.*", segs[..n - 1].join(".")),
        // github.**
        3 => format!("{}.**", segs[0]),
        // github.*.list-*, gmail.*.*.list*  (the last segment's first word, then `*`)
        4 | 5 if n >= 3 => {
            let last = segs[n - 1];
            let word = last.split('-').next().unwrap_or(last);
            format!("{}.{}.{word}*", segs[0], vec!["*"; n - 2].join("."))
        }
        // github.repos.**
        6..=8 if n >= 3 => format!("{}.{}.**", segs[0], segs[1]),
        // **.update
        _ => format!("**.{}", segs[n - 1]),
    }
}

/// The generated set: `RULES` rules, lists, a default and three tests.
fn policy_text(schema: &Schema) -> String {
    let names: Vec<&String> = schema.actions.keys().collect();
    let rest: Vec<&String> = names
        .iter()
        .copied()
        .filter(|n| n.starts_with("github.") && !n.starts_with("github.graphql."))
        .collect();
    let repos: Vec<&String> = rest
        .iter()
        .copied()
        .filter(|n| n.starts_with("github.repos."))
        .collect();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut out = String::from(LISTS);
    for i in 0..RULES {
        let effect = match rng.below(10) {
            0..=4 => "allow",
            5..=7 => "step_up",
            _ => "block",
        };
        let id = format!("r{i:04}");
        let mut when: Vec<String> = Vec::new();
        // Family: 0-4 git.push, 5-9 gmail send, 10-29 REST wildcards over repos, rest anything.
        let family = rng.below(100);
        // Whether every action of the rule's first pattern has a `repo` param.
        let mut has_repo = true;
        let patterns = if family < 5 {
            when.push(
                match rng.below(5) {
                    0 => "any(r in params.refs: r.name in protected_branches)",
                    1 => "any(r in params.refs: r.kind == \"delete\" or r.name matches glob \"refs/tags/**\")",
                    2 => "params.repo in release_repos",
                    3 => "all(r in params.refs: r.name starts_with \"refs/heads/feature/\")",
                    _ => "any(r in params.refs: r.name matches r\"refs/heads/(release|hotfix)/v[0-9]+(\\.[0-9]+)*\")",
                }
                .to_string(),
            );
            "git.push".to_string()
        } else if family < 10 {
            when.push(
                match rng.below(5) {
                    0 => "any(a in params.recipients: not (domain(a) under internal_domains))",
                    1 => "any(a in params.recipients: domain(a) under partner_domains)",
                    2 => "count(gmail.users.messages.send, by: agent, window: 1h) >= 20",
                    3 => "(params.size ?? 0) > 10000000 or len(params.recipients) > 20",
                    _ => "all(a in params.attachments: a.size < 1000000)",
                }
                .to_string(),
            );
            has_repo = false;
            if rng.chance(50) {
                "gmail.users.messages.send, gmail.users.drafts.send".to_string()
            } else {
                "gmail.users.messages.send".to_string()
            }
        } else {
            let pool = if family < 30 { &repos } else { &names };
            let action = (*rng.pick(pool)).clone();
            let pattern = if family < 30 || rng.chance(30) {
                wildcard(&mut rng, &action)
            } else {
                action.clone()
            };
            let mut patterns = pattern;
            if rng.chance(15) {
                patterns.push_str(", ");
                let extra = rng.pick(&names).as_str();
                patterns.push_str(extra);
            }
            // Conditions read params every action of the first pattern has, with one type (an
            // author writes `github.repos.* when params.repo ...`, not a param of one of them).
            let first = Pattern::new(patterns.split(',').next().unwrap_or("")).unwrap();
            let family: Vec<&ActionSchema> = schema
                .actions
                .iter()
                .filter(|(n, _)| first.matches(n))
                .map(|(_, a)| a)
                .collect();
            let a = &schema.actions[&action];
            has_repo = family.iter().all(|f| f.params.contains_key("repo"));
            let params: Vec<(&String, &Ty)> = a
                .params
                .iter()
                // Params the language can name (a few catalog params have `-` in their names).
                .filter(|(n, _)| n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
                .filter(|(n, t)| family.iter().all(|f| f.params.get(*n) == Some(*t)))
                .collect();
            // A wildcard rule has a condition; a rule on one action may have none.
            let conds = if patterns.contains('*') {
                1 + rng.below(2)
            } else {
                rng.below(3)
            };
            for _ in 0..conds {
                let c = if !params.is_empty() && rng.chance(60) {
                    let (n, t) = *rng.pick(&params);
                    param_cond(&mut rng, n, t)
                } else {
                    None
                };
                when.push(c.unwrap_or_else(|| builtin_cond(&mut rng)));
            }
            patterns
        };
        let _ = writeln!(out, "{effect} \"{id}\"\n  on {patterns}");
        for w in &when {
            let _ = writeln!(out, "  when {w}");
        }
        if effect != "allow" && rng.chance(15) {
            let _ = if has_repo {
                writeln!(
                    out,
                    "  exempt when agent in bots and (params.repo ?? \"\") in release_repos"
                )
            } else {
                writeln!(out, "  exempt when agent in bots")
            };
        }
        if rng.chance(60) {
            let _ = writeln!(out, "  reason \"{id}: {{action}} by {{agent}}\"");
        }
        if rng.chance(10) {
            let _ = writeln!(out, "  mode shadow");
        }
        out.push_str(";\n");
    }
    out.push_str(
        r#"
test "a feature push is decided" {
  given git.push { repo: "acme/api", refs: [{name: "refs/heads/feature/x", old: "a", new: "b", kind: "update"}] }
  as "coder"
  expect block
}
test "an unmapped request steps up" {
  given http.request { }
  via "POST" "api.github.com" "/no/such/endpoint"
  expect step_up by "default"
}
test "a send to a partner" {
  given gmail.users.messages.send { recipients: ["bob@partner.example"], recipients_known: true, size: 10 }
  as "coder"
  at "2026-03-03T10:00:00Z"
  expect block
}
"#,
    );
    out
}

fn action(name: &str, host: &str, method: &str, path: &str, params: Value) -> Action {
    let Value::Object(params) = params else {
        panic!("params are an object")
    };
    Action {
        name: name.into(),
        host: host.into(),
        method: method.into(),
        path: path.into(),
        params,
    }
}

/// The decided requests: criterion's name and the action.
fn cases() -> Vec<(&'static str, Action)> {
    vec![
        (
            "decide_git_push_3_refs",
            action(
                "git.push",
                "github.com",
                "POST",
                "/acme/api.git/git-receive-pack",
                json!({
                    "owner": "acme", "repo": "acme/api", "service": "git-receive-pack",
                    "refs": [
                        {"name": "refs/heads/main", "old": "cff77f7b687dae112f95ede7ed0e2675751e319f",
                         "new": "c5dc2a5293ae44242836895b7083a8ca143fc8bd", "kind": "update"},
                        {"name": "refs/heads/feature", "old": "0000000000000000000000000000000000000000",
                         "new": "c5dc2a5293ae44242836895b7083a8ca143fc8bd", "kind": "create"},
                        {"name": "refs/tags/v0.9", "old": "89ef89ffefd5349f53f0f84591308c801396c9d2",
                         "new": "0000000000000000000000000000000000000000", "kind": "delete"}
                    ],
                    "push_options": [], "capabilities": ["report-status-v2", "side-band-64k", "atomic"]
                }),
            ),
        ),
        (
            "decide_gmail_send_5_recipients",
            action(
                "gmail.users.messages.send",
                "gmail.googleapis.com",
                "POST",
                "/gmail/v1/users/me/messages/send",
                json!({
                    "userId": "me",
                    "to": ["alice@acme.com", "bob@partner.example"],
                    "cc": ["releases@corp.acme.net", "carol@acme.co.uk"],
                    "bcc": ["eve@evil.test"],
                    "from": ["bot@acme.com"],
                    "recipients": ["alice@acme.com", "bob@partner.example", "releases@corp.acme.net",
                                   "carol@acme.co.uk", "eve@evil.test"],
                    "subject": "Release notes for v1.4.0",
                    "attachments": [{"name": "notes.pdf", "type": "application/pdf", "size": 26800}],
                    "size": 51234, "body_shape": "multipart/mixed", "recipients_known": true
                }),
            ),
        ),
        (
            "decide_rest_wildcards",
            action(
                "github.repos.update",
                "api.github.com",
                "PATCH",
                "/repos/acme/api",
                json!({
                    "owner": "acme", "repo": "acme/api", "description": "The API",
                    "homepage": "https://acme.example", "private": true, "has_issues": true,
                    "default_branch": "main"
                }),
            ),
        ),
    ]
}

fn decide(program: &Program, a: &Action) -> Effect {
    program
        .decide_all(std::slice::from_ref(a), AGENT, NOW_MS, &[], &NoCounts)
        .effect
}

/// Per-call percentiles (p50, p90, p99) in microseconds of `calls` calls after `calls / 10`.
fn per_call(mut run: impl FnMut(), calls: usize) -> [f64; 3] {
    for _ in 0..calls / 10 {
        run();
    }
    let mut times: Vec<Duration> = Vec::with_capacity(calls);
    for _ in 0..calls {
        let start = Instant::now();
        run();
        times.push(start.elapsed());
    }
    times.sort_unstable();
    let at = |q: f64| times[((times.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e6;
    [at(0.50), at(0.90), at(0.99)]
}

fn main() {
    let schema = Schema::builtin();
    let text = policy_text(&schema);
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--dump") {
        print!("{text}");
        return;
    }
    let source = || vec![policy::source("bench.policy", &text)];
    let program = match policy::load(source(), &schema) {
        Ok(p) => p,
        Err(e) => panic!("the generated set does not load:\n{e}"),
    };
    assert_eq!(program.rules.len(), RULES);
    let cases = cases();
    // What the cases exercise: rules that apply, and the decision.
    for (name, a) in &cases {
        let applicable = eval::applicable(&program, &a.name).len();
        let d = program.decide_all(std::slice::from_ref(a), AGENT, NOW_MS, &[], &NoCounts);
        eprintln!(
            "{name}: {applicable} rules apply, {} fire; {} by {:?}",
            d.fired.len(),
            d.effect.as_str(),
            d.rules
        );
    }

    // `--calls N CASE`: N calls of one case and nothing else, for callgrind.
    if let Some(at) = args.iter().position(|a| a == "--calls") {
        let n: usize = args[at + 1].parse().expect("--calls N CASE");
        let case = &args[at + 2];
        if let Some((_, a)) = cases.iter().find(|(c, _)| c == case) {
            for _ in 0..n {
                black_box(decide(&program, black_box(a)));
            }
        } else if case == "load_1000_rules" {
            for _ in 0..n {
                drop(black_box(policy::load(source(), &schema)));
            }
        } else if case == "compile_1000_rules" {
            for _ in 0..n {
                drop(black_box(policy::compile(source(), &schema)));
            }
        } else {
            panic!("no case {case}");
        }
        return;
    }

    let out = output_dir();
    let mut c = Criterion::default()
        .output_directory(&out)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(60)
        .configure_from_args();
    let mut g = c.benchmark_group("policy");
    for (name, a) in &cases {
        g.bench_function(*name, |b| b.iter(|| decide(&program, black_box(a))));
    }
    g.sample_size(10).measurement_time(Duration::from_secs(8));
    g.bench_function("load_1000_rules", |b| {
        b.iter(|| policy::load(black_box(source()), &schema).unwrap())
    });
    g.bench_function("compile_1000_rules", |b| {
        b.iter(|| policy::compile(black_box(source()), &schema).unwrap())
    });
    let src = policy::source("bench.policy", &text);
    g.bench_function("parse_1000_rules", |b| {
        b.iter(|| parser::parse_file(0, black_box(&src)).unwrap())
    });
    g.finish();
    c.final_summary();
    if args.iter().any(|a| a == "--profile-time") {
        return;
    }

    let filter = name_filter();
    let wanted = |n: &str| filter.as_ref().is_none_or(|f| n.contains(f.as_str()));
    println!();
    println!(
        "== policy ({} rules, {} bytes): criterion median, and per-call p50 / p90 / p99 (us) ==",
        RULES,
        text.len()
    );
    let line = |name: &str, per: [f64; 3], target_us: f64| {
        let [p50, p90, p99] = per;
        let median = median_us(&out, "policy", name).map_or("-".into(), |m| format!("{m:.3}"));
        let verdict = if p50 <= target_us { "met" } else { "MISSED" };
        println!(
            "policy/{name:<31} median {median:>10}  p50 {p50:>10.3}  p90 {p90:>10.3}  \
             p99 {p99:>10.3}  target p50 <= {target_us} us: {verdict}"
        );
    };
    for (name, a) in cases.iter().filter(|(n, _)| wanted(n)) {
        let per = per_call(
            || {
                black_box(decide(&program, black_box(a)));
            },
            200_000,
        );
        line(name, per, 5.0);
    }
    if wanted("load_1000_rules") {
        let per = per_call(|| drop(black_box(policy::load(source(), &schema))), 30);
        line("load_1000_rules", per, 100_000.0);
    }
}
