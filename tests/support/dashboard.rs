//! Helpers for the dashboard tests: a gate whose policy steps up mail sends and new issues,
//! raw HTTP/1.1 requests to the dashboard (for headers reqwest will not let a test get wrong),
//! browser-style logins, and WebSocket clients of the event feed.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine as _;
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::support::{FakeUpstream, GITHUB_PLACEHOLDER, GOOGLE_PLACEHOLDER, TestCa, TestGate};

/// Mail sends and new issues step up; reads are allowed; everything else is blocked.
pub const POLICY: &str = "default block;\n\
    step_up \"mail-needs-a-human\" on gmail.users.messages.send reason \"A human approves mail to {params.recipients}\";\n\
    step_up \"issues-need-a-human\" on github.issues.create reason \"A human approves new issues in {params.repo}\";\n\
    allow \"reads\" on github.** when method == \"GET\";\n";

/// A subject an attacker would write.
pub const HTML_SUBJECT: &str =
    "Invoice <img src=x onerror=\"document.title='pwned'\"><b>urgent</b>";

/// A gate with [`POLICY`], fake Gmail and GitHub upstreams, and its reviewer token.
pub struct Dash {
    pub ca: TestCa,
    pub gmail: FakeUpstream,
    pub github: FakeUpstream,
    pub gate: TestGate,
    pub token: String,
}

impl Dash {
    pub async fn start() -> Dash {
        let ca = TestCa::new("upstream");
        let gmail = FakeUpstream::tls(&ca, &["gmail.googleapis.com"], &[b"http/1.1"]).await;
        let github = FakeUpstream::tls(&ca, &["api.github.com"], &[b"http/1.1"]).await;
        let gate = TestGate::start(
            &ca,
            &[
                ("gmail.googleapis.com", gmail.addr),
                ("api.github.com", github.addr),
            ],
            |c| TestGate::only_policy(c, POLICY),
        )
        .await;
        let token = std::fs::read_to_string(gate.config.data_dir.join("reviewer.token"))
            .unwrap()
            .trim()
            .to_string();
        Dash {
            ca,
            gmail,
            github,
            gate,
            token,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.gate.gate.dashboard_addr
    }

    /// `http://ADDR`, the page's origin.
    pub fn origin(&self) -> String {
        format!("http://{}", self.addr())
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr())
    }

    /// A client for the dashboard itself (no proxy, no cookie jar).
    pub fn client(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap()
    }

