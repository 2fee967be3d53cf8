//! `agentgate challenges`, `agentgate approve` and `agentgate deny` as a reviewer runs them:
//! the real binary, against a gate on 127.0.0.1 holding real requests from an agent. The list
//! shows a held request; an approval releases the agent with the upstream's answer; a denial
//! gives it a 403 with the note; an unknown id, a decided challenge, a wrong or missing token
//! and a gate that is not running each fail with their own message and exit code.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use support::*;
use tokio::process::Command;
use tokio::task::JoinHandle;

const BIN: &str = env!("CARGO_BIN_EXE_agentgate");

const POLICY: &str = "default block;\n\
    step_up \"issues-need-a-human\" on github.issues.create reason \"A human approves new issues in {params.repo}\";\n";

/// The exit codes the commands document.
const NO_GATE: i32 = 3;
const BAD_TOKEN: i32 = 4;
const UNKNOWN: i32 = 5;
const DECIDED: i32 = 6;

struct Setup {
    _ca: TestCa,
    up: FakeUpstream,
    gate: TestGate,
    /// The reviewer's config file: the gate's dashboard address and data directory.
    config: PathBuf,
}

impl Setup {
    async fn new() -> Setup {
        let ca = TestCa::new("upstream");
        let up = FakeUpstream::tls(&ca, &["api.github.com"], &[b"http/1.1"]).await;
        let gate = TestGate::start(&ca, &[("api.github.com", up.addr)], |c| {
            TestGate::only_policy(c, POLICY)
        })
        .await;
        let config = write_config(
            gate.dir.path(),
            &gate.gate.dashboard_addr.to_string(),
            &gate.config.data_dir,
        );
        Setup {
            _ca: ca,
            up,
            gate,
            config,
        }
    }

    fn token_file(&self) -> PathBuf {
        self.gate.config.data_dir.join("reviewer.token")
    }

    /// `agentgate ARGS --config CONFIG` (no token in the environment unless `token`).
    async fn cli(&self, args: &[&str], token: Option<&str>) -> Run {
        cli(&self.config, args, token).await
    }

    /// The agent creates an issue titled `title` and waits for the gate's answer.
    fn agent(&self, title: &str) -> JoinHandle<reqwest::Response> {
        let client = self.gate.reqwest(false);
        let body = serde_json::json!({ "title": title });
        tokio::spawn(async move {
            client
                .post("https://api.github.com/repos/acme/api/issues")
                .header("authorization", format!("token {GITHUB_PLACEHOLDER}"))
                .json(&body)
                .send()
                .await
                .unwrap()
        })
    }

    /// Waits until the challenge of the issue titled `title` is pending; returns its id.
    async fn held(&self, title: &str) -> String {
        for _ in 0..400 {
            let run = self.cli(&["challenges", "--json"], None).await;
            assert_eq!(run.code, 0, "{}", run.stderr);
            let list: Vec<Value> = serde_json::from_str(&run.stdout).unwrap();
            if let Some(c) = list
                .iter()
                .find(|c| c["actions"][0]["params"]["title"] == title)
            {
                return c["id"].as_str().unwrap().to_string();
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("the request titled {title} was not held");
    }
}

/// A config for the reviewer's commands (absolute data directory).
fn write_config(dir: &Path, dashboard: &str, data: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("reviewer.toml");
    let text = format!(
        "[dashboard]\nlisten = \"{dashboard}\"\n[paths]\ndata = \"{}\"\n",
        data.display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

async fn cli(config: &Path, args: &[&str], token: Option<&str>) -> Run {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .arg("--config")
        .arg(config)
        .current_dir(config.parent().unwrap())
        .env_remove("AGENTGATE_REVIEWER_TOKEN")
        .env_remove("RUST_LOG");
    for proxy in [
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
        "ALL_PROXY",
    ] {
        cmd.env_remove(proxy);
    }
    if let Some(t) = token {
        cmd.env("AGENTGATE_REVIEWER_TOKEN", t);
    }
    let out = cmd.output().await.unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[tokio::test]
async fn a_reviewer_lists_approves_and_denies_held_requests() {
    let s = Setup::new().await;
    let first = s.agent("first");
    let id = s.held("first").await;

    // The table: one row, with its countdown inside the 15 minute window.
    let run = s.cli(&["challenges"], None).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{}", run.stdout);
    for column in ["ID", "AGENT", "ACTION", "STATE", "EXPIRES IN"] {
        assert!(lines[0].contains(column), "{}", lines[0]);
    }
    let row: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(
        row[..4],
        [id.as_str(), TEST_AGENT, "github.issues.create", "pending"]
    );
    assert!(
        ["14m", "15m"].contains(&row[4]),
        "expires in {:?}",
        &row[4..]
    );
    assert!(s.up.requests().is_empty(), "nothing upstream while held");

    // Approve: the held agent gets the upstream's answer, which went upstream once.
    let run = s.cli(&["approve", &id, "--note", "fine by me"], None).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        run.stdout.trim(),
        format!("approved {id}: github.issues.create by {TEST_AGENT}")
    );
    let resp = first.await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["agentgate-challenge"], id.as_str());
    assert_eq!(resp.text().await.unwrap(), "ok POST /repos/acme/api/issues");
    assert_eq!(s.up.requests().len(), 1);

    // Decided: gone from the pending list, shown under its state, not decidable again.
    let run = s.cli(&["challenges"], None).await;
    assert_eq!((run.code, run.stdout.trim()), (0, "no pending challenges"));
    let run = s
        .cli(&["challenges", "--state", "approved", "--json"], None)
        .await;
    let list: Vec<Value> = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["id"], id.as_str());
    assert_eq!(list[0]["note"], "fine by me");
    assert_eq!(list[0]["reviewer"], "reviewer");
    for verb in ["approve", "deny"] {
        let run = s.cli(&[verb, &id], None).await;
        assert_eq!(run.code, DECIDED, "{verb}: {}", run.stderr);
        assert!(
            run.stderr.contains(&format!("{id} is already approved")),
            "{}",
            run.stderr
        );
    }

    // Deny: the agent gets 403 with the note, and nothing more goes upstream.
    let second = s.agent("second");
    let id = s.held("second").await;
    let run = s.cli(&["deny", &id, "--note", "not today"], None).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        run.stdout.trim(),
        format!("denied {id}: github.issues.create by {TEST_AGENT}")
    );
    let resp = second.await.unwrap();
    assert_eq!(resp.status(), 403);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["decision"], "denied");
    assert_eq!(v["note"], "not today");
    assert_eq!(v["challenge_id"], id.as_str());
    assert_eq!(s.up.requests().len(), 1);
    let run = s.cli(&["challenges", "--state", "all"], None).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stdout.lines().count(), 3, "{}", run.stdout);
}

