//! Loading policy sets (issue 4, point 9): bad input of every kind gets a clear
//! `file:line:col: message` in the user's terms and never a panic; a reload that fails keeps
//! the last good set in force, in an `Active` and in a running gate.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentgate::actions::Action;
use agentgate::counters::Counters;
use agentgate::decider::Decider;
use agentgate::policy::parser::{MAX_DEPTH, MAX_FILE_BYTES};
use agentgate::policy::schema::Schema;
use agentgate::policy::{self, Active, Effect, LoadError, LoadStatus, Program};
use agentgate::policy_files;
use support::*;

const NOW: i64 = 1_767_614_400_000;

fn schema() -> &'static Schema {
    static S: std::sync::OnceLock<Schema> = std::sync::OnceLock::new();
    S.get_or_init(Schema::builtin)
}

/// Loads `files`; a panic is reported as a failure of this input.
fn try_load(files: &[(&str, &str)]) -> Result<Program, Vec<LoadError>> {
    let sources: Vec<_> = files.iter().map(|(n, t)| policy::source(n, t)).collect();
    match std::panic::catch_unwind(AssertUnwindSafe(|| policy::load(sources, schema()))) {
        Ok(r) => r.map_err(|e| e.0),
        Err(_) => panic!("loading panicked on {files:?}"),
    }
}

/// Words of the grammar's internals that a user must never see.
const INTERNAL: &[&str] = &[
    "kw_",
    "cmp_op",
    "_expr",
    "_def",
    "_tail",
    "_lit",
    "Rule::",
    "EOI",
    "SOI",
    "pest",
    "str_inner",
    "raw_inner",
    "record_",
    "quant_kind",
    "func_name",
    "count_by",
    "day_set",
    "unwrap",
    "panicked",
];

fn assert_user_terms(e: &LoadError) {
    assert!(!e.message.trim().is_empty(), "an empty message: {e:?}");
    for w in INTERNAL {
        assert!(!e.message.contains(w), "{w:?} in {e}");
    }
}

/// 1-based line and column of the first occurrence of `needle` in `text`.
fn at(text: &str, needle: &str) -> (usize, usize) {
    let offset = text
        .find(needle)
        .unwrap_or_else(|| panic!("{needle:?} not in {text:?}"));
    policy::source("x", text).line_col(offset)
}

/// Asserts that loading `text` as `t.policy` fails with an error at the first occurrence of
/// `where_` whose message contains every one of `says`.
fn fails_at(text: &str, where_: &str, says: &[&str]) -> LoadError {
    fails_at_pos(text, at(text, where_), says)
}

/// Asserts that loading `text` as `t.policy` fails with an error at `(line, col)` whose
/// message contains every one of `says`.
fn fails_at_pos(text: &str, (line, col): (usize, usize), says: &[&str]) -> LoadError {
    let errors = try_load(&[("t.policy", text)]).expect_err(text);
    for e in &errors {
        assert_user_terms(e);
    }
    let found = errors.iter().find(|e| {
        e.file == "t.policy"
            && (e.line, e.col) == (line, col)
            && says.iter().all(|s| e.message.contains(s))
    });
    match found {
        Some(e) => {
            let shown = e.to_string();
            assert!(
                shown.starts_with(&format!("t.policy:{line}:{col}: ")),
                "{shown}"
            );
            e.clone()
        }
        None => panic!(
            "no error at {line}:{col} saying {says:?} for\n{text}\ngot:\n{}",
            errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        ),
    }
}

const D: &str = "default block;\n";

fn with_default(rest: &str) -> String {
    format!("{D}{rest}")
}

// ---- bad input -------------------------------------------------------------------------------

#[test]
fn a_file_cut_at_any_byte_never_panics() {
    let text = "# a small policy\n\
        list internal = [\"acme.com\", \"corp.acme.net\"];\n\
        default step_up reason \"no rule covers {action}\";\n\
        @owner(\"security\")\n\
        block \"ext\" on gmail.users.messages.send\n\
          when any(a in params.recipients: not (domain(a) under internal))\n\
          unless (params.size ?? 0) < 10 and now within weekdays 08:00..19:00 in \"Europe/London\"\n\
          exempt when agent == \"bot\"\n\
          reason \"to {params.recipients}\";\n\
        allow \"push\" on git.push when all(r in params.refs: r.name matches glob \"refs/heads/**\") \
          and count(git.push, by: params.repo, window: 1h) < 5 and params.repo matches r\"[a-z]+/[a-z]+\";\n\
        test \"t\" {\n  given git.push { repo: \"a/b\", refs: [{name: \"refs/heads/x\"}] }\n  as \"bot\"\n  \
          at \"2026-01-05T10:00:00Z\"\n  with count(git.push, by: params.repo, window: 1h) = 1\n  expect allow by \"push\"\n}\n";
    assert!(text.is_ascii());
    try_load(&[("t.policy", text)]).expect("the whole file loads");
    let mut ok = 0;
    for cut in 0..text.len() {
        match try_load(&[("t.policy", &text[..cut])]) {
            Ok(_) => ok += 1,
            Err(errors) => {
                assert!(!errors.is_empty());
                for e in &errors {
                    assert_user_terms(e);
                    assert_eq!(e.file, "t.policy");
                    // Only "no default" is about the set as a whole; anything else has a place.
                    if e.line == 0 {
                        assert!(e.message.contains("no `default`"), "cut {cut}: {e}");
                    } else {
                        let (line, _) = policy::source("t", &text[..cut]).line_col(cut);
                        assert!(e.line <= line, "cut {cut}: {e} is past the end");
                    }
                }
            }
        }
    }
    // Cuts right after a statement that completes a valid set load (from the default on,
    // before the test block, which would otherwise be cut).
    assert!(ok >= 3, "{ok} cuts loaded");
}

