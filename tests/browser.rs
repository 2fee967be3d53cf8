//! The reviewers' page in a real browser: headless Chromium, driven over the W3C WebDriver
//! protocol (chromedriver, spoken with reqwest). A reviewer logs in, a held request appears
//! without a reload, its attacker-written subject is shown as text, Approve is clicked, and
//! the held agent gets the upstream's answer.
//!
//! Needs the Debian packages `chromium` and `chromium-driver` (`.ci/run` installs them). When
//! they are missing the test fails and says so; it never skips.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/dashboard.rs"]
mod dashboard_support;
mod support;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use dashboard_support::*;
use serde_json::{Value, json};
use support::TempDir;

/// The W3C name of an element reference in WebDriver answers.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

fn find_binary(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::env::split_paths(&path).chain(["/usr/bin".into(), "/usr/lib/chromium".into()]);
    let dirs: Vec<PathBuf> = dirs.collect();
    names
        .iter()
        .flat_map(|n| dirs.iter().map(move |d| d.join(n)))
        .find(|p| p.is_file())
}

/// chromedriver, and the browser it drives.
fn browser_binaries() -> (PathBuf, PathBuf) {
    let driver = find_binary(&["chromedriver"]);
    let chromium = find_binary(&["chromium", "chromium-browser"]);
    match (driver, chromium) {
        (Some(d), Some(c)) => (d, c),
        _ => panic!(
            "the browser test needs headless Chromium and its WebDriver: \
             apt-get install -y chromium chromium-driver (.ci/run installs them)"
        ),
    }
}

/// A chromedriver process on a free loopback port. It runs in a process group of its own,
/// with the browsers it starts; dropping the driver kills the whole group, so a failing test
/// leaves no browser behind.
struct Driver {
    child: tokio::process::Child,
    base: String,
    http: reqwest::Client,
}

impl Drop for Driver {
    fn drop(&mut self) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}")])
                .stderr(Stdio::null())
                .status();
        }
    }
}

impl Driver {
    async fn start(binary: &Path, log: &Path) -> Driver {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = tokio::process::Command::new(binary)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .arg(format!("--log-path={}", log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let base = format!("http://127.0.0.1:{port}");
        for _ in 0..200 {
            let ready = http
                .get(format!("{base}/status"))
                .send()
                .await
                .ok()
                .and_then(|r| r.status().is_success().then_some(r));
            if let Some(r) = ready {
                let v: Value = r.json().await.unwrap();
                if v["value"]["ready"] == true {
                    return Driver { child, base, http };
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("chromedriver did not become ready (log: {})", log.display());
    }

    /// A headless Chromium with a fresh profile in `profile`.
    async fn session(&self, chromium: &Path, profile: &Path) -> Browser {
        let args = [
            "--headless=new".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--disable-dev-shm-usage".into(),
            "--no-proxy-server".into(),
            "--window-size=1400,1000".into(),
            format!("--user-data-dir={}", profile.display()),
        ];
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium.display().to_string(), "args": args},
        }}});
        let v = self.call("POST", "/session", Some(caps)).await;
        let id = v["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {v}"))
            .to_string();
        Browser {
            base: format!("{}/session/{id}", self.base),
            http: self.http.clone(),
        }
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        call(&self.http, method, &format!("{}{path}", self.base), body).await
    }
}

async fn call(http: &reqwest::Client, method: &str, url: &str, body: Option<Value>) -> Value {
    let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut req = http.request(m, url);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("WebDriver {url}: {e}"));
    let status = resp.status();
    let v: Value = resp.json().await.unwrap();
    assert!(
        status.is_success(),
        "WebDriver {method} {url}: {status} {v}"
    );
    v["value"].clone()
}

/// One browser session.
struct Browser {
    base: String,
    http: reqwest::Client,
}

