//! Step-up through the gate: a held request waits for a reviewer's decision through the
//! dashboard API, and only an approval forwards it (exactly the inspected bytes, with the
//! vault's token).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use support::*;

const POLICY: &str = "default block;\n\
    step_up \"issues-need-a-human\" on github.issues.create reason \"A human approves new issues in {params.repo}\";\n\
    allow \"reads\" on github.** when method == \"GET\";\n";

async fn setup() -> (TestCa, FakeUpstream, TestGate, String) {
    let ca = TestCa::new("upstream");
    let up = FakeUpstream::tls(&ca, &["api.github.com"], &[b"http/1.1"]).await;
    let gate = TestGate::start(&ca, &[("api.github.com", up.addr)], |c| {
        TestGate::only_policy(c, POLICY)
    })
    .await;
    let token = std::fs::read_to_string(gate.config.data_dir.join("reviewer.token")).unwrap();
    (ca, up, gate, token.trim().to_string())
}

fn api(gate: &TestGate, path: &str) -> String {
    format!("http://{}{path}", gate.gate.dashboard_addr)
}

/// Waits until exactly one challenge is pending and returns it.
async fn pending(gate: &TestGate, token: &str) -> serde_json::Value {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    for _ in 0..200 {
        let v: serde_json::Value = client
            .get(api(gate, "/api/challenges?state=pending"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if let Some(c) = v["challenges"].as_array().and_then(|a| a.first()) {
            return c.clone();
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("no challenge appeared");
}

async fn decide(gate: &TestGate, token: Option<&str>, id: &str, verb: &str, note: &str) -> u16 {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut req = client
        .post(api(gate, &format!("/api/challenges/{id}/{verb}")))
        .json(&serde_json::json!({"note": note}));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.unwrap().status().as_u16()
}

#[tokio::test]
async fn a_held_request_is_forwarded_only_when_approved() {
    let (_ca, up, gate, token) = setup().await;
    let client = gate.reqwest(false);
    let body = r#"{"title":"please review","body":"<script>alert(1)</script>"}"#;
    let agent = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .post("https://api.github.com/repos/acme/api/issues")
                .header("authorization", format!("token {GITHUB_PLACEHOLDER}"))
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap()
        })
    };
    let c = pending(&gate, &token).await;
    let id = c["id"].as_str().unwrap().to_string();
    assert_eq!(c["agent"], TEST_AGENT);
    assert_eq!(c["actions"][0]["name"], "github.issues.create");
    assert_eq!(c["rules"][0], "issues-need-a-human");
    assert_eq!(c["reasons"][0], "A human approves new issues in acme/api");
    assert!(up.requests().is_empty(), "nothing goes upstream while held");
    // Without the reviewer token, nothing is decided.
    assert_eq!(decide(&gate, None, &id, "approve", "").await, 401);
    assert_eq!(
        decide(&gate, Some(TEST_TOKEN), &id, "approve", "").await,
        401
    );
    assert_eq!(
        decide(&gate, Some(&token), &id, "approve", "looks fine").await,
        200
    );
    // A second decision loses.
    assert_eq!(decide(&gate, Some(&token), &id, "deny", "").await, 409);
    let resp = agent.await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["agentgate-challenge"], id.as_str());
    assert_eq!(up.requests().len(), 1, "forwarded exactly once");
    let rec = up.requests().pop().unwrap();
    assert_eq!(rec.body, body.as_bytes());
    assert_eq!(
        rec.headers["authorization"],
        format!("Bearer {REAL_GITHUB_TOKEN}").as_str()
    );
}

