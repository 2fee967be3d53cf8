//! The audit log through the real `agentgate` binary (issue 6, point 6): a gate killed with
//! SIGKILL in the middle of concurrent requests loses no decision whose request reached the
//! upstream and its chain still verifies, from the store and through the running gate's API;
//! one changed byte is named by `agentgate audit verify`; a store that cannot write refuses
//! requests (and tunnels) with 503 and counts the failures in `/metrics`; neither the vault's
//! token nor the agent's proxy token is anywhere in the data directory.
//!
//! Every socket is on 127.0.0.1.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use support::*;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const BIN: &str = env!("CARGO_BIN_EXE_agentgate");

/// The agent of these tests (configured in `[[agents]]`, so the gate stores only the token's
/// SHA-256 and writes no token file), and the vault identity it borrows tokens from.
const AGENT: &str = "audited";
const AGENT_TOKEN: &str = "agt_AuditedAgentProxyToken0123456789abcdef";
const USER: &str = "auth0|audited";
/// The real token the env vault hands the gate (`AGENTGATE_GITHUB_TOKEN`).
const VAULT_TOKEN: &str = "ghs_VaultTokenTheGateInjects0123456789abcd";

/// A gate's directory: `agentgate.toml` sending api.github.com to `upstream`, the shipped
/// default policy (written by the gate on its first start), the env vault.
struct Setup {
    dir: TempDir,
    config: PathBuf,
    proxy: std::net::SocketAddr,
    dashboard: std::net::SocketAddr,
}

impl Setup {
    fn new(tag: &str, ca: &TestCa, upstream: std::net::SocketAddr) -> Setup {
        let dir = TempDir::new(tag);
        ca.write_pem(dir.path(), "upstream-ca.pem");
        let proxy: std::net::SocketAddr = format!("127.0.0.1:{}", support::free_port())
            .parse()
            .unwrap();
        let dashboard: std::net::SocketAddr = format!("127.0.0.1:{}", support::free_port())
            .parse()
            .unwrap();
        let text = format!(
            r#"
[proxy]
listen = "{proxy}"
[dashboard]
listen = "{dashboard}"
[paths]
certs = "certs"
data = "data"
[upstream]
extra_roots = ["upstream-ca.pem"]
[upstream.overrides]
"api.github.com" = "{upstream}"
[[agents]]
name = "{AGENT}"
token_sha256 = "{sha}"
user = "{USER}"
[vault]
backend = "env"
"#,
            sha = hex::encode(agentgate::agents::sha256(AGENT_TOKEN)),
        );
        let config = dir.path().join("agentgate.toml");
        std::fs::write(&config, text).unwrap();
        Setup {
            dir,
            config,
            proxy,
            dashboard,
        }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Starts `agentgate run` and waits for its banner. The gate's log is kept for messages.
    async fn run(&self) -> Gate {
        self.try_run()
            .await
            .unwrap_or_else(|log| panic!("the gate did not start:\n{log}"))
    }

    /// Starts `agentgate run`: the running gate once it printed its banner, or its log if it
    /// exited first.
    async fn try_run(&self) -> Result<Gate, String> {
        let mut child = Command::new(BIN)
            .args(["run", "--config"])
            .arg(&self.config)
            .env("AGENTGATE_GITHUB_TOKEN", VAULT_TOKEN)
            .env_remove("RUST_LOG")
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let log = Arc::new(Mutex::new(String::new()));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while let Ok(Ok(Some(line))) = tokio::time::timeout_at(deadline, lines.next_line()).await {
            let mut l = log.lock().unwrap();
            l.push_str(&line);
            l.push('\n');
            if line.contains("eval \"$(agentgate env") {
                break;
            }
        }
        let banner = log.lock().unwrap().clone();
        if !banner.contains(&format!("proxy listening on {}", self.proxy)) {
            return Err(banner);
        }
        let l = log.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let mut l = l.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        Ok(Gate { child, log })
    }

    /// `agentgate ARGS --config CONFIG`, with no reviewer token in the environment unless
    /// `reviewer_token` gives one (the CLI then reads `data/reviewer.token`).
    async fn cli(&self, args: &[&str], reviewer_token: Option<&str>) -> Output {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .arg("--config")
            .arg(&self.config)
            .env_remove("AGENTGATE_REVIEWER_TOKEN")
            .env_remove("RUST_LOG");
        if let Some(t) = reviewer_token {
            cmd.env("AGENTGATE_REVIEWER_TOKEN", t);
        }
        cmd.output().await.unwrap()
    }

    /// `agentgate audit export`: the records, parsed, and the raw lines.
    async fn export(&self) -> (Vec<Value>, Vec<String>) {
        let out = self.cli(&["audit", "export"], None).await;
        assert!(
            out.status.success(),
            "audit export failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        let records = lines
            .iter()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        (records, lines)
    }

    /// `agentgate audit verify`: (exit code, stdout, stderr).
    async fn verify(&self) -> (i32, String, String) {
        let out = self.cli(&["audit", "verify"], None).await;
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// A client that goes through the gate as the test agent, trusting only the gate's CA.
    fn client(&self) -> reqwest::Client {
        self.client_builder().build().unwrap()
    }

    fn client_builder(&self) -> reqwest::ClientBuilder {
        let ca = std::fs::read(self.dir.path().join("certs/ca.pem")).unwrap();
        reqwest::Client::builder()
            .proxy(
                reqwest::Proxy::all(format!("http://{AGENT}:{AGENT_TOKEN}@{}", self.proxy))
                    .unwrap(),
            )
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(15))
    }

    /// `GET /metrics` from the dashboard with the reviewer token the gate wrote.
    async fn metrics(&self) -> String {
        let token = std::fs::read_to_string(self.data().join("reviewer.token")).unwrap();
        let resp = reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .get(format!("http://{}/metrics", self.dashboard))
            .bearer_auth(token.trim())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.text().await.unwrap()
    }
}

/// A running `agentgate run`.
struct Gate {
    child: Child,
    log: Arc<Mutex<String>>,
}

impl Gate {
    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits for the gate to die of the SIGKILL sent to it (no shutdown code ran).
    async fn killed(mut self) {
        let status = self.child.wait().await.unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(9), "{status:?}");
    }

    /// SIGKILL.
    async fn kill9(mut self) {
        self.child.start_kill().unwrap();
        self.killed().await;
    }

    /// SIGTERM, and wait for the gate to stop.
    async fn stop(mut self) {
        let pid = self.child.id().unwrap().to_string();
        let st = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .unwrap();
        assert!(st.success());
        let status = tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .expect("the gate did not stop on SIGTERM")
            .unwrap();
        assert!(status.success(), "{status:?}\n{}", self.log());
    }
}

fn issue_path(n: u64) -> String {
    format!("/repos/acme/api/issues/{n}")
}

/// The issue numbers of the requests the upstream received.
fn issues_seen(up: &FakeUpstream) -> BTreeSet<u64> {
    up.requests()
        .iter()
        .map(|r| {
            r.path
                .strip_prefix("/repos/acme/api/issues/")
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("unexpected upstream request {}", r.path))
        })
        .collect()
}