#[test]
fn garbage_never_panics() {
    // Bytes of the language in random order: no panic, a located error.
    let alphabet: &[&str] = &[
        "allow",
        "block",
        "step_up",
        "default",
        "list",
        "test",
        "given",
        "expect",
        "\"x\"",
        "on",
        "when",
        "unless",
        "exempt",
        "reason",
        "mode",
        "shadow",
        "(",
        ")",
        "[",
        "]",
        "{",
        "}",
        ";",
        ",",
        ":",
        "..",
        "==",
        "<",
        "??",
        "not",
        "in",
        "under",
        "matches",
        "glob",
        "r\"a\"",
        "any",
        "all",
        "len",
        "count",
        "by",
        "window",
        "1h",
        "42",
        "params.x",
        "github.repos.delete",
        "**",
        "now",
        "within",
        "daily",
        "08:00",
        "@a(\"b\")",
        "#c\n",
        "\n",
        " ",
    ];
    let mut seed = 0x1234_5678_9abc_def0u64;
    for _ in 0..400 {
        let mut text = String::new();
        for _ in 0..30 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            text.push_str(alphabet[(seed % alphabet.len() as u64) as usize]);
            text.push(' ');
        }
        if let Err(errors) = try_load(&[("g.policy", &text)]) {
            for e in &errors {
                assert_user_terms(e);
            }
        }
    }
}

#[test]
fn unknown_actions_are_named_with_a_suggestion() {
    let t = with_default("block \"x\" on gmail.user.messages.send;\n");
    fails_at(
        &t,
        "gmail.user.messages",
        &[
            "gmail.user.messages.send",
            "matches no action",
            "did you mean gmail.users.messages.send?",
        ],
    );
    let t = with_default("block \"x\" on github.repos.delete, github.repo.*;\n");
    fails_at(&t, "github.repo.*", &["github.repo.*", "matches no action"]);
    let t = with_default("test \"t\" {\n  given gmail.user.messages.send {}\n  expect block\n}\n");
    fails_at(
        &t,
        "gmail.user",
        &[
            "gmail.user.messages.send is not an action",
            "did you mean gmail.users.messages.send?",
        ],
    );
    let t = with_default(
        "block \"x\" on github.repos.delete when count(gmail.user.messages.send, by: agent, window: 1h) > 1;\n",
    );
    fails_at(&t, "gmail.user", &["matches no action", "did you mean"]);
    // Pattern shapes.
    let t = with_default("block \"x\" on github.repos.de**;\n");
    fails_at(&t, "github.repos.de**", &["`**` must be a whole segment"]);
    let t = with_default("block \"x\" on github.repos.**x;\n");
    fails_at(&t, "github.repos.**x", &["`**` must be a whole segment"]);
    let long = vec!["a"; 40].join(".");
    let t = with_default(&format!("block \"x\" on {long};\n"));
    fails_at(&t, &long, &["at most 32"]);
}

#[test]
fn unknown_params_names_and_fields_are_named() {
    let t = with_default("allow \"x\" on github.pulls.create when params.titel == \"x\";\n");
    let e = fails_at(&t, "params.titel", &["params.titel", "\"titel\"", "title"]);
    assert!(e.message.contains("they have:"), "{e}");
    let t = with_default("allow \"x\" on github.pulls.create when agnet == \"x\";\n");
    fails_at(&t, "agnet", &["unknown name \"agnet\""]);
    let t = with_default("allow \"x\" on git.push when any(r in params.refs: r.nmae == \"x\");\n");
    fails_at(&t, "r.nmae", &["no field \"nmae\"", "kind, name, new, old"]);
    let t = with_default(
        "test \"t\" {\n  given github.pulls.create { titel: \"x\" }\n  expect block\n}\n",
    );
    fails_at(&t, "titel", &["has no param \"titel\""]);
    let t = with_default("allow \"x\" on github.pulls.create reason \"by {agnet}\";\n");
    fails_at(&t, "\"by {agnet}\"", &["unknown template name {agnet}"]);
    let t = with_default("allow \"x\" on github.pulls.create reason \"for {params.titel}\";\n");
    fails_at(&t, "\"for", &["titel"]);
    let t = with_default(
        "test \"t\" {\n  given github.pulls.create { title: \"x\" }\n  expect block by \"nope\"\n}\n",
    );
    fails_at(&t, "\"nope\"", &["no rule has the id \"nope\""]);
}

