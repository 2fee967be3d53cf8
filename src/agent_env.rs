//! `agentgate env`: the shell lines that point an agent at the gate.
//!
//! They set the proxy variables (with the agent's credentials in the URL), `NO_PROXY` for the
//! dashboard, the CA-bundle variables of common clients, `NODE_USE_ENV_PROXY=1` (Node 24's
//! built-in `fetch` honours `HTTPS_PROXY` only with it), and the placeholder tokens.

use std::fmt::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;

use crate::agents;
use crate::config::Config;
use crate::vault::inject::Placeholders;

/// Variables that make common clients trust the bundle (system roots + the gate's CA).
const CA_VARS: [&str; 5] = [
    "SSL_CERT_FILE",       // OpenSSL, Go, Rust (rustls-native-certs)
    "CURL_CA_BUNDLE",      // curl
    "GIT_SSL_CAINFO",      // git
    "REQUESTS_CA_BUNDLE",  // Python requests
    "NODE_EXTRA_CA_CERTS", // Node.js
];

/// Makes Node's built-in `fetch` and `http(s)` honour the proxy variables (Node 24, and 22.21
/// and later; older Node ignores it, and its `fetch` ignores the proxy variables).
const NODE_PROXY_VAR: (&str, &str) = ("NODE_USE_ENV_PROXY", "1");

/// Variables GitHub clients read a token from (gh, Octokit-based tools, actions tooling).
const GITHUB_TOKEN_VARS: [&str; 2] = ["GITHUB_TOKEN", "GH_TOKEN"];
/// Variables Google clients and tools read an OAuth access token from.
const GOOGLE_TOKEN_VARS: [&str; 1] = ["GOOGLE_OAUTH_ACCESS_TOKEN"];

/// The environment variable `agentgate env --agent NAME` reads a configured agent's token from
/// (the gate keeps only its SHA-256).
pub const TOKEN_VAR: &str = "AGENTGATE_AGENT_TOKEN";

/// The agent `agentgate env` puts in the proxy URL, and its token.
///
/// With no `[[agents]]` configured it is `default`, whose token the gate keeps in the data
/// directory (created here if the gate has not run yet). A configured agent's token comes from
/// `env_token` (the `AGENTGATE_AGENT_TOKEN` variable), checked against its SHA-256.
pub fn credentials(
    config: &Config,
    agent: Option<&str>,
    env_token: Option<String>,
) -> Result<(String, String), String> {
    if config.agents.is_empty() {
        if let Some(name) = agent.filter(|n| *n != agents::DEFAULT_AGENT) {
            return Err(format!(
                "no agent {name:?} is configured; add it with `agentgate agent new {name}`, or run without --agent for the default agent"
            ));
        }
        agents::Agents::load(&[], &config.data_dir).map_err(|e| e.to_string())?;
        let token = agents::default_token(&config.data_dir)
            .map_err(|e| e.to_string())?
            .ok_or("the default agent's token is missing")?;
        return Ok((agents::DEFAULT_AGENT.to_string(), token));
    }
    let names: Vec<&str> = config.agents.iter().map(|a| a.name.as_str()).collect();
    let principal = match agent {
        Some(name) => config
            .agents
            .iter()
            .find(|a| a.name == name)
            .ok_or_else(|| {
                format!(
                    "no agent {name:?} is configured (agents: {})",
                    names.join(", ")
                )
            })?,
        None => match config.agents.as_slice() {
            [only] => only,
            _ => {
                return Err(format!(
                    "several agents are configured ({}); name one with --agent",
                    names.join(", ")
                ));
            }
        },
    };
    let token = env_token.filter(|t| !t.is_empty()).ok_or_else(|| {
        format!(
            "the gate keeps only the SHA-256 of {:?}'s token: set {TOKEN_VAR} to the token `agentgate agent new` printed",
            principal.name
        )
    })?;
    let presented = agents::sha256(&token);
    if !bool::from(subtle::ConstantTimeEq::ct_eq(
        &presented[..],
        &principal.token_sha256[..],
    )) {
        return Err(format!(
            "{TOKEN_VAR} is not {:?}'s token (its SHA-256 differs from the config's token_sha256)",
            principal.name
        ));
    }
    Ok((principal.name.clone(), token))
}

/// The `export` lines for an agent, given where the gate listens, the agent's credentials and
/// the bundle path.
pub fn export_lines(
    proxy: SocketAddr,
    dashboard: SocketAddr,
    creds: Option<(&str, &str)>,
    bundle: &Path,
    placeholders: &Placeholders,
) -> String {
    let userinfo = creds.map_or(String::new(), |(name, token)| format!("{name}:{token}@"));
    let proxy_url = format!("http://{userinfo}{}", reachable(proxy));
    let mut out = String::new();
    for var in ["HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"] {
        let _ = writeln!(out, "export {var}={}", quote(&proxy_url));
    }
    let dash = reachable(dashboard);
    let no_proxy = dash.ip().to_string();
    for var in ["NO_PROXY", "no_proxy"] {
        let _ = writeln!(out, "export {var}={}", quote(&no_proxy));
    }
    let (var, on) = NODE_PROXY_VAR;
    let _ = writeln!(out, "export {var}={}", quote(on));
    let bundle = bundle.to_string_lossy();
    for var in CA_VARS {
        let _ = writeln!(out, "export {var}={}", quote(&bundle));
    }
    // Placeholders, never real tokens: the gate swaps in the real one after an allow.
    for var in GITHUB_TOKEN_VARS {
        let _ = writeln!(out, "export {var}={}", quote(&placeholders.github));
    }
    for var in GOOGLE_TOKEN_VARS {
        let _ = writeln!(out, "export {var}={}", quote(&placeholders.google));
    }
    out
}

/// A listening address turned into one a local client can connect to.
fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), addr.port())
        }
        _ => addr,
    }
}

/// Single-quotes a value for POSIX shells.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_cover_every_client() {
        let out = export_lines(
            "0.0.0.0:8080".parse().unwrap(),
            "127.0.0.1:8081".parse().unwrap(),
            Some(("coder", "agt_x")),
            Path::new("/x/it's/bundle.pem"),
            &Placeholders::default(),
        );
        assert!(out.contains("export GITHUB_TOKEN='agentgate-placeholder-github'\n"));
        assert!(out.contains("export GH_TOKEN='agentgate-placeholder-github'\n"));
        assert!(out.contains("export GOOGLE_OAUTH_ACCESS_TOKEN='agentgate-placeholder-google'\n"));
        assert!(out.contains("export HTTPS_PROXY='http://coder:agt_x@127.0.0.1:8080'\n"));
        assert!(out.contains("export http_proxy='http://coder:agt_x@127.0.0.1:8080'\n"));
        assert!(out.contains("export NO_PROXY='127.0.0.1'\n"));
        assert!(out.contains("export NODE_USE_ENV_PROXY='1'\n"));
        for var in CA_VARS {
            assert!(
                out.contains(&format!("export {var}='/x/it'\\''s/bundle.pem'\n")),
                "{var}"
            );
        }
    }
}