    /// Logs in as a browser does and returns the session.
    pub async fn login(&self) -> Session {
        let resp = self
            .client()
            .post(self.url("/api/login"))
            .header("origin", self.origin())
            .json(&serde_json::json!({"token": self.token}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let set_cookie = resp.headers()["set-cookie"].to_str().unwrap().to_string();
        let v: serde_json::Value = resp.json().await.unwrap();
        let cookie = set_cookie.split(';').next().unwrap().to_string();
        Session {
            cookie,
            set_cookie,
            csrf: v["csrf"].as_str().unwrap().to_string(),
            reviewer: v["reviewer"].as_str().unwrap().to_string(),
        }
    }

    /// Waits until `n` challenges are pending and returns them (oldest first).
    pub async fn pending(&self, n: usize) -> Vec<serde_json::Value> {
        for _ in 0..400 {
            let v: serde_json::Value = self
                .client()
                .get(self.url("/api/challenges?state=pending"))
                .bearer_auth(&self.token)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let list = v["challenges"].as_array().cloned().unwrap_or_default();
            if list.len() >= n {
                return list;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("{n} challenges never became pending");
    }

    /// The state of challenge `id`.
    pub async fn state_of(&self, id: &str) -> String {
        let v: serde_json::Value = self
            .client()
            .get(self.url("/api/challenges"))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["challenges"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["id"] == id)
            .map(|c| c["state"].as_str().unwrap().to_string())
            .unwrap_or_default()
    }

    /// Sends a mail through the gate as the test agent (held until decided, or with
    /// `hold: false` answered 428 at once). Returns the status and body.
    pub fn send_mail(&self, subject: &str, hold: bool) -> tokio::task::JoinHandle<(u16, String)> {
        let client = self.gate.reqwest(true);
        let mime = format!(
            "To: mallory@evil.example\r\nCc: boss@example.com\r\nSubject: {subject}\r\n\r\nThe numbers you asked for.\r\n"
        );
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(mime);
        let body = serde_json::json!({ "raw": raw }).to_string();
        tokio::spawn(async move {
            let mut req = client
                .post("https://gmail.googleapis.com/gmail/v1/users/me/messages/send")
                .header("authorization", format!("Bearer {GOOGLE_PLACEHOLDER}"))
                .header("content-type", "application/json")
                .body(body);
            if !hold {
                req = req.header("agentgate-hold", "no");
            }
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            (status, resp.text().await.unwrap())
        })
    }

    /// Opens an issue through the gate (`hold: false`: answered 428 at once).
    pub async fn open_issue(&self, title: &str, hold: bool) -> (u16, String) {
        let mut req = self
            .gate
            .reqwest(true)
            .post("https://api.github.com/repos/acme/api/issues")
            .header("authorization", format!("token {GITHUB_PLACEHOLDER}"))
            .json(&serde_json::json!({ "title": title }));
        if !hold {
            req = req.header("agentgate-hold", "no");
        }
        let resp = req.send().await.unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    }
}

/// A browser session.
#[derive(Debug, Clone)]
pub struct Session {
    /// `agentgate_session=...`
    pub cookie: String,
    /// The whole Set-Cookie header of the login.
    pub set_cookie: String,
    pub csrf: String,
    pub reviewer: String,
}

/// A response read off a raw connection.
#[derive(Debug)]
pub struct Raw {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl Raw {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    /// A header's value (first, case-insensitive), or "".
    pub fn header(&self, name: &str) -> String {
        self.head
            .lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_default()
    }
}

/// Sends one HTTP/1.1 request with exactly `headers` (Host included, as given) and `body`,
/// and reads the response (the connection is closed after it).
pub async fn raw(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Raw {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ));
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("the dashboard did not answer")
        .unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Raw {
        status,
        head: head.to_string(),
        body: decode_chunked(head, body),
    }
}

/// The body, de-chunked when the head says so.
fn decode_chunked(head: &str, body: &str) -> String {
    if !head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return body.to_string();
    }
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&after[..n]);
        rest = &after[n + 2..];
    }
    out
}

pub type Ws = WebSocketStream<TcpStream>;

/// Opens `/api/events{query}` with `headers` (a `host` among them replaces the real one).
pub async fn ws_connect(
    addr: SocketAddr,
    query: &str,
    headers: &[(&str, &str)],
) -> Result<Ws, tungstenite::Error> {
    let mut req = format!("ws://{addr}/api/events{query}")
        .into_client_request()
        .unwrap();
    for (k, v) in headers {
        req.headers_mut().insert(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    let stream = TcpStream::connect(addr).await.unwrap();
    tokio_tungstenite::client_async(req, stream)
        .await
        .map(|(ws, _)| ws)
}

/// The status a refused upgrade was answered with.
pub fn refused_status(r: Result<Ws, tungstenite::Error>) -> u16 {
    match r {
        Err(tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("the upgrade failed otherwise: {e}"),
        Ok(_) => panic!("the upgrade was accepted"),
    }
}

/// The next text message as JSON (pings are answered by the library).
pub async fn next_json(ws: &mut Ws) -> serde_json::Value {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("no message within 10 s")
            .expect("the feed closed")
            .expect("the feed failed");
        if let Message::Text(t) = msg {
            return serde_json::from_str(t.as_str()).unwrap();
        }
    }
}

/// Reads events until one satisfies `done`; returns every event read (the last included).
pub async fn events_until(
    ws: &mut Ws,
    done: impl Fn(&serde_json::Value) -> bool,
) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    loop {
        let v = next_json(ws).await;
        let stop = done(&v);
        out.push(v);
        if stop {
            return out;
        }
    }
}

/// Closes a client politely.
pub async fn ws_close(mut ws: Ws) {
    let _ = ws.close(None).await;
}
