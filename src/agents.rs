//! Agent identity: who is calling, from the credentials in the proxy URL
//! (`http://NAME:TOKEN@host:port`, sent as `Proxy-Authorization: Basic`), checked against the
//! configured `[[agents]]` (SHA-256 of each token, compared in constant time).
//!
//! With no agent configured, the gate has one agent, `default`, whose token it generates on first
//! start and keeps (mode 0600) in the data directory, so `agentgate env` can print a working
//! proxy URL.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::Principal;

/// The agent the gate creates when none is configured.
pub const DEFAULT_AGENT: &str = "default";
/// Where the default agent's token is kept, in the data directory.
pub const DEFAULT_TOKEN_FILE: &str = "agent-default.token";
/// Token prefix: makes an agent token recognisable in a leak scan.
const TOKEN_PREFIX: &str = "agt_";

/// An authenticated agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agent {
    pub name: String,
    /// The vault identity whose tokens this agent borrows.
    pub user: Option<String>,
}

/// Why a proxy request was not authenticated (all answered with 407).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error(
        "the gate needs proxy credentials: put the agent's name and token in the proxy URL (http://NAME:TOKEN@host:port; see `agentgate env`)"
    )]
    Missing,
    #[error("Proxy-Authorization must be Basic credentials (NAME:TOKEN)")]
    Malformed,
    #[error("unknown agent or wrong token")]
    Rejected,
}

/// Errors setting up the agents.
#[derive(Debug, thiserror::Error)]
pub enum AgentsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is readable by other users (mode {mode:o}); run: chmod 600 {path}")]
    Exposed { path: PathBuf, mode: u32 },
    #[error("{0}")]
    Invalid(String),
}

/// The agents the gate knows.
#[derive(Debug, Clone)]
pub struct Agents {
    list: Vec<(Arc<Agent>, [u8; 32])>,
}

impl Agents {
    /// The configured agents, or the default agent (its token created when missing).
    pub fn load(configured: &[Principal], data_dir: &Path) -> Result<Agents, AgentsError> {
        if !configured.is_empty() {
            return Ok(Agents {
                list: configured
                    .iter()
                    .map(|p| {
                        (
                            Arc::new(Agent {
                                name: p.name.clone(),
                                user: p.user.clone(),
                            }),
                            p.token_sha256,
                        )
                    })
                    .collect(),
            });
        }
        let token = ensure_default_token(data_dir)?;
        Ok(Agents {
            list: vec![(
                Arc::new(Agent {
                    name: DEFAULT_AGENT.into(),
                    user: None,
                }),
                sha256(&token),
            )],
        })
    }

    /// Names of the known agents.
    pub fn names(&self) -> Vec<&str> {
        self.list.iter().map(|(a, _)| a.name.as_str()).collect()
    }

    /// The agent a `Proxy-Authorization` header names, if its token is right.
    pub fn authenticate(
        &self,
        header: Option<&http::HeaderValue>,
    ) -> Result<Arc<Agent>, AuthError> {
        let header = header.ok_or(AuthError::Missing)?;
        let (name, token) = basic_credentials(header.as_bytes()).ok_or(AuthError::Malformed)?;
        let presented = sha256(&token);
        // Every entry is compared, so the time taken does not say which names exist.
        let mut found: Option<&Arc<Agent>> = None;
        for (agent, digest) in &self.list {
            let name_ok = agent.name.as_bytes().ct_eq(name.as_bytes());
            let token_ok = digest.ct_eq(&presented);
            if bool::from(name_ok & token_ok) {
                found = Some(agent);
            }
        }
        found.cloned().ok_or(AuthError::Rejected)
    }
}

/// `NAME:TOKEN` from `Basic base64(NAME:TOKEN)` (scheme in any case).
fn basic_credentials(value: &[u8]) -> Option<(String, String)> {
    let text = std::str::from_utf8(value).ok()?.trim();
    let (scheme, rest) = text.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = STANDARD.decode(rest.trim()).ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (name, token) = decoded.split_once(':')?;
    Some((name.to_string(), token.to_string()))
}

/// SHA-256 of a token.
pub fn sha256(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// A fresh random agent token: `agt_` and 32 random bytes, base64url.
pub fn new_token() -> Result<String, AgentsError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|e| AgentsError::Invalid(format!("no randomness for a token: {e}")))?;
    Ok(format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes)))
}

