//! The `auth0` backend: provider tokens from Auth0, by either of two routes.
//!
//! - Token Vault (`route = "token-vault"`): `POST /oauth/token` with the grant
//!   [`TOKEN_EXCHANGE_GRANT`], exchanging the user's subject token (their Auth0 refresh or
//!   access token) for the provider's access token on the configured connection.
//! - Management API (`route = "management"`): a client-credentials token for the Management
//!   API audience (cached in memory until 60 s before it expires), then
//!   `GET /api/v2/users/{id}` and the `access_token` of the identity on the connection.
//!
//! Every fetch has one deadline (`vault.timeout`) covering all its calls; 429 and 5xx answers
//! are retried with exponential backoff, honouring `Retry-After` and `x-ratelimit-reset`, until
//! the deadline. Provider tokens are fetched per request unless `cache = true`. The HTTP client
//! verifies the tenant against the system roots plus `extra_roots`, ignores proxy variables and
//! never follows redirects. The client secret is sent in the JSON body (client_secret_post).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::StatusCode;
use reqwest::header::{HeaderMap, RETRY_AFTER};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use tokio::time::Instant;
use zeroize::Zeroizing;

use super::file::{read_private_toml, read_private_toml_async};
use super::{
    Environment, Provider, Secret, TokenFuture, Vault, VaultError, deserialize_opt_secret,
    deserialize_secret, sanitize, scrub_known,
};
use crate::config::{Auth0Config, Auth0Connection, Auth0Route, SubjectTokenType, SubjectTokens};

/// The Token Vault grant type.
pub const TOKEN_EXCHANGE_GRANT: &str =
    "urn:auth0:params:oauth:grant-type:token-exchange:federated-connection-access-token";
/// The `requested_token_type` of a Token Vault exchange.
pub const FEDERATED_ACCESS_TOKEN: &str =
    "http://auth0.com/oauth/token-type/federated-connection-access-token";

/// The largest answer read from Auth0.
const MAX_BODY: usize = 1024 * 1024;
/// The first wait before retrying a 429 or 5xx; doubled each time up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Cached tokens are dropped this long before they expire.
const EXPIRY_MARGIN: Duration = Duration::from_secs(60);

/// Tokens from Auth0.
#[derive(Debug)]
pub struct Auth0Vault {
    http: reqwest::Client,
    /// `https://{domain}`.
    base: String,
    client_id: String,
    client_secret: Secret,
    route: Route,
    github: Auth0Connection,
    google: Auth0Connection,
    deadline: Duration,
    /// The Management API token; the lock is held while one is fetched, so concurrent
    /// requests wait for that fetch instead of each asking Auth0.
    management: tokio::sync::Mutex<Option<Cached>>,
    cache: Option<TokenCache>,
}

#[derive(Debug)]
enum Route {
    TokenVault {
        subject_token_type: SubjectTokenType,
        subjects: Subjects,
    },
    Management {
        audience: String,
    },
}

/// Where the users' subject tokens come from.
#[derive(Debug)]
enum Subjects {
    File(PathBuf),
    One { user: String, token: Secret },
}

#[derive(Debug, Clone)]
struct Cached {
    token: Secret,
    until: Instant,
}

/// A fetched token and, when Auth0 said, its remaining lifetime in seconds.
type Fetched = (Secret, Option<u64>);

impl Auth0Vault {
    /// Reads the client secret (and a subject token from the environment) from `env` and builds
    /// the HTTP client. `deadline` bounds each fetch.
    pub fn new(
        cfg: &Auth0Config,
        deadline: Duration,
        env: &Environment,
    ) -> Result<Auth0Vault, VaultError> {
        let client_secret = env.secret(&cfg.client_secret_env).ok_or_else(|| {
            VaultError::Config(format!(
                "vault.auth0.client_secret_env: the environment variable {} is not set",
                cfg.client_secret_env
            ))
        })?;
        let route = match &cfg.route {
            Auth0Route::TokenVault {
                subject_token_type,
                subjects,
            } => Route::TokenVault {
                subject_token_type: *subject_token_type,
                subjects: subjects_from(subjects, env)?,
            },
            Auth0Route::Management { audience } => Route::Management {
                audience: audience.clone(),
            },
        };
        Ok(Auth0Vault {
            http: http_client(cfg, deadline)?,
            base: format!("https://{}", cfg.domain),
            client_id: cfg.client_id.clone(),
            client_secret,
            route,
            github: cfg.github.clone(),
            google: cfg.google.clone(),
            deadline,
            management: tokio::sync::Mutex::new(None),
            cache: cfg.cache.then(|| TokenCache::new(cfg.cache_max_entries)),
        })
    }

