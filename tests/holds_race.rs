//! Step-up races through the gate's real sockets (issue 7 point 6): approve, deny, expiry and
//! the agent going away, racing over many held requests at once. Every challenge ends in
//! exactly one stored outcome; the upstream sees a request at most once, and exactly once when
//! it was approved and the agent stayed; what the agent is told and what the reviewers are
//! told agree with the stored outcome; the audit log has exactly one settlement record for
//! every challenge, the agent's hanging up included, saying what was stored, and the upstream
//! received the request if and only if the audit says it was forwarded (an approval that
//! found the agent gone is recorded as not forwarded). Also: reviewers' API calls sent
//! through the proxy to the dashboard's own address never reach it.
//!
//! `tests/holds.rs` races the same transitions on the store alone; `tests/holds_gate.rs` has
//! the single-path cases (approve, deny, 428 mode, no or wrong token).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use support::*;
use tokio::sync::{Semaphore, oneshot};

const POLICY: &str = "default block;\n\
    step_up \"issues-need-a-human\" on github.issues.create reason \"A human approves new issues\";\n";

/// The step-up window: long enough for the early racers to act well inside it.
const WINDOW_MS: i64 = 1_500;
const ITERATIONS: usize = 200;
/// Held at once (the per-agent bound is 100).
const CONCURRENT: usize = 50;

fn now_ms() -> i64 {
    agentgate::decider::now_ms()
}

/// Who races in iteration `i`, and when (ms after the challenge was created).
#[derive(Debug, Clone, Default)]
struct Racers {
    approve: Option<i64>,
    deny: Option<i64>,
    hang_up: Option<i64>,
}

/// A small deterministic generator, so a failing iteration can be replayed.
fn jitter(i: usize, k: u64, span: i64) -> i64 {
    let mut x = (i as u64 + 1)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(k.wrapping_mul(0xD1B5_4A32_D192_ED03));
    x ^= x >> 31;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^= x >> 29;
    (x % span.max(1) as u64) as i64
}

/// Iterations 8k..8k+3 have one racer acting early (or none) and so one certain outcome;
/// 8k+4 races all three early (no expiry involved); 8k+5..8k+7 race two or three of them
/// against the expiry, within 50 ms around it.
fn racers(i: usize) -> Racers {
    let early = WINDOW_MS / 4;
    let near = |k| WINDOW_MS - 40 + jitter(i, k, 50);
    match i % 8 {
        0 => Racers {
            approve: Some(early),
            ..Racers::default()
        },
        1 => Racers {
            deny: Some(early),
            ..Racers::default()
        },
        2 => Racers {
            hang_up: Some(early),
            ..Racers::default()
        },
        3 => Racers::default(),
        4 => Racers {
            approve: Some(early + jitter(i, 1, 3)),
            deny: Some(early + jitter(i, 2, 3)),
            hang_up: Some(early + jitter(i, 3, 3)),
        },
        5 => Racers {
            approve: Some(near(1)),
            hang_up: Some(near(3)),
            ..Racers::default()
        },
        6 => Racers {
            approve: Some(near(1)),
            deny: Some(near(2)),
            ..Racers::default()
        },
        _ => Racers {
            approve: Some(near(1)),
            deny: Some(near(2)),
            hang_up: Some(near(3)),
        },
    }
}

/// What the agent was told (`None`: it hung up first).
#[derive(Debug)]
struct Answer {
    status: u16,
    challenge_header: Option<String>,
    body: String,
}

/// What one iteration saw.
#[derive(Debug)]
struct Seen {
    i: usize,
    id: String,
    /// The stored challenge once settled.
    stored: Value,
    answer: Option<Answer>,
    /// The reviewer API's answers: (status, body).
    approve: Option<(u16, Value)>,
    deny: Option<(u16, Value)>,
}

fn title(i: usize) -> String {
    format!("race-{i}")
}

struct Rig {
    _ca: TestCa,
    up: FakeUpstream,
    gate: TestGate,
    token: String,
    api: reqwest::Client,
}

impl Rig {
    async fn new(policy: &str, window_ms: i64) -> Rig {
        let ca = TestCa::new("upstream");
        let up = FakeUpstream::tls(&ca, &["api.github.com"], &[b"http/1.1"]).await;
        let gate = TestGate::start(&ca, &[("api.github.com", up.addr)], |c| {
            c.step_up_window = Duration::from_millis(window_ms as u64);
            TestGate::only_policy(c, policy)
        })
        .await;
        let token = std::fs::read_to_string(gate.config.data_dir.join("reviewer.token"))
            .unwrap()
            .trim()
            .to_string();
        let api = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap();
        Rig {
            _ca: ca,
            up,
            gate,
            token,
            api,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.gate.gate.dashboard_addr)
    }

