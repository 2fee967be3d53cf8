//! `agentgate demo`, run as a user runs it: the real binary, unattended with `--approve-all`
//! and `--deny-all`, and what it narrates for each of the ten actions; then the audit it left,
//! read back with `agentgate audit export` and `verify` on its config.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::Path;
use std::process::{Command, Output};

use support::TempDir;

fn agentgate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_agentgate"))
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("AGENTGATE_REVIEWER_TOKEN")
        .output()
        .unwrap()
}

/// The narration of step `n` (from its `n/10` line to the next blank line).
fn step(out: &str, n: usize) -> String {
    let head = format!("{n:>2}/10  ");
    let start = out
        .find(&head)
        .unwrap_or_else(|| panic!("no step {n}:\n{out}"));
    let rest = &out[start..];
    rest[..rest.find("\n\n").unwrap_or(rest.len())].to_string()
}

/// The outcome word and the rule of each step, as narrated.
fn outcome(out: &str, n: usize) -> (String, String) {
    let s = step(out, n);
    let word = [
        "ALLOWED", "BLOCKED", "APPROVED", "DENIED", "EXPIRED", "ANSWERED",
    ]
    .into_iter()
    .find(|w| s.lines().any(|l| l.trim_start().starts_with(w)))
    .unwrap_or_else(|| panic!("step {n} has no outcome:\n{s}"));
    let rule = s
        .split("rule ")
        .nth(1)
        .map(|r| r.split([':', ' ', ';']).next().unwrap().to_string())
        .unwrap_or_default();
    (word.to_string(), rule)
}