#[test]
fn type_errors_are_load_errors() {
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "allow \"x\" on github.issues.get when params.issue_number == \"42\";",
            "params.issue_number ==",
            &["compares", "int", "string"],
        ),
        (
            "allow \"x\" on github.pulls.create when params.title < \"b\";",
            "params.title <",
            &["orders ints, durations and timestamps"],
        ),
        (
            "allow \"x\" on github.issues.get when params.issue_number < 1h;",
            "params.issue_number <",
            &["int", "duration"],
        ),
        (
            "allow \"x\" on github.pulls.create when now > 5;",
            "now >",
            &["timestamp", "int"],
        ),
        (
            "allow \"x\" on github.pulls.create when params.title under \"acme.com\";",
            "\"acme.com\"",
            &["`under` needs a literal or named list"],
        ),
        (
            "allow \"x\" on github.issues.get when params.issue_number under [\"a.com\"];",
            "params.issue_number under",
            &["under needs a string"],
        ),
        (
            "allow \"x\" on github.pulls.create when params.title under [\"\"];",
            "[\"\"]",
            &["non-empty domain"],
        ),
        (
            "allow \"x\" on github.pulls.create when len(params.title) > 1;",
            "params.title)",
            &["len() takes a list", "string"],
        ),
        (
            "allow \"x\" on github.issues.get when lower(params.issue_number) == \"a\";",
            "params.issue_number)",
            &["lower() needs a string"],
        ),
        (
            "allow \"x\" on github.issues.get when domain(params.issue_number) == \"a\";",
            "params.issue_number)",
            &["domain() needs a string"],
        ),
        (
            "allow \"x\" on github.pulls.create when params.title;",
            "params.title;",
            &["a condition must be true or false", "string"],
        ),
        (
            "allow \"x\" on github.pulls.create when not params.title;",
            "params.title;",
            &["`not` needs true or false"],
        ),
        (
            "allow \"x\" on github.pulls.create when params.title == \"a\" and params.title;",
            "params.title;",
            &["`and` needs true or false"],
        ),
        (
            "allow \"x\" on github.pulls.create when params.title in \"abc\";",
            "\"abc\"",
            &["needs a list on its right"],
        ),
        (
            "allow \"x\" on github.issues.get when params.issue_number in [\"a\"];",
            "params.issue_number in",
            &["looks for an int in a list of string"],
        ),
        (
            "allow \"x\" on github.pulls.create when params.title within daily 08:00..09:00 in \"Europe/London\";",
            "params.title within",
            &["`within` needs a timestamp"],
        ),
        (
            "allow \"x\" on github.pulls.create when (params.title ?? 1) == \"a\";",
            "1)",
            &["`??` needs both sides of one type"],
        ),
        (
            "allow \"x\" on github.pulls.create when params.title matches glob \"a\" and params.draft matches r\"b\";",
            "params.draft matches",
            &["matches needs a string", "bool"],
        ),
        (
            "allow \"x\" on git.push when any(r in params.repo: r == \"a\");",
            "params.repo:",
            &["needs a list", "string"],
        ),
        (
            "allow \"x\" on git.push when any(params in params.refs: true);",
            "params in",
            &["already a name"],
        ),
        (
            "allow \"x\" on git.push when params.repo.name == \"a\";",
            "params.repo.name",
            &["a string has no field \"name\""],
        ),
        (
            "allow \"x\" on git.push when agent.name == \"a\";",
            "agent.name",
            &["agent has no fields"],
        ),
        ("list x = [\"a\", 1];", "1]", &["mixes string and int"]),
        ("list now = [\"a\"];", "now =", &["built-in name"]),
        (
            "list x = [\"a\"];\nlist x = [\"b\"];",
            "x = [\"b",
            &["defined twice"],
        ),
        (
            "allow \"x\" on github.pulls.create when count(github.pulls.create, by: params.draft, window: 1h) > 1;",
            "params.draft, window",
            &["count groups by a string or an int"],
        ),
        (
            "allow \"x\" on github.pulls.create when count(github.pulls.create, by: method, window: 1h) > 1;",
            "method, window",
            &["count groups `by: agent` or `by: params.NAME`"],
        ),
    ];
    for (rule, where_, says) in cases {
        fails_at(&with_default(&format!("{rule}\n")), where_, says);
    }
}

