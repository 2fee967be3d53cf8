//! Real tokens: the [`Vault`] trait, its backends (env, file, command, auth0) and [`Secret`].
//!
//! The proxy asks a vault for the token a user holds for a provider at the moment it forwards
//! an allowed request. Tokens live in memory only, as [`Secret`]s: zeroised when dropped,
//! printed as `[redacted]`, never serialised. No [`VaultError`] carries token bytes: text that
//! comes from outside (Auth0 error descriptions, a helper's stderr) passes through
//! [`sanitize`] first. Zeroising is best effort: buffers inside the HTTP stack, the TOML parser
//! and the process environment are outside this module's reach.

pub mod auth0;
pub mod command;
pub mod env;
pub mod file;
pub mod inject;

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use zeroize::{Zeroize, Zeroizing};

use crate::config::{VaultConfig, VaultSource};

/// A provider whose tokens the gate injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Provider {
    Github,
    Google,
}

impl Provider {
    /// Every provider.
    pub const ALL: [Provider; 2] = [Provider::Github, Provider::Google];

    /// The name used in config and vault files: `github`, `google`.
    pub fn name(self) -> &'static str {
        match self {
            Provider::Github => "github",
            Provider::Google => "google",
        }
    }

    /// The variable the `env` backend reads: `AGENTGATE_GITHUB_TOKEN`, `AGENTGATE_GOOGLE_TOKEN`.
    pub fn env_var(self) -> &'static str {
        match self {
            Provider::Github => "AGENTGATE_GITHUB_TOKEN",
            Provider::Google => "AGENTGATE_GOOGLE_TOKEN",
        }
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Provider {
    type Err = VaultError;
    fn from_str(s: &str) -> Result<Provider, VaultError> {
        Provider::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| VaultError::Config(format!("unknown provider {s:?}: github or google")))
    }
}

/// A real credential. Prints as `[redacted]`, is zeroised when dropped, and has no `Serialize`.
/// A clone is a `Secret` too, zeroised on its own drop.
pub struct Secret(String);

impl Secret {
    /// Takes ownership of `value` (no copy is made).
    pub fn new(value: String) -> Secret {
        Secret(value)
    }

    /// The token itself, for the one place that puts it on the wire.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Clone for Secret {
    fn clone(&self) -> Secret {
        Secret(self.0.clone())
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Deserialises a string straight into a [`Secret`] (vault files, Auth0 answers).
pub(crate) fn deserialize_secret<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Secret, D::Error> {
    <String as serde::Deserialize>::deserialize(d).map(Secret::new)
}

/// [`deserialize_secret`] for optional fields.
pub(crate) fn deserialize_opt_secret<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Secret>, D::Error> {
    <Option<String> as serde::Deserialize>::deserialize(d).map(|o| o.map(Secret::new))
}

/// Why a vault could not supply a token. The messages say what to fix; none carries token
/// bytes.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("vault configuration: {0}")]
    Config(String),
    #[error("no {provider} token for user {user:?}: {why}")]
    NotFound {
        user: String,
        provider: Provider,
        why: String,
    },
    #[error(
        "{path} is readable or writable by group or others (mode {mode:o}); run `chmod 600 {path}`"
    )]
    Permissions { path: PathBuf, mode: u32 },
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("token command {program:?}: {message}")]
    Command { program: String, message: String },
    #[error("no token within {}: {what}", humantime::format_duration(*after))]
    Timeout { after: Duration, what: String },
    #[error("Auth0 refused ({status} {error}): {description}")]
    Refused {
        status: u16,
        error: String,
        description: String,
    },
    #[error("Auth0 answered {status} {why}")]
    Unavailable { status: u16, why: String },
    #[error("cannot reach Auth0: {0}")]
    Transport(String),
    #[error("unexpected answer from Auth0: {0}")]
    Protocol(String),
}

impl VaultError {
    /// True when the fetch ran out of time.
    pub fn is_timeout(&self) -> bool {
        matches!(self, VaultError::Timeout { .. })
    }
}

/// A boxed future returned by [`Vault::token`].
pub type TokenFuture<'a> = Pin<Box<dyn Future<Output = Result<Secret, VaultError>> + Send + 'a>>;

/// A source of real tokens.
pub trait Vault: Send + Sync + fmt::Debug {
    /// The real token `user` holds for `provider`, fetched now.
    fn token<'a>(&'a self, user: &'a str, provider: Provider) -> TokenFuture<'a>;
}

/// Where environment variables are read from: the process environment, or a map (tests and
/// embedders, which must not mutate the process environment).
#[derive(Clone)]
pub struct Environment(Arc<Lookup>);

type Lookup = dyn Fn(&str) -> Option<String> + Send + Sync;

impl Environment {
    /// The process environment, read at each lookup.
    pub fn process() -> Environment {
        Environment(Arc::new(|name| std::env::var(name).ok()))
    }

    /// A fixed set of variables.
    pub fn from_map(vars: BTreeMap<String, String>) -> Environment {
        Environment(Arc::new(move |name| vars.get(name).cloned()))
    }

    /// The variable's value as a secret; `None` when unset or empty.
    pub fn secret(&self, name: &str) -> Option<Secret> {
        (self.0)(name).map(Secret::new).filter(|s| !s.is_empty())
    }
}

impl fmt::Debug for Environment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Environment")
    }
}

/// Builds the configured vault, reading environment variables from the process.
pub fn build(config: &VaultConfig) -> Result<Arc<dyn Vault>, VaultError> {
    build_with_env(config, Environment::process())
}

