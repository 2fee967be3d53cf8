//! The vault backends through their config: env, file, command, and auth0 (both routes) against
//! a fake Auth0 tenant on local HTTPS that checks every request's exact shape.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentgate::config::Config;
use agentgate::vault::{self, Environment, Provider, Vault, VaultError};
use serde_json::json;
use support::auth0::*;
use support::{TempDir, TestCa};

const SECRET_VAR: &str = "FAKE_AUTH0_CLIENT_SECRET";

fn write_private(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .unwrap();
    f.write_all(text.as_bytes()).unwrap();
    path
}

fn env(extra: &[(&str, &str)]) -> Environment {
    let mut vars = BTreeMap::from([(SECRET_VAR.to_string(), CLIENT_SECRET.to_string())]);
    for (k, v) in extra {
        vars.insert(k.to_string(), v.to_string());
    }
    Environment::from_map(vars)
}

fn build(dir: &Path, toml: &str, env: Environment) -> Result<Arc<dyn Vault>, VaultError> {
    let config = Config::from_toml(toml, dir).unwrap();
    vault::build_with_env(&config.vault, env)
}

/// Display, Debug and every source of `e` are free of every secret the fake knows.
fn assert_clean(e: &VaultError, secrets: &[String]) {
    let mut texts = vec![e.to_string(), format!("{e:?}")];
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        texts.push(s.to_string());
        source = s.source();
    }
    for text in &texts {
        for secret in secrets {
            assert!(
                !text.contains(secret.as_str()),
                "{secret:?} leaked in {text}"
            );
        }
    }
}

/// A fake tenant, a scratch dir holding its CA, and the `[vault.auth0]` head for it.
struct Tenant {
    fake: FakeAuth0,
    dir: TempDir,
    _ca: TestCa,
}

impl Tenant {
    async fn start() -> Tenant {
        let ca = TestCa::new("auth0");
        let fake = FakeAuth0::start(&ca).await;
        let dir = TempDir::new("vault");
        ca.write_pem(dir.path(), "auth0-ca.pem");
        Tenant { fake, dir, _ca: ca }
    }

    /// `[vault]` with backend auth0, `timeout`, and `[vault.auth0]` with `auth0_keys` added.
    fn toml(&self, timeout: &str, auth0_keys: &str) -> String {
        format!(
            "[vault]\nbackend = \"auth0\"\ntimeout = \"{timeout}\"\n[vault.auth0]\n\
             domain = \"{}\"\nclient_id = \"{CLIENT_ID}\"\nclient_secret_env = \"{SECRET_VAR}\"\n\
             extra_roots = [\"auth0-ca.pem\"]\n{auth0_keys}",
            self.fake.domain()
        )
    }

    /// A subject-token file for alice and bob, and the token-vault keys naming it.
    fn subjects(&self, extra_users: &[(&str, &str)]) -> String {
        let mut text = String::new();
        for user in ["auth0|alice", "auth0|bob"] {
            let t = self.fake.subject_token(user);
            text.push_str(&format!("[users.\"{user}\"]\nsubject_token = \"{t}\"\n"));
        }
        for (user, t) in extra_users {
            text.push_str(&format!("[users.\"{user}\"]\nsubject_token = \"{t}\"\n"));
        }
        write_private(self.dir.path(), "subjects.toml", &text);
        "subject_token_file = \"subjects.toml\"\n".into()
    }

    fn vault(&self, timeout: &str, keys: &str) -> Arc<dyn Vault> {
        build(self.dir.path(), &self.toml(timeout, keys), env(&[])).unwrap()
    }

    fn secrets(&self) -> Vec<String> {
        self.fake.all_secrets()
    }
}

// ---------------------------------------------------------------------------------------------
// Auth0, Token Vault route

