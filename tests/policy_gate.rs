//! The policy in charge of the gate: decisions through real sockets, with the shipped default
//! policy and with policies written for the test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use support::*;

async fn with_policy(text: &'static str) -> (TestCa, FakeUpstream, TestGate) {
    let ca = TestCa::new("upstream");
    let up = FakeUpstream::tls(&ca, &["api.github.com"], &[b"h2", b"http/1.1"]).await;
    let gate = TestGate::start(&ca, &[("api.github.com", up.addr)], |c| {
        TestGate::only_policy(c, text)
    })
    .await;
    (ca, up, gate)
}

#[tokio::test]
async fn the_shipped_default_policy_decides_requests() {
    let (_ca, up, gate) = with_policy(agentgate::app::DEFAULT_POLICY).await;
    let client = gate.reqwest(false);

    // A read is allowed and forwarded.
    let r = client
        .get("https://api.github.com/repos/acme/api")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(up.requests().len(), 1);

    // A repository deletion is blocked: 403, the rule, its reason, and nothing forwarded.
    let r = client
        .delete("https://api.github.com/repos/Acme/API")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(r.headers()["agentgate-decision"], "block");
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["decision"], "block");
    assert_eq!(v["action"], "github.repos.delete");
    assert_eq!(v["rules"], serde_json::json!(["no-repo-deletion"]));
    assert_eq!(
        v["reason"],
        "Agents may never delete repositories (acme/api)"
    );
    assert!(v["request_id"].as_str().unwrap().starts_with("req_"));

    // What no rule covers steps up: a challenge for a reviewer (not held here: 428 at once).
    let r = client
        .post("https://api.github.com/repos/acme/api/issues")
        .header("agentgate-hold", "no")
        .json(&serde_json::json!({"title": "hello"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 428);
    assert_eq!(r.headers()["agentgate-decision"], "step_up");
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["decision"], "step_up");
    assert!(v["challenge_id"].as_str().unwrap().starts_with("chl_"));
    assert_eq!(v["rules"], serde_json::json!(["default"]));
    assert!(
        v["reason"]
            .as_str()
            .unwrap()
            .starts_with("No rule covers github.issues.create"),
        "{v}"
    );

    // An endpoint the catalog does not know is blocked.
    let r = client
        .post("https://api.github.com/no/such/endpoint")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["rules"], serde_json::json!(["unmapped-endpoints"]));
    assert_eq!(
        up.requests().len(),
        1,
        "nothing refused reached the upstream"
    );

    // Other hosts: net.connect is decided by the policy.
    let (_, head) = connect(gate.addr(), "example.org:443").await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
}

#[tokio::test]
async fn a_gate_without_a_valid_policy_blocks_everything() {
    let (_ca, up, gate) = with_policy("default allow;\n").await;
    let r = gate
        .reqwest(false)
        .get("https://api.github.com/repos/acme/api")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["reason"], "no active policy");
    assert!(up.requests().is_empty());
    assert!(gate.gate.policy.current().is_none());
}