/// Builds the configured vault with `env` as its environment. Checks what can be checked
/// before the gate starts: vault files exist and are private, the client secret is set.
pub fn build_with_env(
    config: &VaultConfig,
    env: Environment,
) -> Result<Arc<dyn Vault>, VaultError> {
    Ok(match &config.source {
        VaultSource::Env => Arc::new(env::EnvVault::new(env)),
        VaultSource::File { path } => Arc::new(file::FileVault::open(path.clone())?),
        VaultSource::Command { argv } => {
            Arc::new(command::CommandVault::new(argv.clone(), config.timeout)?)
        }
        VaultSource::Auth0(auth0) => Arc::new(auth0::Auth0Vault::new(auth0, config.timeout, &env)?),
    })
}

/// Outside text (an Auth0 error description, a helper's stderr) made fit for an error message:
/// [`scrub_known`], and every word that looks like a credential (a known token prefix, a JWT, a
/// long run of letters and digits) replaced by `[redacted]`.
pub fn sanitize(text: &str, known: &[&str], max: usize) -> String {
    let scrubbed = Zeroizing::new(scrub_known(text, known, usize::MAX));
    let mut out = String::new();
    for (i, word) in scrubbed.split(' ').filter(|w| !w.is_empty()).enumerate() {
        if i > 0 {
            out.push(' ');
        }
        redact_word(word, &mut out);
    }
    cut(out, max)
}

/// `text` with each of `known` (secrets the call handled) replaced by `[redacted]`, control
/// characters turned into spaces, and cut to `max` characters. For library messages (transport
/// errors) that hold no tokens by construction but name URLs worth keeping.
pub fn scrub_known(text: &str, known: &[&str], max: usize) -> String {
    let mut text = Zeroizing::new(text.to_string());
    for secret in known.iter().filter(|s| s.len() >= 4) {
        // Assigning drops (and so zeroises) the previous text.
        text = Zeroizing::new(text.replace(secret, "[redacted]"));
    }
    let cleaned = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    cut(cleaned, max)
}

fn cut(mut text: String, max: usize) -> String {
    if text.chars().count() > max {
        text = text.chars().take(max).collect();
        text.push('…');
    }
    text
}

/// Appends `word`, with any credential-looking run inside it replaced.
fn redact_word(word: &str, out: &mut String) {
    let is_run = |c: char| c.is_ascii_alphanumeric() || "-_./+=~|:".contains(c);
    let mut rest = word;
    while !rest.is_empty() {
        let start = rest.find(is_run).unwrap_or(rest.len());
        out.push_str(&rest[..start]);
        rest = &rest[start..];
        let end = rest.find(|c: char| !is_run(c)).unwrap_or(rest.len());
        let run = &rest[..end];
        if looks_like_credential(run) {
            out.push_str("[redacted]");
        } else {
            out.push_str(run);
        }
        rest = &rest[end..];
    }
}

/// Known token prefixes (wire-formats.md 6.2), JWTs, and long mixed letter-digit runs.
fn looks_like_credential(run: &str) -> bool {
    const PREFIXES: &[&str] = &[
        "ghp_",
        "gho_",
        "ghu_",
        "ghs_",
        "ghr_",
        "github_pat_",
        "ya29.",
        "1//",
        "AIza",
        "eyJ",
    ];
    let core = run.trim_matches(|c: char| ".:".contains(c));
    if PREFIXES.iter().any(|p| core.starts_with(p)) && core.len() > 8 {
        return true;
    }
    let letters = core.chars().filter(|c| c.is_ascii_alphabetic()).count();
    let digits = core.chars().filter(|c| c.is_ascii_digit()).count();
    core.len() >= 16 && letters > 0 && digits > 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_never_prints_its_bytes() {
        let s = Secret::new("ghp_abcdefghijklmnopqrstuvwxyz0123456789".into());
        for shown in [
            format!("{s}"),
            format!("{s:?}"),
            format!("{s:#?}"),
            format!("{:?}", Some(s.clone())),
            format!("{:>50}", s),
        ] {
            assert!(!shown.contains("ghp_"), "{shown}");
            assert!(shown.contains("[redacted]"), "{shown}");
        }
        assert_eq!(s.expose(), "ghp_abcdefghijklmnopqrstuvwxyz0123456789");
        assert_eq!(s.clone().expose(), s.expose());
    }

    #[test]
    fn providers_have_names_and_env_vars() {
        assert_eq!(Provider::Github.to_string(), "github");
        assert_eq!("google".parse::<Provider>().unwrap(), Provider::Google);
        assert!("gitlab".parse::<Provider>().is_err());
        assert_eq!(Provider::Github.env_var(), "AGENTGATE_GITHUB_TOKEN");
        assert_eq!(Provider::Google.env_var(), "AGENTGATE_GOOGLE_TOKEN");
    }

    #[test]
    fn sanitize_removes_known_secrets_and_token_shapes() {
        let out = sanitize(
            "bad token gho_16C7e42F292c6912E7710c838347Ae178B4a for\nuser; refresh v1.MRrT-secret-value; jwt eyJhbGciOi.x.y",
            &["v1.MRrT-secret-value"],
            500,
        );
        assert!(!out.contains("gho_"), "{out}");
        assert!(!out.contains("MRrT"), "{out}");
        assert!(!out.contains("eyJ"), "{out}");
        assert!(!out.contains('\n'), "{out}");
        assert!(
            out.starts_with("bad token [redacted] for user; refresh"),
            "{out}"
        );
        assert_eq!(
            sanitize("Unknown or invalid refresh token.", &[], 500),
            "Unknown or invalid refresh token."
        );
        let long = sanitize(&"word ".repeat(100), &[], 20);
        assert_eq!(long.chars().count(), 21);
    }
}