#[tokio::test]
async fn token_vault_exchange_sends_the_exact_request_shape() {
    let t = Tenant::start().await;
    let keys = format!(
        "{}[vault.auth0.github]\nscope = \"repo read:user\"\nlogin_hint = \"alice-work\"\n",
        t.subjects(&[])
    );
    let vault = t.vault("5s", &keys);

    let gh = vault.token("auth0|alice", Provider::Github).await.unwrap();
    assert_eq!(gh.expose(), t.fake.provider_token("auth0|alice", "github"));
    let google = vault.token("auth0|alice", Provider::Google).await.unwrap();
    assert_eq!(
        google.expose(),
        t.fake.provider_token("auth0|alice", "google-oauth2")
    );

    let seen = t.fake.token_requests(TOKEN_EXCHANGE_GRANT);
    assert_eq!(seen.len(), 2);
    let subject = t.fake.subject_token("auth0|alice");
    assert_eq!(
        seen[0].body,
        json!({
            "grant_type": TOKEN_EXCHANGE_GRANT,
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "subject_token_type": REFRESH_TOKEN_TYPE,
            "subject_token": subject,
            "requested_token_type": FEDERATED_ACCESS_TOKEN,
            "connection": "github",
            "scope": "repo read:user",
            "login_hint": "alice-work",
        })
    );
    assert_eq!(
        seen[1].body,
        json!({
            "grant_type": TOKEN_EXCHANGE_GRANT,
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "subject_token_type": REFRESH_TOKEN_TYPE,
            "subject_token": subject,
            "requested_token_type": FEDERATED_ACCESS_TOKEN,
            "connection": "google-oauth2",
        })
    );
    for s in &seen {
        assert_eq!(s.method, "POST");
        assert_eq!(s.headers["content-type"], "application/json");
        assert!(!s.headers.contains_key("authorization"));
        assert_eq!(s.version, http::Version::HTTP_2, "ALPN offers h2");
    }

    // No cache unless asked: every fetch is an exchange.
    vault.token("auth0|alice", Provider::Github).await.unwrap();
    assert_eq!(t.fake.token_requests(TOKEN_EXCHANGE_GRANT).len(), 3);
    assert!(t.fake.violations().is_empty(), "{:?}", t.fake.violations());
}

#[tokio::test]
async fn an_access_token_subject_from_the_environment_serves_only_its_user() {
    let t = Tenant::start().await;
    let keys = "subject_token_type = \"access_token\"\nsubject_token_env = \"BOB_AT\"\n\
                subject_user = \"auth0|bob\"\n";
    let bob_subject = t.fake.subject_token("auth0|bob");
    let vault = build(
        t.dir.path(),
        &t.toml("5s", keys),
        env(&[("BOB_AT", &bob_subject)]),
    )
    .unwrap();
    let token = vault.token("auth0|bob", Provider::Google).await.unwrap();
    assert_eq!(
        token.expose(),
        t.fake.provider_token("auth0|bob", "google-oauth2")
    );
    let seen = t.fake.token_requests(TOKEN_EXCHANGE_GRANT);
    assert_eq!(seen[0].body["subject_token_type"], ACCESS_TOKEN_TYPE);
    assert_eq!(seen[0].body["subject_token"], bob_subject.as_str());

    let e = vault
        .token("auth0|alice", Provider::Google)
        .await
        .unwrap_err();
    assert!(matches!(e, VaultError::NotFound { .. }), "{e}");
    assert_eq!(t.fake.requests().len(), 1, "nothing sent for another user");
    assert!(!format!("{vault:?}").contains(&bob_subject));
    assert!(!format!("{vault:?}").contains(CLIENT_SECRET));

    let missing = build(t.dir.path(), &t.toml("5s", keys), env(&[])).unwrap_err();
    assert!(missing.to_string().contains("BOB_AT"), "{missing}");
}

