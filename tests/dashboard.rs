//! The reviewers' dashboard through real sockets: the embedded page and its security
//! headers, browser login (cookie and CSRF), the Origin and Host checks on approvals and on the
//! WebSocket feed, the feed's sequence numbers and replay, and attacker-written HTML carried
//! as data.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/dashboard.rs"]
mod dashboard_support;
mod support;

use std::time::Duration;

use dashboard_support::*;

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())
}

#[tokio::test]
async fn the_page_and_its_files_are_served_with_security_headers() {
    let d = Dash::start().await;
    let c = d.client();
    for (path, ctype) in [
        ("/", "text/html; charset=utf-8"),
        ("/app.js", "text/javascript; charset=utf-8"),
        ("/app.css", "text/css; charset=utf-8"),
    ] {
        let resp = c.get(d.url(path)).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        let h = resp.headers();
        assert_eq!(h["content-type"], ctype, "{path}");
        let csp = h["content-security-policy"].to_str().unwrap();
        assert!(csp.starts_with("default-src 'self'"), "{csp}");
        assert!(csp.contains("connect-src 'self'"), "{csp}");
        assert!(csp.contains("script-src 'self'"), "{csp}");
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
        assert!(
            !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"),
            "{csp}"
        );
        assert_eq!(h["x-content-type-options"], "nosniff");
        assert_eq!(h["x-frame-options"], "DENY");
        assert_eq!(h["referrer-policy"], "no-referrer");
    }
    let html = c
        .get(d.url("/"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let js = c
        .get(d.url("/app.js"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let css = c
        .get(d.url("/app.css"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // The embedded files are the ones in web/.
    assert_eq!(html, include_str!("../web/index.html"));
    assert_eq!(js, include_str!("../web/app.js"));
    assert_eq!(css, include_str!("../web/app.css"));
    // Nothing inline, nothing from elsewhere.
    assert_eq!(html.matches("<script").count(), 1);
    assert!(html.contains("<script src=\"/app.js\" defer></script>"));
    assert!(!html.contains("<style") && !html.contains(" style=") && !html.contains(" onclick"));
    for text in [&html, &js, &css] {
        assert!(!text.contains("http://") && !text.contains("https://") && !text.contains("//cdn"));
    }
    // Data is never written as HTML.
    for sink in [
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "eval(",
    ] {
        assert!(!js.contains(sink), "app.js uses {sink}");
    }
    // The API is never stored, and answers in JSON.
    let resp = c.get(d.url("/api/challenges")).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(resp.headers()["cache-control"], "no-store");
    assert_eq!(resp.headers()["content-type"], "application/json");
    assert_eq!(resp.headers()["x-frame-options"], "DENY");
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["error"], "unauthorized");
    // An unknown path is a JSON 404, also behind the headers.
    let resp = c.get(d.url("/nope")).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(resp.headers()["x-content-type-options"], "nosniff");
}

#[tokio::test]
async fn login_sets_an_httponly_strict_session_cookie_and_a_csrf_token() {
    let d = Dash::start().await;
    let c = d.client();
    // A wrong token: 401, no cookie.
    let resp = c
        .post(d.url("/api/login"))
        .header("origin", d.origin())
        .json(&serde_json::json!({"token": "not-the-token"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert!(resp.headers().get("set-cookie").is_none());
    assert_eq!(
        resp.json::<serde_json::Value>().await.unwrap()["error"],
        "unauthorized"
    );
    // The agent's proxy token is not a reviewer token either.
    let resp = c
        .post(d.url("/api/login"))
        .json(&serde_json::json!({"token": support::TEST_TOKEN}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    // A form post (what a cross-site page could send without a preflight) is refused.
    let resp = c
        .post(d.url("/api/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={}", d.token))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 415);
    assert!(resp.headers().get("set-cookie").is_none());
    // From another origin: 403.
    let resp = c
        .post(d.url("/api/login"))
        .header("origin", "http://evil.example")
        .json(&serde_json::json!({"token": d.token}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(
        resp.json::<serde_json::Value>().await.unwrap()["error"],
        "bad_origin"
    );
    // The right token from the page.
    let s = d.login().await;
    assert!(s.set_cookie.starts_with("agentgate_session="));
    let attrs: Vec<&str> = s.set_cookie.split(';').map(str::trim).collect();
    assert!(attrs.contains(&"HttpOnly"), "{}", s.set_cookie);
    assert!(attrs.contains(&"SameSite=Strict"), "{}", s.set_cookie);
    assert!(attrs.contains(&"Path=/"), "{}", s.set_cookie);
    assert!(!attrs.iter().any(|a| a.eq_ignore_ascii_case("secure")));
    assert!(is_hex(
        s.cookie.trim_start_matches("agentgate_session="),
        64
    ));
    assert!(is_hex(&s.csrf, 64));
    assert_eq!(s.reviewer, "reviewer");
    // The session reads, and gives the page its CSRF token back after a reload.
    let v: serde_json::Value = c
        .get(d.url("/api/session"))
        .header("cookie", &s.cookie)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["csrf"], s.csrf.as_str());
    assert_eq!(v["reviewer"], "reviewer");
    let resp = c
        .get(d.url("/api/challenges?state=pending"))
        .header("cookie", &s.cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // Logout is a state change: CSRF and Origin needed.
    let resp = c
        .post(d.url("/api/logout"))
        .header("cookie", &s.cookie)
        .header("origin", d.origin())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    let resp = c
        .post(d.url("/api/logout"))
        .header("cookie", &s.cookie)
        .header("origin", d.origin())
        .header("x-csrf-token", &s.csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    let resp = c
        .get(d.url("/api/challenges"))
        .header("cookie", &s.cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401, "the session is over");
}

/// What an approval attempt sends and the refusal it must get: (what, headers, status, error).
type Refusal<'a> = (&'a str, Vec<(&'a str, &'a str)>, u16, &'a str);

/// A POST to approve `id` with the given headers, on a raw connection (Host as given).
async fn approve_raw(d: &Dash, id: &str, headers: &[(&str, &str)]) -> Raw {
    raw(
        d.addr(),
        "POST",
        &format!("/api/challenges/{id}/approve"),
        headers,
        r#"{"note":"ok from the page"}"#,
    )
    .await
}

#[tokio::test]
async fn approvals_need_a_login_csrf_the_right_origin_and_host() {
    let d = Dash::start().await;
    let s = d.login().await;
    let agent = d.send_mail("Quarterly numbers", true);
    let c = &d.pending(1).await[0];
    let id = c["id"].as_str().unwrap().to_string();
    let host = d.addr().to_string();
    let origin = d.origin();
    let json = ("content-type", "application/json");
    let bearer = format!("Bearer {}", d.token);
    let refusals: Vec<Refusal> = vec![
        (
            "no login",
            vec![("host", &host), ("origin", &origin), json],
            401,
            "unauthorized",
        ),
        (
            "a wrong bearer token",
            vec![("host", &host), ("authorization", "Bearer nope"), json],
            401,
            "unauthorized",
        ),
        (
            "the agent's token",
            vec![
                ("host", &host),
                ("authorization", "Bearer agt_test-agent-token"),
                json,
            ],
            401,
            "unauthorized",
        ),
        (
            "a cookie without CSRF",
            vec![
                ("host", &host),
                ("origin", &origin),
                ("cookie", &s.cookie),
                json,
            ],
            403,
            "csrf",
        ),
        (
            "a cookie with a wrong CSRF",
            vec![
                ("host", &host),
                ("origin", &origin),
                ("cookie", &s.cookie),
                ("x-csrf-token", "0000"),
                json,
            ],
            403,
            "csrf",
        ),
        (
            "a wrong Origin",
            vec![
                ("host", &host),
                ("origin", "http://evil.example"),
                ("cookie", &s.cookie),
                ("x-csrf-token", &s.csrf),
                json,
            ],
            403,
            "bad_origin",
        ),
        (
            "an https Origin",
            vec![
                ("host", &host),
                ("origin", "https://127.0.0.1"),
                ("cookie", &s.cookie),
                ("x-csrf-token", &s.csrf),
                json,
            ],
            403,
            "bad_origin",
        ),
        (
            "a cookie and no Origin",
            vec![
                ("host", &host),
                ("cookie", &s.cookie),
                ("x-csrf-token", &s.csrf),
                json,
            ],
            403,
            "origin_required",
        ),
        (
            "a rebinding Host",
            vec![
                ("host", "evil.example"),
                ("origin", "http://evil.example"),
                ("cookie", &s.cookie),
                ("x-csrf-token", &s.csrf),
                json,
            ],
            403,
            "bad_host",
        ),
        (
            "a rebinding Host with the right Origin",
            vec![
                ("host", "attacker.example:80"),
                ("origin", &origin),
                ("cookie", &s.cookie),
                ("x-csrf-token", &s.csrf),
                json,
            ],
            403,
            "bad_host",
        ),
        (
            "a bearer token from another Origin",
            vec![
                ("host", &host),
                ("origin", "http://evil.example"),
                ("authorization", &bearer),
                json,
            ],
            403,
            "bad_origin",
        ),
        (
            "a cookie and a form body",
            vec![
                ("host", &host),
                ("origin", &origin),
                ("cookie", &s.cookie),
                ("x-csrf-token", &s.csrf),
                ("content-type", "text/plain"),
            ],
            415,
            "unsupported_media_type",
        ),
    ];
    for (what, headers, status, error) in refusals {
        let r = approve_raw(&d, &id, &headers).await;
        assert_eq!(r.status, status, "{what}: {}", r.body);
        assert_eq!(r.json()["error"], error, "{what}");
        assert!(!r.json()["reason"].as_str().unwrap().is_empty(), "{what}");
        assert_eq!(d.state_of(&id).await, "pending", "{what} changed nothing");
        assert!(d.gmail.requests().is_empty(), "{what}: nothing forwarded");
    }
    assert!(!agent.is_finished(), "the agent is still held");
    // Everything right: approved by the session's reviewer, and the agent gets its answer.
    let r = approve_raw(
        &d,
        &id,
        &[
            ("host", &host),
            ("origin", &origin),
            ("cookie", &s.cookie),
            ("x-csrf-token", &s.csrf),
            json,
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["challenge"]["state"], "approved");
    assert_eq!(r.json()["challenge"]["reviewer"], "reviewer");
    assert_eq!(r.json()["challenge"]["note"], "ok from the page");
    let (status, body) = tokio::time::timeout(Duration::from_secs(20), agent)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let seen = d.gmail.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/gmail/v1/users/me/messages/send");
    // localhost with the port is the dashboard too; a decided challenge is a 409 with its state.
    let r = approve_raw(
        &d,
        &id,
        &[
            ("host", &format!("localhost:{}", d.addr().port())),
            ("origin", &format!("http://localhost:{}", d.addr().port())),
            ("cookie", &s.cookie),
            ("x-csrf-token", &s.csrf),
            json,
        ],
    )
    .await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert_eq!(r.json()["error"], "already_decided");
    assert_eq!(r.json()["state"], "approved");
    // The audit record names the reviewer and the note.
    let text = d
        .client()
        .get(d.url("/api/audit/export?decision=approved"))
        .bearer_auth(&d.token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let rec: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(rec["reviewer"], "reviewer");
    assert_eq!(rec["note"], "ok from the page");
    assert_eq!(rec["challenge_id"], id.as_str());
}

#[tokio::test]
async fn any_request_naming_another_host_is_refused() {
    let d = Dash::start().await;
    for host in [
        "evil.example",
        "evil.example:80",
        &format!("127.0.0.2:{}", d.addr().port()),
    ] {
        let r = raw(
            d.addr(),
            "GET",
            "/api/challenges",
            &[
                ("host", host),
                ("authorization", &format!("Bearer {}", d.token)),
            ],
            "",
        )
        .await;
        assert_eq!(r.status, 403, "{host}");
        assert_eq!(r.json()["error"], "bad_host");
        let r = raw(d.addr(), "GET", "/", &[("host", host)], "").await;
        assert_eq!(r.status, 403, "the page too, under {host}");
    }
}

#[tokio::test]
async fn the_websocket_checks_login_origin_and_host() {
    let d = Dash::start().await;
    let s = d.login().await;
    let addr = d.addr();
    let origin = d.origin();
    let bearer = format!("Bearer {}", d.token);
    // No login.
    assert_eq!(
        refused_status(ws_connect(addr, "", &[("origin", &origin)]).await),
        401
    );
    // A wrong Origin, with a cookie or with the token.
    assert_eq!(
        refused_status(
            ws_connect(
                addr,
                "",
                &[("origin", "http://evil.example"), ("cookie", &s.cookie)]
            )
            .await
        ),
        403
    );
    assert_eq!(
        refused_status(
            ws_connect(
                addr,
                "",
                &[
                    ("origin", "http://evil.example"),
                    ("authorization", &bearer)
                ]
            )
            .await
        ),
        403
    );
    // A cookie without an Origin (browsers always send one).
    assert_eq!(
        refused_status(ws_connect(addr, "", &[("cookie", &s.cookie)]).await),
        403
    );
    // A rebinding Host.
    assert_eq!(
        refused_status(
            ws_connect(
                addr,
                "",
                &[
                    ("host", "evil.example:80"),
                    ("origin", "http://evil.example:80"),
                    ("cookie", &s.cookie)
                ]
            )
            .await
        ),
        403
    );
    // The page's own connection.
    let mut ws = ws_connect(addr, "", &[("origin", &origin), ("cookie", &s.cookie)])
        .await
        .unwrap();
    let hello = next_json(&mut ws).await;
    assert_eq!(hello["type"], "hello");
    assert_eq!(hello["reviewer"], "reviewer");
    assert!(hello["boot"].as_str().is_some_and(|b| !b.is_empty()));
    // Logging out closes the feed of that session.
    let resp = d
        .client()
        .post(d.url("/api/logout"))
        .header("cookie", &s.cookie)
        .header("origin", &origin)
        .header("x-csrf-token", &s.csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    use futures_util::StreamExt;
    let end = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match ws.next().await {
                Some(Ok(tokio_tungstenite::tungstenite::Message::Close(f))) => return f,
                Some(Ok(_)) => continue,
                _ => return None,
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(u16::from(end.unwrap().code), 1008);
}

/// The `seq`s of `events` (every one must have one).
fn seqs(events: &[serde_json::Value]) -> Vec<u64> {
    events.iter().map(|e| e["seq"].as_u64().unwrap()).collect()
}

fn created(id: &str) -> impl Fn(&serde_json::Value) -> bool + '_ {
    move |e| e["type"] == "challenge_created" && e["challenge"]["id"] == id
}

fn resolved(id: &str) -> impl Fn(&serde_json::Value) -> bool + '_ {
    move |e| e["type"] == "challenge_resolved" && e["challenge"]["id"] == id
}

/// The challenge id of a 428 answer.
fn challenge_id(body: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    v["challenge_id"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn events_are_numbered_and_a_reconnect_replays_exactly_the_missed_ones() {
    let d = Dash::start().await;
    let addr = d.addr();
    let bearer = format!("Bearer {}", d.token);
    let auth = [("authorization", bearer.as_str())];
    // A watches throughout; B leaves and comes back.
    let mut a = ws_connect(addr, "", &auth).await.unwrap();
    let hello_a = next_json(&mut a).await;
    let boot = hello_a["boot"].as_str().unwrap().to_string();
    let mut b = ws_connect(addr, "", &auth).await.unwrap();
    assert_eq!(next_json(&mut b).await["type"], "hello");

    let (status, body) = d.open_issue("first", false).await;
    assert_eq!(status, 428, "{body}");
    let first = challenge_id(&body);
    let mut seen_a = events_until(&mut a, created(&first)).await;
    let seen_b = events_until(&mut b, created(&first)).await;
    assert_eq!(seqs(&seen_a), seqs(&seen_b));
    let k = *seqs(&seen_b).last().unwrap();
    ws_close(b).await;

    // While B is away: a denial and a second challenge.
    let resp = d
        .client()
        .post(d.url(&format!("/api/challenges/{first}/deny")))
        .bearer_auth(&d.token)
        .json(&serde_json::json!({"note": "no"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let (status, body) = d.open_issue("second", false).await;
    assert_eq!(status, 428, "{body}");
    let second = challenge_id(&body);
    seen_a.extend(events_until(&mut a, created(&second)).await);
    assert!(seen_a.iter().any(resolved(&first)));

    // B comes back after K: the hello names the head, and B gets K+1..=head, as A saw them.
    let mut b = ws_connect(addr, &format!("?after={k}&boot={boot}"), &auth)
        .await
        .unwrap();
    let hello = next_json(&mut b).await;
    assert_eq!(hello["type"], "hello");
    assert_eq!(hello["boot"], boot.as_str());
    let head = hello["head"].as_u64().unwrap();
    assert!(head > k + 1, "events happened while B was away");
    let replay = events_until(&mut b, |e| e["seq"] == head).await;
    assert_eq!(
        seqs(&replay),
        (k + 1..=head).collect::<Vec<_>>(),
        "no gap, no duplicate"
    );
    while seqs(&seen_a).last() < Some(&head) {
        seen_a.push(next_json(&mut a).await);
    }
    let a_after_k: Vec<&serde_json::Value> = seen_a
        .iter()
        .filter(|e| e["seq"].as_u64().unwrap() > k)
        .collect();
    assert_eq!(a_after_k.len(), replay.len());
    for (x, y) in a_after_k.iter().zip(&replay) {
        assert_eq!(*x, y, "the replay is the events A saw live");
    }
    assert!(replay.iter().any(resolved(&first)));
    assert!(replay.iter().any(created(&second)));
    // The sequence over everything A saw has no gap.
    let all = seqs(&seen_a);
    assert!(all.windows(2).all(|w| w[1] == w[0] + 1), "{all:?}");
    assert_eq!(all[0], hello_a["head"].as_u64().unwrap() + 1);

    // Then live events, on both, with the next number.
    let (status, body) = d.open_issue("third", false).await;
    assert_eq!(status, 428, "{body}");
    let third = challenge_id(&body);
    let live_b = events_until(&mut b, created(&third)).await;
    let live_a = events_until(&mut a, created(&third)).await;
    assert_eq!(live_b, live_a);
    assert_eq!(live_b[0]["seq"].as_u64().unwrap(), head + 1);

    // A number beyond the head, or another process's, is a resync up to the head.
    for q in [
        format!("?after={}", head + 1000),
        format!("?after=1&boot=0000{boot}"),
    ] {
        let mut c = ws_connect(addr, &q, &auth).await.unwrap();
        let hello = next_json(&mut c).await;
        let r = next_json(&mut c).await;
        assert_eq!(r["type"], "resync", "{q}");
        assert_eq!(r["seq"], hello["head"], "{q}");
    }
}

#[tokio::test]
async fn decisions_reach_the_feed_once_durable() {
    let d = Dash::start().await;
    let mut ws = ws_connect(
        d.addr(),
        "",
        &[("authorization", &format!("Bearer {}", d.token))],
    )
    .await
    .unwrap();
    let hello = next_json(&mut ws).await;
    let audit_head = hello["audit_head"].as_u64().unwrap();
    let resp = d
        .gate
        .reqwest(true)
        .get("https://api.github.com/repos/acme/api")
        .header(
            "authorization",
            format!("token {}", support::GITHUB_PLACEHOLDER),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let events = events_until(&mut ws, |e| e["type"] == "decision").await;
    let rec = &events.last().unwrap()["record"];
    assert_eq!(rec["kind"], "decision");
    assert_eq!(rec["decision"], "allow");
    assert_eq!(rec["agent"], support::TEST_AGENT);
    assert_eq!(rec["actions"][0]["name"], "github.repos.get");
    assert!(rec["seq"].as_u64().unwrap() > audit_head);
    assert!(is_hex(rec["hash"].as_str().unwrap(), 64));
}

#[tokio::test]
async fn html_in_a_subject_or_title_is_delivered_as_data() {
    let d = Dash::start().await;
    let mut ws = ws_connect(
        d.addr(),
        "",
        &[("authorization", &format!("Bearer {}", d.token))],
    )
    .await
    .unwrap();
    next_json(&mut ws).await;
    let agent = d.send_mail(HTML_SUBJECT, true);
    let events = events_until(&mut ws, |e| e["type"] == "challenge_created").await;
    let c = &events.last().unwrap()["challenge"];
    let p = &c["actions"][0]["params"];
    // The exact string, as JSON data: not escaped into entities, not stripped.
    assert_eq!(p["subject"], HTML_SUBJECT);
    assert_eq!(p["to"][0], "mallory@evil.example");
    assert!(
        c["reasons"][0]
            .as_str()
            .unwrap()
            .contains("mallory@evil.example")
    );
    let listed = &d.pending(1).await[0];
    assert_eq!(listed["actions"][0]["params"]["subject"], HTML_SUBJECT);
    // Every response that carries it is JSON with nosniff, never HTML.
    let resp = d
        .client()
        .get(d.url("/api/challenges?state=pending"))
        .bearer_auth(&d.token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "application/json");
    assert_eq!(resp.headers()["x-content-type-options"], "nosniff");
    // A GitHub issue title the same.
    let title = "<script>fetch('/api/challenges')</script>";
    let (status, body) = d.open_issue(title, false).await;
    assert_eq!(status, 428, "{body}");
    let events = events_until(&mut ws, |e| {
        e["type"] == "challenge_created"
            && e["challenge"]["actions"][0]["name"] == "github.issues.create"
    })
    .await;
    assert_eq!(
        events.last().unwrap()["challenge"]["actions"][0]["params"]["title"],
        title
    );
    drop(agent);
}

#[tokio::test]
async fn the_policy_status_names_files_rules_and_errors() {
    let d = Dash::start().await;
    let c = d.client();
    assert_eq!(
        c.get(d.url("/api/policy")).send().await.unwrap().status(),
        401
    );
    let get = || async {
        c.get(d.url("/api/policy"))
            .bearer_auth(&d.token)
            .send()
            .await
            .unwrap()
            .json::<serde_json::Value>()
            .await
            .unwrap()
    };
    let p = get().await;
    assert_eq!(p["status"], "loaded");
    assert_eq!(p["in_force"], true);
    assert_eq!(p["active"]["rules"], 3);
    assert_eq!(p["active"]["default"], "block");
    assert_eq!(p["files"][0]["name"], "only.policy");
    assert_eq!(p["files"][0]["state"], "in_force");
    let ids: Vec<&str> = p["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&"mail-needs-a-human"), "{ids:?}");
    let first_change = p["last_change_ms"].as_i64().unwrap();
    // A broken edit: the status says so (with file:line:col), the old set stays in force, and
    // the feed announces it.
    let mut ws = ws_connect(
        d.addr(),
        "",
        &[("authorization", &format!("Bearer {}", d.token))],
    )
    .await
    .unwrap();
    next_json(&mut ws).await;
    std::fs::write(
        d.gate.config.policies_dir.join("only.policy"),
        "default block;\nallow \"x\" on github.no.such.action;\n",
    )
    .unwrap();
    let events = events_until(&mut ws, |e| e["type"] == "policy").await;
    let announced = &events.last().unwrap()["policy"];
    assert_eq!(announced["status"], "failed");
    let p = get().await;
    assert_eq!(p["status"], "failed");
    assert_eq!(p["in_force"], true);
    assert_eq!(p["files"][0]["state"], "changed");
    let errors = p["errors"].as_array().unwrap();
    assert!(
        errors
            .iter()
            .any(|e| e.as_str().unwrap().contains("only.policy:2:")),
        "{errors:?}"
    );
    assert!(p["last_change_ms"].as_i64().unwrap() >= first_change);
}
