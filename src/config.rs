//! Configuration: serde structs that mirror the TOML file, then a validated [`Config`].

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::actions::host::{Authority, HostError};

/// The hosts whose traffic the gate decrypts and inspects when the config does not say otherwise.
pub const DEFAULT_INTERCEPT: &[&str] = &[
    "api.github.com",
    "uploads.github.com",
    "github.com",
    "gmail.googleapis.com",
    "www.googleapis.com",
];

/// The config file `agentgate run` reads when `--config` is not given, if it exists.
pub const DEFAULT_CONFIG_FILE: &str = "agentgate.toml";

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config: {0}")]
    Invalid(String),
}

// ---------------------------------------------------------------------------------------------
// Stage 1: the file as written.

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    proxy: RawProxy,
    #[serde(default)]
    dashboard: RawDashboard,
    #[serde(default)]
    paths: RawPaths,
    #[serde(default)]
    upstream: RawUpstream,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    step_up: RawStepUp,
    #[serde(default)]
    agents: Vec<RawPrincipal>,
    #[serde(default)]
    reviewers: Vec<RawPrincipal>,
    #[serde(default)]
    vault: RawVault,
    #[serde(default)]
    github: RawGithub,
    #[serde(default)]
    placeholders: RawPlaceholders,
    #[serde(default)]
    audit: RawAudit,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlaceholders {
    /// What agents hold instead of a GitHub token (default `agentgate-placeholder-github`).
    github: Option<String>,
    /// What agents hold instead of a Google token (default `agentgate-placeholder-google`).
    google: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGithub {
    /// GitHub Enterprise Server hosts (REST under /api/v3); intercepted like github.com.
    enterprise_hosts: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProxy {
    listen: Option<String>,
    /// Hosts whose TLS the gate terminates and inspects.
    intercept: Option<Vec<String>>,
    /// Retired: blind tunnels are `net.connect` actions, decided by the policy. Kept only to
    /// say so when an old config still has it.
    tunnel_allow: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDashboard {
    listen: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPaths {
    certs: Option<PathBuf>,
    policies: Option<PathBuf>,
    data: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    #[serde(default)]
    extra_roots: Vec<PathBuf>,
    #[serde(default)]
    overrides: BTreeMap<String, String>,
    connect_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_body_bytes: Option<u64>,
    max_header_bytes: Option<usize>,
    max_headers: Option<usize>,
    max_connections: Option<usize>,
    header_read_timeout: Option<String>,
    idle_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    /// Records older than this are pruned (default "90d"; "0" keeps them forever).
    max_age: Option<String>,
    /// The oldest records are pruned while the log is larger (bytes; default 1 GiB; 0: no limit).
    max_bytes: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStepUp {
    window: Option<String>,
    /// Decided challenges are removed this long after they were settled (default "7d"; "0"
    /// keeps them forever). Pending ones are never removed.
    retention: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPrincipal {
    name: String,
    token_sha256: String,
    user: Option<String>,
}

/// `[vault]`: where the real tokens come from. Every key is optional; the default is the `env`
/// backend. A key that belongs to a backend other than the chosen one is an error.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVault {
    /// `backend = "env" | "file" | "command" | "auth0"` (default `env`). `env` reads the token
    /// for provider `github` from `AGENTGATE_GITHUB_TOKEN` and for `google` from
    /// `AGENTGATE_GOOGLE_TOKEN`, for every user.
    backend: Option<String>,
    /// `timeout = "5s"`: the deadline for fetching one token, retries included (command and
    /// auth0 backends). Default 5s.
    timeout: Option<String>,
    /// `file = "vault.toml"` (backend `file`, required): a TOML file
    /// `[users."auth0|123"] github = ".." google = ".."`, mode 0600; the gate refuses to start
    /// when group or others may read it. Read again on every fetch.
    file: Option<PathBuf>,
    /// `command = ["gh", "auth", "token"]` (backend `command`, required): a helper run without a
    /// shell on every fetch, `{user}` and `{provider}` replaced in each argument; it prints the
    /// token on stdout. A non-zero exit, empty output or the timeout is an error.
    command: Option<Vec<String>>,
    /// `[vault.auth0]` (backend `auth0`, required).
    auth0: Option<RawAuth0>,
}

/// `[vault.auth0]`: Auth0 Token Vault, or IdP tokens through the Management API.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuth0 {
    /// `domain = "tenant.eu.auth0.com"` (required): the tenant's host, optionally `host:port`;
    /// calls go to `https://{domain}/`.
    domain: String,
    /// `client_id = ".."` (required): the Auth0 application the gate authenticates as.
    client_id: String,
    /// `client_secret_env = "AGENTGATE_AUTH0_CLIENT_SECRET"` (required): the name of the
    /// environment variable that holds the client secret; never the secret itself.
    client_secret_env: String,
    /// `route = "token-vault" | "management"` (default `token-vault`). `token-vault` exchanges
    /// the user's subject token (grant
    /// `urn:auth0:params:oauth:grant-type:token-exchange:federated-connection-access-token`);
    /// `management` gets a client-credentials token for `audience` and reads
    /// `GET /api/v2/users/{id}` -> `identities[].access_token`.
    route: Option<String>,
    /// `audience = "https://{domain}/api/v2/"` (route `management`; that is the default): set it
    /// when `domain` is a custom domain, to the tenant's canonical Management API identifier.
    audience: Option<String>,
    /// `subject_token_type = "refresh_token" | "access_token"` (route `token-vault`; default
    /// `refresh_token`): what the subject tokens are.
    subject_token_type: Option<String>,
    /// `subject_token_file = "auth0-subjects.toml"` (route `token-vault`): TOML
    /// `[users."auth0|123"] subject_token = ".."`, mode 0600, read on every fetch.
    subject_token_file: Option<PathBuf>,
    /// `subject_token_env = "AGENTGATE_AUTH0_SUBJECT_TOKEN"` (route `token-vault`, instead of
    /// `subject_token_file`): the environment variable holding the subject token of the one user
    /// named by `subject_user`.
    subject_token_env: Option<String>,
    /// `subject_user = "auth0|123"`: whose subject token `subject_token_env` holds.
    subject_user: Option<String>,
    /// `[vault.auth0.github]`: `connection` (default `github`), and for route `token-vault`
    /// optional `scope` and `login_hint`.
    #[serde(default)]
    github: RawAuth0Connection,
    /// `[vault.auth0.google]`: `connection` (default `google-oauth2`), `scope`, `login_hint`.
    #[serde(default)]
    google: RawAuth0Connection,
    /// `cache = false` (default): when true, provider tokens are kept in memory until shortly
    /// before their `expires_in`; tokens without `expires_in` are never cached.
    cache: Option<bool>,
    /// `cache_max_entries = 1024`: the most (user, provider) tokens the cache holds.
    cache_max_entries: Option<usize>,
    /// `extra_roots = []`: PEM files trusted for the tenant's TLS besides the system roots.
    #[serde(default)]
    extra_roots: Vec<PathBuf>,
}

/// `[vault.auth0.github]` / `[vault.auth0.google]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuth0Connection {
    /// The Auth0 connection name (`github`, `google-oauth2`, or a custom one).
    connection: Option<String>,
    /// Space-separated subset of the granted provider scopes (Token Vault only).
    scope: Option<String>,
    /// Picks one of several linked accounts on the connection (Token Vault only).
    login_hint: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Stage 2: validated.

/// The validated configuration every component is built from.
#[derive(Debug, Clone)]
pub struct Config {
    pub proxy_listen: SocketAddr,
    pub dashboard_listen: SocketAddr,
    pub certs_dir: PathBuf,
    pub policies_dir: PathBuf,
    pub data_dir: PathBuf,
    /// Canonical (lower-case, no trailing dot) host names the gate intercepts.
    pub intercept: BTreeSet<String>,
    pub upstream: UpstreamConfig,
    pub limits: Limits,
    pub step_up_window: Duration,
    /// How long decided challenges are kept (`None`: forever).
    pub step_up_retention: Option<Duration>,
    /// How long audit records are kept.
    pub audit_retention: crate::audit::Retention,
    pub agents: Vec<Principal>,
    pub reviewers: Vec<Principal>,
    pub vault: VaultConfig,
    /// GitHub Enterprise Server hosts (also in `intercept`).
    pub github_enterprise: BTreeSet<String>,
    /// The placeholder credentials agents hold, one per provider.
    pub placeholders: crate::vault::inject::Placeholders,
}

/// How the gate reaches upstreams.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub extra_roots: Vec<PathBuf>,
    /// `host` (any port) or `host:port` (that port only) -> address to connect to instead.
    pub overrides: BTreeMap<String, String>,
    pub connect_timeout: Duration,
}

/// Resource limits, each with its own clear error when hit.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_body_bytes: u64,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 32 * 1024 * 1024,
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            max_connections: 1024,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(90),
        }
    }
}