#[tokio::test]
async fn auth0_refusals_come_back_with_their_reason_and_no_token() {
    let t = Tenant::start().await;
    let keys = t.subjects(&[("auth0|mallory", "v1.MrevokedRefreshToken998877")]);
    let vault = t.vault("5s", &keys);
    let mut secrets = t.secrets();
    secrets.push("v1.MrevokedRefreshToken998877".into());

    let e = vault
        .token("auth0|bob", Provider::Github)
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("federated_connection_refresh_token_not_found"),
        "{e}"
    );
    assert!(matches!(e, VaultError::Refused { status: 401, .. }), "{e}");
    assert_clean(&e, &secrets);

    let e = vault
        .token("auth0|mallory", Provider::Github)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("invalid_grant"), "{e}");
    assert!(
        e.to_string().contains("Unknown or invalid refresh token"),
        "{e}"
    );
    assert_clean(&e, &secrets);

    // A description that echoes what was sent is cut out of the error.
    let alice_subject = t.fake.subject_token("auth0|alice");
    t.fake.push(Scripted::status(
        403,
        "unauthorized_client",
        &format!("client {CLIENT_ID} with secret {CLIENT_SECRET} may not exchange {alice_subject}"),
    ));
    let e = vault
        .token("auth0|alice", Provider::Github)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("unauthorized_client"), "{e}");
    assert!(e.to_string().contains("[redacted]"), "{e}");
    assert_clean(&e, &secrets);

    let before = t.fake.requests().len();
    let e = vault
        .token("auth0|nobody", Provider::Github)
        .await
        .unwrap_err();
    assert!(matches!(e, VaultError::NotFound { .. }), "{e}");
    assert!(e.to_string().contains("subjects.toml"), "{e}");
    assert_eq!(
        t.fake.requests().len(),
        before,
        "no subject token, no request"
    );

    // The wrong client secret.
    let wrong = build(
        t.dir.path(),
        &t.toml("5s", &keys),
        env(&[(SECRET_VAR, "not-the-secret-123456789")]),
    )
    .unwrap();
    let e = wrong
        .token("auth0|alice", Provider::Github)
        .await
        .unwrap_err();
    assert!(matches!(e, VaultError::Refused { status: 401, .. }), "{e}");
    assert!(!e.to_string().contains("not-the-secret"), "{e}");
    assert_clean(&e, &secrets);
    assert!(t.fake.violations().is_empty(), "{:?}", t.fake.violations());
}

#[tokio::test]
async fn rate_limits_and_server_errors_are_retried_within_the_deadline() {
    let t = Tenant::start().await;
    let vault = t.vault("5s", &t.subjects(&[]));
    t.fake.push(Scripted::rate_limited(Some(1)));
    t.fake.push(Scripted::status(
        503,
        "temporarily_unavailable",
        "try again",
    ));
    let started = Instant::now();
    let token = vault.token("auth0|alice", Provider::Github).await.unwrap();
    assert_eq!(
        token.expose(),
        t.fake.provider_token("auth0|alice", "github")
    );
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After honoured"
    );
    assert_eq!(t.fake.token_requests(TOKEN_EXCHANGE_GRANT).len(), 3);
    let bodies: Vec<_> = t
        .fake
        .token_requests(TOKEN_EXCHANGE_GRANT)
        .into_iter()
        .map(|s| s.body)
        .collect();
    assert!(
        bodies.windows(2).all(|w| w[0] == w[1]),
        "retries repeat the request"
    );
}

#[tokio::test]
async fn a_retry_after_past_the_deadline_fails_at_once() {
    let t = Tenant::start().await;
    let vault = t.vault("2s", &t.subjects(&[]));
    t.fake.push(Scripted::rate_limited(Some(30)));
    let started = Instant::now();
    let e = vault
        .token("auth0|alice", Provider::Github)
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "no pointless wait"
    );
    assert!(
        matches!(e, VaultError::Unavailable { status: 429, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("too_many_requests"), "{e}");
    assert_eq!(t.fake.requests().len(), 1);
}

#[tokio::test]
async fn persistent_server_errors_end_at_the_deadline() {
    let t = Tenant::start().await;
    let vault = t.vault("1s", &t.subjects(&[]));
    for _ in 0..50 {
        t.fake.push(Scripted::status(500, "server_error", "boom"));
    }
    let started = Instant::now();
    let e = vault
        .token("auth0|alice", Provider::Github)
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_millis(1500));
    assert!(
        matches!(e, VaultError::Unavailable { status: 500, .. }) || e.is_timeout(),
        "{e}"
    );
    let n = t.fake.requests().len();
    assert!((3..=6).contains(&n), "exponential backoff: {n} attempts");
}