/// What `agentgate agent new NAME` prints: the token (once) and the config lines to add.
pub fn new_agent_text(name: &str, user: Option<&str>) -> Result<String, AgentsError> {
    if !valid_name(name) {
        return Err(AgentsError::Invalid(format!(
            "{name:?} cannot name an agent: use letters, digits, '-', '_' and '.' (at most 64)"
        )));
    }
    let token = new_token()?;
    let digest = hex::encode(sha256(&token));
    let user_line = match user {
        Some(u) => format!("user = {}\n", toml_string(u)),
        None => {
            "# user = \"auth0|...\"           # the vault identity whose tokens it borrows\n".into()
        }
    };
    Ok(format!(
        "# Agent {name}. Its token is shown once; the gate keeps only its SHA-256.\n\
         # Give it to the agent's environment:  export AGENTGATE_AGENT_TOKEN='{token}'\n\
         # then:  eval \"$(agentgate env --agent {name})\"\n\
         # Add to agentgate.toml:\n\
         [[agents]]\n\
         name = {}\n\
         token_sha256 = \"{digest}\"\n\
         {user_line}",
        toml_string(name)
    ))
}

fn toml_string(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Whether `name` can be an agent name (it goes in a URL's userinfo unescaped).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// The default agent's token, if the gate has created it.
pub fn default_token(data_dir: &Path) -> Result<Option<String>, AgentsError> {
    let path = data_dir.join(DEFAULT_TOKEN_FILE);
    if !path.exists() {
        return Ok(None);
    }
    read_private(&path).map(Some)
}

fn ensure_default_token(data_dir: &Path) -> Result<String, AgentsError> {
    ensure_token_file(data_dir, DEFAULT_TOKEN_FILE)
}

/// The token kept in `data_dir/file`, created (random, mode 0600) when missing; refused when
/// readable by others.
pub fn ensure_token_file(data_dir: &Path, file: &str) -> Result<String, AgentsError> {
    let path = data_dir.join(file);
    if path.exists() {
        return read_private(&path);
    }
    let io = |source| AgentsError::Io {
        path: path.clone(),
        source,
    };
    fs::create_dir_all(data_dir).map_err(|source| AgentsError::Io {
        path: data_dir.to_path_buf(),
        source,
    })?;
    let token = new_token()?;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(io)?;
    f.write_all(token.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    Ok(token)
}

/// A token file's content, refused when the file is readable by others.
pub fn read_private(path: &Path) -> Result<String, AgentsError> {
    let io = |source| AgentsError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mode = fs::metadata(path).map_err(io)?.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(AgentsError::Exposed {
            path: path.to_path_buf(),
            mode: mode & 0o777,
        });
    }
    let text = fs::read_to_string(path).map_err(io)?;
    let token = text.trim().to_string();
    if token.is_empty() {
        return Err(AgentsError::Invalid(format!("{} is empty", path.display())));
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(name: &str, token: &str) -> http::HeaderValue {
        http::HeaderValue::from_str(&format!(
            "Basic {}",
            STANDARD.encode(format!("{name}:{token}"))
        ))
        .unwrap()
    }

    #[test]
    fn configured_agents_authenticate_by_name_and_token() {
        let agents = Agents::load(
            &[Principal {
                name: "coder".into(),
                token_sha256: sha256("s3cret"),
                user: Some("auth0|1".into()),
            }],
            Path::new("/nonexistent"),
        )
        .unwrap();
        let a = agents
            .authenticate(Some(&basic("coder", "s3cret")))
            .unwrap();
        assert_eq!(a.name, "coder");
        assert_eq!(a.user.as_deref(), Some("auth0|1"));
        assert_eq!(agents.authenticate(None), Err(AuthError::Missing));
        assert_eq!(
            agents.authenticate(Some(&basic("coder", "wrong"))),
            Err(AuthError::Rejected)
        );
        assert_eq!(
            agents.authenticate(Some(&basic("other", "s3cret"))),
            Err(AuthError::Rejected)
        );
        let bearer = http::HeaderValue::from_static("Bearer s3cret");
        assert_eq!(
            agents.authenticate(Some(&bearer)),
            Err(AuthError::Malformed)
        );
        let lower =
            http::HeaderValue::from_str(&format!("basic {}", STANDARD.encode("coder:s3cret")))
                .unwrap();
        assert!(agents.authenticate(Some(&lower)).is_ok());
    }

    #[test]
    fn the_default_agent_token_is_created_once_and_private() {
        let dir = std::env::temp_dir().join(format!("agentgate-agents-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let agents = Agents::load(&[], &dir).unwrap();
        assert_eq!(agents.names(), vec!["default"]);
        let token = default_token(&dir).unwrap().unwrap();
        assert!(token.starts_with("agt_"));
        let path = dir.join(DEFAULT_TOKEN_FILE);
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(agents.authenticate(Some(&basic("default", &token))).is_ok());
        // A second start keeps the same token.
        let again = Agents::load(&[], &dir).unwrap();
        assert!(again.authenticate(Some(&basic("default", &token))).is_ok());
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            Agents::load(&[], &dir),
            Err(AgentsError::Exposed { .. })
        ));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn names_fit_in_a_url() {
        assert!(valid_name("release-bot.v2"));
        assert!(!valid_name("a:b"));
        assert!(!valid_name("a@b"));
        assert!(!valid_name(""));
    }
}
