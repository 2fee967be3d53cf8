//! A fake Auth0 tenant over local HTTPS (HTTP/1.1 and HTTP/2): `POST /oauth/token` for the
//! Token Vault exchange and client credentials, and `GET /api/v2/users/{id}`. It checks the
//! exact shape of every request (a mismatch is answered 400 and listed in
//! [`FakeAuth0::violations`]), answers as Auth0 does (wire-formats.md section 5), and can be
//! scripted to answer errors, 429s, 5xxs, redirects, or slowly.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::TestCa;

pub const TOKEN_EXCHANGE_GRANT: &str =
    "urn:auth0:params:oauth:grant-type:token-exchange:federated-connection-access-token";
pub const FEDERATED_ACCESS_TOKEN: &str =
    "http://auth0.com/oauth/token-type/federated-connection-access-token";
pub const REFRESH_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:refresh_token";
pub const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";

pub const CLIENT_ID: &str = "agentgate-test-client";
pub const CLIENT_SECRET: &str = "fake-client-secret-Qm9vZ2xlR2l0aHVi";

/// A user of the fake tenant.
#[derive(Debug, Clone)]
pub struct FakeUser {
    pub id: String,
    /// The Auth0 refresh token the gate exchanges (Token Vault route).
    pub subject_token: String,
    /// connection -> the provider's access token (vault and `identities[]` alike).
    pub tokens: BTreeMap<String, String>,
}

/// The users every fake starts with: alice has GitHub and Google, bob only Google, carol's
/// GitHub identity carries no access token (Management route: missing `read:user_idp_tokens`).
pub fn default_users() -> Vec<FakeUser> {
    let user = |id: &str, subject: &str, tokens: &[(&str, &str)]| FakeUser {
        id: id.into(),
        subject_token: subject.into(),
        tokens: tokens
            .iter()
            .map(|(c, t)| (c.to_string(), t.to_string()))
            .collect(),
    };
    vec![
        user(
            "auth0|alice",
            "v1.MfakeRefreshAlice7f3e9c2b1a",
            &[
                ("github", "gho_FakeAliceGithub0123456789abcdefXYZ"),
                ("google-oauth2", "ya29.FakeAliceGoogle0123456789abcdef"),
            ],
        ),
        user(
            "auth0|bob",
            "v1.MfakeRefreshBob4d5e6f7a8b",
            &[("google-oauth2", "ya29.FakeBobGoogle9876543210fedcba")],
        ),
        user(
            "auth0|carol",
            "v1.MfakeRefreshCarol11223344",
            &[("github", "")],
        ),
    ]
}

/// What the fake does with the next request instead of (or before) its normal answer.
#[derive(Debug, Clone)]
pub enum Scripted {
    /// Answer `status` with an Auth0-style error body and optional `Retry-After` seconds.
    Status {
        status: u16,
        error: String,
        description: String,
        retry_after: Option<u64>,
    },
    /// Wait this long, then answer normally.
    Delay(Duration),
    /// A redirect to `location` (the gate must not follow it).
    Redirect(String),
}

impl Scripted {
    pub fn status(status: u16, error: &str, description: &str) -> Scripted {
        Scripted::Status {
            status,
            error: error.into(),
            description: description.into(),
            retry_after: None,
        }
    }

    pub fn rate_limited(retry_after: Option<u64>) -> Scripted {
        Scripted::Status {
            status: 429,
            error: "too_many_requests".into(),
            description: "Global limit has been reached".into(),
            retry_after,
        }
    }
}

/// One request as the fake received it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    /// Path and query exactly as sent (percent-encoding kept).
    pub path: String,
    pub version: Version,
    pub headers: HeaderMap,
    /// The JSON body (`Null` when there was none).
    pub body: Value,
}

impl Seen {
    pub fn grant_type(&self) -> Option<&str> {
        self.body.get("grant_type").and_then(Value::as_str)
    }
}