#[tokio::test]
async fn a_slow_tenant_times_out() {
    let t = Tenant::start().await;
    let vault = t.vault("500ms", &t.subjects(&[]));
    t.fake.push(Scripted::Delay(Duration::from_secs(5)));
    let started = Instant::now();
    let e = vault
        .token("auth0|alice", Provider::Github)
        .await
        .unwrap_err();
    assert!(e.is_timeout(), "{e}");
    assert!(e.to_string().contains("500ms"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_clean(&e, &t.secrets());
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let t = Tenant::start().await;
    let vault = t.vault("5s", &t.subjects(&[]));
    t.fake.push(Scripted::Redirect(format!(
        "https://{}/elsewhere",
        t.fake.domain()
    )));
    let e = vault
        .token("auth0|alice", Provider::Github)
        .await
        .unwrap_err();
    assert!(matches!(e, VaultError::Refused { status: 302, .. }), "{e}");
    assert_eq!(t.fake.requests().len(), 1);
}

#[tokio::test]
async fn an_untrusted_tenant_certificate_is_a_transport_error() {
    let t = Tenant::start().await;
    let keys = t.subjects(&[]);
    let toml = t.toml("5s", &keys).replace(
        "extra_roots = [\"auth0-ca.pem\"]\n",
        "extra_roots = [\"other-ca.pem\"]\n",
    );
    TestCa::new("other").write_pem(t.dir.path(), "other-ca.pem");
    let vault = build(t.dir.path(), &toml, env(&[])).unwrap();
    let e = vault
        .token("auth0|alice", Provider::Github)
        .await
        .unwrap_err();
    assert!(matches!(e, VaultError::Transport(_)), "{e}");
    assert!(t.fake.requests().is_empty());
}

#[tokio::test]
async fn the_opt_in_cache_is_bounded_by_expires_in() {
    let t = Tenant::start().await;
    let keys = format!("{}cache = true\n", t.subjects(&[]));
    let vault = t.vault("5s", &keys);
    for _ in 0..3 {
        let token = vault.token("auth0|alice", Provider::Github).await.unwrap();
        assert_eq!(
            token.expose(),
            t.fake.provider_token("auth0|alice", "github")
        );
    }
    assert_eq!(t.fake.token_requests(TOKEN_EXCHANGE_GRANT).len(), 1);

    // Without expires_in, or with less than the margin left, nothing is kept.
    t.fake.set_provider_expires_in(None);
    vault.token("auth0|bob", Provider::Google).await.unwrap();
    vault.token("auth0|bob", Provider::Google).await.unwrap();
    t.fake.set_provider_expires_in(Some(30));
    vault.token("auth0|alice", Provider::Google).await.unwrap();
    vault.token("auth0|alice", Provider::Google).await.unwrap();
    assert_eq!(t.fake.token_requests(TOKEN_EXCHANGE_GRANT).len(), 5);
}

// ---------------------------------------------------------------------------------------------
// Auth0, Management API route

#[tokio::test]
async fn management_route_reads_identities_and_reuses_its_token() {
    let t = Tenant::start().await;
    let vault = t.vault("5s", "route = \"management\"\n");
    let gh = vault.token("auth0|alice", Provider::Github).await.unwrap();
    assert_eq!(gh.expose(), t.fake.provider_token("auth0|alice", "github"));
    let google = vault.token("auth0|alice", Provider::Google).await.unwrap();
    assert_eq!(
        google.expose(),
        t.fake.provider_token("auth0|alice", "google-oauth2")
    );
    let bob = vault.token("auth0|bob", Provider::Google).await.unwrap();
    assert_eq!(
        bob.expose(),
        t.fake.provider_token("auth0|bob", "google-oauth2")
    );

    let cc = t.fake.token_requests("client_credentials");
    assert_eq!(cc.len(), 1, "the management token is reused");
    assert_eq!(
        cc[0].body,
        json!({
            "grant_type": "client_credentials",
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "audience": format!("https://{}/api/v2/", t.fake.domain()),
        })
    );
    let reads = t.fake.user_reads();
    let paths: Vec<_> = reads.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/api/v2/users/auth0%7Calice",
            "/api/v2/users/auth0%7Calice",
            "/api/v2/users/auth0%7Cbob"
        ]
    );
    for r in &reads {
        assert_eq!(r.method, "GET");
        assert_eq!(r.headers["authorization"], "Bearer eyJfake.mgmt1.sig");
        assert_eq!(r.body, serde_json::Value::Null);
    }
    assert!(t.fake.token_requests(TOKEN_EXCHANGE_GRANT).is_empty());
    assert!(t.fake.violations().is_empty(), "{:?}", t.fake.violations());
}