/// A named agent or reviewer and the SHA-256 of its token.
#[derive(Debug, Clone)]
pub struct Principal {
    pub name: String,
    pub token_sha256: [u8; 32],
    pub user: Option<String>,
}

/// Where real tokens come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VaultBackend {
    Env,
    File,
    Command,
    Auth0,
}

/// The validated `[vault]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VaultConfig {
    /// The deadline for fetching one token, retries included.
    pub timeout: Duration,
    pub source: VaultSource,
}

/// A backend with the settings it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VaultSource {
    /// `AGENTGATE_GITHUB_TOKEN` / `AGENTGATE_GOOGLE_TOKEN`.
    Env,
    /// A 0600 TOML file: user -> provider -> token.
    File {
        path: PathBuf,
    },
    /// A helper's argv (non-empty), `{user}` and `{provider}` substituted.
    Command {
        argv: Vec<String>,
    },
    Auth0(Box<Auth0Config>),
}

/// The validated `[vault.auth0]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Auth0Config {
    /// `host` or `host:port`, lower-case.
    pub domain: String,
    pub client_id: String,
    /// The name of the environment variable holding the client secret.
    pub client_secret_env: String,
    pub route: Auth0Route,
    pub github: Auth0Connection,
    pub google: Auth0Connection,
    /// Opt-in provider-token cache, bounded by `expires_in` and `cache_max_entries`.
    pub cache: bool,
    pub cache_max_entries: usize,
    pub extra_roots: Vec<PathBuf>,
}