    async fn fetch(&self, user: &str, provider: Provider) -> Result<Secret, VaultError> {
        if let Some(hit) = self.cache.as_ref().and_then(|c| c.get(user, provider)) {
            return Ok(hit);
        }
        let deadline = Instant::now() + self.deadline;
        let work = async {
            match &self.route {
                Route::TokenVault {
                    subject_token_type,
                    subjects,
                } => {
                    self.exchange(user, provider, *subject_token_type, subjects, deadline)
                        .await
                }
                Route::Management { audience } => {
                    self.identity_route(user, provider, audience, deadline)
                        .await
                }
            }
        };
        let (token, expires_in) =
            tokio::time::timeout_at(deadline, work)
                .await
                .map_err(|_| VaultError::Timeout {
                    after: self.deadline,
                    what: format!("Auth0 did not supply the {provider} token of {user:?} in time"),
                })??;
        if let Some(cache) = &self.cache {
            cache.put(user, provider, &token, expires_in);
        }
        tracing::debug!(%provider, user, "auth0: token fetched");
        Ok(token)
    }

    fn connection(&self, provider: Provider) -> &Auth0Connection {
        match provider {
            Provider::Github => &self.github,
            Provider::Google => &self.google,
        }
    }

    /// The Token Vault exchange.
    async fn exchange(
        &self,
        user: &str,
        provider: Provider,
        subject_token_type: SubjectTokenType,
        subjects: &Subjects,
        deadline: Instant,
    ) -> Result<Fetched, VaultError> {
        let subject = subject_token(subjects, user, provider).await?;
        let conn = self.connection(provider);
        let body = Zeroizing::new(json_body(&ExchangeRequest {
            grant_type: TOKEN_EXCHANGE_GRANT,
            client_id: &self.client_id,
            client_secret: self.client_secret.expose(),
            subject_token_type: subject_token_type.urn(),
            subject_token: subject.expose(),
            requested_token_type: FEDERATED_ACCESS_TOKEN,
            connection: &conn.connection,
            scope: conn.scope.as_deref(),
            login_hint: conn.login_hint.as_deref(),
        })?);
        let known = [self.client_secret.expose(), subject.expose()];
        let answer = self.post_token(&body, deadline, &known).await?;
        let resp: TokenResponse = answer.success(&known, "the token exchange")?;
        Ok((resp.access_token, resp.expires_in))
    }

    /// The Management API route: the user's identity on the provider's connection.
    async fn identity_route(
        &self,
        user: &str,
        provider: Provider,
        audience: &str,
        deadline: Instant,
    ) -> Result<Fetched, VaultError> {
        let url = format!("{}/api/v2/users/{}", self.base, path_segment(user));
        let mut retried = false;
        loop {
            let token = self.management_token(audience, deadline).await?;
            let known = [self.client_secret.expose(), token.expose()];
            let answer = self
                .send(
                    || {
                        self.http
                            .get(&url)
                            .bearer_auth(token.expose())
                            .header(reqwest::header::ACCEPT, "application/json")
                    },
                    deadline,
                    &known,
                )
                .await?;
            if answer.status == StatusCode::UNAUTHORIZED && !retried {
                // Revoked or rotated early: forget it and try once with a new one.
                *self.management.lock().await = None;
                retried = true;
                continue;
            }
            let doc: UserDoc = answer.success(&known, "GET /api/v2/users")?;
            return identity_token(doc, user, provider, self.connection(provider));
        }
    }

    /// The Management API token, from memory while it has more than a minute left.
    async fn management_token(
        &self,
        audience: &str,
        deadline: Instant,
    ) -> Result<Secret, VaultError> {
        let mut slot = self.management.lock().await;
        if let Some(cached) = slot.as_ref().filter(|c| c.until > Instant::now()) {
            return Ok(cached.token.clone());
        }
        *slot = None;
        let body = Zeroizing::new(json_body(&ClientCredentials {
            grant_type: "client_credentials",
            client_id: &self.client_id,
            client_secret: self.client_secret.expose(),
            audience,
        })?);
        let known = [self.client_secret.expose()];
        let answer = self.post_token(&body, deadline, &known).await?;
        let resp: TokenResponse = answer.success(&known, "the Management API token request")?;
        if let Some(until) = expiry(resp.expires_in) {
            *slot = Some(Cached {
                token: resp.access_token.clone(),
                until,
            });
        }
        Ok(resp.access_token)
    }