#[derive(Debug)]
struct State {
    users: Vec<FakeUser>,
    script: VecDeque<Scripted>,
    seen: Vec<Seen>,
    violations: Vec<String>,
    issued_management: Vec<String>,
    revoked_management: BTreeSet<String>,
    audience: String,
    management_expires_in: u64,
    provider_expires_in: Option<u64>,
}

/// The fake tenant; its domain is `127.0.0.1:PORT`, served with a certificate from the
/// test CA given to [`FakeAuth0::start`].
pub struct FakeAuth0 {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

impl FakeAuth0 {
    pub async fn start(ca: &TestCa) -> FakeAuth0 {
        let cfg = ca.server_config(&["127.0.0.1"], &[b"h2", b"http/1.1"]);
        let acceptor = TlsAcceptor::from(Arc::new(cfg));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State {
            users: default_users(),
            script: VecDeque::new(),
            seen: Vec::new(),
            violations: Vec::new(),
            issued_management: Vec::new(),
            revoked_management: BTreeSet::new(),
            audience: format!("https://{addr}/api/v2/"),
            management_expires_in: 86400,
            provider_expires_in: Some(3600),
        }));
        let shared = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (acceptor, state) = (acceptor.clone(), shared.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(handle(req, state).await) }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        FakeAuth0 { addr, state }
    }

    /// The value for `[vault.auth0] domain`.
    pub fn domain(&self) -> String {
        self.addr.to_string()
    }

    /// The next request gets `s` (several pushes are used in order).
    pub fn push(&self, s: Scripted) {
        self.state.lock().unwrap().script.push_back(s);
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    /// Token requests with this `grant_type`.
    pub fn token_requests(&self, grant_type: &str) -> Vec<Seen> {
        self.requests()
            .into_iter()
            .filter(|s| s.path == "/oauth/token" && s.grant_type() == Some(grant_type))
            .collect()
    }

    /// `GET /api/v2/users/...` requests.
    pub fn user_reads(&self) -> Vec<Seen> {
        self.requests()
            .into_iter()
            .filter(|s| s.path.starts_with("/api/v2/users/"))
            .collect()
    }

    /// Requests whose shape was wrong, with why.
    pub fn violations(&self) -> Vec<String> {
        self.state.lock().unwrap().violations.clone()
    }

    /// Every token and secret the fake knows or issued: none may appear in an error.
    pub fn all_secrets(&self) -> Vec<String> {
        let st = self.state.lock().unwrap();
        let mut out = vec![CLIENT_SECRET.to_string()];
        for u in &st.users {
            out.push(u.subject_token.clone());
            out.extend(u.tokens.values().filter(|t| !t.is_empty()).cloned());
            out.push(idp_refresh_token(&u.id));
        }
        out.extend(st.issued_management.iter().cloned());
        out
    }

    /// Makes every Management API token issued so far invalid (answered 401).
    pub fn revoke_management_tokens(&self) {
        let mut st = self.state.lock().unwrap();
        let issued = st.issued_management.clone();
        st.revoked_management.extend(issued);
    }

    /// The `expires_in` given with provider tokens (`None`: left out).
    pub fn set_provider_expires_in(&self, secs: Option<u64>) {
        self.state.lock().unwrap().provider_expires_in = secs;
    }

    /// The audience client-credentials requests must name.
    pub fn set_audience(&self, audience: &str) {
        self.state.lock().unwrap().audience = audience.into();
    }

    /// The provider token of `user` on `connection`.
    pub fn provider_token(&self, user: &str, connection: &str) -> String {
        let st = self.state.lock().unwrap();
        st.users
            .iter()
            .find(|u| u.id == user)
            .and_then(|u| u.tokens.get(connection))
            .cloned()
            .unwrap()
    }

    pub fn subject_token(&self, user: &str) -> String {
        let st = self.state.lock().unwrap();
        st.users
            .iter()
            .find(|u| u.id == user)
            .map(|u| u.subject_token.clone())
            .unwrap()
    }
}