/// How provider tokens are obtained from Auth0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth0Route {
    /// The Token Vault exchange of a user's subject token.
    TokenVault {
        subject_token_type: SubjectTokenType,
        subjects: SubjectTokens,
    },
    /// A client-credentials token for `audience`, then the user's `identities[]`.
    Management { audience: String },
}

/// What a Token Vault subject token is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubjectTokenType {
    RefreshToken,
    AccessToken,
}

impl SubjectTokenType {
    /// The `subject_token_type` URN sent to Auth0.
    pub fn urn(self) -> &'static str {
        match self {
            SubjectTokenType::RefreshToken => "urn:ietf:params:oauth:token-type:refresh_token",
            SubjectTokenType::AccessToken => "urn:ietf:params:oauth:token-type:access_token",
        }
    }
}

/// Where the users' subject tokens are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubjectTokens {
    /// A 0600 TOML file `[users."auth0|123"] subject_token = ".."`.
    File(PathBuf),
    /// One environment variable holding the subject token of `user`.
    Env { var: String, user: String },
}

/// The Auth0 connection for one provider, and Token Vault request options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Auth0Connection {
    pub connection: String,
    pub scope: Option<String>,
    pub login_hint: Option<String>,
}

impl VaultConfig {
    /// Which backend this is.
    pub fn backend(&self) -> VaultBackend {
        match self.source {
            VaultSource::Env => VaultBackend::Env,
            VaultSource::File { .. } => VaultBackend::File,
            VaultSource::Command { .. } => VaultBackend::Command,
            VaultSource::Auth0(_) => VaultBackend::Auth0,
        }
    }
}

impl Default for VaultConfig {
    fn default() -> Self {
        VaultConfig {
            timeout: DEFAULT_VAULT_TIMEOUT,
            source: VaultSource::Env,
        }
    }
}

/// `vault.timeout` when the file does not set it.
pub const DEFAULT_VAULT_TIMEOUT: Duration = Duration::from_secs(5);

impl Config {
    /// Loads `path`; relative paths in it are taken from the file's directory.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::from_toml(&text, base).map_err(|e| match e {
            ConfigError::Invalid(message) => ConfigError::Parse {
                path: path.to_path_buf(),
                message,
            },
            other => other,
        })
    }

    /// `--config FILE` when given; else `agentgate.toml` in the working directory if present;
    /// else the built-in defaults.
    pub fn load_or_default(path: Option<&Path>) -> Result<Config, ConfigError> {
        match path {
            Some(p) => Self::load(p),
            None if Path::new(DEFAULT_CONFIG_FILE).exists() => {
                Self::load(Path::new(DEFAULT_CONFIG_FILE))
            }
            None => Self::from_toml("", Path::new(".")),
        }
    }

    /// Parses and validates TOML text; relative paths are joined to `base`.
    pub fn from_toml(text: &str, base: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig =
            toml::from_str(text).map_err(|e| ConfigError::Invalid(e.message().to_string()))?;
        validate(raw, base)
    }

    /// The config of an empty file, with paths under `base` (tests and tools).
    pub fn defaults_in(base: &Path) -> Config {
        // An empty file always validates; the fallback keeps this function total regardless.
        Self::from_toml("", base).unwrap_or_else(|_| fallback(base))
    }
}

fn fallback(base: &Path) -> Config {
    Config {
        proxy_listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
        dashboard_listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
        certs_dir: base.join("certs"),
        policies_dir: base.join("policies"),
        data_dir: base.join("data"),
        intercept: DEFAULT_INTERCEPT.iter().map(|h| h.to_string()).collect(),
        upstream: UpstreamConfig {
            extra_roots: Vec::new(),
            overrides: BTreeMap::new(),
            connect_timeout: Duration::from_secs(10),
        },
        limits: Limits::default(),
        step_up_window: Duration::from_secs(15 * 60),
        step_up_retention: Some(Duration::from_secs(7 * 24 * 3600)),
        audit_retention: crate::audit::Retention::default(),
        agents: Vec::new(),
        reviewers: Vec::new(),
        vault: VaultConfig::default(),
        github_enterprise: BTreeSet::new(),
        placeholders: Default::default(),
    }
}

