//! End to end with unmodified git: `git clone` and `git push` over HTTPS through the gate to
//! the real `git http-backend` standing in for github.com, git configured only by what
//! `agentgate env` prints. The shipped policy lets fetches and feature-branch pushes through,
//! holds a push to main for a reviewer (denied, then approved), and a test policy blocks
//! pushing tags; the repository on the server ends up with exactly what was allowed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use support::git_http::GitServer;
use support::*;

const REPO: &str = "acme/api.git";
const URL: &str = "https://github.com/acme/api.git";

/// Added to the shipped policy: agents never push tags (releases are cut by people).
const NO_TAGS: &str = "block \"no-tags\"\n  on git.push\n  \
    when any(r in (params.refs ?? []): r.name starts_with \"refs/tags/\")\n  \
    reason \"Agents may not push tags to {params.repo}: releases are cut by people\";\n";

/// An agent's shell: the variables `agentgate env` printed, and a home of its own (the clone
/// is `HOME/api`).
#[derive(Clone)]
struct Agent {
    env: Vec<(String, String)>,
    home: PathBuf,
}

/// What one git command did.
struct Run {
    ok: bool,
    /// stdout and stderr together.
    text: String,
}

impl Agent {
    fn work(&self) -> PathBuf {
        self.home.join("api")
    }

    /// Runs the real git in `dir` with PATH, HOME, the `agentgate env` variables, an identity,
    /// no prompts and no system config, and nothing else.
    async fn git_in(&self, dir: &Path, args: &[&str]) -> Run {
        let out = tokio::process::Command::new("git")
            .current_dir(dir)
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap())
            .env("HOME", &self.home)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_AUTHOR_NAME", "Coding Agent")
            .env("GIT_AUTHOR_EMAIL", "agent@example.com")
            .env("GIT_COMMITTER_NAME", "Coding Agent")
            .env("GIT_COMMITTER_EMAIL", "agent@example.com")
            .kill_on_drop(true)
            .output()
            .await
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !text.contains(REAL_GITHUB_TOKEN),
            "git saw the real token: {text}"
        );
        Run {
            ok: out.status.success(),
            text,
        }
    }

    async fn git(&self, args: &[&str]) -> Run {
        self.git_in(&self.work(), args).await
    }

    /// Runs git and fails the test if it fails.
    async fn ok(&self, args: &[&str]) -> String {
        let r = self.git(args).await;
        assert!(r.ok, "git {args:?} failed:\n{}", r.text);
        r.text
    }

    async fn commit(&self, file: &str, text: &str, message: &str) -> String {
        std::fs::write(self.work().join(file), text).unwrap();
        self.ok(&["add", file]).await;
        self.ok(&["commit", "-q", "-m", message]).await;
        self.ok(&["rev-parse", "HEAD"]).await.trim().to_string()
    }
}

/// The `Authorization` every request must reach the server with: the vault's token, as GitHub
/// takes it for git.
fn real_basic() -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    format!(
        "Basic {}",
        b64.encode(format!("x-access-token:{REAL_GITHUB_TOKEN}"))
    )
}

/// How many receive-pack POSTs (pushes that carried refs) reached the server.
fn pushes(server: &GitServer) -> usize {
    server
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("/git-receive-pack"))
        .count()
}

/// The decision records in the audit log, in order, each as `ACTION WHAT DECISION by RULES`
/// (WHAT: the pushed refs, or the phase of a request that carries none).
fn decisions(records: &[serde_json::Value]) -> Vec<String> {
    records
        .iter()
        .filter(|r| r["kind"] == "decision")
        .map(|r| {
            let a = &r["actions"][0];
            let what = match a["params"]["refs"].as_array() {
                Some(refs) => refs
                    .iter()
                    .map(|r| r["name"].as_str().unwrap())
                    .collect::<Vec<_>>()
                    .join(","),
                None => a["params"]["phase"].as_str().unwrap().to_string(),
            };
            let rules: Vec<&str> = r["rules"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r.as_str().unwrap())
                .collect();
            format!(
                "{} {what} {} by {}",
                a["name"].as_str().unwrap(),
                r["decision"].as_str().unwrap(),
                rules.join(",")
            )
        })
        .collect()
}