/// Allowed `github.issues.get` decisions in an export: issue number -> request id.
fn allowed_issue_gets(records: &[Value]) -> BTreeMap<u64, String> {
    let mut out = BTreeMap::new();
    for r in records {
        if r["kind"] != "decision" || r["decision"] != "allow" {
            continue;
        }
        let a = &r["actions"][0];
        if a["name"] != "github.issues.get" {
            continue;
        }
        assert_eq!(r["agent"], AGENT, "{r}");
        assert_eq!(r["credential"], "placeholder", "{r}");
        assert_eq!(a["params"]["repo"], "acme/api", "{r}");
        let n = a["params"]["issue_number"].as_u64().unwrap();
        let prev = out.insert(n, r["request_id"].as_str().unwrap().to_string());
        assert!(prev.is_none(), "issue {n} decided twice");
    }
    out
}

/// Sends `GET /repos/acme/api/issues/{n}` with the placeholder; (status, request id).
async fn get_issue(client: &reqwest::Client, n: u64) -> Result<(u16, String), reqwest::Error> {
    let resp = client
        .get(format!("https://api.github.com{}", issue_path(n)))
        .bearer_auth(GITHUB_PLACEHOLDER)
        .send()
        .await?;
    let status = resp.status().as_u16();
    let id = resp
        .headers()
        .get("agentgate-request-id")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    resp.bytes().await?;
    Ok((status, id))
}