type Body = Full<Bytes>;

fn answer(status: u16, body: Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

fn oauth_error(status: u16, error: &str, description: &str) -> Response<Body> {
    answer(
        status,
        json!({"error": error, "error_description": description}),
    )
}

async fn handle(req: Request<Incoming>, state: Arc<Mutex<State>>) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let bytes = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let json_body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or(Value::String("<not JSON>".into()))
    };
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let scripted = {
        let mut st = state.lock().unwrap();
        st.seen.push(Seen {
            method: parts.method.to_string(),
            path: path.clone(),
            version: parts.version,
            headers: parts.headers.clone(),
            body: json_body.clone(),
        });
        st.script.pop_front()
    };
    match scripted {
        Some(Scripted::Delay(d)) => tokio::time::sleep(d).await,
        Some(Scripted::Status {
            status,
            error,
            description,
            retry_after,
        }) => {
            let mut r = oauth_error(status, &error, &description);
            if let Some(secs) = retry_after {
                r.headers_mut()
                    .insert("retry-after", secs.to_string().parse().unwrap());
            }
            return r;
        }
        Some(Scripted::Redirect(location)) => {
            return Response::builder()
                .status(302)
                .header("location", location)
                .body(Full::new(Bytes::new()))
                .unwrap();
        }
        None => {}
    }
    let mut st = state.lock().unwrap();
    match (parts.method.as_str(), path.as_str()) {
        ("POST", "/oauth/token") => token_endpoint(&mut st, &parts.headers, &json_body),
        ("GET", p) if p.starts_with("/api/v2/users/") => {
            users_endpoint(&mut st, &parts.headers, &p["/api/v2/users/".len()..])
        }
        _ => answer(404, json!({"error": "not_found"})),
    }
}

fn violation(st: &mut State, why: String) -> Response<Body> {
    st.violations.push(why.clone());
    oauth_error(400, "invalid_request", &format!("fake: {why}"))
}

/// Checks that `body` has exactly the `required` keys plus some of `optional`, all strings.
fn exact_keys(body: &Value, required: &[&str], optional: &[&str]) -> Result<(), String> {
    let Some(obj) = body.as_object() else {
        return Err("the body is not a JSON object".into());
    };
    for k in required {
        if !obj.get(*k).is_some_and(Value::is_string) {
            return Err(format!("missing or non-string {k}"));
        }
    }
    for (k, v) in obj {
        if !required.contains(&k.as_str()) && !optional.contains(&k.as_str()) {
            return Err(format!("unexpected key {k}"));
        }
        if !v.is_string() {
            return Err(format!("{k} is not a string"));
        }
    }
    Ok(())
}