#[test]
fn statement_errors() {
    // Duplicate ids, across files: the second says where the first is.
    let errors = try_load(&[
        (
            "a.policy",
            "default block;\nallow \"r\" on github.repos.get;\n",
        ),
        ("b.policy", "\n\nblock \"r\" on github.repos.delete;\n"),
    ])
    .unwrap_err();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(
        errors[0].to_string(),
        "b.policy:3:7: the rule id \"r\" is already used at a.policy:2:7; ids are unique across the set"
    );
    // Two defaults.
    let errors = try_load(&[
        ("a.policy", "default block;\n"),
        ("b.policy", "default step_up;\n"),
    ])
    .unwrap_err();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0]
            .to_string()
            .starts_with("b.policy:1:1: a second `default`")
    );
    assert!(errors[0].message.contains("a.policy:1:1"), "{}", errors[0]);
    // No default at all.
    let errors = try_load(&[("a.policy", "allow \"r\" on github.repos.get;\n")]).unwrap_err();
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].line, 0);
    assert!(
        errors[0].message.contains("no `default` statement"),
        "{}",
        errors[0]
    );
    // `default allow`, exempt on allow, repeated clauses.
    fails_at(
        "default allow;\n",
        "allow",
        &["`default allow` is not accepted"],
    );
    fails_at(
        &with_default("allow \"x\" on github.repos.get exempt when agent == \"a\";\n"),
        "allow \"x\"",
        &["`exempt` is only for block and step_up rules"],
    );
    fails_at(
        &with_default("block \"x\" on github.repos.get reason \"a\" reason \"b\";\n"),
        "reason \"b\"",
        &["at most one `reason`"],
    );
    fails_at(
        &with_default("block \"x\" on github.repos.get mode shadow mode shadow;\n"),
        "mode shadow;",
        &["at most one `mode`"],
    );
    fails_at(
        &with_default("block \"\" on github.repos.get;\n"),
        "\"\"",
        &["may not be empty"],
    );
    // A failing test block.
    let t = with_default(
        "allow \"r\" on github.repos.get;\ntest \"reads\" {\n  given github.repos.get {}\n  expect block\n}\n",
    );
    fails_at(
        &t,
        "test \"reads\"",
        &["test \"reads\" failed: expected block, got allow", "by [r]"],
    );
    let t = with_default(
        "test \"t\" {\n  given github.repos.get {}\n  at \"yesterday\"\n  expect block\n}\n",
    );
    fails_at(&t, "\"yesterday\"", &["RFC 3339"]);
}

#[test]
fn windows_clocks_and_zones() {
    let rule = |w: &str| with_default(&format!("block \"x\" on github.repos.get when {w};\n"));
    fails_at(
        &rule("count(github.repos.get, by: agent, window: 25h) > 1"),
        "25h",
        &["at most 24h"],
    );
    fails_at(
        &rule("count(github.repos.get, by: agent, window: 2d) > 1"),
        "2d",
        &["at most 24h"],
    );
    fails_at(
        &rule("count(github.repos.get, by: agent, window: 0s) > 1"),
        "0s",
        &["more than 0"],
    );
    try_load(&[(
        "t.policy",
        &rule("count(github.repos.get, by: agent, window: 24h) > 1"),
    )])
    .unwrap();
    try_load(&[(
        "t.policy",
        &rule("count(github.repos.get, by: agent, window: 1d) > 1"),
    )])
    .unwrap();
    fails_at(
        &rule("now within daily 08:00..09:00 in \"Mars/Olympus_Mons\""),
        "\"Mars",
        &["unknown time zone \"Mars/Olympus_Mons\""],
    );
    fails_at(
        &rule("now within daily 25:00..09:00 in \"UTC\""),
        "25:00",
        &["25:00 is not a time of day"],
    );
    fails_at(
        &rule("now within daily 08:60..09:00 in \"UTC\""),
        "08:60",
        &["not a time of day"],
    );
    fails_at(
        &rule("now within daily 08:00..08:00 in \"UTC\""),
        "now within",
        &["the window is empty"],
    );
    fails_at(
        &rule("now within hourly 08:00..09:00 in \"UTC\""),
        "hourly",
        &["expected 'weekdays' or 'daily'"],
    );
    try_load(&[(
        "t.policy",
        &rule("now within daily 18:00..24:00 in \"UTC\""),
    )])
    .unwrap();
}

#[test]
fn syntax_errors_say_what_was_expected() {
    fails_at(
        &with_default(
            "block \"x\" on github.repos.delete reason \"r\"\nallow \"y\" on github.repos.get;",
        ),
        "allow \"y\"",
        &["expected", "';'"],
    );
    fails_at("blok \"x\" on github.repos.delete;", "blok", &["'block'"]);
    let t = with_default("block \"x\" on github.repos.delete when params.repo == ;");
    let (line, col) = at(&t, "== ;");
    fails_at_pos(&t, (line, col + 3), &["expected", "expression"]);
    let t = with_default("block \"x on github.repos.delete;\n");
    let errors = try_load(&[("t.policy", &t)]).unwrap_err();
    assert!(errors[0].line >= 2, "{}", errors[0]);
    assert_user_terms(&errors[0]);
    fails_at(
        &with_default("block \"x\" on github.repos.delete reason \"a \\q\";"),
        "\"a \\q\"",
        &["unknown escape \\q"],
    );
    fails_at(
        &with_default(
            "block \"x\" on github.issues.get when params.issue_number > 99999999999999999999;",
        ),
        "99999",
        &["out of range"],
    );
    fails_at(
        &with_default("block \"x\" on github.issues.get when 9999999999999999999d > 1h;"),
        "9999",
        &["out of range"],
    );
    fails_at("default block;\0", "\0", &["NUL byte"]);
    fails_at(
        &with_default("block \"x\" on github.repos.delete reason \"a } b\";"),
        "\"a }",
        &["a `}` without its `{`"],
    );
}

