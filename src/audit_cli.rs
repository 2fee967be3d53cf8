//! `agentgate audit export` and `agentgate audit verify`: read the data directory's store when
//! the gate is stopped, and ask the running gate's dashboard API when it holds the store.

use std::io::Write;

use serde_json::Value;

use crate::audit::{self, AuditError, Filter};
use crate::config::Config;
use crate::dashboard::reviewers::DEFAULT_TOKEN_FILE;

/// The variable a reviewer token can be given in (else `data/reviewer.token` is read).
pub const REVIEWER_TOKEN_VAR: &str = "AGENTGATE_REVIEWER_TOKEN";

/// The filter flags of `audit export`, as given.
#[derive(Debug, Clone, Default)]
pub struct FilterArgs {
    pub since: Option<String>,
    pub until: Option<String>,
    pub agent: Option<String>,
    pub action: Option<String>,
    pub decision: Option<String>,
}

impl FilterArgs {
    fn parse(&self) -> Result<Filter, String> {
        Filter::parse(
            self.since.as_deref(),
            self.until.as_deref(),
            self.agent.as_deref(),
            self.action.as_deref(),
            self.decision.as_deref(),
        )
        .map_err(|e| e.to_string())
    }

    fn query(&self) -> String {
        let mut q = Vec::new();
        for (k, v) in [
            ("since", &self.since),
            ("until", &self.until),
            ("agent", &self.agent),
            ("action", &self.action),
            ("decision", &self.decision),
        ] {
            if let Some(v) = v {
                q.push(format!("{k}={}", encode(v)));
            }
        }
        q.join("&")
    }
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Writes the matching records as JSON lines to `out`.
pub async fn export(config: &Config, args: &FilterArgs, out: &mut dyn Write) -> Result<(), String> {
    let filter = args.parse()?;
    match audit::cli::export(&config.data_dir, &filter, out) {
        Ok(summary) if summary.unreadable.is_empty() => Ok(()),
        Ok(summary) => Err(summary
            .unreadable
            .iter()
            .map(|b| format!("record {} could not be read: {}", b.seq, b.why))
            .collect::<Vec<_>>()
            .join("\n")),
        // A reader that went away (`| head`) is not an error.
        Err(AuditError::Output {
            kind: std::io::ErrorKind::BrokenPipe,
            ..
        }) => Ok(()),
        Err(AuditError::Locked { .. }) => {
            let body = api_get(config, &format!("/api/audit/export?{}", args.query())).await?;
            out.write_all(&body)
                .map_err(|e| format!("cannot write the export: {e}"))
        }
        Err(e) => Err(e.to_string()),
    }
}

/// Checks the chain; `Ok(text)` when it holds, `Err(text)` naming the first broken link.
pub async fn verify(config: &Config) -> Result<String, String> {
    let report: Value = match audit::cli::verify(&config.data_dir) {
        Ok(r) => serde_json::to_value(&r).map_err(|e| e.to_string())?,
        Err(AuditError::Locked { .. }) => {
            let body = api_get(config, "/api/audit/verify").await?;
            serde_json::from_slice(&body)
                .map_err(|e| format!("the gate's verify answer is not JSON: {e}"))?
        }
        Err(e) => return Err(e.to_string()),
    };
    let records = report["records"].as_u64().unwrap_or(0);
    match report.get("broken").filter(|b| !b.is_null()) {
        None => Ok(format!(
            "ok: {records} records verified (first {}, last {}); head {}",
            report["first"],
            report["last"],
            report["head"].as_str().unwrap_or("-")
        )),
        Some(b) => Err(format!(
            "the audit chain is broken at record {}: {} ({records} records checked)",
            b["seq"],
            b["why"].as_str().unwrap_or("")
        )),
    }
}

/// A GET to the running gate's dashboard, as a reviewer.
pub(crate) async fn api_get(config: &Config, path_and_query: &str) -> Result<Vec<u8>, String> {
    let token = match std::env::var(REVIEWER_TOKEN_VAR) {
        Ok(t) if !t.is_empty() => t,
        _ => crate::agents::read_private(&config.data_dir.join(DEFAULT_TOKEN_FILE)).map_err(
            |e| {
                format!(
                    "the gate is running and holds the audit store; its API needs a reviewer token: set {REVIEWER_TOKEN_VAR} ({e})"
                )
            },
        )?,
    };
    let url = format!("http://{}{path_and_query}", config.dashboard_listen);
    let client = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| e.to_string())?;
    let resp = client
        .get(&url)
        .bearer_auth(token.trim())
        .send()
        .await
        .map_err(|e| {
            format!("the gate holds the audit store, but its API at {url} did not answer: {e}")
        })?;
    let status = resp.status();
    let body = resp.bytes().await.map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(format!(
            "the gate's API answered {status}: {}",
            String::from_utf8_lossy(&body)
        ));
    }
    Ok(body.to_vec())
}
