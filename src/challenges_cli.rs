//! `agentgate challenges`, `agentgate approve ID` and `agentgate deny ID`: the reviewer's
//! commands, sent to the running gate's dashboard API (design.md section 3) with the reviewer
//! token, as the web page does with its session.
//!
//! The gate is found at the config's `dashboard.listen`; the token comes from
//! `AGENTGATE_REVIEWER_TOKEN`, else from `reviewer.token` in the data directory. Every failure
//! says where the command looked, and has its own exit code ([`CliError::exit_code`]).

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::audit_cli::REVIEWER_TOKEN_VAR;
use crate::config::{Config, DEFAULT_CONFIG_FILE};
use crate::dashboard::reviewers::DEFAULT_TOKEN_FILE;
use crate::holds::State;

/// How long one API call may take (an approval waits for an fsync on the gate's side).
const TIMEOUT: Duration = Duration::from_secs(30);

/// Why a reviewer command failed. Each kind has its own exit code, for scripts.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Nothing answers at the dashboard's address.
    #[error(
        "no gate answers at http://{addr} ({from}): is `agentgate run` running with this config? ({cause})"
    )]
    NotRunning {
        addr: SocketAddr,
        from: String,
        cause: String,
    },
    /// No reviewer token could be read.
    #[error(
        "no reviewer token: set {REVIEWER_TOKEN_VAR}, or run the command where it can read {}: {cause}",
        path.display()
    )]
    NoToken { path: PathBuf, cause: String },
    /// The gate refused the token (401).
    #[error("the gate at http://{addr} refused the reviewer token {from}: {reason}")]
    Unauthorized {
        addr: SocketAddr,
        from: String,
        reason: String,
    },
    /// No challenge has this id (404).
    #[error("no challenge {id} at the gate (see `agentgate challenges --state all`)")]
    Unknown { id: String },
    /// The challenge was already settled (409).
    #[error("challenge {id} is already {state}; nothing changed")]
    AlreadyDecided { id: String, state: String },
    /// Anything else: a bad config, an answer the command did not expect.
    #[error("{0}")]
    Other(String),
}

impl CliError {
    /// 3: no gate; 4: no or wrong reviewer token; 5: unknown challenge; 6: already decided;
    /// 1: anything else (2 is the usage errors' code).
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::NotRunning { .. } => 3,
            CliError::NoToken { .. } | CliError::Unauthorized { .. } => 4,
            CliError::Unknown { .. } => 5,
            CliError::AlreadyDecided { .. } => 6,
            CliError::Other(_) => 1,
        }
    }
}

/// What a reviewer decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Approve,
    Deny,
}

impl Verdict {
    fn verb(self) -> &'static str {
        match self {
            Verdict::Approve => "approve",
            Verdict::Deny => "deny",
        }
    }

    fn done(self) -> &'static str {
        match self {
            Verdict::Approve => "approved",
            Verdict::Deny => "denied",
        }
    }
}

/// The gate a command talks to, and how it was found.
#[derive(Debug, Clone)]
pub struct Target {
    /// The dashboard's address (`dashboard.listen`; an unspecified address means loopback).
    pub addr: SocketAddr,
    /// Where the address came from, for messages.
    pub from: String,
    /// The data directory (for `reviewer.token`).
    pub data_dir: PathBuf,
}

impl Target {
    /// The gate of `--config FILE`, else of `./agentgate.toml`, else of the defaults (as
    /// `agentgate run` picks its config).
    pub fn load(config: Option<&Path>) -> Result<Target, CliError> {
        let cfg = Config::load_or_default(config).map_err(|e| CliError::Other(e.to_string()))?;
        let from = match config {
            Some(p) => format!("dashboard.listen in {}", p.display()),
            None if Path::new(DEFAULT_CONFIG_FILE).exists() => {
                format!("dashboard.listen in ./{DEFAULT_CONFIG_FILE}")
            }
            None => {
                format!("the default dashboard.listen: no --config and no ./{DEFAULT_CONFIG_FILE}")
            }
        };
        Ok(Target::new(&cfg, from))
    }

    /// The gate of an already loaded config.
    pub fn new(cfg: &Config, from: String) -> Target {
        let mut addr = cfg.dashboard_listen;
        if addr.ip().is_unspecified() {
            addr.set_ip(IpAddr::V4(Ipv4Addr::LOCALHOST));
        }
        Target {
            addr,
            from,
            data_dir: cfg.data_dir.clone(),
        }
    }
}

/// The reviewer token, and where it came from (for messages).
struct Token {
    secret: String,
    from: String,
}

