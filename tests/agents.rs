//! Agent identity: proxy credentials checked on every CONNECT and plain-HTTP request, bound to
//! the tunnel, never forwarded, and seen by the policy as `agent`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use support::*;

const OTHER: &str = "other-agent";
const OTHER_TOKEN: &str = "agt_other-agent-token";

/// A gate with the test agent and `other-agent`; only the test agent may act.
async fn two_agents() -> (TestCa, FakeUpstream, TestGate) {
    let ca = TestCa::new("upstream");
    let up = FakeUpstream::tls(&ca, &["api.github.com"], &[b"http/1.1"]).await;
    let gate = TestGate::start(&ca, &[("api.github.com", up.addr)], |c| {
        c.agents.push(agentgate::config::Principal {
            name: OTHER.into(),
            token_sha256: agentgate::agents::sha256(OTHER_TOKEN),
            user: None,
        });
        TestGate::only_policy(
            c,
            "default block reason \"{agent} may not {action}\";\n\
             allow \"test-agent-only\" on ** when agent == \"test-agent\";\n",
        );
    })
    .await;
    (ca, up, gate)
}

#[tokio::test]
async fn missing_or_wrong_credentials_get_407() {
    let (_ca, up, gate) = two_agents().await;
    let wrong = proxy_auth(TEST_AGENT, "agt_wrong");
    let swapped = proxy_auth(OTHER, TEST_TOKEN);
    for auth in [
        None,
        Some(wrong.as_str()),
        Some(swapped.as_str()),
        Some("Bearer x"),
    ] {
        let (_, head) = connect_with(gate.addr(), "api.github.com:443", auth).await;
        assert!(head.starts_with("HTTP/1.1 407"), "{auth:?}: {head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("proxy-authenticate: basic realm=\"agentgate\""),
            "{head}"
        );
    }
    // A plain-HTTP request without credentials: 407 with a JSON reason.
    let mut s = tokio::net::TcpStream::connect(gate.addr()).await.unwrap();
    let raw = exchange(
        &mut s,
        b"GET http://api.github.com/user HTTP/1.1\r\nHost: api.github.com\r\n\r\n",
        Duration::from_millis(500),
    )
    .await;
    assert!(raw.starts_with("HTTP/1.1 407"), "{raw}");
    let v = json_body(&raw);
    assert_eq!(v["error"], "proxy_auth_required");
    assert!(v["reason"].as_str().unwrap().contains("http://NAME:TOKEN@"));
    // reqwest with a proxy URL that carries no credentials.
    let client = reqwest::Client::builder()
        .proxy(reqwest::Proxy::all(format!("http://{}", gate.addr())).unwrap())
        .add_root_certificate(reqwest::Certificate::from_pem(&gate.ca_pem()).unwrap())
        .build()
        .unwrap();
    assert!(
        client
            .get("https://api.github.com/user")
            .send()
            .await
            .is_err()
    );
    assert!(up.requests().is_empty());
}

#[tokio::test]
async fn the_agent_is_bound_to_its_tunnel_and_its_credentials_are_not_forwarded() {
    let (_ca, up, gate) = two_agents().await;
    // The test agent's tunnel: a Proxy-Authorization inside it naming another agent changes
    // nothing and is not forwarded.
    let cfg = client_tls(gate.ca_der(), &[b"http/1.1"]);
    let mut tls = tls_through(
        gate.addr(),
        "api.github.com:443",
        "api.github.com",
        cfg.clone(),
    )
    .await
    .unwrap();
    let inner = format!(
        "GET /user HTTP/1.1\r\nHost: api.github.com\r\nProxy-Authorization: {}\r\nConnection: close\r\n\r\n",
        proxy_auth(OTHER, OTHER_TOKEN)
    );
    let resp = exchange(&mut tls, inner.as_bytes(), Duration::from_millis(500)).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let rec = up.requests().pop().unwrap();
    assert!(!rec.headers.contains_key("proxy-authorization"));

    // The other agent's tunnel: the policy sees `agent` = other-agent and blocks.
    let (s, head) = connect_with(
        gate.addr(),
        "api.github.com:443",
        Some(&proxy_auth(OTHER, OTHER_TOKEN)),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg));
    let mut tls = connector
        .connect("api.github.com".try_into().unwrap(), s)
        .await
        .unwrap();
    let resp = exchange(
        &mut tls,
        b"GET /user HTTP/1.1\r\nHost: api.github.com\r\nConnection: close\r\n\r\n",
        Duration::from_millis(500),
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 403"), "{resp}");
    assert_eq!(
        json_body(&resp)["reason"],
        "other-agent may not github.users.get-authenticated"
    );
    assert_eq!(up.requests().len(), 1);
}