fn validate(raw: RawConfig, base: &Path) -> Result<Config, ConfigError> {
    let mut cfg = fallback(base);
    if let Some(l) = raw.proxy.listen {
        cfg.proxy_listen = parse_addr("proxy.listen", &l)?;
    }
    if let Some(l) = raw.dashboard.listen {
        cfg.dashboard_listen = parse_addr("dashboard.listen", &l)?;
    }
    let join = |p: Option<PathBuf>, default: PathBuf| p.map(|p| base.join(p)).unwrap_or(default);
    cfg.certs_dir = join(raw.paths.certs, cfg.certs_dir);
    cfg.policies_dir = join(raw.paths.policies, cfg.policies_dir);
    cfg.data_dir = join(raw.paths.data, cfg.data_dir);
    if let Some(hosts) = raw.proxy.intercept {
        cfg.intercept = hosts
            .iter()
            .map(|h| canonical_host("proxy.intercept", h))
            .collect::<Result<_, _>>()?;
    }
    if raw.proxy.tunnel_allow.is_some() {
        return Err(ConfigError::Invalid(
            "proxy.tunnel_allow is retired: tunnels are `net.connect` actions decided by the policy; \
             write e.g. `allow \"pypi\" on net.connect when host == \"pypi.org\" and params.port == 443;` \
             in a file under policies/"
                .into(),
        ));
    }
    if let Some(hosts) = raw.github.enterprise_hosts {
        cfg.github_enterprise = hosts
            .iter()
            .map(|h| canonical_host("github.enterprise_hosts", h))
            .collect::<Result<_, _>>()?;
        cfg.intercept.extend(cfg.github_enterprise.iter().cloned());
    }
    cfg.upstream = upstream(raw.upstream, base)?;
    cfg.limits = limits(raw.limits)?;
    if let Some(w) = raw.step_up.window {
        cfg.step_up_window = parse_duration("step_up.window", &w)?;
    }
    if let Some(r) = &raw.step_up.retention {
        cfg.step_up_retention = match r.trim() {
            "0" => None,
            r => Some(parse_duration("step_up.retention", r)?),
        };
    }
    if let Some(age) = &raw.audit.max_age {
        cfg.audit_retention.max_age = match age.trim() {
            "0" => None,
            a => Some(parse_duration("audit.max_age", a)?),
        };
    }
    if let Some(bytes) = raw.audit.max_bytes {
        cfg.audit_retention.max_bytes = (bytes > 0).then_some(bytes);
    }
    cfg.agents = principals("agents", raw.agents)?;
    cfg.reviewers = principals("reviewers", raw.reviewers)?;
    cfg.vault = vault(raw.vault, base)?;
    cfg.placeholders = placeholders(raw.placeholders)?;
    Ok(cfg)
}

fn parse_addr(key: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    value.parse().map_err(|_| {
        ConfigError::Invalid(format!(
            "{key} = {value:?}: expected an IP address and port such as \"127.0.0.1:8080\""
        ))
    })
}

fn parse_duration(key: &str, value: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(value).map_err(|e| {
        ConfigError::Invalid(format!(
            "{key} = {value:?}: {e} (write a duration such as \"30s\", \"15m\")"
        ))
    })
}

fn placeholders(raw: RawPlaceholders) -> Result<crate::vault::inject::Placeholders, ConfigError> {
    let mut p = crate::vault::inject::Placeholders::default();
    for (key, value, slot) in [
        ("placeholders.github", raw.github, &mut p.github),
        ("placeholders.google", raw.google, &mut p.google),
    ] {
        if let Some(v) = value {
            // It travels in headers, Basic pairs and URLs: visible ASCII, no ':' or spaces.
            let ok = (8..=256).contains(&v.len())
                && v.bytes().all(|b| {
                    b.is_ascii_graphic() && !matches!(b, b':' | b'&' | b'=' | b'%' | b'+')
                });
            if !ok {
                return Err(ConfigError::Invalid(format!(
                    "{key} = {v:?}: a placeholder is 8 to 256 visible ASCII characters without ':', '&', '=', '%' or '+'"
                )));
            }
            *slot = v;
        }
    }
    if p.github == p.google {
        return Err(ConfigError::Invalid(
            "placeholders.github and placeholders.google must differ".into(),
        ));
    }
    Ok(p)
}

fn canonical_host(key: &str, value: &str) -> Result<String, ConfigError> {
    crate::actions::host::canonical_host(value)
        .map_err(|e: HostError| ConfigError::Invalid(format!("{key}: {value:?}: {e}")))
}

fn upstream(raw: RawUpstream, base: &Path) -> Result<UpstreamConfig, ConfigError> {
    let mut overrides = BTreeMap::new();
    for (key, target) in raw.overrides {
        let canonical_key = match Authority::parse(&key, None) {
            Ok(a) => a.to_string(),
            Err(_) => canonical_host("upstream.overrides", &key)?,
        };
        if Authority::parse(&target, None).is_err() {
            return Err(ConfigError::Invalid(format!(
                "upstream.overrides.{key:?} = {target:?}: expected host:port"
            )));
        }
        overrides.insert(canonical_key, target);
    }
    Ok(UpstreamConfig {
        extra_roots: raw.extra_roots.into_iter().map(|p| base.join(p)).collect(),
        overrides,
        connect_timeout: match raw.connect_timeout {
            Some(t) => parse_duration("upstream.connect_timeout", &t)?,
            None => Duration::from_secs(10),
        },
    })
}

