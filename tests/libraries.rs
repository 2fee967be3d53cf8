//! Request shapes of real client libraries (issue 3): Octokit, the Google API Python client,
//! PyGithub and the GitHub CLI make their calls, and the real `agentgate classify` names them.
//!
//! The libraries live in `tests/libraries/` (scripts there drive them and print what they sent
//! as JSON). Octokit and the Google client hand their requests to a capturing transport;
//! PyGithub talks to a capture server on 127.0.0.1; `gh` goes through the gate itself to a
//! recording fake upstream. Each captured request becomes a raw HTTP/1.1 request on the real
//! API host and goes through `agentgate classify`. A resumable Gmail upload is also replayed
//! through the gate, which decides it on its session. Nothing leaves the loopback interface.
//!
//! The libraries are test dependencies: a missing one fails the test with the install line.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::convert::Infallible;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_agentgate");

/// How to install what these tests drive (the same lines as `.ci/run`).
const INSTALL: &str = "the library tests drive real clients; install them as .ci/run does:
    npm ci --prefix tests/libraries
    python3 -m pip install google-api-python-client PyGithub
    apt-get install -y gh";

fn libraries() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/libraries")
}

/// Runs `program script` in tests/libraries and parses what it prints as JSON.
fn run_script(program: &str, script: &str) -> Value {
    let out = Command::new(program)
        .arg(libraries().join(script))
        .current_dir(libraries())
        .env_remove("HTTP_PROXY")
        .env_remove("http_proxy")
        .env_remove("HTTPS_PROXY")
        .env_remove("https_proxy")
        .env_remove("ALL_PROXY")
        .env_remove("all_proxy")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}\n{INSTALL}"));
    assert!(
        out.status.success(),
        "{program} {script} failed ({}):\n{}\n{INSTALL}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{program} {script} printed no JSON ({e})"))
}