#[test]
fn pathological_regexes() {
    // Nested stars: fine on a linear-time engine, also on a long non-matching input.
    let t = with_default(
        "block \"x\" on github.pulls.create when params.title matches r\"(a*)*$\";\n\
         allow \"y\" on github.pulls.create;\n",
    );
    let p = try_load(&[("t.policy", &t)]).unwrap();
    let mut title = "a".repeat(200_000);
    title.push('b');
    let action = Action::new(
        "github.pulls.create",
        serde_json::json!({ "title": title })
            .as_object()
            .unwrap()
            .clone(),
    );
    let started = Instant::now();
    let d = p.decide_all(&[action], "a", NOW, &[], &policy::NoCounts);
    assert_eq!(d.effect, Effect::Allow);
    assert!(started.elapsed() < Duration::from_secs(5));

    let rx = |re: &str| {
        with_default(&format!(
            "block \"x\" on github.pulls.create when params.title matches r\"{re}\";\n"
        ))
    };
    fails_at(
        &rx("a{1000}{1000}"),
        "r\"a{1000}",
        &["compiles to more than 256 KiB"],
    );
    fails_at(&rx("\\w{1000}"), "r\"\\w", &["compiles to more than"]);
    fails_at(&rx("(unclosed"), "r\"(unclosed", &["not a valid regex"]);
    fails_at(&rx("[z-a]"), "r\"[z-a]", &["not a valid regex"]);
    fails_at(&rx("a)|(b"), "r\"a)|(b", &["not a valid regex"]);
    fails_at(&rx("a))|((b"), "r\"a))|((b", &["not a valid regex"]);
    fails_at(&rx("\\"), "r\"\\", &["not a valid regex"]);
    let nested = format!("{}a{}", "(".repeat(100), ")".repeat(100));
    fails_at(&rx(&nested), "r\"((", &["not a valid regex"]);
    // Globs are escaped, never regex syntax.
    let t = with_default(
        "block \"x\" on github.pulls.create when params.title matches glob \"a)|(b{1000}{1000}\";\n",
    );
    try_load(&[("t.policy", &t)]).unwrap();
}