fn limits(raw: RawLimits) -> Result<Limits, ConfigError> {
    let d = Limits::default();
    let at_least = |key: &str, v: usize, min: usize| {
        if v < min {
            Err(ConfigError::Invalid(format!(
                "limits.{key} = {v}: must be at least {min}"
            )))
        } else {
            Ok(v)
        }
    };
    Ok(Limits {
        max_body_bytes: raw.max_body_bytes.unwrap_or(d.max_body_bytes),
        // hyper's smallest read buffer is 8 KiB.
        max_header_bytes: at_least(
            "max_header_bytes",
            raw.max_header_bytes.unwrap_or(d.max_header_bytes),
            8192,
        )?,
        max_headers: at_least("max_headers", raw.max_headers.unwrap_or(d.max_headers), 1)?,
        max_connections: at_least(
            "max_connections",
            raw.max_connections.unwrap_or(d.max_connections),
            1,
        )?,
        header_read_timeout: match raw.header_read_timeout {
            Some(t) => parse_duration("limits.header_read_timeout", &t)?,
            None => d.header_read_timeout,
        },
        idle_timeout: match raw.idle_timeout {
            Some(t) => parse_duration("limits.idle_timeout", &t)?,
            None => d.idle_timeout,
        },
    })
}

fn vault(raw: RawVault, base: &Path) -> Result<VaultConfig, ConfigError> {
    let backend = match raw.backend.as_deref() {
        None | Some("env") => VaultBackend::Env,
        Some("file") => VaultBackend::File,
        Some("command") => VaultBackend::Command,
        Some("auth0") => VaultBackend::Auth0,
        Some(other) => {
            return Err(ConfigError::Invalid(format!(
                "vault.backend = {other:?}: expected one of env, file, command, auth0"
            )));
        }
    };
    let timeout = match raw.timeout {
        Some(t) => parse_duration("vault.timeout", &t)?,
        None => DEFAULT_VAULT_TIMEOUT,
    };
    if timeout.is_zero() {
        return Err(invalid("vault.timeout must be longer than zero"));
    }
    only_with(
        backend,
        VaultBackend::File,
        "vault.file",
        raw.file.is_some(),
    )?;
    only_with(
        backend,
        VaultBackend::Command,
        "vault.command",
        raw.command.is_some(),
    )?;
    only_with(
        backend,
        VaultBackend::Auth0,
        "[vault.auth0]",
        raw.auth0.is_some(),
    )?;
    let source = match backend {
        VaultBackend::Env => VaultSource::Env,
        VaultBackend::File => VaultSource::File {
            path: base.join(raw.file.ok_or_else(|| {
                invalid("vault.backend = \"file\" needs vault.file = \"vault.toml\"")
            })?),
        },
        VaultBackend::Command => VaultSource::Command {
            argv: vault_command(raw.command)?,
        },
        VaultBackend::Auth0 => {
            let raw = raw.auth0.ok_or_else(|| {
                invalid(
                    "vault.backend = \"auth0\" needs a [vault.auth0] table with domain, \
                     client_id and client_secret_env",
                )
            })?;
            VaultSource::Auth0(Box::new(auth0(raw, base)?))
        }
    };
    Ok(VaultConfig { timeout, source })
}

fn invalid(message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid(message.into())
}

/// Refuses a key set for a backend other than the chosen one (a likely mistake).
fn only_with(
    backend: VaultBackend,
    owner: VaultBackend,
    key: &str,
    present: bool,
) -> Result<(), ConfigError> {
    if present && backend != owner {
        let name = format!("{owner:?}").to_lowercase();
        return Err(invalid(format!(
            "{key} is only used with vault.backend = {name:?}"
        )));
    }
    Ok(())
}

fn vault_command(argv: Option<Vec<String>>) -> Result<Vec<String>, ConfigError> {
    let argv = argv.unwrap_or_default();
    match argv.first() {
        Some(program) if !program.trim().is_empty() => Ok(argv),
        _ => Err(invalid(
            "vault.backend = \"command\" needs vault.command = [\"program\", \"arg\", ..], e.g. [\"gh\", \"auth\", \"token\"]",
        )),
    }
}

fn auth0(raw: RawAuth0, base: &Path) -> Result<Auth0Config, ConfigError> {
    let domain = auth0_domain(&raw.domain)?;
    for (key, value) in [
        ("client_id", &raw.client_id),
        ("client_secret_env", &raw.client_secret_env),
    ] {
        if value.trim().is_empty() {
            return Err(invalid(format!("vault.auth0.{key} must not be empty")));
        }
    }
    env_name("vault.auth0.client_secret_env", &raw.client_secret_env)?;
    let route = match raw.route.as_deref() {
        None | Some("token-vault") => token_vault_route(&raw, base)?,
        Some("management") => management_route(&raw, &domain)?,
        Some(other) => {
            return Err(invalid(format!(
                "vault.auth0.route = {other:?}: expected \"token-vault\" or \"management\""
            )));
        }
    };
    let management = matches!(route, Auth0Route::Management { .. });
    let cache_max_entries = raw.cache_max_entries.unwrap_or(1024);
    if cache_max_entries == 0 {
        return Err(invalid("vault.auth0.cache_max_entries must be at least 1"));
    }
    Ok(Auth0Config {
        github: auth0_connection("github", raw.github, "github", management)?,
        google: auth0_connection("google", raw.google, "google-oauth2", management)?,
        domain,
        client_id: raw.client_id,
        client_secret_env: raw.client_secret_env,
        route,
        cache: raw.cache.unwrap_or(false),
        cache_max_entries,
        extra_roots: raw.extra_roots.into_iter().map(|p| base.join(p)).collect(),
    })
}