#[tokio::test]
async fn an_error_in_a_condition_fails_closed() {
    // `params.title` is missing from the request: the block rule fires on the error, and the
    // allow rule that reads it does not.
    let (_ca, up, gate) = with_policy(
        "default block;\n\
         block \"no-secret-titles\" on github.issues.create when params.title contains \"secret\";\n\
         allow \"issues\" on github.issues.create when params.title != \"\";\n",
    )
    .await;
    let client = gate.reqwest(false);
    let r = client
        .post("https://api.github.com/repos/acme/api/issues")
        .json(&serde_json::json!({"body": "no title"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["rules"], serde_json::json!(["no-secret-titles"]));
    let r = client
        .post("https://api.github.com/repos/acme/api/issues")
        .json(&serde_json::json!({"title": "fine"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(up.requests().len(), 1);
}

#[tokio::test]
async fn a_rate_limit_admits_exactly_its_limit() {
    let (_ca, up, gate) = with_policy(
        "default block;\n\
         block \"issue-rate\" on github.issues.create\n\
           when count(github.issues.create, by: agent, window: 1h) >= 3\n\
           reason \"at most 3 issues an hour\";\n\
         allow \"issues\" on github.issues.create;\n",
    )
    .await;
    let client = gate.reqwest(false);
    let mut tasks = Vec::new();
    for i in 0..8 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            client
                .post("https://api.github.com/repos/acme/api/issues")
                .json(&serde_json::json!({"title": format!("t{i}")}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        3,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 403).count(),
        5,
        "{statuses:?}"
    );
    assert_eq!(up.requests().len(), 3);

    // The counts are kept in the data directory: a restart does not reset the limit.
    let gate = gate.restart().await;
    let r = gate
        .reqwest(false)
        .post("https://api.github.com/repos/acme/api/issues")
        .json(&serde_json::json!({"title": "after restart"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["rules"], serde_json::json!(["issue-rate"]));
    assert_eq!(up.requests().len(), 3);
}

/// A Gmail batch of a read and a label creation whose parts carry `authorization`; the
/// second part's body holds a line that looks like a placeholder header.
fn batch_with_part_auth(auth: &str) -> String {
    let body = "{\"name\": \"authorization: Bearer agentgate-placeholder-google\"}";
    format!(
        "--B0undary\r\nContent-Type: application/http\r\nContent-ID: <a+1>\r\n\r\nGET /gmail/v1/users/me/labels HTTP/1.1\r\nauthorization: Bearer agentgate-placeholder-google\r\n\r\n\r\n\
         --B0undary\r\nContent-Type: application/http\r\nContent-ID: <a+2>\r\n\r\nPOST /gmail/v1/users/me/labels HTTP/1.1\r\nAuthorization: {auth}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}\r\n\
         --B0undary--\r\n",
        body.len()
    )
}

#[tokio::test]
async fn a_real_token_hidden_in_a_batch_part_is_foreign() {
    let ca = TestCa::new("upstream");
    let up = FakeUpstream::tls(&ca, &["gmail.googleapis.com"], &[b"http/1.1"]).await;
    let gate = TestGate::start(&ca, &[("gmail.googleapis.com", up.addr)], |c| {
        TestGate::only_policy(c, agentgate::app::DEFAULT_POLICY)
    })
    .await;
    let client = gate.reqwest(false);
    let send = |auth: &str| {
        client
            .post("https://gmail.googleapis.com/batch/gmail/v1")
            .header("content-type", "multipart/mixed; boundary=B0undary")
            .header("authorization", "Bearer agentgate-placeholder-google")
            .header("agentgate-hold", "no")
            .body(batch_with_part_auth(auth))
            .send()
    };
    let r = send("Bearer ya29.a-real-token-the-agent-should-not-have")
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["rules"], serde_json::json!(["foreign-credential"]));
    assert!(up.requests().is_empty());
    // The same batch with placeholders in the parts (as the Google API Python client writes
    // them) is allowed: the outer request and each part's Authorization get the real token;
    // the placeholder-looking line in a part's body is left alone.
    let r = send("token agentgate-placeholder-google").await.unwrap();
    assert_eq!(
        r.status(),
        428,
        "creating labels steps up under the default policy"
    );
    let allow_all = TestGate::start(&ca, &[("gmail.googleapis.com", up.addr)], |_| {}).await;
    let r = allow_all
        .reqwest(false)
        .post("https://gmail.googleapis.com/batch/gmail/v1")
        .header("content-type", "multipart/mixed; boundary=B0undary")
        .header("authorization", "Bearer agentgate-placeholder-google")
        .body(batch_with_part_auth("token agentgate-placeholder-google"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let rec = up.requests().pop().unwrap();
    assert_eq!(
        rec.headers["authorization"],
        format!("Bearer {REAL_GOOGLE_TOKEN}").as_str()
    );
    let sent = String::from_utf8(rec.body).unwrap();
    assert_eq!(
        sent.matches(&format!("authorization: Bearer {REAL_GOOGLE_TOKEN}\r\n"))
            .count(),
        1,
        "{sent}"
    );
    assert_eq!(
        sent.matches(&format!("Authorization: Bearer {REAL_GOOGLE_TOKEN}\r\n"))
            .count(),
        1,
        "{sent}"
    );
    assert!(sent.contains("{\"name\": \"authorization: Bearer agentgate-placeholder-google\"}"));
    assert_eq!(
        rec.headers["content-length"],
        sent.len().to_string().as_str()
    );
}

#[tokio::test]
async fn metrics_count_decisions_for_reviewers_only() {
    let (_ca, _up, gate) = with_policy(agentgate::app::DEFAULT_POLICY).await;
    let client = gate.reqwest(false);
    for _ in 0..2 {
        let r = client
            .delete("https://api.github.com/repos/acme/api")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403);
    }
    let r = client
        .get("https://api.github.com/repos/acme/api")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let url = format!("http://{}/metrics", gate.gate.dashboard_addr);
    let direct = reqwest::Client::builder().no_proxy().build().unwrap();
    let r = direct.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = direct
        .get(&url)
        .bearer_auth(TEST_TOKEN) // an agent's token is not a reviewer's
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let token = std::fs::read_to_string(gate.config.data_dir.join("reviewer.token")).unwrap();
    let r = direct
        .get(&url)
        .bearer_auth(token.trim())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(
        text.contains("agentgate_requests_total{decision=\"block\",family=\"github\"} 2"),
        "{text}"
    );
    assert!(text.contains("agentgate_requests_total{decision=\"allow\",family=\"github\"} 1"));
    assert!(text.contains("agentgate_upstream_seconds_count 1"));
    assert!(text.contains("agentgate_policy_reloads_total{result=\"loaded\"} 1"));
}