#[test]
fn nesting_and_size_bounds() {
    // Brackets: MAX_DEPTH is fine, one more is refused at the bracket that is too deep.
    let nest = |n: usize| {
        with_default(&format!(
            "block \"x\" on github.issues.get when {}params.issue_number == 1{};\n",
            "(".repeat(n),
            ")".repeat(n)
        ))
    };
    try_load(&[("t.policy", &nest(MAX_DEPTH))]).unwrap();
    let t = nest(MAX_DEPTH + 1);
    let errors = try_load(&[("t.policy", &t)]).unwrap_err();
    assert_eq!(errors.len(), 1);
    let (line, col) = at(&t, "(");
    assert_eq!((errors[0].line, errors[0].col), (line, col + MAX_DEPTH));
    assert!(
        errors[0].message.contains("nest deeper than 32"),
        "{}",
        errors[0]
    );
    // The deepest quantifiers load and decide on this (2 MiB) test thread.
    let quants: String = (0..MAX_DEPTH)
        .map(|i| format!("any(x{i} in params.labels: "))
        .collect();
    let t = with_default(&format!(
        "allow \"x\" on github.issues.add-labels when {quants}x{} == \"a\"{};\n",
        MAX_DEPTH - 1,
        ")".repeat(MAX_DEPTH)
    ));
    let p = try_load(&[("t.policy", &t)]).unwrap();
    let labels = |l: serde_json::Value| {
        let params = serde_json::json!({ "labels": l });
        let a = Action::new(
            "github.issues.add-labels",
            params.as_object().unwrap().clone(),
        );
        p.decide_all(&[a], "a", NOW, &[], &policy::NoCounts).effect
    };
    assert_eq!(labels(serde_json::json!(["a"])), Effect::Allow);
    assert_eq!(labels(serde_json::json!(["b"])), Effect::Block);
    let lists = with_default(&format!(
        "list x = {}1{};\n",
        "[".repeat(40),
        "]".repeat(40)
    ));
    let errors = try_load(&[("t.policy", &lists)]).unwrap_err();
    assert!(errors[0].message.contains("nest deeper"), "{}", errors[0]);
    let records = with_default(&format!(
        "test \"t\" {{ given github.repos.get {{ a: {}1{} }} expect block }}\n",
        "{b: ".repeat(40),
        "}".repeat(40)
    ));
    let errors = try_load(&[("t.policy", &records)]).unwrap_err();
    assert!(errors[0].message.contains("nest deeper"), "{}", errors[0]);
    // A million brackets fail as fast, without recursion.
    let deep = with_default(&format!("list x = {};\n", "[".repeat(1_000_000 - 40)));
    let errors = try_load(&[("t.policy", &deep)]).unwrap_err();
    assert!(errors[0].message.contains("nest deeper"), "{}", errors[0]);

    // Long chains of `not`, `and`, `or` and `??` need no nesting: they load and decide.
    let issue = |n: i64| {
        Action::new(
            "github.issues.get",
            serde_json::json!({ "issue_number": n })
                .as_object()
                .unwrap()
                .clone(),
        )
    };
    let decide = |p: &Program, n: i64| p.decide_all(&[issue(n)], "a", NOW, &[], &policy::NoCounts);
    let nots = with_default(&format!(
        "allow \"x\" on github.issues.get when {}params.issue_number == 1;\n",
        "not ".repeat(100_000)
    ));
    let p = try_load(&[("t.policy", &nots)]).unwrap();
    assert_eq!(
        decide(&p, 1).effect,
        Effect::Allow,
        "an even number of nots"
    );
    assert_eq!(decide(&p, 2).effect, Effect::Block);
    let nots = with_default(&format!(
        "allow \"x\" on github.issues.get when {}params.issue_number == 1;\n",
        "not ".repeat(100_001)
    ));
    let p = try_load(&[("t.policy", &nots)]).unwrap();
    assert_eq!(decide(&p, 1).effect, Effect::Block);
    assert_eq!(decide(&p, 2).effect, Effect::Allow, "an odd number of nots");
    let ands = with_default(&format!(
        "allow \"x\" on github.issues.get when {}params.issue_number == 1;\n",
        "params.issue_number > 0 and ".repeat(20_000)
    ));
    let p = try_load(&[("t.policy", &ands)]).unwrap();
    assert_eq!(decide(&p, 1).effect, Effect::Allow);
    assert_eq!(decide(&p, 2).effect, Effect::Block);
    let ors = with_default(&format!(
        "allow \"x\" on github.issues.get when {}params.issue_number == 1;\n",
        "params.issue_number == 0 or ".repeat(20_000)
    ));
    let p = try_load(&[("t.policy", &ors)]).unwrap();
    assert_eq!(decide(&p, 1).effect, Effect::Allow);
    assert_eq!(decide(&p, 2).effect, Effect::Block);
    let coalesce = with_default(&format!(
        "allow \"x\" on github.issues.get when {}params.issue_number == 1;\n",
        "params.nope ?? ".repeat(20_000)
    ));
    let errors = try_load(&[("t.policy", &coalesce)]).unwrap_err();
    assert!(errors[0].message.contains("params.nope"), "{}", errors[0]);
    // A chain past the step budget is an error: an allow rule does not fire on it.
    let chain = |n: usize, effect: &str| {
        with_default(&format!(
            "{effect} \"x\" on github.issues.get when {}params.issue_number == 1;\n",
            "1 < 2 and ".repeat(n)
        ))
    };
    let p = try_load(&[("t.policy", &chain(40_000, "allow"))]).unwrap();
    assert_eq!(decide(&p, 1).effect, Effect::Block, "over budget: no allow");
    let p = try_load(&[("t.policy", &chain(40_000, "step_up"))]).unwrap();
    let d = decide(&p, 2);
    assert_eq!(d.effect, Effect::StepUp, "over budget: the step_up fires");
    assert!(d.fired[0].fired_on_error);
    assert!(
        d.fired[0].errors[0].contains("step budget"),
        "{:?}",
        d.fired[0]
    );
    let p = try_load(&[("t.policy", &chain(1_000, "allow"))]).unwrap();
    assert_eq!(decide(&p, 1).effect, Effect::Allow, "within budget");

    // Files: 1 MiB is accepted, one byte more is refused (as text and from disk).
    let pad = |n: usize| {
        let mut t = with_default("# ");
        t.push_str(&"x".repeat(n - t.len() - 1));
        t.push('\n');
        assert_eq!(t.len(), n);
        t
    };
    try_load(&[("t.policy", &pad(MAX_FILE_BYTES))]).unwrap();
    let errors = try_load(&[("big.policy", &pad(MAX_FILE_BYTES + 1))]).unwrap_err();
    assert_eq!(errors.len(), 1);
    assert_eq!(
        errors[0].to_string(),
        "big.policy: the file is 1048577 bytes; policy files are limited to 1048576 bytes (1 MiB)"
    );
    let dir = TempDir::new("policy-size");
    std::fs::write(dir.path().join("a.policy"), pad(MAX_FILE_BYTES + 1)).unwrap();
    std::fs::write(dir.path().join("b.policy"), [0xff, 0xfe, b'\n']).unwrap();
    let e = policy_files::load_dir(dir.path(), schema()).unwrap_err();
    assert_eq!(e.0.len(), 2, "{e}");
    assert!(e.0[0].file.ends_with("a.policy"));
    assert!(e.0[0].message.contains("limited to 1 MiB"), "{e}");
    assert!(e.0[1].file.ends_with("b.policy"));
    assert!(e.0[1].message.contains("not UTF-8"), "{e}");
}