/// `host` or `host:port`: no scheme, path, user info or query.
fn auth0_domain(value: &str) -> Result<String, ConfigError> {
    let bad = || {
        invalid(format!(
            "vault.auth0.domain = {value:?}: expected the tenant's host such as \"tenant.eu.auth0.com\" (optionally host:port), without https:// or a path"
        ))
    };
    if value.contains(['/', '@', '?', '#']) {
        return Err(bad());
    }
    match Authority::parse(value, None) {
        Ok(a) if a.port == 443 => Ok(a.uri_host()),
        Ok(a) => Ok(format!("{}:{}", a.uri_host(), a.port)),
        Err(_) => crate::actions::host::canonical_host(value).map_err(|_| bad()),
    }
}

fn env_name(key: &str, value: &str) -> Result<(), ConfigError> {
    let ok = value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && value.bytes().next().is_some_and(|b| !b.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "{key} = {value:?}: expected the name of an environment variable (letters, digits, _), not its value"
        )))
    }
}

fn token_vault_route(raw: &RawAuth0, base: &Path) -> Result<Auth0Route, ConfigError> {
    if raw.audience.is_some() {
        return Err(invalid(
            "vault.auth0.audience is only used with route = \"management\"",
        ));
    }
    let subject_token_type = match raw.subject_token_type.as_deref() {
        None | Some("refresh_token") => SubjectTokenType::RefreshToken,
        Some("access_token") => SubjectTokenType::AccessToken,
        Some(other) => {
            return Err(invalid(format!(
                "vault.auth0.subject_token_type = {other:?}: expected \"refresh_token\" or \"access_token\""
            )));
        }
    };
    let subjects = match (
        &raw.subject_token_file,
        &raw.subject_token_env,
        &raw.subject_user,
    ) {
        (Some(file), None, None) => SubjectTokens::File(base.join(file)),
        (None, Some(var), Some(user)) if !user.is_empty() => {
            env_name("vault.auth0.subject_token_env", var)?;
            SubjectTokens::Env {
                var: var.clone(),
                user: user.clone(),
            }
        }
        (None, Some(_), _) => {
            return Err(invalid(
                "vault.auth0.subject_token_env needs subject_user = \"auth0|..\": the one user whose subject token the variable holds",
            ));
        }
        (None, None, Some(_)) => {
            return Err(invalid(
                "vault.auth0.subject_user is only used with subject_token_env",
            ));
        }
        (None, None, None) => {
            return Err(invalid(
                "vault.auth0 route \"token-vault\" needs subject_token_file = \"..\" (or subject_token_env and subject_user)",
            ));
        }
        (Some(_), Some(_), _) | (Some(_), None, Some(_)) => {
            return Err(invalid(
                "vault.auth0: set subject_token_file or subject_token_env (with subject_user), not both",
            ));
        }
    };
    Ok(Auth0Route::TokenVault {
        subject_token_type,
        subjects,
    })
}

fn management_route(raw: &RawAuth0, domain: &str) -> Result<Auth0Route, ConfigError> {
    for (key, set) in [
        ("subject_token_type", raw.subject_token_type.is_some()),
        ("subject_token_file", raw.subject_token_file.is_some()),
        ("subject_token_env", raw.subject_token_env.is_some()),
        ("subject_user", raw.subject_user.is_some()),
    ] {
        if set {
            return Err(invalid(format!(
                "vault.auth0.{key} is only used with route = \"token-vault\""
            )));
        }
    }
    let audience = match &raw.audience {
        Some(a) if a.starts_with("https://") && a.ends_with('/') => a.clone(),
        Some(a) => {
            return Err(invalid(format!(
                "vault.auth0.audience = {a:?}: expected the Management API identifier, such as \"https://tenant.eu.auth0.com/api/v2/\""
            )));
        }
        None => format!("https://{domain}/api/v2/"),
    };
    Ok(Auth0Route::Management { audience })
}

fn auth0_connection(
    provider: &str,
    raw: RawAuth0Connection,
    default: &str,
    management: bool,
) -> Result<Auth0Connection, ConfigError> {
    if management && (raw.scope.is_some() || raw.login_hint.is_some()) {
        return Err(invalid(format!(
            "vault.auth0.{provider}: scope and login_hint are only used with route = \"token-vault\""
        )));
    }
    let connection = raw.connection.unwrap_or_else(|| default.to_string());
    if connection.trim().is_empty() {
        return Err(invalid(format!(
            "vault.auth0.{provider}.connection must not be empty"
        )));
    }
    Ok(Auth0Connection {
        connection,
        scope: raw.scope,
        login_hint: raw.login_hint,
    })
}