/// Concurrent agents, each with its own keep-alive connection, each sending one request after
/// another (every request for an issue number of its own).
const AGENTS: u64 = 64;
/// The gate is killed once the upstream has received this many requests: all connections are
/// open by then, and the gate decides and forwards in its steady state, so a decision that
/// was not yet on disk when its request was forwarded would be lost. (With `Audit::decision`
/// returning before the commit, this test failed in 4 runs of 4; with a burst of single
/// requests instead, the decisions were usually flushed by sled's own timer before the slower
/// first forwards, and it passed.)
const KILL_AFTER: usize = 400;
/// Issues asked for after the restart.
const AFTER_RESTART: std::ops::RangeInclusive<u64> = 9_000_001..=9_000_005;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gate_killed_mid_traffic_keeps_a_record_of_every_forwarded_request() {
    let ca = TestCa::new("audit-gate");
    let up = FakeUpstream::tls(&ca, &["api.github.com"], &[b"http/1.1"]).await;
    let setup = Setup::new("audit-kill", &ca, up.addr);
    let gate = setup.run().await;

    // A thread of its own watches the upstream and sends SIGKILL once KILL_AFTER requests
    // arrived (the test's runtime is busy with the agents and the upstream).
    let seen_so_far = up.seen.clone();
    let killer = std::thread::spawn(move || {
        let mut gate = gate;
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while seen_so_far.lock().unwrap().len() < KILL_AFTER {
            assert!(
                std::time::Instant::now() < deadline,
                "the upstream got only {} requests:\n{}",
                seen_so_far.lock().unwrap().len(),
                gate.log()
            );
            std::thread::sleep(Duration::from_micros(200));
        }
        gate.child.start_kill().unwrap();
        gate
    });
    let client = setup.client_builder().http1_only().build().unwrap();
    let mut tasks = Vec::new();
    for agent in 0..AGENTS {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut answered = Vec::new();
            for k in 0.. {
                let n = agent * 100_000 + k;
                match get_issue(&client, n).await {
                    Ok((200, id)) => answered.push((n, id)),
                    Ok((status, _)) => panic!("issue {n}: status {status}"),
                    Err(_) => break,
                }
            }
            answered
        }));
    }
    let mut answered = BTreeMap::new();
    for t in tasks {
        answered.extend(t.await.unwrap());
    }
    killer.join().unwrap().killed().await;
    // Whatever the dead gate had already written to its upstream sockets has arrived by now.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let seen = issues_seen(&up);
    let in_flight = seen.iter().filter(|n| !answered.contains_key(n)).count();
    eprintln!(
        "killed: the upstream got {} requests, the agents {} answers; {in_flight} were forwarded \
         but not answered",
        seen.len(),
        answered.len()
    );
    // Mid-traffic: the upstream had requests whose answers the agents never got.
    assert!(in_flight > 0, "the kill did not land mid-request");
    for r in up.requests() {
        assert_eq!(
            r.headers["authorization"],
            format!("Bearer {VAULT_TOKEN}"),
            "the vault token was not injected"
        );
    }

    // Stopped: the CLI reads the store. Every request the upstream received (and every one
    // the agent got an answer for) has its allow decision with its issue number.
    let (records, stopped_lines) = setup.export().await;
    let decided = allowed_issue_gets(&records);
    for n in &seen {
        assert!(
            decided.contains_key(n),
            "the upstream received issue {n}, which has no decision record"
        );
    }
    for (n, id) in &answered {
        assert_eq!(decided.get(n), Some(id), "issue {n}'s answer has no record");
    }
    let (code, out, err) = setup.verify().await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.starts_with(&format!("ok: {} records verified", records.len())),
        "{out}"
    );

    // Restarted on the same data directory: the chain goes on, and the CLI asks the gate's API
    // (the gate holds the store; a wrong reviewer token is refused by the API).
    let gate = setup.run().await;
    for n in AFTER_RESTART {
        let (status, _) = get_issue(&setup.client(), n).await.unwrap();
        assert_eq!(status, 200);
    }
    let wrong = setup
        .cli(&["audit", "export"], Some("not-the-reviewer-token"))
        .await;
    assert_eq!(wrong.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&wrong.stderr).contains("401"),
        "{}",
        String::from_utf8_lossy(&wrong.stderr)
    );
    let (running, running_lines) = setup.export().await;
    assert_eq!(
        running_lines[..stopped_lines.len()],
        stopped_lines[..],
        "the records from before the crash changed"
    );
    let decided_now = allowed_issue_gets(&running);
    for n in seen.iter().copied().chain(AFTER_RESTART) {
        assert!(decided_now.contains_key(&n), "issue {n} has no record");
    }
    let (code, out, err) = setup.verify().await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.starts_with(&format!("ok: {} records verified", running.len())),
        "{out}"
    );
    assert!(running.len() >= records.len() + 10, "{}", running.len());
    gate.stop().await;

    // One byte of one stored record changed (a digit of an issue number, so the body is still
    // valid JSON): verify names that record, from the store and through the API.
    let victim = records
        .iter()
        .find(|r| r["kind"] == "decision" && r["seq"].as_u64().unwrap() >= 10)
        .unwrap()["seq"]
        .as_u64()
        .unwrap();
    {
        let db = agentgate::store::open_unshared(&setup.data().join("state")).unwrap();
        let tree = db.open_tree("audit").unwrap();
        let mut value = tree.get(victim.to_be_bytes()).unwrap().unwrap().to_vec();
        let body = &value[32..];
        let at = 32
            + body
                .windows(15)
                .position(|w| w == b"\"issue_number\":")
                .unwrap()
            + 15;
        value[at] = if value[at] == b'9' {
            b'8'
        } else {
            value[at] + 1
        };
        tree.insert(victim.to_be_bytes(), value).unwrap();
        db.flush().unwrap();
    }
    let (code, out, err) = setup.verify().await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains(&format!("the audit chain is broken at record {victim}:")),
        "{err}"
    );
    // The gate checks only the newest records when it opens the log, so it starts; its API
    // finds the change too.
    let gate = setup.run().await;
    let (code, out, err) = setup.verify().await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains(&format!("the audit chain is broken at record {victim}:")),
        "{err}"
    );
    gate.stop().await;
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_cannot_write_refuses_requests_and_tunnels() {
    let ca = TestCa::new("audit-full");
    let up = FakeUpstream::tls(&ca, &["api.github.com"], &[b"http/1.1"]).await;
    let setup = Setup::new("audit-full", &ca, up.addr);
    // sled's log file is /dev/full: the store opens (the log reads as empty), and every write
    // of it fails with ENOSPC. (Permissions would not stop the root the tests run as.)
    let state = setup.data().join("state");
    std::fs::create_dir_all(&state).unwrap();
    std::os::unix::fs::symlink("/dev/full", state.join("db")).unwrap();
    // sled's background flusher starts writing the new store's first pages while sled is still
    // opening it; when it fails first, the open fails and the gate does not start at all
    // (which is failing closed too: it says why, and serves nothing). Start until the open
    // wins, to see a running gate refuse.
    let mut attempts = 0;
    let started = std::time::Instant::now();
    let gate = loop {
        attempts += 1;
        match setup.try_run().await {
            Ok(gate) => {
                eprintln!(
                    "the gate started on the unwritable store at attempt {attempts}, after {:?}",
                    started.elapsed()
                );
                break gate;
            }
            Err(log) => {
                assert!(
                    log.contains("cannot open the state store")
                        && log.contains("No space left on device"),
                    "{log}"
                );
                assert!(
                    started.elapsed() < Duration::from_secs(20),
                    "the store did not open in {attempts} attempts:\n{log}"
                );
            }
        }
    };
    let client = setup.client();
    // Decisions are durable in the journal (its files write), so the first requests may be
    // forwarded; sled is synced within a second of the first record, that fails, and from
    // then on every request is refused.
    let mut forwarded = 0;
    let refused_at = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let resp = client
            .get(format!(
                "https://api.github.com{}",
                issue_path(100 + forwarded)
            ))
            .bearer_auth(GITHUB_PLACEHOLDER)
            .send()
            .await
            .unwrap();
        if resp.status() == 503 {
            break;
        }
        assert_eq!(resp.status(), 200, "{}", gate.log());
        forwarded += 1;
        assert!(
            std::time::Instant::now() < refused_at,
            "still forwarding after 5 s on a store sled cannot write:\n{}",
            gate.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for n in 1..=3 {
        let resp = client
            .get(format!("https://api.github.com{}", issue_path(n)))
            .bearer_auth(GITHUB_PLACEHOLDER)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 503, "{}", gate.log());
        assert_eq!(resp.headers()["agentgate-decision"], "error");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"], "audit_unavailable", "{body}");
        let reason = body["reason"].as_str().unwrap();
        assert!(
            reason.contains("No space left on device") && reason.contains("nothing was forwarded"),
            "{reason}"
        );
    }
    // A tunnel's decision cannot be recorded either: it is not opened.
    let (mut s, head) = connect_with(
        setup.proxy,
        "example.org:443",
        Some(&proxy_auth(AGENT, AGENT_TOKEN)),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    let rest = exchange(&mut s, b"", Duration::from_millis(300)).await;
    let body = json_body(&format!("{head}{rest}"));
    assert_eq!(body["error"], "audit_unavailable", "{body}");
    assert_eq!(
        up.requests().len(),
        forwarded as usize,
        "a refused request reached the upstream"
    );

    let metrics = setup.metrics().await;
    let errors: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("agentgate_audit_write_errors_total "))
        .unwrap_or_else(|| panic!("no audit error counter:\n{metrics}"))
        .trim()
        .parse()
        .unwrap();
    assert!(errors >= 4, "{errors} audit write errors counted");
    gate.kill9().await;
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Whether `needle` is in `hay`, ignoring ASCII case (a lower-cased token is still a leak).
fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}