#[tokio::test]
async fn failures_say_what_went_wrong_with_their_own_exit_codes() {
    let s = Setup::new().await;
    let agent = s.agent("held");
    let id = s.held("held").await;

    // An id the gate does not know, and one that is not an id at all.
    let unknown = format!("chl_{}", "0".repeat(32));
    let run = s.cli(&["approve", &unknown], None).await;
    assert_eq!(run.code, UNKNOWN, "{}", run.stderr);
    assert!(
        run.stderr.contains(&format!("no challenge {unknown}")),
        "{}",
        run.stderr
    );
    let run = s.cli(&["deny", "../../metrics"], None).await;
    assert_eq!(run.code, UNKNOWN, "{}", run.stderr);

    // A wrong token from the environment: refused, nothing decided, the variable named.
    let real = std::fs::read_to_string(s.token_file()).unwrap();
    let run = s.cli(&["approve", &id], Some("rev_not-the-token")).await;
    assert_eq!(run.code, BAD_TOKEN, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("refused the reviewer token from AGENTGATE_REVIEWER_TOKEN"),
        "{}",
        run.stderr
    );
    // A wrong token in the file (kept private, as the gate made it): the file is named.
    std::fs::write(s.token_file(), "rev_stale-token\n").unwrap();
    let run = s.cli(&["approve", &id], None).await;
    assert_eq!(run.code, BAD_TOKEN, "{}", run.stderr);
    let file = s.token_file().display().to_string();
    assert!(
        run.stderr
            .contains(&format!("refused the reviewer token read from {file}")),
        "{}",
        run.stderr
    );
    // No token at all.
    std::fs::remove_file(s.token_file()).unwrap();
    let run = s.cli(&["challenges"], None).await;
    assert_eq!(run.code, BAD_TOKEN, "{}", run.stderr);
    assert!(
        run.stderr.contains("no reviewer token") && run.stderr.contains(&file),
        "{}",
        run.stderr
    );
    // The challenge is still pending: none of that decided anything.
    let run = s.cli(&["challenges", "--json"], Some(real.trim())).await;
    let list: Vec<Value> = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["id"], id.as_str());
    assert!(s.up.requests().is_empty());

    // No gate at the configured address: the address and the config it came from are named.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let nowhere = write_config(
        &s.gate.dir.path().join("elsewhere"),
        &format!("127.0.0.1:{port}"),
        &s.gate.config.data_dir,
    );
    let run = cli(&nowhere, &["challenges"], Some(real.trim())).await;
    assert_eq!(run.code, NO_GATE, "{}", run.stderr);
    assert!(
        run.stderr
            .contains(&format!("no gate answers at http://127.0.0.1:{port}"))
            && run.stderr.contains(&nowhere.display().to_string()),
        "{}",
        run.stderr
    );

    // With the right token the reviewer still decides it.
    let run = s.cli(&["deny", &id], Some(real.trim())).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(agent.await.unwrap().status(), 403);
}