fn principals(key: &str, raw: Vec<RawPrincipal>) -> Result<Vec<Principal>, ConfigError> {
    let mut seen = BTreeSet::new();
    raw.into_iter()
        .map(|p| {
            if !seen.insert(p.name.clone()) {
                return Err(ConfigError::Invalid(format!(
                    "{key}: the name {:?} is used twice",
                    p.name
                )));
            }
            let mut digest = [0u8; 32];
            hex::decode_to_slice(p.token_sha256.trim(), &mut digest).map_err(|_| {
                ConfigError::Invalid(format!(
                    "{key} {:?}: token_sha256 must be 64 hex digits (the SHA-256 of the token)",
                    p.name
                ))
            })?;
            Ok(Principal {
                name: p.name,
                token_sha256: digest,
                user: p.user,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_defaults() {
        let c = Config::from_toml("", Path::new("/srv")).unwrap();
        assert_eq!(c.proxy_listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.dashboard_listen.to_string(), "127.0.0.1:8081");
        assert_eq!(c.certs_dir, Path::new("/srv/certs"));
        assert_eq!(c.limits.max_body_bytes, 32 * 1024 * 1024);
        assert!(c.intercept.contains("gmail.googleapis.com"));
        assert_eq!(c.step_up_window, Duration::from_secs(900));
        assert_eq!(
            c.step_up_retention,
            Some(Duration::from_secs(7 * 24 * 3600))
        );
    }

    #[test]
    fn step_up_retention_is_a_duration_or_zero_for_forever() {
        let c = Config::from_toml("[step_up]\nretention = \"30d\"", Path::new(".")).unwrap();
        assert_eq!(
            c.step_up_retention,
            Some(Duration::from_secs(30 * 24 * 3600))
        );
        let c = Config::from_toml("[step_up]\nretention = \"0\"", Path::new(".")).unwrap();
        assert_eq!(c.step_up_retention, None);
        let e = Config::from_toml("[step_up]\nretention = \"a while\"", Path::new("."));
        assert!(e.unwrap_err().to_string().contains("step_up.retention"));
    }

    #[test]
    fn design_example_parses() {
        let text = r#"
[proxy]
listen = "127.0.0.1:8080"
[dashboard]
listen = "127.0.0.1:8081"
[paths]
certs = "certs"
policies = "policies"
data = "data"
[upstream]
extra_roots = []
[upstream.overrides]
"API.GitHub.com." = "127.0.0.1:9443"
[step_up]
window = "15m"
[[agents]]
name = "coder"
token_sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
user = "auth0|123"
[[reviewers]]
name = "alice"
token_sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
[vault]
backend = "env"
"#;
        let c = Config::from_toml(text, Path::new(".")).unwrap();
        assert_eq!(c.upstream.overrides["api.github.com"], "127.0.0.1:9443");
        assert_eq!(c.agents[0].user.as_deref(), Some("auth0|123"));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused_with_the_key_named() {
        let e = Config::from_toml("[proxy]\nlisten_on = \"x\"", Path::new("."));
        assert!(e.unwrap_err().to_string().contains("listen_on"));
        let e = Config::from_toml("[proxy]\nlisten = \"localhost\"", Path::new("."));
        assert!(e.unwrap_err().to_string().contains("proxy.listen"));
        let e = Config::from_toml("[step_up]\nwindow = \"soon\"", Path::new("."));
        assert!(e.unwrap_err().to_string().contains("step_up.window"));
        let e = Config::from_toml("[limits]\nmax_header_bytes = 100", Path::new("."));
        assert!(e.unwrap_err().to_string().contains("at least 8192"));
        let e = Config::from_toml("[proxy]\nintercept = [\"a b\"]", Path::new("."));
        assert!(e.unwrap_err().to_string().contains("proxy.intercept"));
    }

    #[test]
    fn enterprise_hosts_are_intercepted() {
        let c = Config::from_toml(
            "[github]\nenterprise_hosts = [\"GitHub.Acme.Corp\"]",
            Path::new("."),
        )
        .unwrap();
        assert!(c.github_enterprise.contains("github.acme.corp"));
        assert!(c.intercept.contains("github.acme.corp"));
        assert!(c.intercept.contains("api.github.com"));
    }

    fn vault_of(text: &str) -> Result<VaultConfig, String> {
        Config::from_toml(text, Path::new("/etc/gate"))
            .map(|c| c.vault)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn vault_defaults_to_env_and_each_backend_takes_its_keys() {
        let v = vault_of("").unwrap();
        assert_eq!(v.backend(), VaultBackend::Env);
        assert_eq!(v.timeout, Duration::from_secs(5));
        let v = vault_of("[vault]\nbackend = \"file\"\nfile = \"vault.toml\"\ntimeout = \"2s\"")
            .unwrap();
        assert_eq!(
            v.source,
            VaultSource::File {
                path: PathBuf::from("/etc/gate/vault.toml")
            }
        );
        assert_eq!(v.timeout, Duration::from_secs(2));
        let v = vault_of(
            "[vault]\nbackend = \"command\"\ncommand = [\"gh\", \"auth\", \"token\", \"--user\", \"{user}\"]",
        )
        .unwrap();
        assert_eq!(v.backend(), VaultBackend::Command);
    }

    #[test]
    fn auth0_token_vault_and_management_routes() {
        let v = vault_of(
            r#"
[vault]
backend = "auth0"
[vault.auth0]
domain = "Tenant.EU.Auth0.com"
client_id = "cid"
client_secret_env = "AGENTGATE_AUTH0_CLIENT_SECRET"
subject_token_file = "subjects.toml"
cache = true
[vault.auth0.github]
scope = "repo"
[vault.auth0.google]
connection = "google-work"
login_hint = "me@example.com"
"#,
        )
        .unwrap();
        let VaultSource::Auth0(a) = v.source else {
            panic!("not auth0")
        };
        assert_eq!(a.domain, "tenant.eu.auth0.com");
        assert_eq!(
            a.route,
            Auth0Route::TokenVault {
                subject_token_type: SubjectTokenType::RefreshToken,
                subjects: SubjectTokens::File(PathBuf::from("/etc/gate/subjects.toml")),
            }
        );
        assert_eq!(a.github.connection, "github");
        assert_eq!(a.github.scope.as_deref(), Some("repo"));
        assert_eq!(a.google.connection, "google-work");
        assert!(a.cache);
        assert_eq!(a.cache_max_entries, 1024);

        let v = vault_of(
            "[vault]\nbackend = \"auth0\"\n[vault.auth0]\ndomain = \"t.auth0.com:8443\"\nclient_id = \"c\"\nclient_secret_env = \"S\"\nroute = \"management\"",
        )
        .unwrap();
        let VaultSource::Auth0(a) = v.source else {
            panic!("not auth0")
        };
        assert_eq!(
            a.route,
            Auth0Route::Management {
                audience: "https://t.auth0.com:8443/api/v2/".into()
            }
        );
        assert_eq!(a.google.connection, "google-oauth2");
    }

    #[test]
    fn vault_mistakes_are_refused_with_the_key_named() {
        let auth0 = |extra: &str| {
            vault_of(&format!(
                "[vault]\nbackend = \"auth0\"\n[vault.auth0]\nclient_id = \"c\"\n{extra}"
            ))
            .unwrap_err()
        };
        let ok_base = "domain = \"t.auth0.com\"\nclient_secret_env = \"S\"\n";
        let cases = [
            (
                vault_of("[vault]\nbackend = \"file\"").unwrap_err(),
                "vault.file",
            ),
            (
                vault_of("[vault]\nfile = \"v.toml\"").unwrap_err(),
                "only used with vault.backend = \"file\"",
            ),
            (
                vault_of("[vault]\nbackend = \"command\"\ncommand = []").unwrap_err(),
                "vault.command",
            ),
            (
                vault_of("[vault]\nbackend = \"auth0\"").unwrap_err(),
                "[vault.auth0]",
            ),
            (
                vault_of("[vault]\ntimeout = \"0s\"").unwrap_err(),
                "vault.timeout",
            ),
            (vault_of("[vault]\nsecret = 1").unwrap_err(), "secret"),
            (
                auth0(
                    "domain = \"https://t.auth0.com/\"\nclient_secret_env = \"S\"\nsubject_token_file = \"s\"",
                ),
                "vault.auth0.domain",
            ),
            (
                auth0(
                    "domain = \"t.auth0.com\"\nclient_secret_env = \"abc-DEF.123\"\nsubject_token_file = \"s\"",
                ),
                "not its value",
            ),
            (auth0(ok_base), "subject_token_file"),
            (
                auth0(&format!("{ok_base}subject_token_env = \"RT\"")),
                "subject_user",
            ),
            (
                auth0(&format!(
                    "{ok_base}subject_token_file = \"s\"\nsubject_token_env = \"RT\"\nsubject_user = \"u\""
                )),
                "not both",
            ),
            (
                auth0(&format!(
                    "{ok_base}route = \"management\"\nsubject_token_file = \"s\""
                )),
                "subject_token_file is only used with route",
            ),
            (
                auth0(&format!(
                    "{ok_base}route = \"management\"\n[vault.auth0.github]\nscope = \"repo\""
                )),
                "scope and login_hint",
            ),
            (
                auth0(&format!(
                    "{ok_base}subject_token_file = \"s\"\nclient_secret = \"x\""
                )),
                "client_secret",
            ),
            (
                auth0(&format!("{ok_base}route = \"mgmt\"")),
                "vault.auth0.route",
            ),
        ];
        for (err, needle) in cases {
            assert!(err.contains(needle), "{needle:?} not in {err}");
        }
    }

    #[test]
    fn the_retired_tunnel_allow_says_what_replaced_it() {
        let e = Config::from_toml("[proxy]\ntunnel_allow = [\"pypi.org:443\"]", Path::new("."))
            .unwrap_err();
        assert!(e.to_string().contains("net.connect"), "{e}");
    }
}