    async fn get(&self, path: &str) -> Value {
        let resp = self
            .api
            .get(self.url(path))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "GET {path}");
        resp.json().await.unwrap()
    }

    async fn decide(&self, id: &str, verb: &str, note: &str) -> (u16, Value) {
        let resp = self
            .api
            .post(self.url(&format!("/api/challenges/{id}/{verb}")))
            .bearer_auth(&self.token)
            .json(&serde_json::json!({ "note": note }))
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// The challenge `id` as stored, once it is no longer pending.
    async fn settled(&self, id: &str) -> Value {
        for _ in 0..1000 {
            let v = self.get("/api/challenges").await;
            let c = v["challenges"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["id"] == id)
                .cloned();
            if let Some(c) = c.filter(|c| c["state"] != "pending") {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("{id} never left pending");
    }

    /// The audit log's records, as `agentgate audit export` prints them.
    async fn audit(&self) -> Vec<Value> {
        let resp = self
            .api
            .get(self.url("/api/audit/export"))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.text()
            .await
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

/// The agent: one CONNECT tunnel, TLS to the gate, one request titled `title`; hangs up
/// (drops the connection) when told to before the answer came.
async fn agent(
    gate: std::net::SocketAddr,
    root: rustls::pki_types::CertificateDer<'static>,
    title: String,
    hang_up: oneshot::Receiver<()>,
) -> Option<Answer> {
    let tls = tls_through(
        gate,
        "api.github.com:443",
        "api.github.com",
        client_tls(root, &[b"http/1.1"]),
    )
    .await
    .unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let body = serde_json::json!({ "title": title }).to_string();
    let req = Request::post("/repos/acme/api/issues")
        .header("host", "api.github.com")
        .header("authorization", format!("token {GITHUB_PLACEHOLDER}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let told = async move {
        if hang_up.await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        resp = send.send_request(req) => {
            let resp = resp.unwrap();
            let status = resp.status().as_u16();
            let challenge_header = resp
                .headers()
                .get("agentgate-challenge")
                .map(|v| v.to_str().unwrap().to_string());
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            Some(Answer { status, challenge_header, body: String::from_utf8_lossy(&body).into_owned() })
        }
        () = told => {
            conn.abort();
            None
        }
    }
}

/// Tells each iteration the id and creation time of its challenge, by title, as soon as it
/// is pending.
type Discovered = Arc<Mutex<HashMap<String, oneshot::Sender<(String, i64)>>>>;

async fn discover(rig: Arc<Rig>, waiting: Discovered) {
    loop {
        let v = rig.get("/api/challenges?state=pending").await;
        for c in v["challenges"].as_array().unwrap() {
            let t = c["actions"][0]["params"]["title"].as_str().unwrap_or("");
            if let Some(tx) = waiting.lock().unwrap().remove(t) {
                let _ = tx.send((
                    c["id"].as_str().unwrap().to_string(),
                    c["created_ms"].as_i64().unwrap(),
                ));
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Sleeps until `offset` ms after `created_ms` (wall clock, as the gate's).
async fn at(created_ms: i64, offset: i64) {
    let wait = created_ms + offset - now_ms();
    if wait > 0 {
        tokio::time::sleep(Duration::from_millis(wait as u64)).await;
    }
}

async fn iteration(rig: Arc<Rig>, waiting: Discovered, i: usize) -> Seen {
    let (found_tx, found) = oneshot::channel();
    waiting.lock().unwrap().insert(title(i), found_tx);
    let (hang_tx, hang_rx) = oneshot::channel();
    let agent = tokio::spawn(agent(rig.gate.addr(), rig.gate.ca_der(), title(i), hang_rx));
    let (id, created) = tokio::time::timeout(Duration::from_secs(30), found)
        .await
        .unwrap_or_else(|_| panic!("iteration {i}: no challenge appeared"))
        .unwrap();
    let plan = racers(i);
    let approve = plan.approve.map(|t| {
        let (rig, id) = (rig.clone(), id.clone());
        tokio::spawn(async move {
            at(created, t).await;
            rig.decide(&id, "approve", "go").await
        })
    });
    let deny = plan.deny.map(|t| {
        let (rig, id) = (rig.clone(), id.clone());
        tokio::spawn(async move {
            at(created, t).await;
            rig.decide(&id, "deny", &format!("no-{i}")).await
        })
    });
    if let Some(t) = plan.hang_up {
        tokio::spawn(async move {
            at(created, t).await;
            let _ = hang_tx.send(());
        });
    } else {
        // A dropped sender means "stay for the answer".
        drop(hang_tx);
    }
    let answer = agent.await.unwrap();
    let approve = match approve {
        Some(t) => Some(t.await.unwrap()),
        None => None,
    };
    let deny = match deny {
        Some(t) => Some(t.await.unwrap()),
        None => None,
    };
    let stored = rig.settled(&id).await;
    Seen {
        i,
        id,
        stored,
        answer,
        approve,
        deny,
    }
}

/// The state a reviewer's call reports: its own on 200, the winner's on 409.
fn reported_state(call: &(u16, Value)) -> String {
    match call.0 {
        200 => call.1["challenge"]["state"].as_str().unwrap().to_string(),
        409 => {
            let reason = call.1["reason"].as_str().unwrap_or("");
            ["approved", "denied", "expired", "abandoned"]
                .into_iter()
                .find(|s| reason.ends_with(s))
                .unwrap_or_else(|| panic!("409 without the winner: {reason}"))
                .to_string()
        }
        s => panic!("reviewer call answered {s}: {}", call.1),
    }
}

fn check(seen: &Seen, upstream: &BTreeMap<String, usize>) {
    let Seen { i, id, stored, .. } = seen;
    let state = stored["state"].as_str().unwrap();
    let ctx = format!("iteration {i} ({:?}), {id}: {state}", racers(*i));
    assert!(
        ["approved", "denied", "expired", "abandoned"].contains(&state),
        "{ctx}"
    );
    // The reviewers: at most one call won, and the winner is what was stored; the losers
    // were told the stored state.
    let calls = [("approved", &seen.approve), ("denied", &seen.deny)];
    let winners = calls
        .iter()
        .filter(|(_, c)| c.as_ref().is_some_and(|c| c.0 == 200))
        .count();
    assert!(winners <= 1, "{ctx}: two reviewer calls won");
    for (mine, call) in calls {
        if let Some(call) = call {
            assert_eq!(reported_state(call), state, "{ctx}: {call:?}");
            assert_eq!(call.0 == 200, state == mine, "{ctx}: {call:?}");
        }
    }
    match state {
        "approved" | "denied" => assert_eq!(stored["reviewer"], "reviewer", "{ctx}"),
        _ => assert!(stored["reviewer"].is_null(), "{ctx}"),
    }
    if state == "denied" {
        assert_eq!(stored["note"], format!("no-{i}"), "{ctx}");
    }
    // The upstream: at most once, only when approved, and once when approved and the agent
    // stayed for the answer.
    let forwarded = upstream.get(&title(*i)).copied().unwrap_or(0);
    assert!(forwarded <= 1, "{ctx}: forwarded {forwarded} times");
    if forwarded == 1 {
        assert_eq!(state, "approved", "{ctx}: forwarded without an approval");
    }
    // The agent: its answer is the stored outcome; with none, it had hung up.
    let Some(answer) = &seen.answer else {
        assert!(
            racers(*i).hang_up.is_some(),
            "{ctx}: the agent got no answer"
        );
        return;
    };
    assert_ne!(
        state, "abandoned",
        "{ctx}: abandoned, yet answered {answer:?}"
    );
    if state == "approved" {
        assert_eq!(
            forwarded, 1,
            "{ctx}: approved and answered, not forwarded once"
        );
        assert_eq!(answer.status, 200, "{ctx}: {answer:?}");
        assert_eq!(
            answer.challenge_header.as_deref(),
            Some(id.as_str()),
            "{ctx}"
        );
        assert_eq!(answer.body, "ok POST /repos/acme/api/issues", "{ctx}");
    } else {
        assert_eq!(answer.status, 403, "{ctx}: {answer:?}");
        let v: Value = serde_json::from_str(&answer.body).unwrap();
        assert_eq!(v["decision"], state, "{ctx}: {v}");
        assert_eq!(v["challenge_id"], id.as_str(), "{ctx}: {v}");
        if state == "denied" {
            assert_eq!(v["note"], format!("no-{i}"), "{ctx}: {v}");
        }
    }
}

/// The settlement's records of one challenge, once they are all in the log: its decision
/// record, and the outcome of that record when there is one.
fn settlement<'a>(seen: &Seen, records: &'a [Value]) -> (Vec<&'a Value>, Vec<&'a Value>) {
    let mine: Vec<&Value> = records
        .iter()
        .filter(|r| r["kind"] == "decision" && r["challenge_id"] == seen.id.as_str())
        .collect();
    let outcomes = records
        .iter()
        .filter(|r| r["kind"] == "outcome" && mine.iter().any(|d| d["seq"] == r["decision_seq"]))
        .collect();
    (mine, outcomes)
}

/// Whether the log holds all of a challenge's settlement: its decision record and, for an
/// approval, the outcome (forwarded or not).
fn settlement_complete(seen: &Seen, records: &[Value]) -> bool {
    let (mine, outcomes) = settlement(seen, records);
    !mine.is_empty() && (seen.stored["state"] != "approved" || !outcomes.is_empty())
}

/// Every challenge, whether or not its agent stayed, has exactly one settlement record, which
/// says what was stored (with the reviewer and note). An approval has one outcome: the
/// upstream's status when the request was forwarded, or no status and "not forwarded" when
/// the agent had gone; the upstream received the request if and only if the audit says it was
/// forwarded. Nothing else has an outcome.
fn check_audit(seen: &Seen, records: &[Value], upstream: &BTreeMap<String, usize>) {
    let state = seen.stored["state"].as_str().unwrap();
    let ctx = format!(
        "iteration {} ({:?}), {}: {state}, answered: {}",
        seen.i,
        racers(seen.i),
        seen.id,
        seen.answer.is_some()
    );
    let (mine, outcomes) = settlement(seen, records);
    assert_eq!(mine.len(), 1, "{ctx}: settlement records: {mine:?}");
    let r = mine[0];
    assert_eq!(r["decision"], state, "{ctx}: {r}");
    assert_eq!(r["reviewer"], seen.stored["reviewer"], "{ctx}: {r}");
    assert_eq!(r["note"], seen.stored["note"], "{ctx}: {r}");
    assert_eq!(
        r["actions"][0]["params"]["title"],
        title(seen.i),
        "{ctx}: {r}"
    );
    let forwarded = upstream.get(&title(seen.i)).copied().unwrap_or(0);
    if state != "approved" {
        assert!(outcomes.is_empty(), "{ctx}: {outcomes:?}");
        assert_eq!(forwarded, 0, "{ctx}");
        return;
    }
    assert_eq!(outcomes.len(), 1, "{ctx}: {outcomes:?}");
    let o = outcomes[0];
    let says_forwarded = !o["status"].is_null();
    assert_eq!(
        forwarded,
        usize::from(says_forwarded),
        "{ctx}: the upstream and the audit disagree: {o}"
    );
    if says_forwarded {
        assert_eq!(o["status"], 200, "{ctx}: {o}");
        assert!(o["error"].is_null(), "{ctx}: {o}");
    } else {
        let why = o["error"].as_str().unwrap_or("");
        assert!(
            why.starts_with("not forwarded: the agent had gone"),
            "{ctx}: {o}"
        );
        assert!(
            seen.answer.is_none(),
            "{ctx}: not forwarded, yet the agent was answered"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn approve_deny_expiry_and_hang_up_race_to_exactly_one_outcome() {
    let rig = Arc::new(Rig::new(POLICY, WINDOW_MS).await);
    let waiting: Discovered = Arc::default();
    let poller = tokio::spawn(discover(rig.clone(), waiting.clone()));
    let slots = Arc::new(Semaphore::new(CONCURRENT));
    let runs: Vec<_> = (0..ITERATIONS)
        .map(|i| {
            let (rig, waiting, slots) = (rig.clone(), waiting.clone(), slots.clone());
            tokio::spawn(async move {
                let _slot = slots.acquire_owned().await.unwrap();
                iteration(rig, waiting, i).await
            })
        })
        .collect();
    let mut seen = Vec::with_capacity(ITERATIONS);
    for r in runs {
        seen.push(r.await.unwrap());
    }
    poller.abort();
    let mut upstream: BTreeMap<String, usize> = BTreeMap::new();
    for r in rig.up.requests() {
        let v: Value = serde_json::from_slice(&r.body).unwrap();
        *upstream
            .entry(v["title"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    for s in &seen {
        check(s, &upstream);
    }
    // Each outcome happened: the single-racer iterations make each one certain.
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    for s in &seen {
        *outcomes
            .entry(s.stored["state"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    println!("outcomes over {ITERATIONS} iterations: {outcomes:?}");
    for o in ["approved", "denied", "expired", "abandoned"] {
        assert!(
            outcomes.contains_key(o),
            "no iteration ended {o}: {outcomes:?}"
        );
    }
    // The audit log: settlements are recorded by the gate's step-up tasks, after the agent
    // was answered or had gone, and outcomes after the response; wait for the last ones.
    let mut records = rig.audit().await;
    for _ in 0..200 {
        if seen.iter().all(|s| settlement_complete(s, &records)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        records = rig.audit().await;
    }
    let mut settled: BTreeMap<String, usize> = BTreeMap::new();
    for s in &seen {
        check_audit(s, &records, &upstream);
        let (mine, outcomes) = settlement(s, &records);
        let how = match (mine[0]["decision"].as_str().unwrap(), outcomes.first()) {
            ("approved", Some(o)) if o["status"].is_null() => "approved, not forwarded",
            (d, _) => d,
        };
        let key = if s.answer.is_some() {
            how.to_string()
        } else {
            format!("{how} (agent gone)")
        };
        *settled.entry(key).or_default() += 1;
    }
    println!("settlement records: {settled:?}");
}

/// A policy that lets agents reach any other host: the gate's own addresses must still be
/// refused, whatever name the agent uses for them.
const OPEN_POLICY: &str = "default block;\n\
    step_up \"issues-need-a-human\" on github.issues.create reason \"A human approves new issues\";\n\
    allow \"egress\" on net.connect;\n";

#[tokio::test]
async fn reviewer_calls_through_the_proxy_never_reach_the_dashboard() {
    let rig = Rig::new(OPEN_POLICY, 60_000).await;
    let (_stay, stay) = oneshot::channel::<()>();
    let agent = tokio::spawn(agent(
        rig.gate.addr(),
        rig.gate.ca_der(),
        "held".into(),
        stay,
    ));
    let id = loop {
        let v = rig.get("/api/challenges?state=pending").await;
        if let Some(id) = v["challenges"][0]["id"].as_str() {
            break id.to_string();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let port = rig.gate.gate.dashboard_addr.port();
    // The agent even has the reviewer's token here: only the proxy stands in the way.
    let through = rig.gate.reqwest(true);
    let own_names = [
        "127.0.0.1",
        "localhost",
        "LocalHost",
        "localhost.",
        "app.localhost",
        "127.1",
        "2130706433",
        "0x7f000001",
        // The unspecified address is the local host; IPv4-mapped IPv6 is IPv4.
        "0.0.0.0",
        "0",
        "[::ffff:127.0.0.1]",
        "[::ffff:7f00:1]",
        // Linux connects `::` to ::1, where the dashboard does not listen; refused anyway.
        "[::]",
    ];
    // A loopback form the dashboard (bound to 127.0.0.1) does not listen on.
    let elsewhere = ["[::1]"];
    for host in own_names.iter().chain(&elsewhere) {
        let target = format!("{host}:{port}");
        let resp = through
            .post(format!("http://{target}/api/challenges/{id}/approve"))
            .bearer_auth(&rig.token)
            .json(&serde_json::json!({"note": "from the agent"}))
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let v: Value = resp.json().await.unwrap();
        // The gate's own refusal, not the dashboard's answer.
        assert!(v.get("challenge").is_none(), "{target}: {v}");
        if own_names.contains(host) {
            assert_eq!(status, 403, "{target}: {v}");
            assert_eq!(v["rules"][0], "builtin:gate-address", "{target}: {v}");
        } else {
            assert_eq!(
                (status, &v["error"]),
                (502, &Value::from("upstream_failed")),
                "{target}: {v}"
            );
        }
        let (_s, head) = connect(rig.gate.addr(), &target).await;
        assert!(
            !head.starts_with("HTTP/1.1 200"),
            "CONNECT {target}: {head}"
        );
    }
    // Still pending, and still the reviewer's to decide, directly.
    let v = rig.get("/api/challenges?state=pending").await;
    assert_eq!(v["challenges"][0]["id"], id.as_str());
    assert_eq!(rig.decide(&id, "approve", "direct").await.0, 200);
    let answer = agent.await.unwrap().unwrap();
    assert_eq!(answer.status, 200);
    assert_eq!(rig.up.requests().len(), 1);
}