/// A request no rule covers, held by `default step_up` (as in the shipped policy), goes through
/// once approved; the re-check does not hold it again.
#[tokio::test]
async fn a_request_held_by_the_default_is_forwarded_when_approved() {
    let ca = TestCa::new("upstream");
    let up = FakeUpstream::tls(&ca, &["api.github.com"], &[b"http/1.1"]).await;
    let gate = TestGate::start(&ca, &[("api.github.com", up.addr)], |c| {
        TestGate::only_policy(
            c,
            "default step_up reason \"No rule covers {action}\";\n\
             block \"no-deletes\" on github.repos.delete;\n",
        )
    })
    .await;
    let token = std::fs::read_to_string(gate.config.data_dir.join("reviewer.token")).unwrap();
    let token = token.trim();
    let client = gate.reqwest(false);
    let agent = tokio::spawn(async move {
        client
            .post("https://api.github.com/repos/acme/api/issues/42/comments")
            .header("authorization", format!("Bearer {GITHUB_PLACEHOLDER}"))
            .header("content-type", "application/json")
            .body(r#"{"body":"on it"}"#)
            .send()
            .await
            .unwrap()
    });
    let c = pending(&gate, token).await;
    assert_eq!(c["rules"][0], "default");
    assert_eq!(
        c["reasons"][0],
        "No rule covers github.issues.create-comment"
    );
    let id = c["id"].as_str().unwrap().to_string();
    assert_eq!(decide(&gate, Some(token), &id, "approve", "ok").await, 200);
    let resp = agent.await.unwrap();
    assert_eq!(resp.status(), 200, "{:?}", resp.text().await);
    assert_eq!(resp.headers()["agentgate-challenge"], id.as_str());
    let rec = up.requests().pop().expect("forwarded");
    assert_eq!(rec.body, br#"{"body":"on it"}"#);
    assert_eq!(
        rec.headers["authorization"],
        format!("Bearer {REAL_GITHUB_TOKEN}").as_str()
    );
}

#[tokio::test]
async fn a_denied_request_gets_the_reviewers_note_and_nothing_is_sent() {
    let (_ca, up, gate, token) = setup().await;
    let client = gate.reqwest(false);
    let agent = tokio::spawn(async move {
        client
            .post("https://api.github.com/repos/acme/api/issues")
            .json(&serde_json::json!({"title": "spam"}))
            .send()
            .await
            .unwrap()
    });
    let c = pending(&gate, &token).await;
    let id = c["id"].as_str().unwrap().to_string();
    assert_eq!(
        decide(&gate, Some(&token), &id, "deny", "not this one").await,
        200
    );
    let resp = agent.await.unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(resp.headers()["agentgate-decision"], "denied");
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["decision"], "denied");
    assert_eq!(v["note"], "not this one");
    assert_eq!(v["challenge_id"], id.as_str());
    assert!(up.requests().is_empty());
}

#[tokio::test]
async fn without_holding_the_retry_passes_once_when_approved() {
    let (_ca, up, gate, token) = setup().await;
    let client = gate.reqwest(false);
    let send = |challenge: Option<String>| {
        let mut req = client
            .post("https://api.github.com/repos/acme/api/issues")
            .header("agentgate-hold", "no")
            .json(&serde_json::json!({"title": "t"}));
        if let Some(c) = challenge {
            req = req.header("agentgate-challenge", c);
        }
        req.send()
    };
    let r = send(None).await.unwrap();
    assert_eq!(r.status(), 428);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["decision"], "step_up");
    let id = v["challenge_id"].as_str().unwrap().to_string();
    assert!(v["expires_at"].as_str().unwrap().ends_with('Z'));
    // Before approval the retry is still 428.
    assert_eq!(send(Some(id.clone())).await.unwrap().status(), 428);
    assert_eq!(decide(&gate, Some(&token), &id, "approve", "").await, 200);
    // A different request with the approved id does not pass: it gets a new challenge.
    let other = client
        .post("https://api.github.com/repos/acme/api/issues")
        .header("agentgate-hold", "no")
        .header("agentgate-challenge", id.clone())
        .json(&serde_json::json!({"title": "something else"}))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 428);
    assert!(up.requests().is_empty());
    let r = send(Some(id.clone())).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(up.requests().len(), 1);
    // Used once: the same retry again is a new challenge.
    let r = send(Some(id.clone())).await.unwrap();
    assert_eq!(r.status(), 428);
    assert_eq!(up.requests().len(), 1);
    // The audit: the approval (recorded although nobody was held for it), then the
    // redemption, forwarded.
    let records = audit_until(&gate, &token, |r| settlements(r, &id).len() >= 2).await;
    let mine = settlements(&records, &id);
    let decisions: Vec<&str> = mine
        .iter()
        .map(|r| r["decision"].as_str().unwrap())
        .collect();
    assert_eq!(decisions, ["approved", "redeemed"], "{mine:?}");
    assert_eq!(mine[0]["reviewer"], "reviewer");
    assert_eq!(
        outcome_of(&records, mine[0]),
        None,
        "the approval forwards nothing"
    );
    assert_eq!(outcome_of(&records, mine[1]).unwrap()["status"], 200);
}