fn token_endpoint(st: &mut State, headers: &HeaderMap, body: &Value) -> Response<Body> {
    let ctype = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ctype.starts_with("application/json") {
        return violation(st, format!("content-type {ctype:?}"));
    }
    if headers.contains_key("authorization") {
        return violation(st, "client auth must be in the body only".into());
    }
    let s = |k: &str| {
        body.get(k)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    match s("grant_type").as_str() {
        TOKEN_EXCHANGE_GRANT => token_exchange(st, body),
        "client_credentials" => client_credentials(st, body),
        other => oauth_error(
            400,
            "unsupported_grant_type",
            &format!("Unsupported grant type: {other}"),
        ),
    }
}

fn client_ok(body: &Value) -> bool {
    body["client_id"] == CLIENT_ID && body["client_secret"] == CLIENT_SECRET
}

fn token_exchange(st: &mut State, body: &Value) -> Response<Body> {
    let required = [
        "grant_type",
        "client_id",
        "client_secret",
        "subject_token_type",
        "subject_token",
        "requested_token_type",
        "connection",
    ];
    if let Err(why) = exact_keys(body, &required, &["scope", "login_hint"]) {
        return violation(st, format!("token exchange: {why}"));
    }
    if body["requested_token_type"] != FEDERATED_ACCESS_TOKEN {
        return violation(st, "token exchange: requested_token_type".into());
    }
    let stt = body["subject_token_type"].as_str().unwrap_or("");
    if stt != REFRESH_TOKEN_TYPE && stt != ACCESS_TOKEN_TYPE {
        return violation(st, format!("token exchange: subject_token_type {stt}"));
    }
    if !client_ok(body) {
        return oauth_error(401, "access_denied", "Unauthorized");
    }
    let subject = body["subject_token"].as_str().unwrap_or("");
    let Some(user) = st.users.iter().find(|u| u.subject_token == subject) else {
        return oauth_error(401, "invalid_grant", "Unknown or invalid refresh token.");
    };
    let connection = body["connection"].as_str().unwrap_or("");
    match user.tokens.get(connection).filter(|t| !t.is_empty()) {
        Some(token) => {
            let mut out = json!({
                "access_token": token,
                "issued_token_type": FEDERATED_ACCESS_TOKEN,
                "token_type": "Bearer",
            });
            if let Some(e) = st.provider_expires_in {
                out["expires_in"] = json!(e);
            }
            if let Some(scope) = body.get("scope") {
                out["scope"] = scope.clone();
            }
            answer(200, out)
        }
        None => oauth_error(
            401,
            "federated_connection_refresh_token_not_found",
            "Federated connection Refresh Token not found.",
        ),
    }
}

fn client_credentials(st: &mut State, body: &Value) -> Response<Body> {
    let required = ["grant_type", "client_id", "client_secret", "audience"];
    if let Err(why) = exact_keys(body, &required, &[]) {
        return violation(st, format!("client credentials: {why}"));
    }
    if body["audience"] != st.audience.as_str() {
        let why = format!("client credentials: audience {}", body["audience"]);
        return violation(st, why);
    }
    if !client_ok(body) {
        return oauth_error(401, "access_denied", "Unauthorized");
    }
    let token = format!("eyJfake.mgmt{}.sig", st.issued_management.len() + 1);
    st.issued_management.push(token.clone());
    answer(
        200,
        json!({
            "access_token": token,
            "expires_in": st.management_expires_in,
            "scope": "read:users read:user_idp_tokens",
            "token_type": "Bearer",
        }),
    )
}

fn users_endpoint(st: &mut State, headers: &HeaderMap, encoded_id: &str) -> Response<Body> {
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let valid =
        st.issued_management.iter().any(|t| t == bearer) && !st.revoked_management.contains(bearer);
    if !valid {
        return answer(
            401,
            json!({"statusCode": 401, "error": "Unauthorized", "message": "Invalid token",
                   "attributes": {"error": "Invalid token"}}),
        );
    }
    if encoded_id.contains('|') {
        return violation(st, format!("user id not percent-encoded: {encoded_id}"));
    }
    let id = percent_decode(encoded_id);
    let Some(user) = st.users.iter().find(|u| u.id == id) else {
        return answer(
            404,
            json!({"statusCode": 404, "error": "Not Found", "message": "The user does not exist.",
                   "errorCode": "inexistent_user"}),
        );
    };
    let identities: Vec<Value> = user
        .tokens
        .iter()
        .map(|(connection, token)| {
            let mut i = json!({
                "provider": connection,
                "connection": connection,
                "user_id": format!("{connection}-id-of-{}", user.id),
                "isSocial": true,
            });
            if !token.is_empty() {
                i["access_token"] = json!(token);
                i["refresh_token"] = json!(idp_refresh_token(&user.id));
                if let Some(e) = st.provider_expires_in {
                    i["expires_in"] = json!(e);
                }
            }
            i
        })
        .collect();
    answer(
        200,
        json!({"user_id": user.id, "email": "someone@example.com", "identities": identities}),
    )
}

fn idp_refresh_token(user: &str) -> String {
    format!("1//fakeIdpRefresh-{user}")
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