/// Kept in the store: proves the scan reads the records.
const CANARY: &str = "canary-3b9d-in-the-audit-store";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn neither_the_vault_token_nor_the_agent_token_reaches_the_data_directory() {
    let ca = TestCa::new("audit-secrets");
    let up = FakeUpstream::tls(&ca, &["api.github.com"], &[b"h2", b"http/1.1"]).await;
    let setup = Setup::new("audit-secrets", &ca, up.addr);
    let gate = setup.run().await;
    let client = setup.client();
    let api = "https://api.github.com";

    // Allowed reads with the placeholder: the gate injects the vault token.
    for n in 1..=10 {
        assert_eq!(get_issue(&client, n).await.unwrap().0, 200);
    }
    // The secrets where the agent can put them: in the path, the query, a body.
    let resp = client
        .get(format!(
            "{api}/repos/acme/{VAULT_TOKEN}/issues?labels={AGENT_TOKEN}&creator={CANARY}"
        ))
        .bearer_auth(GITHUB_PLACEHOLDER)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = client
        .post(format!("{api}/repos/acme/api/hooks"))
        .bearer_auth(GITHUB_PLACEHOLDER)
        .json(&serde_json::json!({
            "name": "web",
            "config": {
                "url": format!("https://example.org/{CANARY}?t={AGENT_TOKEN}"),
                "secret": "hook-secret",
            },
            "events": [VAULT_TOKEN],
        }))
        .send()
        .await
        .unwrap();
    // The shipped policy blocks webhook changes (decided and recorded, not forwarded).
    assert_eq!(resp.status(), 403);
    assert_eq!(resp.headers()["agentgate-decision"], "block");
    // An agent that holds the real token itself is refused (credential `foreign`).
    let resp = client
        .get(format!("{api}{}", issue_path(99)))
        .bearer_auth(VAULT_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(resp.headers()["agentgate-decision"], "block");
    // A tunnel elsewhere, with the proxy token in its CONNECT.
    let (_s, head) = connect_with(
        setup.proxy,
        "example.org:443",
        Some(&proxy_auth(AGENT, AGENT_TOKEN)),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");

    let injected = up
        .requests()
        .iter()
        .filter(|r| r.headers["authorization"] == format!("Bearer {VAULT_TOKEN}").as_str())
        .count();
    assert_eq!(injected, 11, "the vault token was not injected");
    let (records, _) = setup.export().await;
    assert!(
        records.iter().any(|r| r["credential"] == "foreign"),
        "no record of the foreign credential"
    );
    gate.stop().await;

    let files = files_under(&setup.data());
    let mut canary_in = Vec::new();
    for f in &files {
        let bytes = std::fs::read(f).unwrap();
        if contains(&bytes, CANARY.as_bytes()) {
            canary_in.push(f.clone());
        }
        for secret in [VAULT_TOKEN, AGENT_TOKEN] {
            assert!(
                !contains(&bytes, secret.as_bytes()),
                "{secret} found in {}",
                f.display()
            );
        }
    }
    assert!(
        canary_in
            .iter()
            .any(|f| f.starts_with(setup.data().join("state"))),
        "the scan did not see the stored records (files: {files:?})"
    );
}