/// The audit log, as `agentgate audit export` prints it, once `ready` says so (or after 10 s).
async fn audit_until(
    gate: &TestGate,
    token: &str,
    ready: impl Fn(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut records = Vec::new();
    for _ in 0..200 {
        let text = client
            .get(api(gate, "/api/audit/export"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        records = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        if ready(&records) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    records
}

/// The decision records that name challenge `id` (its settlements), in order.
fn settlements<'a>(records: &'a [serde_json::Value], id: &str) -> Vec<&'a serde_json::Value> {
    records
        .iter()
        .filter(|r| r["kind"] == "decision" && r["challenge_id"] == id)
        .collect()
}

/// The outcome record of decision record `d`.
fn outcome_of<'a>(
    records: &'a [serde_json::Value],
    d: &serde_json::Value,
) -> Option<&'a serde_json::Value> {
    records
        .iter()
        .find(|r| r["kind"] == "outcome" && r["decision_seq"] == d["seq"])
}

#[tokio::test]
async fn an_agent_that_hangs_up_abandons_its_challenge_and_the_audit_says_so() {
    let (_ca, up, gate, token) = setup().await;
    let client = gate.reqwest(true);
    let agent = tokio::spawn(async move {
        client
            .post("https://api.github.com/repos/acme/api/issues")
            .json(&serde_json::json!({"title": "left"}))
            .send()
            .await
    });
    let c = pending(&gate, &token).await;
    let id = c["id"].as_str().unwrap().to_string();
    // The agent goes away: its connection closes.
    agent.abort();
    let _ = agent.await;
    let records = audit_until(&gate, &token, |r| !settlements(r, &id).is_empty()).await;
    let mine = settlements(&records, &id);
    assert_eq!(mine.len(), 1, "{mine:?}");
    assert_eq!(mine[0]["decision"], "abandoned");
    assert_eq!(mine[0]["agent"], TEST_AGENT);
    assert_eq!(mine[0]["actions"][0]["params"]["title"], "left");
    assert!(mine[0]["reviewer"].is_null());
    assert_eq!(outcome_of(&records, mine[0]), None);
    // Stored so, and it stays the only record: a late approval loses and records nothing.
    assert_eq!(decide(&gate, Some(&token), &id, "approve", "").await, 409);
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let v: serde_json::Value = client
        .get(api(&gate, "/api/challenges"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let stored = v["challenges"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == id.as_str())
        .unwrap()
        .clone();
    assert_eq!(stored["state"], "abandoned");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let records = audit_until(&gate, &token, |_| true).await;
    assert_eq!(settlements(&records, &id).len(), 1);
    assert!(up.requests().is_empty());
}

#[tokio::test]
async fn a_denial_nobody_waits_for_and_an_interruption_by_a_restart_are_recorded() {
    let (_ca, up, gate, token) = setup().await;
    let client = gate.reqwest(false);
    let open = |title: &'static str| {
        client
            .post("https://api.github.com/repos/acme/api/issues")
            .header("agentgate-hold", "no")
            .json(&serde_json::json!({ "title": title }))
            .send()
    };
    let id_of = |v: serde_json::Value| v["challenge_id"].as_str().unwrap().to_string();
    let r = open("denied").await.unwrap();
    assert_eq!(r.status(), 428);
    let denied = id_of(r.json().await.unwrap());
    let r = open("pending").await.unwrap();
    assert_eq!(r.status(), 428);
    let pending_id = id_of(r.json().await.unwrap());
    assert_eq!(
        decide(&gate, Some(&token), &denied, "deny", "no").await,
        200
    );
    let records = audit_until(&gate, &token, |r| !settlements(r, &denied).is_empty()).await;
    let mine = settlements(&records, &denied);
    assert_eq!(mine.len(), 1, "{mine:?}");
    assert_eq!(mine[0]["decision"], "denied");
    assert_eq!(mine[0]["note"], "no");
    assert!(settlements(&records, &pending_id).is_empty());
    // The gate stops with one challenge pending; the next start marks it interrupted and
    // records that, once.
    drop(client);
    let gate = gate.restart().await;
    let records = audit_until(&gate, &token, |r| !settlements(r, &pending_id).is_empty()).await;
    let mine = settlements(&records, &pending_id);
    assert_eq!(mine.len(), 1, "{mine:?}");
    assert_eq!(mine[0]["decision"], "interrupted");
    assert_eq!(mine[0]["actions"][0]["params"]["title"], "pending");
    assert_eq!(mine[0]["rules"][0], "issues-need-a-human");
    assert_eq!(settlements(&records, &denied).len(), 1);
    let verified = audit_verified(&gate, &token).await;
    assert!(verified, "the chain verifies after the restart");
    assert!(up.requests().is_empty());
}

/// Whether `GET /api/audit/verify` reports an intact chain.
async fn audit_verified(gate: &TestGate, token: &str) -> bool {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let v: serde_json::Value = client
        .get(api(gate, "/api/audit/verify"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["broken"].is_null() && v["records"].as_u64().unwrap() > 0
}