// ---- reload ----------------------------------------------------------------------------------

fn get_repo() -> Vec<Action> {
    vec![Action::new(
        "github.repos.get",
        serde_json::json!({"owner": "acme", "repo": "api"})
            .as_object()
            .unwrap()
            .clone(),
    )]
}

#[test]
fn a_failed_reload_keeps_the_last_good_set() {
    let dir = TempDir::new("policy-reload");
    let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
    let active = Active::new();
    assert_eq!(active.status(), LoadStatus::Never);

    // With no good set at all, everything is blocked: "no active policy".
    let d = active.preview(&get_repo(), "a", NOW);
    assert_eq!(
        (d.effect, d.reason.as_str()),
        (Effect::Block, "no active policy")
    );
    assert_eq!(d.rules, vec!["builtin:no-policy".to_string()]);
    let decider = Decider::new(Arc::new(Active::new()), Arc::new(Counters::in_memory()));
    let d = decider.admit(&get_repo(), "a", "placeholder", NOW);
    assert_eq!(
        (d.effect, d.reason.as_str()),
        (Effect::Block, policy::NO_POLICY)
    );
    assert!(
        policy_files::reload(dir.path(), schema(), &active).is_err(),
        "an empty dir"
    );
    assert!(active.current().is_none());
    assert_eq!(
        active.preview(&get_repo(), "a", NOW).reason,
        "no active policy"
    );
    write("a.policy", "default allow;\n");
    let e = policy_files::reload(dir.path(), schema(), &active).unwrap_err();
    assert!(
        e.to_string().contains("a.policy:1:9: `default allow`"),
        "{e}"
    );
    assert!(active.current().is_none());
    assert!(matches!(active.status(), LoadStatus::Failed(_)));

    // A good set in three files.
    write("a.policy", "default step_up;\nlist owners = [\"acme\"];\n");
    write(
        "b.policy",
        "allow \"reads\" on github.repos.get when params.owner in owners;\n",
    );
    write(
        "c.policy",
        "test \"reads\" {\n  given github.repos.get { owner: \"acme\", repo: \"api\" }\n  expect allow by \"reads\"\n}\n",
    );
    policy_files::reload(dir.path(), schema(), &active).unwrap();
    assert_eq!(
        active.status(),
        LoadStatus::Loaded {
            files: 3,
            rules: 1,
            tests: 1
        }
    );
    let good = active.current().unwrap();
    let decide = || active.preview(&get_repo(), "a", NOW);
    assert_eq!(decide().effect, Effect::Allow);
    assert_eq!(decide().rules, vec!["reads".to_string()]);

    let b = dir.path().join("b.policy").display().to_string();
    let c = dir.path().join("c.policy").display().to_string();
    let typo = "allow \"reads\" on github.repo.get;\n";
    let (_, typo_col) = at(typo, "github.repo.get");
    let param = "allow \"reads\" on github.repos.get when params.ownr in owners;\n";
    let (_, param_col) = at(param, "params.ownr");
    let breaks: Vec<(&str, String, String)> = vec![
        (
            "b.policy",
            "allow \"reads\" on github.repos.get when params.owner in owners\n".into(),
            format!("{b}:2:1: expected"),
        ),
        (
            "b.policy",
            typo.into(),
            format!(
                "{b}:1:{typo_col}: the pattern github.repo.get matches no action in the catalog; did you mean github.repos.get?"
            ),
        ),
        (
            "b.policy",
            param.into(),
            format!("{b}:1:{param_col}: params.ownr"),
        ),
        (
            "b.policy",
            "block \"reads\" on github.repos.get;\n".into(),
            format!("{c}:1:1: test \"reads\" failed: expected allow, got block"),
        ),
        (
            "b.policy",
            format!("# {}\n", "x".repeat(MAX_FILE_BYTES)),
            format!("{b}: the file is over"),
        ),
        (
            "z.policy",
            "default block;\n".into(),
            "a second `default`".into(),
        ),
    ];
    let original_b = std::fs::read_to_string(dir.path().join("b.policy")).unwrap();
    for (file, text, says) in &breaks {
        write(file, text);
        let e = policy_files::reload(dir.path(), schema(), &active).unwrap_err();
        let shown = e.to_string();
        assert!(
            shown.contains(says.as_str()),
            "{shown}\n  does not contain\n{says}"
        );
        for err in &e.0 {
            assert_user_terms(err);
        }
        let now = active.current().unwrap();
        assert!(Arc::ptr_eq(&good, &now), "the old set stays after {says}");
        assert_eq!(decide().effect, Effect::Allow);
        assert_eq!(decide().rules, vec!["reads".to_string()]);
        match active.status() {
            LoadStatus::Failed(m) => assert_eq!(m, shown),
            other => panic!("{other:?}"),
        }
        // Put the file back the way it was.
        if *file == "z.policy" {
            std::fs::remove_file(dir.path().join(file)).unwrap();
        } else {
            write(file, &original_b);
        }
    }
    // Every file gone: still the old set.
    for f in ["a.policy", "b.policy", "c.policy"] {
        std::fs::remove_file(dir.path().join(f)).unwrap();
    }
    let e = policy_files::reload(dir.path(), schema(), &active).unwrap_err();
    assert!(e.to_string().contains("no *.policy files"), "{e}");
    assert!(Arc::ptr_eq(&good, &active.current().unwrap()));

    // A good edit replaces the set.
    write(
        "new.policy",
        "default block;\nblock \"no-reads\" on github.repos.get;\n",
    );
    policy_files::reload(dir.path(), schema(), &active).unwrap();
    assert!(!Arc::ptr_eq(&good, &active.current().unwrap()));
    assert_eq!(decide().effect, Effect::Block);
    assert_eq!(decide().rules, vec!["no-reads".to_string()]);
}

