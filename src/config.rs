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
struct RawStepUp {
    window: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPrincipal {
    name: String,
    token_sha256: String,
    user: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVault {
    backend: Option<String>,
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
    pub agents: Vec<Principal>,
    pub reviewers: Vec<Principal>,
    pub vault_backend: VaultBackend,
    /// GitHub Enterprise Server hosts (also in `intercept`).
    pub github_enterprise: BTreeSet<String>,
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
        agents: Vec::new(),
        reviewers: Vec::new(),
        vault_backend: VaultBackend::Env,
        github_enterprise: BTreeSet::new(),
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
    cfg.agents = principals("agents", raw.agents)?;
    cfg.reviewers = principals("reviewers", raw.reviewers)?;
    cfg.vault_backend = match raw.vault.backend.as_deref() {
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

    #[test]
    fn the_retired_tunnel_allow_says_what_replaced_it() {
        let e = Config::from_toml("[proxy]\ntunnel_allow = [\"pypi.org:443\"]", Path::new("."))
            .unwrap_err();
        assert!(e.to_string().contains("net.connect"), "{e}");
    }
}