impl Browser {
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        call(&self.http, method, &format!("{}{path}", self.base), body).await
    }

    async fn goto(&self, url: &str) {
        self.call("POST", "/url", Some(json!({"url": url}))).await;
    }

    /// Runs `script` (a function body) in the page and returns its value.
    async fn js(&self, script: &str) -> Value {
        self.call(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
        .await
    }

    /// Waits until `script` returns a truthy value, and returns it.
    async fn wait(&self, what: &str, script: &str) -> Value {
        for _ in 0..300 {
            let v = self.js(script).await;
            let truthy =
                !matches!(&v, Value::Null | Value::Bool(false)) && v != json!(0) && v != json!("");
            if truthy {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("timed out waiting for {what}");
    }

    async fn element(&self, css: &str) -> String {
        let v = self
            .call(
                "POST",
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        v[ELEMENT].as_str().unwrap().to_string()
    }

    async fn type_into(&self, css: &str, text: &str) {
        let e = self.element(css).await;
        self.call(
            "POST",
            &format!("/element/{e}/value"),
            Some(json!({"text": text})),
        )
        .await;
    }

    async fn click(&self, css: &str) {
        let e = self.element(css).await;
        self.call("POST", &format!("/element/{e}/click"), Some(json!({})))
            .await;
    }

    async fn text(&self, css: &str) -> String {
        let e = self.element(css).await;
        let v = self.call("GET", &format!("/element/{e}/text"), None).await;
        v.as_str().unwrap_or_default().to_string()
    }

    /// Saves a screenshot (for looking at the page by hand).
    async fn screenshot(&self, path: &Path) {
        use base64::Engine as _;
        let v = self.call("GET", "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap())
            .unwrap();
        std::fs::write(path, png).unwrap();
    }

    async fn quit(self) {
        let _ = self.http.delete(&self.base).send().await;
    }
}

#[tokio::test]
async fn a_reviewer_approves_a_held_request_in_the_browser() {
    let (driver_bin, chromium) = browser_binaries();
    let d = Dash::start().await;
    let scratch = TempDir::new("browser");
    let driver = Driver::start(&driver_bin, &scratch.path().join("chromedriver.log")).await;
    let profile = scratch.path().join("profile");
    std::fs::create_dir_all(&profile).unwrap();
    let b = driver.session(&chromium, &profile).await;

    // The login form, then the page with a live feed.
    b.goto(&d.url("/")).await;
    b.wait(
        "the login form",
        "return !document.getElementById('login-view').hidden",
    )
    .await;
    b.type_into("#token", &d.token).await;
    b.click("#login-submit").await;
    b.wait(
        "the feed to connect",
        "return document.getElementById('conn').textContent.startsWith('connected')",
    )
    .await;
    assert_eq!(b.text("#who").await, "reviewer");
    let marker = b.js("window.__agentgate_same_page = 1; return 1").await;
    assert_eq!(marker, json!(1));

    // A held mail appears without a reload.
    let agent = d.send_mail(HTML_SUBJECT, true);
    b.wait(
        "the held request to appear",
        "return document.querySelectorAll('#queue li.card').length === 1",
    )
    .await;
    assert_eq!(
        b.js("return window.__agentgate_same_page || 0").await,
        json!(1),
        "the page was not reloaded"
    );
    assert!(!agent.is_finished(), "the agent is held");
    assert!(d.gmail.requests().is_empty(), "nothing went upstream yet");

    // The attacker's subject is text, not markup.
    let subject = b.text("#queue li.card .subject").await;
    assert_eq!(subject, HTML_SUBJECT);
    let injected = b
        .js("return document.querySelectorAll('#queue img, #queue b, img[src=x]').length")
        .await;
    assert_eq!(injected, json!(0), "no element was made from the subject");
    let title = b.js("return document.title").await;
    assert_eq!(title, json!("(1) AgentGate"), "no script ran");
    let card = b.text("#queue li.card").await;
    assert!(card.contains("mallory@evil.example"), "{card}");
    assert!(card.contains("mail-needs-a-human"), "{card}");
    assert!(card.contains("expires in"), "{card}");
    if let Some(dir) = std::env::var_os("AGENTGATE_SCREENSHOTS") {
        b.screenshot(&Path::new(&dir).join("dashboard-pending.png"))
            .await;
    }

    // Approve: the held agent completes with the upstream's answer.
    b.type_into("#queue li.card .note", "checked with finance")
        .await;
    b.click("#queue li.card .btn-approve").await;
    let (status, body) = tokio::time::timeout(Duration::from_secs(30), agent)
        .await
        .expect("the held agent did not complete after the approval")
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let seen = d.gmail.requests();
    assert_eq!(seen.len(), 1, "forwarded once");
    assert_eq!(seen[0].path, "/gmail/v1/users/me/messages/send");
    assert_eq!(
        seen[0].headers["authorization"],
        format!("Bearer {}", support::REAL_GOOGLE_TOKEN).as_str()
    );

    // The decided item is no longer actionable, and the page says who decided.
    b.wait(
        "the queue to empty",
        "return document.querySelectorAll('#queue li.card').length === 0",
    )
    .await;
    let settled = b
        .wait(
            "the settled row",
            "const r = document.querySelector('#settled-body tr'); return r && r.textContent",
        )
        .await;
    let settled = settled.as_str().unwrap();
    assert!(settled.contains("approved"), "{settled}");
    assert!(settled.contains("checked with finance"), "{settled}");
    assert_eq!(
        b.js("return document.querySelectorAll('.btn-approve:not([disabled])').length")
            .await,
        json!(0)
    );

    // Decided elsewhere (the CLI, another reviewer): the card goes without a click or a reload.
    let agent = d.send_mail("Second thoughts", true);
    b.wait(
        "the second held request",
        "return document.querySelectorAll('#queue li.card').length === 1",
    )
    .await;
    let id = d.pending(1).await[0]["id"].as_str().unwrap().to_string();
    let resp = d
        .client()
        .post(d.url(&format!("/api/challenges/{id}/deny")))
        .bearer_auth(&d.token)
        .json(&json!({"note": "not now"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let (status, _) = agent.await.unwrap();
    assert_eq!(status, 403);
    b.wait(
        "the denied request to leave the queue",
        "return document.querySelectorAll('#queue li.card').length === 0",
    )
    .await;
    // (Element text as shown: the badge is upper-case.)
    let first_settled = b.text("#settled-body tr").await;
    assert!(first_settled.contains("DENIED"), "{first_settled}");
    assert!(first_settled.contains("not now"), "{first_settled}");
    assert_eq!(d.gmail.requests().len(), 1, "the denied mail was not sent");
    if let Some(dir) = std::env::var_os("AGENTGATE_SCREENSHOTS") {
        b.wait(
            "the decision in the feed",
            "return document.querySelector('#mini-feed .dec-approved')",
        )
        .await;
        b.screenshot(&Path::new(&dir).join("dashboard-settled.png"))
            .await;
        b.click(".tab-btn[data-tab=audit]").await;
        b.wait(
            "audit rows",
            "return document.querySelectorAll('#audit-body tr').length",
        )
        .await;
        b.screenshot(&Path::new(&dir).join("dashboard-audit.png"))
            .await;
        b.click(".tab-btn[data-tab=policy]").await;
        b.wait(
            "policy rules",
            "return document.querySelectorAll('#policy-rules-body tr').length",
        )
        .await;
        b.screenshot(&Path::new(&dir).join("dashboard-policy.png"))
            .await;
    }
    b.quit().await;
}