    async fn post_token(
        &self,
        body: &[u8],
        deadline: Instant,
        known: &[&str],
    ) -> Result<Answer, VaultError> {
        let url = format!("{}/oauth/token", self.base);
        self.send(
            || {
                self.http
                    .post(&url)
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .header(reqwest::header::ACCEPT, "application/json")
                    .body(body.to_vec())
            },
            deadline,
            known,
        )
        .await
    }

    /// Sends the request `make` builds, retrying 429 and 5xx answers while the deadline allows.
    async fn send(
        &self,
        make: impl Fn() -> reqwest::RequestBuilder,
        deadline: Instant,
        known: &[&str],
    ) -> Result<Answer, VaultError> {
        let mut backoff = FIRST_BACKOFF;
        for attempt in 1.. {
            let resp = make().send().await.map_err(|e| transport(&e, known))?;
            let status = resp.status();
            if status != StatusCode::TOO_MANY_REQUESTS && !status.is_server_error() {
                return Answer::read(resp).await;
            }
            let hinted = retry_hint(resp.headers());
            let wait = hinted.unwrap_or(backoff);
            if Instant::now() + wait >= deadline {
                let last = Answer::read(resp).await?;
                let why = match hinted {
                    Some(_) => format!(
                        "and asks to retry in {}, after the deadline",
                        humantime::format_duration(wait)
                    ),
                    None => format!("to all {attempt} attempts before the deadline"),
                };
                return Err(last.unavailable(&why, known));
            }
            tracing::debug!(%status, ?wait, attempt, "auth0: retrying");
            drop(resp);
            tokio::time::sleep(wait).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        Err(VaultError::Protocol("too many attempts".into()))
    }
}

impl Vault for Auth0Vault {
    fn token<'a>(&'a self, user: &'a str, provider: Provider) -> TokenFuture<'a> {
        Box::pin(self.fetch(user, provider))
    }
}

fn subjects_from(subjects: &SubjectTokens, env: &Environment) -> Result<Subjects, VaultError> {
    Ok(match subjects {
        SubjectTokens::File(path) => {
            read_private_toml::<SubjectFile>(path)?;
            Subjects::File(path.clone())
        }
        SubjectTokens::Env { var, user } => Subjects::One {
            user: user.clone(),
            token: env.secret(var).ok_or_else(|| {
                VaultError::Config(format!(
                    "vault.auth0.subject_token_env: the environment variable {var} is not set"
                ))
            })?,
        },
    })
}

/// The subject token of `user`.
async fn subject_token(
    subjects: &Subjects,
    user: &str,
    provider: Provider,
) -> Result<Secret, VaultError> {
    let not_found = |why: String| VaultError::NotFound {
        user: user.to_string(),
        provider,
        why,
    };
    match subjects {
        Subjects::One { user: owner, token } if owner == user => Ok(token.clone()),
        Subjects::One { user: owner, .. } => Err(not_found(format!(
            "vault.auth0.subject_token_env holds the subject token of {owner:?} only"
        ))),
        Subjects::File(path) => {
            let file: SubjectFile = read_private_toml_async(path.clone()).await?;
            match file.users.get(user) {
                Some(entry) if !entry.subject_token.is_empty() => Ok(entry.subject_token.clone()),
                _ => Err(not_found(format!(
                    "{} has no [users.{user:?}] subject_token",
                    path.display()
                ))),
            }
        }
    }
}

/// The `access_token` of the identity on `conn`'s connection.
fn identity_token(
    doc: UserDoc,
    user: &str,
    provider: Provider,
    conn: &Auth0Connection,
) -> Result<Fetched, VaultError> {
    let not_found = |why: String| VaultError::NotFound {
        user: user.to_string(),
        provider,
        why,
    };
    let Some(identity) = doc
        .identities
        .into_iter()
        .find(|i| i.connection == conn.connection)
    else {
        return Err(not_found(format!(
            "the Auth0 user has no identity on connection {:?}",
            conn.connection
        )));
    };
    match identity.access_token {
        Some(token) if !token.is_empty() => Ok((token, identity.expires_in)),
        _ => Err(not_found(format!(
            "the identity on connection {:?} carries no access_token (the client needs \
             read:users and read:user_idp_tokens, and the identity must come from a login)",
            conn.connection
        ))),
    }
}

/// `now + expires_in - margin`, or `None` when that leaves nothing.
fn expiry(expires_in: Option<u64>) -> Option<Instant> {
    let left = Duration::from_secs(expires_in?).checked_sub(EXPIRY_MARGIN)?;
    (!left.is_zero()).then(|| Instant::now() + left)
}

/// How long the server asks us to wait: `Retry-After` seconds, else `x-ratelimit-reset`
/// (Unix time).
fn retry_hint(headers: &HeaderMap) -> Option<Duration> {
    let text = |name| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(secs) = text(RETRY_AFTER.as_str()).and_then(|v| v.trim().parse::<u64>().ok()) {
        return Some(Duration::from_secs(secs));
    }
    let reset = text("x-ratelimit-reset")?.trim().parse::<u64>().ok()?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_secs();
    Some(Duration::from_secs(reset.saturating_sub(now)))
}

/// The user id as one path segment: everything but unreserved characters percent-encoded.
fn path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn json_body(value: &impl serde::Serialize) -> Result<Vec<u8>, VaultError> {
    serde_json::to_vec(value).map_err(|e| VaultError::Protocol(format!("cannot encode: {e}")))
}

fn transport(e: &reqwest::Error, known: &[&str]) -> VaultError {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    VaultError::Transport(scrub_known(&text, known, 400))
}

fn http_client(cfg: &Auth0Config, timeout: Duration) -> Result<reqwest::Client, VaultError> {
    let mut tls = crate::tls::upstream::client_config(&cfg.extra_roots, crate::tls::provider())
        .map_err(|e| VaultError::Config(format!("vault.auth0.extra_roots: {e}")))?;
    tls.alpn_protocols = crate::tls::ALPN.iter().map(|p| p.to_vec()).collect();
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .https_only(true)
        .connect_timeout(timeout)
        .user_agent(concat!("agentgate/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| VaultError::Config(format!("cannot build the Auth0 HTTP client: {e}")))
}

/// A whole answer: status and body (at most [`MAX_BODY`]), the body zeroised on drop.
struct Answer {
    status: StatusCode,
    body: Zeroizing<Vec<u8>>,
}

impl Answer {
    async fn read(mut resp: reqwest::Response) -> Result<Answer, VaultError> {
        let status = resp.status();
        let hint = resp.content_length().unwrap_or(0).min(MAX_BODY as u64);
        let mut body = Zeroizing::new(Vec::with_capacity(usize::try_from(hint).unwrap_or(0)));
        while let Some(chunk) = resp.chunk().await.map_err(|e| transport(&e, &[]))? {
            if body.len() + chunk.len() > MAX_BODY {
                return Err(VaultError::Protocol(format!(
                    "an answer larger than {MAX_BODY} bytes"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Answer { status, body })
    }

    /// The body as `T` when the status is a success; otherwise the error Auth0 gave.
    fn success<T: DeserializeOwned>(&self, known: &[&str], what: &str) -> Result<T, VaultError> {
        if !self.status.is_success() {
            return Err(self.refused(known));
        }
        // serde_json's messages may quote the input; only the position is kept.
        serde_json::from_slice(&self.body).map_err(|e| {
            VaultError::Protocol(format!(
                "{what} answered {} with unexpected JSON (line {} column {})",
                self.status.as_u16(),
                e.line(),
                e.column()
            ))
        })
    }

    /// `error`/`error_description` (Authentication API) or `errorCode`/`message` (Management
    /// API), sanitised.
    fn details(&self, known: &[&str]) -> (String, String) {
        let parsed: ErrorBody = serde_json::from_slice(&self.body).unwrap_or_default();
        let error = parsed.error_code.or(parsed.error).unwrap_or_else(|| {
            self.status
                .canonical_reason()
                .unwrap_or("error")
                .to_string()
        });
        let description = parsed
            .error_description
            .or(parsed.message)
            .unwrap_or_else(|| "(no description)".into());
        (
            sanitize(&error, known, 80),
            sanitize(&description, known, 300),
        )
    }

    fn refused(&self, known: &[&str]) -> VaultError {
        let (error, description) = self.details(known);
        VaultError::Refused {
            status: self.status.as_u16(),
            error,
            description,
        }
    }

    fn unavailable(&self, why: &str, known: &[&str]) -> VaultError {
        let (error, description) = self.details(known);
        VaultError::Unavailable {
            status: self.status.as_u16(),
            why: format!("({error}: {description}) {why}"),
        }
    }
}

#[derive(serde::Serialize)]
struct ExchangeRequest<'a> {
    grant_type: &'a str,
    client_id: &'a str,
    client_secret: &'a str,
    subject_token_type: &'a str,
    subject_token: &'a str,
    requested_token_type: &'a str,
    connection: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    scope: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    login_hint: Option<&'a str>,
}

#[derive(serde::Serialize)]
struct ClientCredentials<'a> {
    grant_type: &'a str,
    client_id: &'a str,
    client_secret: &'a str,
    audience: &'a str,
}

#[derive(Deserialize)]
struct TokenResponse {
    #[serde(deserialize_with = "deserialize_secret")]
    access_token: Secret,
    #[serde(default)]
    expires_in: Option<u64>,
}

#[derive(Default, Deserialize)]
struct ErrorBody {
    error: Option<String>,
    error_description: Option<String>,
    message: Option<String>,
    #[serde(rename = "errorCode")]
    error_code: Option<String>,
}

#[derive(Deserialize)]
struct UserDoc {
    #[serde(default)]
    identities: Vec<Identity>,
}

/// One `identities[]` entry; every other field (the refresh token among them) is skipped.
#[derive(Deserialize)]
struct Identity {
    #[serde(default)]
    connection: String,
    #[serde(default, deserialize_with = "deserialize_opt_secret")]
    access_token: Option<Secret>,
    #[serde(default)]
    expires_in: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SubjectFile {
    #[serde(default)]
    users: BTreeMap<String, SubjectEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SubjectEntry {
    #[serde(deserialize_with = "deserialize_secret")]
    subject_token: Secret,
}

/// The opt-in provider-token cache: each entry lives until `expires_in` minus a margin; at
/// most `max` entries, the soonest to expire leaving first.
#[derive(Debug)]
struct TokenCache {
    max: usize,
    entries: Mutex<HashMap<(String, Provider), Cached>>,
}

impl TokenCache {
    fn new(max: usize) -> TokenCache {
        TokenCache {
            max: max.max(1),
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn get(&self, user: &str, provider: Provider) -> Option<Secret> {
        let mut map = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let key = (user.to_string(), provider);
        match map.get(&key) {
            Some(c) if c.until > Instant::now() => Some(c.token.clone()),
            Some(_) => {
                map.remove(&key);
                None
            }
            None => None,
        }
    }

    fn put(&self, user: &str, provider: Provider, token: &Secret, expires_in: Option<u64>) {
        let Some(until) = expiry(expires_in) else {
            return;
        };
        let mut map = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let key = (user.to_string(), provider);
        if map.len() >= self.max && !map.contains_key(&key) {
            let now = Instant::now();
            map.retain(|_, c| c.until > now);
            let soonest = map
                .iter()
                .min_by_key(|(_, c)| c.until)
                .map(|(k, _)| k.clone());
            if let (true, Some(k)) = (map.len() >= self.max, soonest) {
                map.remove(&k);
            }
        }
        map.insert(
            key,
            Cached {
                token: token.clone(),
                until,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids_are_one_path_segment() {
        assert_eq!(path_segment("auth0|123"), "auth0%7C123");
        assert_eq!(
            path_segment("google-oauth2|1/2 x"),
            "google-oauth2%7C1%2F2%20x"
        );
    }

    #[test]
    fn retry_hints_prefer_retry_after_then_the_rate_limit_reset() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_hint(&h), None);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        h.insert("x-ratelimit-reset", (now + 3).to_string().parse().unwrap());
        let d = retry_hint(&h).unwrap();
        assert!(
            d >= Duration::from_secs(2) && d <= Duration::from_secs(3),
            "{d:?}"
        );
        h.insert(RETRY_AFTER, "1".parse().unwrap());
        assert_eq!(retry_hint(&h), Some(Duration::from_secs(1)));
    }

    #[test]
    fn expiry_keeps_a_margin_and_skips_short_or_unknown_lifetimes() {
        assert!(expiry(None).is_none());
        assert!(expiry(Some(60)).is_none());
        assert!(expiry(Some(30)).is_none());
        let until = expiry(Some(3600)).unwrap();
        let left = until - Instant::now();
        assert!(left <= Duration::from_secs(3540) && left > Duration::from_secs(3530));
    }

    #[tokio::test]
    async fn the_cache_is_bounded_and_forgets_expired_tokens() {
        let cache = TokenCache::new(2);
        let t = |s: &str| Secret::new(s.into());
        cache.put("a", Provider::Github, &t("ta"), Some(3600));
        cache.put("b", Provider::Github, &t("tb"), Some(600));
        cache.put("c", Provider::Github, &t("tc"), Some(7200));
        assert!(
            cache.get("b", Provider::Github).is_none(),
            "soonest to expire left"
        );
        assert_eq!(cache.get("a", Provider::Github).unwrap().expose(), "ta");
        assert_eq!(cache.get("c", Provider::Github).unwrap().expose(), "tc");
        assert!(cache.get("a", Provider::Google).is_none());
        cache.put("d", Provider::Google, &t("td"), None);
        assert!(
            cache.get("d", Provider::Google).is_none(),
            "no expires_in, no caching"
        );
        assert_eq!(cache.entries.lock().unwrap().len(), 2);
    }
}