// ---- a running gate -----------------------------------------------------------------------------

/// Waits up to 10 s (the watcher looks every second) for `cond` to hold, checking every 100 ms.
macro_rules! eventually {
    ($what:expr, $cond:expr) => {{
        let deadline = Instant::now() + Duration::from_secs(10);
        while !$cond {
            assert!(Instant::now() < deadline, "timed out waiting for {}", $what);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }};
}

/// GET /repos/acme/api through the gate: the status, and the refusal's JSON body.
async fn get_repo_through(client: &reqwest::Client) -> (u16, serde_json::Value) {
    let r = client
        .get("https://api.github.com/repos/acme/api")
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let body = if status == 200 {
        serde_json::Value::Null
    } else {
        r.json().await.unwrap()
    };
    (status, body)
}

#[tokio::test]
async fn a_running_gate_picks_up_edits_and_ignores_bad_ones() {
    let ca = TestCa::new("upstream");
    let up = FakeUpstream::tls(&ca, &["api.github.com"], &[b"h2", b"http/1.1"]).await;
    let gate = TestGate::start(&ca, &[("api.github.com", up.addr)], |c| {
        TestGate::only_policy(
            c,
            "default block;\nallow \"repo-reads\" on github.repos.get;\n",
        )
    })
    .await;
    let client = gate.reqwest(false);
    assert_eq!(get_repo_through(&client).await.0, 200);

    // An edit: the running gate starts blocking within a few seconds.
    std::fs::write(
        gate.config.policies_dir.join("only.policy"),
        "default block;\nblock \"no-repo-reads\" on github.repos.get reason \"reads are off\";\n",
    )
    .unwrap();
    eventually!(
        "the edit to take effect",
        get_repo_through(&client).await.0 == 403
    );
    let (_, body) = get_repo_through(&client).await;
    assert_eq!(body["rules"], serde_json::json!(["no-repo-reads"]));
    assert_eq!(body["reason"], "reads are off");
    let forwarded = up.requests().len();
    let loaded = gate.gate.policy.current().unwrap();

    // A bad edit: the watcher reports it and the gate keeps deciding with the last good set.
    std::fs::write(
        gate.config.policies_dir.join("broken.policy"),
        "allow \"all\" on github.repos.get\n",
    )
    .unwrap();
    eventually!(
        "the bad edit to be seen",
        matches!(gate.gate.policy.status(), LoadStatus::Failed(_))
    );
    match gate.gate.policy.status() {
        LoadStatus::Failed(m) => assert!(m.contains("broken.policy:2:1: expected"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert!(Arc::ptr_eq(&loaded, &gate.gate.policy.current().unwrap()));
    let (status, body) = get_repo_through(&client).await;
    assert_eq!(status, 403);
    assert_eq!(body["rules"], serde_json::json!(["no-repo-reads"]));

    // Fixing it loads the new set.
    std::fs::write(
        gate.config.policies_dir.join("broken.policy"),
        "allow \"all\" on github.repos.get;\n",
    )
    .unwrap();
    eventually!(
        "the fix to load",
        matches!(
            gate.gate.policy.status(),
            LoadStatus::Loaded { files: 2, .. }
        )
    );
    assert_eq!(
        get_repo_through(&client).await.0,
        403,
        "block still beats allow"
    );
    assert_eq!(
        up.requests().len(),
        forwarded,
        "nothing forwarded while blocked"
    );
    std::fs::remove_file(gate.config.policies_dir.join("only.policy")).unwrap();
    std::fs::write(
        gate.config.policies_dir.join("broken.policy"),
        "default block;\nallow \"all\" on github.repos.get;\n",
    )
    .unwrap();
    eventually!(
        "reads to be allowed again",
        get_repo_through(&client).await.0 == 200
    );
    assert_eq!(up.requests().len(), forwarded + 1);
}