#[tokio::test]
async fn concurrent_fetches_share_one_management_token_request() {
    let t = Tenant::start().await;
    let vault = t.vault("5s", "route = \"management\"\n");
    let (a, b, c) = tokio::join!(
        vault.token("auth0|alice", Provider::Github),
        vault.token("auth0|alice", Provider::Google),
        vault.token("auth0|bob", Provider::Google),
    );
    assert!(a.is_ok() && b.is_ok() && c.is_ok());
    assert_eq!(t.fake.token_requests("client_credentials").len(), 1);
    assert_eq!(t.fake.user_reads().len(), 3);
}

#[tokio::test]
async fn management_route_errors_and_a_revoked_management_token() {
    let t = Tenant::start().await;
    let vault = t.vault("5s", "route = \"management\"\n");
    let secrets = t.secrets();

    let e = vault
        .token("auth0|nobody", Provider::Github)
        .await
        .unwrap_err();
    assert!(matches!(e, VaultError::Refused { status: 404, .. }), "{e}");
    assert!(e.to_string().contains("inexistent_user"), "{e}");
    assert!(e.to_string().contains("The user does not exist"), "{e}");

    let e = vault
        .token("auth0|bob", Provider::Github)
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("no identity on connection \"github\""),
        "{e}"
    );

    let e = vault
        .token("auth0|carol", Provider::Github)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("read:user_idp_tokens"), "{e}");
    let all_secrets = t.secrets();
    assert_clean(&e, &all_secrets);

    // A management token revoked early: one new one is fetched and the read retried.
    t.fake.revoke_management_tokens();
    let token = vault.token("auth0|alice", Provider::Github).await.unwrap();
    assert_eq!(
        token.expose(),
        t.fake.provider_token("auth0|alice", "github")
    );
    assert_eq!(t.fake.token_requests("client_credentials").len(), 2);

    // The client-credentials request refused.
    t.fake.revoke_management_tokens();
    t.fake
        .push(Scripted::status(401, "access_denied", "Unauthorized")); // the user read
    t.fake
        .push(Scripted::status(401, "access_denied", "Unauthorized")); // the new token
    let e = vault
        .token("auth0|alice", Provider::Github)
        .await
        .unwrap_err();
    assert!(matches!(e, VaultError::Refused { status: 401, .. }), "{e}");
    assert!(e.to_string().contains("access_denied"), "{e}");
    assert_clean(&e, &secrets);
    assert_clean(&e, &t.secrets());
    assert!(t.fake.violations().is_empty(), "{:?}", t.fake.violations());
}

#[tokio::test]
async fn management_route_with_a_custom_audience() {
    let t = Tenant::start().await;
    t.fake.set_audience("https://tenant.eu.auth0.com/api/v2/");
    let vault = t.vault(
        "5s",
        "route = \"management\"\naudience = \"https://tenant.eu.auth0.com/api/v2/\"\n",
    );
    vault.token("auth0|alice", Provider::Github).await.unwrap();
    assert_eq!(
        t.fake.token_requests("client_credentials")[0].body["audience"],
        "https://tenant.eu.auth0.com/api/v2/"
    );
}

#[tokio::test]
async fn a_missing_client_secret_stops_the_build_and_names_the_variable() {
    let t = Tenant::start().await;
    let toml = t.toml("5s", "route = \"management\"\n");
    let e = build(t.dir.path(), &toml, Environment::from_map(BTreeMap::new())).unwrap_err();
    assert!(e.to_string().contains(SECRET_VAR), "{e}");
}

// ---------------------------------------------------------------------------------------------
// env, file, command