/// One request as a library sent it, ready to be written as raw HTTP/1.1.
#[derive(Debug, Clone)]
struct Captured {
    /// The library call that made it.
    call: String,
    method: String,
    /// Absolute-form (`https://host/path?query`) or origin-form with a Host header.
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Captured {
    /// The request as raw HTTP/1.1; a Content-Length is added when the library left framing
    /// to its transport.
    fn raw(&self) -> Vec<u8> {
        let mut out = format!("{} {} HTTP/1.1\r\n", self.method, self.target).into_bytes();
        let has_length = self
            .headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("content-length"));
        for (k, v) in &self.headers {
            out.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
        }
        if !has_length && !self.body.is_empty() {
            out.extend_from_slice(format!("Content-Length: {}\r\n", self.body.len()).as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.body);
        out
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A request for a failure message: the head and the start of the body.
fn shown(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    if text.chars().count() > 3000 {
        let start: String = text.chars().take(3000).collect();
        format!("{start}... ({} bytes in all)", raw.len())
    } else {
        text.into_owned()
    }
}

/// Runs `agentgate classify` on `raw` (in an empty directory, so no agentgate.toml is read).
/// `Ok` is the printed report, `Err` what it printed on standard error.
fn classify(raw: &[u8]) -> Result<Value, String> {
    let dir = TempDir::new("classify");
    let mut child = Command::new(BIN)
        .arg("classify")
        .current_dir(dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(raw).unwrap();
    let out = child.wait_with_output().unwrap();
    if out.status.success() {
        Ok(serde_json::from_slice(&out.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// The actions `agentgate classify` gives a captured request; fails with the request bytes
/// and the gate's answer when the gate refuses it. (The decision is the policy's business:
/// these tests are about what the gate sees.)
fn actions(req: &Captured) -> Vec<Value> {
    let raw = req.raw();
    match classify(&raw) {
        Ok(report) => report["actions"].as_array().unwrap().clone(),
        Err(e) => panic!(
            "{}: the gate refused the library's request.\n--- request ---\n{}\n--- agentgate classify ---\n{e}",
            req.call,
            shown(&raw)
        ),
    }
}

/// The single action of a captured request, checked for name and host; returns its params.
fn single(req: &Captured, name: &str, host: &str) -> Value {
    let acts = actions(req);
    assert_eq!(
        acts.len(),
        1,
        "{}: {acts:#?}\n{}",
        req.call,
        shown(&req.raw())
    );
    let a = &acts[0];
    assert_eq!(
        (a["name"].as_str(), a["host"].as_str()),
        (Some(name), Some(host)),
        "{}: {a:#}\n--- request ---\n{}",
        req.call,
        shown(&req.raw())
    );
    assert_eq!(a["method"], req.method.as_str(), "{}", req.call);
    a["params"].clone()
}

/// Finds the one captured request made by `call`.
fn by_call<'a>(all: &'a [Captured], call: &str) -> &'a Captured {
    let found: Vec<&Captured> = all.iter().filter(|c| c.call == call).collect();
    assert_eq!(found.len(), 1, "requests made by {call}: {found:#?}");
    found[0]
}

fn b64(text: &Value) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(text.as_str().unwrap())
        .unwrap()
}

fn header_pairs(v: &Value) -> Vec<(String, String)> {
    match v {
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
            .collect(),
        Value::Array(pairs) => pairs
            .iter()
            .map(|p| {
                (
                    p[0].as_str().unwrap().to_string(),
                    p[1].as_str().unwrap().to_string(),
                )
            })
            .collect(),
        other => panic!("headers: {other}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Octokit

#[test]
fn octokit_requests_classify_as_their_operations() {
    let out = run_script("node", "octokit.mjs");
    let all: Vec<Captured> = out
        .as_array()
        .unwrap()
        .iter()
        .map(|c| Captured {
            call: c["call"].as_str().unwrap().to_string(),
            method: c["method"].as_str().unwrap().to_string(),
            target: c["url"].as_str().unwrap().to_string(),
            headers: header_pairs(&c["headers"]),
            body: c["body"]
                .as_str()
                .map(|b| b.as_bytes().to_vec())
                .unwrap_or_default(),
        })
        .collect();
    assert!(
        by_call(&all, "repos.delete")
            .header("user-agent")
            .unwrap()
            .starts_with("octokit-rest.js/"),
        "made by Octokit itself"
    );
    let gh = "api.github.com";
    let op = |call: &str, name: &str| single(by_call(&all, call), name, gh);

    let p = op("repos.delete", "github.repos.delete");
    assert_eq!(
        (p["owner"].as_str(), p["repo"].as_str()),
        (Some("acme"), Some("acme/api"))
    );

    let p = op("issues.create", "github.issues.create");
    assert_eq!(p["repo"], "acme/api");
    assert_eq!(p["title"], "Found a bug");
    assert_eq!(p["body"], "Steps:\n1. run `make`\n2. it fails");
    assert_eq!(p["labels"], json!(["bug", "p1"]));
    assert_eq!(p["assignees"], json!(["octocat"]));

    let p = op("repos.addCollaborator", "github.repos.add-collaborator");
    assert_eq!(
        (
            p["repo"].as_str(),
            p["username"].as_str(),
            p["permission"].as_str()
        ),
        (Some("acme/api"), Some("mallory"), Some("admin"))
    );

    // Octokit writes the slash inside a branch or ref as %2F.
    let req = by_call(&all, "repos.getBranch");
    assert!(
        req.target.ends_with("/branches/feature%2Fx"),
        "{}",
        req.target
    );
    let p = single(req, "github.repos.get-branch", gh);
    assert_eq!(p["branch"], "feature/x");

    let req = by_call(&all, "git.updateRef");
    assert!(
        req.target.ends_with("/git/refs/heads%2Frelease%2Fv1"),
        "{}",
        req.target
    );
    let p = single(req, "github.git.update-ref", gh);
    assert_eq!(p["ref"], "heads/release/v1");
    assert_eq!(p["force"], true);
    assert_eq!(p["sha"], "0123456789abcdef0123456789abcdef01234567");

    let p = op(
        "repos.deleteBranchProtection",
        "github.repos.delete-branch-protection",
    );
    assert_eq!(p["branch"], "release/v1");

    let p = op("pulls.list", "github.pulls.list");
    assert_eq!(p["state"], "closed");
    assert_eq!(p["base"], "main");
    assert_eq!(
        (p["per_page"].as_i64(), p["page"].as_i64()),
        (Some(100), Some(2))
    );

    // A file path with slashes and a space: `docs%2Fa%20b%2Freadme.md`.
    let req = by_call(&all, "repos.createOrUpdateFileContents");
    assert!(
        req.target.ends_with("/contents/docs%2Fa%20b%2Freadme.md"),
        "{}",
        req.target
    );
    let p = single(req, "github.repos.create-or-update-file-contents", gh);
    assert_eq!(p["path"], "docs/a b/readme.md");
    assert_eq!(p["branch"], "feature/x");
    assert_eq!(p["message"], "docs: readme");

    let p = op("repos.createWebhook", "github.repos.create-webhook");
    assert_eq!(p["config"]["url"], "https://hooks.example/h");
    assert_eq!(p["events"], json!(["push", "pull_request"]));

    // GraphQL: the mutation behind its alias, with the variables applied.
    let p = op("graphql", "github.graphql.deleteRef");
    assert_eq!(p["alias"], "removed");
    assert_eq!(p["input"]["refId"], "REF_kwDOA");
    op("graphql.query", "github.graphql.query");

    // @octokit/endpoint on its own: the contents path and a ref in the query, both encoded.
    let req = by_call(&all, "endpoint.getContent");
    assert!(req.target.ends_with("?ref=feature%2Fx"), "{}", req.target);
    let p = single(req, "github.repos.get-content", gh);
    assert_eq!(
        (p["path"].as_str(), p["ref"].as_str()),
        (Some("docs/a b/readme.md"), Some("feature/x"))
    );
    assert_eq!(all.len(), 12, "every call was captured once");
}

// ---------------------------------------------------------------------------------------------
// PyGithub

#[test]
fn pygithub_requests_classify_as_their_operations() {
    let out = run_script("python3", "pygithub.py");
    let all: Vec<Captured> = out
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let line = c["request_line"].as_str().unwrap();
            let mut words = line.split(' ');
            let (method, target, version) = (
                words.next().unwrap(),
                words.next().unwrap(),
                words.next().unwrap(),
            );
            assert_eq!(version, "HTTP/1.1", "{line}");
            // The capture server stood in for api.github.com: name the real host.
            let headers = header_pairs(&c["headers"])
                .into_iter()
                .map(|(k, v)| {
                    if k.eq_ignore_ascii_case("host") {
                        assert!(v.starts_with("127.0.0.1:"), "{v}");
                        (k, "api.github.com".to_string())
                    } else {
                        (k, v)
                    }
                })
                .collect();
            Captured {
                call: c["call"].as_str().unwrap().to_string(),
                method: method.to_string(),
                target: target.to_string(),
                headers,
                body: b64(&c["body_b64"]),
            }
        })
        .collect();
    let calls: Vec<&str> = all.iter().map(|c| c.call.as_str()).collect();
    assert_eq!(
        calls,
        [
            "get_repo",
            "add_to_collaborators",
            "create_issue",
            "edit",
            "delete"
        ]
    );
    assert_eq!(all[0].header("user-agent"), Some("PyGithub/Python"));
    let gh = "api.github.com";

    let p = single(&all[0], "github.repos.get", gh);
    assert_eq!(p["repo"], "acme/api");

    let p = single(&all[1], "github.repos.add-collaborator", gh);
    assert_eq!(
        (
            p["repo"].as_str(),
            p["username"].as_str(),
            p["permission"].as_str()
        ),
        (Some("acme/api"), Some("mallory"), Some("push"))
    );

    let p = single(&all[2], "github.issues.create", gh);
    assert_eq!(p["title"], "Found a bug");
    assert_eq!(p["body"], "details");
    assert_eq!(p["labels"], json!(["bug"]));
    assert_eq!(p["assignees"], json!(["octocat"]));

    // `repo.edit(private=False)` is how a private repository is made public.
    let p = single(&all[3], "github.repos.update", gh);
    assert_eq!(p["repo"], "acme/api");
    assert_eq!(p["private"], false);
    assert_eq!(p["has_issues"], false);

    let p = single(&all[4], "github.repos.delete", gh);
    assert_eq!(
        (p["owner"].as_str(), p["repo"].as_str()),
        (Some("acme"), Some("acme/api"))
    );
}

// ---------------------------------------------------------------------------------------------
// Google API Python client (Gmail)

/// What gmail.py captured: the requests, and the length of the resumable upload's message.
fn gmail_captured() -> (Vec<Captured>, usize) {
    let out = run_script("python3", "gmail.py");
    let all = out["captured"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| Captured {
            call: c["call"].as_str().unwrap().to_string(),
            method: c["method"].as_str().unwrap().to_string(),
            target: c["uri"].as_str().unwrap().to_string(),
            headers: header_pairs(&c["headers"]),
            body: b64(&c["body_b64"]),
        })
        .collect();
    (all, out["resumable_total"].as_u64().unwrap() as usize)
}

/// The message every send in gmail.py carries.
fn assert_message(p: &Value, call: &str) {
    assert_eq!(p["userId"], "me", "{call}");
    assert_eq!(p["to"], json!(["js@example.com", "bob@acme.com"]), "{call}");
    assert_eq!(p["cc"], json!(["jorg@acme.com"]), "{call}");
    assert_eq!(p["bcc"], json!(["audit@partner.example"]), "{call}");
    assert_eq!(
        p["recipients"],
        json!([
            "js@example.com",
            "bob@acme.com",
            "jorg@acme.com",
            "audit@partner.example"
        ]),
        "{call}"
    );
    assert_eq!(p["from"], json!(["agent@acme.com"]), "{call}");
    assert_eq!(p["subject"], "Q3 résumé", "{call}");
    assert_eq!(p["recipients_known"], true, "{call}");
    assert_eq!(
        p["attachments"],
        json!([{"name": "report Q3.pdf", "size": 2000, "type": "application/pdf"}]),
        "{call}"
    );
}

#[test]
fn google_api_client_gmail_requests_classify_as_their_methods() {
    let (all, _) = gmail_captured();
    let host = "gmail.googleapis.com";
    let req = by_call(&all, "send_raw");
    assert!(
        req.header("x-goog-api-client")
            .unwrap()
            .starts_with("gdcl/"),
        "made by googleapiclient"
    );
    let p = single(req, "gmail.users.messages.send", host);
    assert_message(&p, "send_raw");
    assert_eq!(p["body_shape"], "raw");
    assert!(p.get("raw").is_none());

    let req = by_call(&all, "send_media");
    assert!(req.target.contains("uploadType=media"), "{}", req.target);
    let p = single(req, "gmail.users.messages.send", host);
    assert_message(&p, "send_media");
    assert_eq!(p["body_shape"], "media");

    let req = by_call(&all, "send_multipart");
    assert!(
        req.target.contains("uploadType=multipart"),
        "{}",
        req.target
    );
    let p = single(req, "gmail.users.messages.send", host);
    assert_message(&p, "send_multipart");
    assert_eq!(p["body_shape"], "multipart");
    assert_eq!(p["threadId"], "t-1");

    // Resumable: the start names the send; its message comes in the session's chunks, which
    // only the running gate can put together (see the replay test below).
    let resumable: Vec<&Captured> = all.iter().filter(|c| c.call == "send_resumable").collect();
    assert!(
        resumable.len() >= 3,
        "a start and several chunks: {resumable:#?}"
    );
    let start = resumable[0];
    assert_eq!(start.method, "POST");
    assert!(
        start.target.contains("uploadType=resumable"),
        "{}",
        start.target
    );
    assert_eq!(
        start.header("X-Upload-Content-Type"),
        Some("message/rfc822")
    );
    let p = single(start, "gmail.users.messages.send", host);
    assert_eq!(
        (p["body_shape"].as_str(), p["resumable"].as_str()),
        (Some("resumable"), Some("start"))
    );
    assert_eq!(p["recipients_known"], false);
    for chunk in &resumable[1..] {
        assert_eq!(chunk.method, "PUT");
        assert!(chunk.target.contains("upload_id="), "{}", chunk.target);
    }

    let p = single(
        by_call(&all, "drafts_create"),
        "gmail.users.drafts.create",
        host,
    );
    assert_message(&p, "drafts_create");

    let p = single(by_call(&all, "trash"), "gmail.users.messages.trash", host);
    assert_eq!(
        (p["userId"].as_str(), p["id"].as_str()),
        (Some("me"), Some("18c0ffee"))
    );

    let p = single(
        by_call(&all, "labels_list"),
        "gmail.users.labels.list",
        host,
    );
    assert_eq!(p["userId"], "me");

    // The batch: every call in it is its own action, the send among them.
    let batch = by_call(&all, "batch");
    assert_eq!(batch.target, "https://gmail.googleapis.com/batch");
    let acts = actions(batch);
    let names: Vec<&str> = acts.iter().map(|a| a["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "gmail.users.messages.list",
            "gmail.users.messages.get",
            "gmail.users.messages.send",
            "gmail.users.messages.modify"
        ],
        "{}",
        shown(&batch.raw())
    );
    assert!(acts.iter().all(|a| a["host"] == host));
    assert_eq!(acts[0]["params"]["q"], "is:unread");
    assert_eq!(acts[0]["params"]["maxResults"], 5);
    assert_eq!(acts[1]["params"]["format"], "metadata");
    assert_eq!(acts[2]["path"], "/gmail/v1/users/me/messages/send");
    assert_message(&acts[2]["params"], "batch send");
    assert_eq!(acts[2]["params"]["body_shape"], "raw");
    assert_eq!(acts[3]["params"]["removeLabelIds"], json!(["UNREAD"]));
}

/// What the Gmail stand-in received: method, path and query, body.
type Seen = Arc<Mutex<Vec<(String, String, Vec<u8>)>>>;

/// A recording HTTPS stand-in for gmail.googleapis.com that runs resumable sessions the way
/// gmail.py's capturing transport did: the start gets a Location with the same upload id.
struct GmailUpstream {
    addr: std::net::SocketAddr,
    seen: Seen,
}

impl GmailUpstream {
    async fn start(ca: &TestCa) -> GmailUpstream {
        let cfg = ca.server_config(&["gmail.googleapis.com"], &[b"http/1.1"]);
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, s) = (acceptor.clone(), s.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(move |req| {
                        let s = s.clone();
                        async move { Ok::<_, Infallible>(gmail_answer(req, s).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        GmailUpstream { addr, seen }
    }
}

async fn gmail_answer(req: hyper::Request<Incoming>, seen: Seen) -> hyper::Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    let pq = parts.uri.path_and_query().unwrap().to_string();
    seen.lock()
        .unwrap()
        .push((parts.method.to_string(), pq.clone(), body.to_vec()));
    let reply = hyper::Response::builder();
    if pq.contains("uploadType=resumable") && !pq.contains("upload_id=") {
        let location = format!("https://gmail.googleapis.com{pq}&upload_id=LIBRARY-SESSION-1");
        return reply
            .header("location", location)
            .body(Full::new(Bytes::new()))
            .unwrap();
    }
    let range = parts
        .headers
        .get("content-range")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let (span, total) = range
        .strip_prefix("bytes ")
        .and_then(|r| r.split_once('/'))
        .unwrap_or(("0-0", "*"));
    let end: u64 = span.split_once('-').unwrap().1.parse().unwrap();
    if total.parse::<u64>().ok() == Some(end + 1) {
        return reply
            .body(Full::new(Bytes::from_static(br#"{"id":"msg-1"}"#)))
            .unwrap();
    }
    reply
        .status(308)
        .header("range", format!("bytes=0-{end}"))
        .body(Full::new(Bytes::new()))
        .unwrap()
}

/// The library's resumable upload, replayed request by request through the running gate: the
/// gate opens the session on the start, takes every chunk in order and lets the completed
/// message through; the upstream receives exactly the library's bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn google_api_client_resumable_upload_passes_through_the_gate() {
    let (all, total) = gmail_captured();
    let resumable: Vec<Captured> = all
        .into_iter()
        .filter(|c| c.call == "send_resumable")
        .collect();
    let ca = TestCa::new("upstream");
    let up = GmailUpstream::start(&ca).await;
    let gate = TestGate::start(&ca, &[("gmail.googleapis.com", up.addr)], |_| {}).await;
    let client = gate.reqwest(true);
    let mut statuses = Vec::new();
    for req in &resumable {
        let (status, answer) = replay(&client, req).await;
        assert!(
            status == 200 || status == 308,
            "{} {}: the gate answered {status}\n{answer}",
            req.method,
            req.target
        );
        statuses.push(status);
    }
    let chunks = resumable.len() - 1;
    let mut expected = vec![200];
    expected.extend(std::iter::repeat_n(308, chunks - 1));
    expected.push(200);
    assert_eq!(statuses, expected);
    let seen = up.seen.lock().unwrap().clone();
    let forwarded: Vec<(&str, &str)> = seen
        .iter()
        .map(|(m, pq, _)| (m.as_str(), pq.as_str()))
        .collect();
    let replayed: Vec<(&str, &str)> = resumable
        .iter()
        .map(|c| {
            let pq = c
                .target
                .strip_prefix("https://gmail.googleapis.com")
                .unwrap();
            (c.method.as_str(), pq)
        })
        .collect();
    assert_eq!(forwarded, replayed, "every request was forwarded as sent");
    let message: Vec<u8> = seen[1..].iter().flat_map(|(_, _, b)| b.clone()).collect();
    let sent: Vec<u8> = resumable[1..].iter().flat_map(|c| c.body.clone()).collect();
    assert_eq!(message.len(), total);
    assert!(
        message == sent,
        "the upstream got the library's message unchanged"
    );
    // The gate followed the session: once complete, the last chunk again is refused.
    let (status, answer) = replay(&client, resumable.last().unwrap()).await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(up.seen.lock().unwrap().len(), resumable.len());
}

/// Sends a captured request through the gate as the library wrote it (reqwest frames the
/// body); returns the status and the response head and body as text.
async fn replay(client: &reqwest::Client, req: &Captured) -> (u16, String) {
    let mut r = client.request(req.method.parse().unwrap(), &req.target);
    for (k, v) in &req.headers {
        if !k.eq_ignore_ascii_case("content-length") {
            r = r.header(k, v);
        }
    }
    let resp = r.body(req.body.clone()).send().await.unwrap();
    let status = resp.status().as_u16();
    let head = format!("{:?}", resp.headers());
    (status, format!("{head}\n{}", resp.text().await.unwrap()))
}

// ---------------------------------------------------------------------------------------------
// GitHub CLI

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gh_api_requests_through_the_gate_classify_as_their_operations() {
    let ca = TestCa::new("upstream");
    let up = FakeUpstream::tls(&ca, &["api.github.com"], &[b"h2", b"http/1.1"]).await;
    let gate = TestGate::start(&ca, &[("api.github.com", up.addr)], |_| {}).await;
    let home = TempDir::new("gh");
    let calls: &[(&str, &[&str])] = &[
        ("delete", &["-X", "DELETE", "repos/Acme/API"]),
        (
            "collaborator",
            &[
                "-X",
                "PUT",
                "repos/acme/api/collaborators/mallory",
                "-f",
                "permission=maintain",
            ],
        ),
        (
            "issue",
            &[
                "repos/acme/api/issues",
                "-f",
                "title=Found a bug",
                "-f",
                "body=details",
                "-f",
                "labels[]=bug",
                "-F",
                "milestone=3",
            ],
        ),
        (
            "pulls",
            &[
                "-X",
                "GET",
                "repos/acme/api/pulls",
                "-f",
                "state=open",
                "-F",
                "per_page=30",
            ],
        ),
        (
            "ref",
            &[
                "-X",
                "PATCH",
                "repos/acme/api/git/refs/heads/feature/x",
                "-f",
                "sha=0123456789abcdef0123456789abcdef01234567",
                "-F",
                "force=true",
            ],
        ),
        (
            "hook",
            &[
                "repos/acme/api/hooks",
                "-f",
                "config[url]=https://hooks.example/h",
                "-f",
                "events[]=push",
            ],
        ),
        (
            "graphql",
            &[
                "graphql",
                "-f",
                "query=mutation($id: ID!) { deleteRef(input: {refId: $id}) { clientMutationId } }",
                "-f",
                "id=REF_1",
            ],
        ),
    ];
    for (label, args) in calls {
        let out = tokio::process::Command::new("gh")
            .arg("api")
            .args(*args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap())
            .env("HOME", home.path())
            .env("GH_CONFIG_DIR", home.path())
            .env("GH_TOKEN", "agentgate-placeholder-github")
            .env("GH_NO_UPDATE_NOTIFIER", "1")
            .env("GH_PROMPT_DISABLED", "1")
            .env("NO_COLOR", "1")
            .env("HTTPS_PROXY", gate.proxy_url())
            .env("SSL_CERT_FILE", gate.ca_file())
            .stdin(Stdio::null())
            .output()
            .await
            .unwrap_or_else(|e| panic!("cannot run gh: {e}\n{INSTALL}"));
        assert!(
            out.status.success(),
            "gh api {args:?} ({label}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let all: Vec<Captured> = up
        .requests()
        .into_iter()
        .zip(calls.iter())
        .map(|(r, (label, _))| {
            let mut headers: Vec<(String, String)> = vec![("host".into(), "api.github.com".into())];
            headers.extend(
                r.headers
                    .iter()
                    .filter(|(k, _)| k.as_str() != "host")
                    .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_string())),
            );
            Captured {
                call: label.to_string(),
                method: r.method,
                target: r.path,
                headers,
                body: r.body,
            }
        })
        .collect();
    assert_eq!(
        all.len(),
        calls.len(),
        "one request per gh call: {:#?}",
        up.requests()
    );
    assert!(
        all[0]
            .header("user-agent")
            .unwrap()
            .starts_with("GitHub CLI "),
        "{:?}",
        all[0].header("user-agent")
    );
    let gh = "api.github.com";
    let p = single(&all[0], "github.repos.delete", gh);
    assert_eq!(p["repo"], "acme/api");
    let p = single(&all[1], "github.repos.add-collaborator", gh);
    assert_eq!(
        (p["username"].as_str(), p["permission"].as_str()),
        (Some("mallory"), Some("maintain"))
    );
    let p = single(&all[2], "github.issues.create", gh);
    assert_eq!(p["title"], "Found a bug");
    assert_eq!(p["labels"], json!(["bug"]));
    assert_eq!(p["milestone"], 3);
    let p = single(&all[3], "github.pulls.list", gh);
    assert_eq!(
        (p["state"].as_str(), p["per_page"].as_i64()),
        (Some("open"), Some(30))
    );
    let p = single(&all[4], "github.git.update-ref", gh);
    assert_eq!(
        (p["ref"].as_str(), p["force"].as_bool()),
        (Some("heads/feature/x"), Some(true))
    );
    let p = single(&all[5], "github.repos.create-webhook", gh);
    assert_eq!(p["config"]["url"], "https://hooks.example/h");
    assert_eq!(p["events"], json!(["push"]));
    let p = single(&all[6], "github.graphql.deleteRef", gh);
    assert_eq!(p["input"]["refId"], "REF_1");
}