/// Pushes `refspec` in the background: the gate holds a push to main until a reviewer decides.
fn spawn_push(agent: &Agent, refspec: &str) -> tokio::task::JoinHandle<Run> {
    let (agent, refspec) = (agent.clone(), refspec.to_string());
    tokio::spawn(async move { agent.git(&["push", "origin", &refspec]).await })
}

/// A reviewer decides challenge `id` through the dashboard API.
async fn decide(gate: &TestGate, id: &str, verb: &str, note: &str) {
    let (status, body) = gate
        .reviewer(
            http::Method::POST,
            &format!("/api/challenges/{id}/{verb}"),
            Some(serde_json::json!({ "note": note })),
        )
        .await;
    assert_eq!(status, 200, "{verb}: {body}");
}

/// Waits for the held push and checks what the reviewer sees: a push to main of `new`.
async fn held_push(gate: &TestGate, old: &str, new: &str) -> String {
    let c = gate.pending_challenge().await;
    assert_eq!(c["agent"], TEST_AGENT);
    assert_eq!(c["rules"], serde_json::json!(["push-protected-branch"]));
    assert_eq!(
        c["reasons"][0],
        "Push to acme/api touches a protected branch"
    );
    let a = &c["actions"][0];
    assert_eq!(a["name"], "git.push");
    assert_eq!(a["params"]["repo"], "acme/api");
    assert_eq!(
        a["params"]["refs"],
        serde_json::json!([{"name": "refs/heads/main", "kind": "update", "old": old, "new": new}])
    );
    c["id"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn git_clone_and_push_through_the_gate() {
    let ca = TestCa::new("upstream");
    let server = GitServer::start(&ca, REAL_GITHUB_TOKEN).await;
    server.create_repo(REPO);
    let initial = server.refs(REPO)["refs/heads/main"].clone();
    let gate =
        TestGate::from_file(&ca, &[("github.com", server.addr)], &[("no-tags", NO_TAGS)]).await;
    let home = TempDir::new("git-agent");
    let agent = Agent {
        env: gate.agent_env().await,
        home: home.path().to_path_buf(),
    };

    // Clone ("git-fetch" allows it): every request reaches the server with the real token,
    // which git itself never holds.
    let r = agent.git_in(home.path(), &["clone", URL, "api"]).await;
    assert!(r.ok, "clone: {}", r.text);
    assert_eq!(
        std::fs::read_to_string(agent.work().join("README.md")).unwrap(),
        "# api\n"
    );
    let config = std::fs::read_to_string(agent.work().join(".git/config")).unwrap();
    assert!(config.contains(URL) && !config.contains(REAL_GITHUB_TOKEN));
    let seen = server.requests();
    assert!(seen.len() >= 2, "{seen:?}");
    assert!(seen[0].path.ends_with("/info/refs?service=git-upload-pack"));
    for q in &seen {
        assert_eq!(
            q.authorization.as_deref(),
            Some(real_basic().as_str()),
            "{q:?}"
        );
        assert_eq!(q.status, 200, "{q:?}");
    }

    // A feature branch ("push-other-branches"): allowed, and the server has it.
    let feature = agent
        .commit("login.rs", "fn login() {}\n", "Add login")
        .await;
    let r = agent
        .git(&["push", "origin", "HEAD:refs/heads/feature/login"])
        .await;
    assert!(r.ok, "push feature: {}", r.text);
    assert!(r.text.contains("[new branch]"), "{}", r.text);
    assert_eq!(server.refs(REPO)["refs/heads/feature/login"], feature);
    assert_eq!(pushes(&server), 1);

    // A tag ("no-tags", the test policy): blocked before any byte of it reaches the server.
    // The gate answers git's push in git's terms (a report-status that rejects the ref, as
    // GitHub does for a declined push), so git prints the gate's reason.
    agent.ok(&["tag", "v1.0"]).await;
    let r = agent.git(&["push", "origin", "v1.0"]).await;
    assert!(!r.ok, "the tag push succeeded: {}", r.text);
    assert!(
        r.text.contains("! [remote rejected] v1.0 -> v1.0 (AgentGate: blocked by rule no-tags: Agents may not push tags to acme/api: releases are cut by people"),
        "{}",
        r.text
    );
    assert!(
        r.text
            .contains("remote: AgentGate: blocked by rule no-tags"),
        "{}",
        r.text
    );
    assert_eq!(pushes(&server), 1, "the blocked push reached the server");
    assert!(!server.refs(REPO).contains_key("refs/tags/v1.0"));

    // main ("push-protected-branch"): held; a reviewer denies it, and git fails with the
    // server's main unchanged.
    let main = agent.commit("main.rs", "fn main() {}\n", "Add main").await;
    let held = spawn_push(&agent, "HEAD:main");
    let id = held_push(&gate, &initial, &main).await;
    assert_eq!(pushes(&server), 1, "nothing goes upstream while held");
    decide(&gate, &id, "deny", "not before the release").await;
    let r = held.await.unwrap();
    assert!(!r.ok, "the denied push succeeded: {}", r.text);
    assert!(
        r.text.contains("! [remote rejected] HEAD -> main (AgentGate: denied by a reviewer (not before the release): Push to acme/api touches a protected branch"),
        "{}",
        r.text
    );
    assert!(!r.text.contains(REAL_GITHUB_TOKEN));
    assert_eq!(pushes(&server), 1, "the denied push reached the server");
    assert_eq!(server.refs(REPO)["refs/heads/main"], initial);

    // The same push again: held again; approved, it reaches the server and main moves.
    let held = spawn_push(&agent, "HEAD:main");
    let approved = held_push(&gate, &initial, &main).await;
    assert_ne!(approved, id);
    decide(&gate, &approved, "approve", "release is out").await;
    let r = held.await.unwrap();
    assert!(r.ok, "the approved push failed: {}", r.text);
    assert!(!r.text.contains(REAL_GITHUB_TOKEN));
    assert_eq!(pushes(&server), 2);
    assert!(
        server
            .requests()
            .iter()
            .all(|q| q.authorization.as_deref() == Some(real_basic().as_str()) && q.status == 200),
        "{:?}",
        server.requests()
    );

    // The server holds exactly what was allowed.
    let refs: BTreeMap<String, String> = server.refs(REPO);
    let expected: BTreeMap<String, String> = [
        ("refs/heads/feature/login".to_string(), feature),
        ("refs/heads/main".to_string(), main.clone()),
    ]
    .into();
    assert_eq!(refs, expected);
    assert_eq!(server.subject(REPO, "main"), "Add main");

    // The audit log: every decision with its rules, in order, and no real token.
    // One outcome with a status for each request the server received.
    let with_status = |records: &[serde_json::Value]| {
        records
            .iter()
            .filter(|r| r["kind"] == "outcome" && r["status"].is_u64())
            .count()
    };
    let forwarded = server.requests().len();
    let records = gate.audit_until(|r| with_status(r) >= forwarded).await;
    assert_eq!(with_status(&records), forwarded, "{records:#?}");
    let text: String = records.iter().map(|r| r.to_string()).collect();
    assert!(!text.contains(REAL_GITHUB_TOKEN));
    let d: Vec<String> = decisions(&records)
        .into_iter()
        .filter(|d| !d.contains(" discovery "))
        .collect();
    let fetches = d.iter().take_while(|d| d.starts_with("git.fetch ")).count();
    assert!(fetches >= 1, "{d:?}");
    assert!(
        d[..fetches]
            .iter()
            .all(|d| d == "git.fetch request allow by git-fetch"),
        "{d:?}"
    );
    // The approval's record names the step-up rule the reviewer approved, then the allow rule
    // that fires on the re-check once the approved step-up no longer does.
    assert_eq!(
        d[fetches..],
        [
            "git.push refs/heads/feature/login allow by push-other-branches",
            "git.push refs/tags/v1.0 block by no-tags",
            "git.push refs/heads/main step_up by push-protected-branch",
            "git.push refs/heads/main denied by push-protected-branch",
            "git.push refs/heads/main step_up by push-protected-branch",
            "git.push refs/heads/main approved by push-protected-branch,push-other-branches",
        ]
    );
    let settled = |id: &str| {
        records
            .iter()
            .find(|r| r["kind"] == "decision" && r["challenge_id"] == id)
            .unwrap()
    };
    assert_eq!(settled(&id)["note"], "not before the release");
    assert_eq!(settled(&approved)["reviewer"], "reviewer");
    let outcome = |d: &serde_json::Value| {
        records
            .iter()
            .find(|r| r["kind"] == "outcome" && r["decision_seq"] == d["seq"])
            .map(|r| r["status"].clone())
    };
    assert_eq!(outcome(settled(&approved)), Some(serde_json::json!(200)));
    assert_eq!(outcome(settled(&id)), None);
}