#[tokio::test]
async fn env_backend_is_the_default() {
    let dir = TempDir::new("vault-env");
    let vault = build(
        dir.path(),
        "",
        Environment::from_map(BTreeMap::from([(
            "AGENTGATE_GITHUB_TOKEN".to_string(),
            "ghp_envtoken0123456789".to_string(),
        )])),
    )
    .unwrap();
    let t = vault.token("anyone", Provider::Github).await.unwrap();
    assert_eq!(t.expose(), "ghp_envtoken0123456789");
    let e = vault.token("anyone", Provider::Google).await.unwrap_err();
    assert!(e.to_string().contains("AGENTGATE_GOOGLE_TOKEN"), "{e}");
}

/// Runs only as the child of `env_backend_reads_the_process_environment`.
#[tokio::test]
async fn env_backend_child() {
    let Ok(expected) = std::env::var("AGENTGATE_VAULT_TEST_EXPECT") else {
        return;
    };
    let vault = vault::build(&agentgate::config::VaultConfig::default()).unwrap();
    let t = vault.token("u", Provider::Github).await.unwrap();
    let google = vault.token("u", Provider::Google).await;
    println!(
        "github-matches={} google-missing={}",
        t.expose() == expected,
        google.is_err()
    );
}

#[test]
fn env_backend_reads_the_process_environment() {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "env_backend_child",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("AGENTGATE_VAULT_TEST_EXPECT", "ghp_processenv123")
        .env("AGENTGATE_GITHUB_TOKEN", "ghp_processenv123")
        .env_remove("AGENTGATE_GOOGLE_TOKEN")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("github-matches=true google-missing=true"),
        "{stdout}"
    );
}

#[tokio::test]
async fn file_backend_through_the_config() {
    let dir = TempDir::new("vault-file");
    write_private(
        dir.path(),
        "vault.toml",
        "[users.\"auth0|1\"]\ngithub = \"ghp_fromfile\"\ngoogle = \"ya29.fromfile\"\n",
    );
    let toml = "[vault]\nbackend = \"file\"\nfile = \"vault.toml\"\n";
    let vault = build(dir.path(), toml, env(&[])).unwrap();
    let t = vault.token("auth0|1", Provider::Google).await.unwrap();
    assert_eq!(t.expose(), "ya29.fromfile");
    let e = vault.token("auth0|2", Provider::Google).await.unwrap_err();
    assert!(matches!(e, VaultError::NotFound { .. }), "{e}");

    // Others may read it: the gate does not start.
    let path = dir.path().join("vault.toml");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    let e = build(dir.path(), toml, env(&[])).unwrap_err();
    assert!(matches!(e, VaultError::Permissions { .. }), "{e}");
    assert!(e.to_string().contains("chmod 600"), "{e}");
    assert!(!e.to_string().contains("ghp_fromfile"));
    // Missing altogether: nor does it.
    fs::remove_file(&path).unwrap();
    assert!(build(dir.path(), toml, env(&[])).is_err());
}

#[tokio::test]
async fn command_backend_through_the_config() {
    let dir = TempDir::new("vault-cmd");
    let toml = "[vault]\nbackend = \"command\"\ntimeout = \"400ms\"\n\
                command = [\"sh\", \"-c\", \"printf 'tok-%s-%s\\n' \\\"$1\\\" \\\"$2\\\"\", \"helper\", \"{user}\", \"{provider}\"]\n";
    let vault = build(dir.path(), toml, env(&[])).unwrap();
    let t = vault.token("auth0|9", Provider::Github).await.unwrap();
    assert_eq!(t.expose(), "tok-auth0|9-github");

    let slow = "[vault]\nbackend = \"command\"\ntimeout = \"400ms\"\n\
                command = [\"sh\", \"-c\", \"sleep 20\"]\n";
    let vault = build(dir.path(), slow, env(&[])).unwrap();
    let started = Instant::now();
    let e = vault.token("u", Provider::Github).await.unwrap_err();
    assert!(e.is_timeout(), "{e}");
    assert!(started.elapsed() < Duration::from_secs(3));
}