fn run(flag: &str, dir: &Path) -> String {
    let out = agentgate(&["demo", flag, "--dir", dir.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "agentgate demo {flag}: {}\n{text}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// What each action gets from the shipped policy, by step: (outcome when held requests are
/// approved, outcome when they are denied, rule).
const EXPECTED: [(&str, &str, &str); 10] = [
    ("ALLOWED", "ALLOWED", "reads"),
    ("ALLOWED", "ALLOWED", "reads"),
    ("APPROVED", "DENIED", "default"),
    ("ALLOWED", "ALLOWED", "internal-mail"),
    ("APPROVED", "DENIED", "external-recipient"),
    ("ALLOWED", "ALLOWED", "push-other-branches"),
    ("APPROVED", "DENIED", "push-protected-branch"),
    ("BLOCKED", "BLOCKED", "no-repo-deletion"),
    ("BLOCKED", "BLOCKED", "no-access-changes"),
    ("BLOCKED", "BLOCKED", "no-external-forwarding"),
];

#[test]
fn the_demo_narrates_ten_actions_and_leaves_a_verified_audit() {
    let tmp = TempDir::new("demo");
    let approve_dir = tmp.path().join("approve");
    let out = run("--approve-all", &approve_dir);
    for (i, (approved, _, rule)) in EXPECTED.iter().enumerate() {
        let n = i + 1;
        assert_eq!(
            outcome(&out, n),
            (approved.to_string(), rule.to_string()),
            "step {n}:\n{}",
            step(&out, n)
        );
        let s = step(&out, n);
        match *approved {
            // Forwarded: the stand-in got the vault's token.
            "ALLOWED" | "APPROVED" => assert!(s.contains("with the vault's token"), "{s}"),
            _ => assert!(s.contains("nothing reached the stand-in"), "{s}"),
        }
        if n == 6 || n == 7 {
            // A push: the ref advertisement, then the push itself.
            assert!(
                s.contains(
                    "received GET /acme/api.git/info/refs and POST /acme/api.git/git-receive-pack"
                ),
                "{s}"
            );
        }
        if *approved == "APPROVED" {
            // The hold is narrated with where to decide it.
            assert!(s.contains("HELD"), "{s}");
            assert!(s.contains("agentgate approve chl_"), "{s}");
            assert!(s.contains("http://127.0.0.1:"), "{s}");
        }
    }
    assert!(
        out.contains("Done: 4 allowed, 3 blocked, 3 held and approved, 0 held and denied."),
        "{out}"
    );
    assert!(out.contains("none carried a placeholder"), "{out}");

    // The audit, read back from the stopped gate's store with the demo's config.
    let config = approve_dir.join("agentgate.toml");
    let config = config.to_str().unwrap();
    let verify = agentgate(&["audit", "verify", "--config", config]);
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
    let export = agentgate(&["audit", "export", "--config", config]);
    assert!(export.status.success());
    let records: Vec<serde_json::Value> = String::from_utf8_lossy(&export.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let decisions: Vec<&serde_json::Value> =
        records.iter().filter(|r| r["kind"] == "decision").collect();
    for (action, decision) in [
        ("github.repos.delete", "block"),
        ("github.repos.add-collaborator", "block"),
        ("gmail.users.settings.filters.create", "block"),
        ("github.issues.create-comment", "approved"),
        ("gmail.users.messages.send", "approved"),
        ("git.push", "approved"),
    ] {
        assert!(
            decisions
                .iter()
                .any(|d| d["actions"][0]["name"] == action && d["decision"] == decision),
            "no {decision} decision for {action} in {decisions:?}"
        );
    }
    // The demo's real tokens stay in its vault file: not in the store, not in what it said.
    let vault = std::fs::read_to_string(approve_dir.join("vault.toml")).unwrap();
    let tokens: Vec<&str> = vault
        .lines()
        .filter_map(|l| l.split_once(" = \"").map(|(_, v)| v.trim_end_matches('"')))
        .collect();
    assert_eq!(tokens.len(), 2, "{vault}");
    let exported = String::from_utf8_lossy(&export.stdout);
    for t in &tokens {
        assert!(!out.contains(t), "the narration shows a whole token");
        assert!(!exported.contains(t), "the audit holds a token");
        for entry in walk(&approve_dir.join("data")) {
            let bytes = std::fs::read(&entry).unwrap();
            assert!(
                !bytes.windows(t.len()).any(|w| w == t.as_bytes()),
                "{} holds a token",
                entry.display()
            );
        }
    }

    let deny_dir = tmp.path().join("deny");
    let out = run("--deny-all", &deny_dir);
    for (i, (_, denied, rule)) in EXPECTED.iter().enumerate() {
        let n = i + 1;
        let (word, narrated_rule) = outcome(&out, n);
        assert_eq!(word, *denied, "step {n}:\n{}", step(&out, n));
        if *denied == "DENIED" {
            let s = step(&out, n);
            assert!(s.contains(&format!("rule {rule}")), "{s}");
            assert!(s.contains("denied by agentgate demo --deny-all"), "{s}");
            // Nothing of the held request went upstream (a push's ref advertisement did).
            let request = s.lines().nth(1).unwrap().trim().to_string();
            let method = request.split(' ').next().unwrap();
            let path = request
                .split_once(".com")
                .unwrap()
                .1
                .split('?')
                .next()
                .unwrap();
            assert!(!s.contains(&format!("{method} {path}")), "{s}");
            assert!(
                s.contains("nothing reached the stand-in")
                    || s.contains("received GET /acme/api.git/info/refs with"),
                "{s}"
            );
        } else {
            assert_eq!(narrated_rule, *rule, "step {n}");
        }
    }
    assert!(
        out.contains("Done: 4 allowed, 3 blocked, 0 held and approved, 3 held and denied."),
        "{out}"
    );
}

#[test]
fn the_demo_leaves_a_real_config_alone() {
    let tmp = TempDir::new("demo-foreign");
    let config = "[proxy]\nlisten = \"127.0.0.1:8080\"\n";
    std::fs::write(tmp.path().join("agentgate.toml"), config).unwrap();
    let out = agentgate(&[
        "demo",
        "--approve-all",
        "--dir",
        tmp.path().to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("was not written by `agentgate demo`"), "{err}");
    assert_eq!(
        std::fs::read_to_string(tmp.path().join("agentgate.toml")).unwrap(),
        config
    );
    assert!(!tmp.path().join("vault.toml").exists());
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files.extend(walk(&p));
        } else {
            files.push(p);
        }
    }
    files
}