/// `AGENTGATE_REVIEWER_TOKEN` when set and not empty, else `reviewer.token` in the data
/// directory (which must be private to its owner, as the gate writes it).
fn token(target: &Target) -> Result<Token, CliError> {
    if let Ok(t) = std::env::var(REVIEWER_TOKEN_VAR) {
        if !t.trim().is_empty() {
            return Ok(Token {
                secret: t.trim().to_string(),
                from: format!("from {REVIEWER_TOKEN_VAR}"),
            });
        }
    }
    let path = target.data_dir.join(DEFAULT_TOKEN_FILE);
    match crate::agents::read_private(&path) {
        Ok(secret) => Ok(Token {
            secret,
            from: format!("read from {}", path.display()),
        }),
        Err(e) => Err(CliError::NoToken {
            path,
            cause: e.to_string(),
        }),
    }
}

/// A status and a JSON body from the API.
struct Answer {
    status: u16,
    body: Value,
}

impl Answer {
    fn reason(&self) -> String {
        self.body["reason"]
            .as_str()
            .map_or_else(|| self.body.to_string(), str::to_string)
    }

    fn error(&self) -> &str {
        self.body["error"].as_str().unwrap_or("")
    }
}

async fn call(
    target: &Target,
    method: reqwest::Method,
    path_and_query: &str,
    body: Option<Value>,
) -> Result<Answer, CliError> {
    let token = token(target)?;
    let client = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(TIMEOUT)
        .build()
        .map_err(|e| CliError::Other(format!("cannot make an HTTP client: {e}")))?;
    let url = format!("http://{}{path_and_query}", target.addr);
    let mut req = client.request(method, &url).bearer_auth(&token.secret);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.map_err(|e| {
        if e.is_connect() {
            CliError::NotRunning {
                addr: target.addr,
                from: target.from.clone(),
                cause: root_cause(&e),
            }
        } else {
            CliError::Other(format!(
                "the gate at {url} did not answer: {}",
                root_cause(&e)
            ))
        }
    })?;
    let status = resp.status().as_u16();
    let bytes = resp
        .bytes()
        .await
        .map_err(|e| CliError::Other(format!("the gate's answer was cut: {e}")))?;
    let body = serde_json::from_slice(&bytes).unwrap_or_else(
        |_| serde_json::json!({"reason": String::from_utf8_lossy(&bytes).trim().to_string()}),
    );
    let answer = Answer { status, body };
    if status == 401 {
        return Err(CliError::Unauthorized {
            addr: target.addr,
            from: token.from,
            reason: answer.reason(),
        });
    }
    Ok(answer)
}

/// The innermost error's message (reqwest's own says only "error sending request").
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// `agentgate challenges`: the challenges in `state` (`None`: every state), as a table or, with
/// `json`, as a JSON array of the API's challenge objects.
pub async fn list(
    target: &Target,
    state: Option<State>,
    json: bool,
    now_ms: i64,
) -> Result<String, CliError> {
    let path = match state {
        Some(s) => format!("/api/challenges?state={s}"),
        None => "/api/challenges".to_string(),
    };
    let answer = call(target, reqwest::Method::GET, &path, None).await?;
    if answer.status != 200 {
        return Err(unexpected(&answer, &path));
    }
    let Some(items) = answer.body["challenges"].as_array() else {
        return Err(CliError::Other(format!(
            "the gate's answer to GET {path} has no challenges list: {}",
            answer.body
        )));
    };
    if json {
        return serde_json::to_string_pretty(items).map_err(|e| CliError::Other(e.to_string()));
    }
    if items.is_empty() {
        return Ok(match state {
            Some(s) => format!("no {s} challenges"),
            None => "no challenges".to_string(),
        });
    }
    Ok(table(items, now_ms))
}

/// `agentgate approve ID` / `agentgate deny ID`: one line saying what was decided.
pub async fn decide(
    target: &Target,
    id: &str,
    verdict: Verdict,
    note: Option<&str>,
) -> Result<String, CliError> {
    // The id goes into the URL path: anything but an id's characters cannot name a challenge.
    let well_formed = !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !well_formed {
        return Err(CliError::Unknown { id: printable(id) });
    }
    let path = format!("/api/challenges/{id}/{}", verdict.verb());
    let body = match note {
        Some(n) => serde_json::json!({ "note": n }),
        None => serde_json::json!({}),
    };
    let answer = call(target, reqwest::Method::POST, &path, Some(body)).await?;
    match answer.status {
        200 => {
            let c = &answer.body["challenge"];
            Ok(format!(
                "{} {id}: {} by {}",
                verdict.done(),
                printable(&action_of(c)),
                printable(c["agent"].as_str().unwrap_or("?")),
            ))
        }
        404 if answer.error() == "unknown_challenge" => Err(CliError::Unknown { id: id.into() }),
        409 => Err(CliError::AlreadyDecided {
            id: id.into(),
            state: decided_state(&answer),
        }),
        _ => Err(unexpected(&answer, &path)),
    }
}

/// The state a 409 names: its `state` field, or the state word its reason ends with.
fn decided_state(answer: &Answer) -> String {
    if let Some(s) = answer.body["state"].as_str() {
        return printable(s);
    }
    let reason = answer.reason();
    reason
        .split(|c: char| !c.is_ascii_alphabetic())
        .rev()
        .find_map(State::parse)
        .map_or_else(
            || format!("decided ({})", printable(&reason)),
            |s| s.to_string(),
        )
}

fn unexpected(answer: &Answer, path: &str) -> CliError {
    let what = if answer.status == 404 {
        " (a gate without the reviewer API?)"
    } else {
        ""
    };
    CliError::Other(format!(
        "the gate answered {} to {path}{what}: {}",
        answer.status,
        printable(&answer.reason())
    ))
}

/// The first action's name, and how many more there are.
fn action_of(c: &Value) -> String {
    let actions = c["actions"].as_array().map_or(&[][..], Vec::as_slice);
    let first = actions
        .first()
        .and_then(|a| a["name"].as_str())
        .unwrap_or("-");
    match actions.len() {
        0 | 1 => first.to_string(),
        n => format!("{first} (+{} more)", n - 1),
    }
}

/// Columns: id, agent, action, state, time left in the window (pending ones only).
fn table(items: &[Value], now_ms: i64) -> String {
    let header = ["ID", "AGENT", "ACTION", "STATE", "EXPIRES IN"];
    let rows: Vec<[String; 5]> = items
        .iter()
        .map(|c| {
            let state = c["state"].as_str().unwrap_or("?");
            let expires = match (state, c["expires_ms"].as_i64()) {
                ("pending", Some(at)) => remaining(at.saturating_sub(now_ms)),
                _ => "-".to_string(),
            };
            [
                printable(c["id"].as_str().unwrap_or("?")),
                printable(c["agent"].as_str().unwrap_or("?")),
                printable(&action_of(c)),
                printable(state),
                expires,
            ]
        })
        .collect();
    let mut widths = header.map(|h| h.chars().count());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: [&str; 5]| {
        let mut l = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                l.push_str(cell);
            } else {
                let _ = write!(l, "{cell:<w$}  ");
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(header);
    for row in &rows {
        line([&row[0], &row[1], &row[2], &row[3], &row[4]]);
    }
    out.trim_end().to_string()
}

/// `14m 58s`, `1h 02m`, `42s`; `due` once the window has closed (the gate expires it shortly).
fn remaining(ms: i64) -> String {
    if ms <= 0 {
        return "due".to_string();
    }
    let s = (ms + 999) / 1000;
    match (s / 3600, s % 3600 / 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, s) => format!("{m}m {s:02}s"),
        (h, m, _) => format!("{h}h {m:02}m"),
    }
}

/// Text from the gate with control characters (terminal escapes) replaced.
fn printable(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn time_left_reads_like_a_countdown() {
        assert_eq!(remaining(42_000), "42s");
        assert_eq!(remaining(41_001), "42s");
        assert_eq!(remaining(898_000), "14m 58s");
        assert_eq!(remaining(3_720_000), "1h 02m");
        assert_eq!(remaining(0), "due");
        assert_eq!(remaining(-5), "due");
    }

    #[test]
    fn the_table_lines_up_and_escapes_nothing_into_the_terminal() {
        let items = vec![
            serde_json::json!({"id": "chl_1", "agent": "coder", "state": "pending",
                "expires_ms": 61_000, "actions": [{"name": "github.issues.create"}]}),
            serde_json::json!({"id": "chl_22", "agent": "a\u{1b}[31m", "state": "denied",
                "expires_ms": 1, "actions": [{"name": "x"}, {"name": "y"}]}),
        ];
        let t = table(&items, 1_000);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines,
            [
                "ID      AGENT   ACTION                STATE    EXPIRES IN",
                "chl_1   coder   github.issues.create  pending  1m 00s",
                "chl_22  a?[31m  x (+1 more)           denied   -",
            ]
        );
    }

    #[test]
    fn a_conflict_names_the_winning_state() {
        let a = |body: Value| Answer { status: 409, body };
        assert_eq!(
            decided_state(&a(
                serde_json::json!({"reason": "the challenge is already denied"})
            )),
            "denied"
        );
        assert_eq!(
            decided_state(&a(serde_json::json!({"state": "expired", "reason": "x"}))),
            "expired"
        );
        assert_eq!(
            decided_state(&a(serde_json::json!({"reason": "taken"}))),
            "decided (taken)"
        );
    }
}
