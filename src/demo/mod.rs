//! `agentgate demo`: the gate with the shipped policy, local stand-ins for the GitHub and Gmail
//! APIs, and a scripted agent that tries ten realistic actions through it, each narrated.
//!
//! Everything runs on 127.0.0.1 in a directory of its own (a new one under the system's temp
//! dir unless `--dir` names one), with an `agentgate.toml` that the other commands take with
//! `--config` (`agentgate approve`, `agentgate audit export`). The agent holds only the
//! placeholders; the real tokens are random demo values in a 0600 vault file of that
//! directory. Held requests wait for a reviewer in the dashboard, or are approved or denied by
//! the demo itself with `--approve-all` / `--deny-all`.

mod script;
mod standin;

use std::fmt::Write as _;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::challenges_cli::{self, Target, Verdict};
use crate::config::Config;
use crate::holds::State;
use script::{Call, Step};
use standin::StandIn;

/// What the demo does with held requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Review {
    /// Wait for a person (dashboard or `agentgate approve` / `deny`).
    Person,
    /// Approve each one as soon as it is held.
    ApproveAll,
    /// Deny each one as soon as it is held.
    DenyAll,
}

/// `agentgate demo`'s options.
#[derive(Debug, Clone)]
pub struct Options {
    pub review: Review,
    /// The directory for the config, CA, policies and data (default: a new temp dir).
    pub dir: Option<PathBuf>,
}

/// How the ten actions ended.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tally {
    pub allowed: usize,
    pub blocked: usize,
    pub approved: usize,
    pub denied: usize,
    /// Anything else (an expired hold, an error answer of the stand-in, a refused request).
    pub other: usize,
}

/// The vault user the default agent borrows tokens as (its name, when no user is set).
const VAULT_USER: &str = "default";

/// Runs the demo, narrating on standard output. Returns the tally, or why the demo could
/// not run.
pub async fn run(opts: Options) -> Result<Tally, String> {
    let dir = match &opts.dir {
        Some(d) => d.clone(),
        None => new_dir()?,
    };
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let dir = std::path::absolute(&dir).unwrap_or(dir);
    refuse_foreign_files(&dir)?;
    let standin = StandIn::start().await?;
    let tokens = DemoTokens::new()?;
    write_private(
        &dir.join("standin-ca.pem"),
        standin.ca_pem.as_bytes(),
        0o644,
    )?;
    write_private(
        &dir.join("vault.toml"),
        format!(
            "{WRITTEN_BY}: demo tokens for the stand-ins (random, not real credentials).\n\
             [users.{VAULT_USER}]\ngithub = \"{}\"\ngoogle = \"{}\"\n",
            tokens.github, tokens.google
        )
        .as_bytes(),
        0o600,
    )?;
    let mut config = Config::from_toml(&config_text(&standin, "127.0.0.1:0", "127.0.0.1:0"), &dir)
        .map_err(|e| format!("the demo's config: {e}"))?;
    let gate = crate::app::start(&config)
        .await
        .map_err(|e| format!("the gate did not start: {e}"))?;
    config.proxy_listen = gate.proxy_addr;
    config.dashboard_listen = gate.dashboard_addr;
    let config_file = dir.join(crate::config::DEFAULT_CONFIG_FILE);
    // The file names the ports this run's gate listens on, so that `--config` reaches it.
    std::fs::write(
        &config_file,
        config_text(
            &standin,
            &gate.proxy_addr.to_string(),
            &gate.dashboard_addr.to_string(),
        ),
    )
    .map_err(|e| format!("cannot write {}: {e}", config_file.display()))?;
    let result = narrate(&opts, &config, &config_file, &gate, &standin, &tokens).await;
    gate.shutdown().await;
    result
}

/// The first line of every file the demo writes in its directory.
const WRITTEN_BY: &str = "# Written by `agentgate demo`";

/// Refuses a directory whose config or vault file the demo did not write: `--dir` pointed at a
/// real gate's directory must not lose them.
fn refuse_foreign_files(dir: &Path) -> Result<(), String> {
    for name in [crate::config::DEFAULT_CONFIG_FILE, "vault.toml"] {
        let path = dir.join(name);
        match std::fs::read_to_string(&path) {
            Ok(text) if !text.starts_with(WRITTEN_BY) => {
                return Err(format!(
                    "{} was not written by `agentgate demo`; give --dir a new or demo directory",
                    path.display()
                ));
            }
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(format!("cannot read {}: {e}", path.display()));
            }
            _ => {}
        }
    }
    Ok(())
}

/// The demo's `agentgate.toml`.
fn config_text(standin: &StandIn, proxy: &str, dashboard: &str) -> String {
    let mut overrides = String::new();
    for host in standin::HOSTS {
        let _ = writeln!(overrides, "\"{host}\" = \"{}\"", standin.addr);
    }
    format!(
        "{WRITTEN_BY}: the gate of the demo, its stand-ins and its vault file.\n\
         [proxy]\nlisten = \"{proxy}\"\n\
         [dashboard]\nlisten = \"{dashboard}\"\n\
         [upstream]\n\
         # The stand-ins' certificate comes from a CA made for this run.\n\
         extra_roots = [\"standin-ca.pem\"]\n\
         [upstream.overrides]\n\
         # The GitHub and Gmail hosts are played by local stand-ins.\n\
         {overrides}\
         [vault]\nbackend = \"file\"\nfile = \"vault.toml\"\n"
    )
}

/// A new private directory for one demo run.
fn new_dir() -> Result<PathBuf, String> {
    let mut suffix = [0u8; 4];
    getrandom::fill(&mut suffix).map_err(|e| format!("no randomness: {e}"))?;
    let dir = std::env::temp_dir().join(format!("agentgate-demo-{}", hex::encode(suffix)));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    Ok(dir)
}

fn write_private(path: &Path, bytes: &[u8], mode: u32) -> Result<(), String> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    f.write_all(bytes)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// The real tokens of the demo's vault: random, shaped like the providers' own.
struct DemoTokens {
    github: String,
    google: String,
}

impl DemoTokens {
    fn new() -> Result<DemoTokens, String> {
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes).map_err(|e| format!("no randomness: {e}"))?;
        let r = hex::encode(bytes);
        Ok(DemoTokens {
            github: format!("ghp_demo{}", &r[..28]),
            google: format!("ya29.demo-{r}"),
        })
    }

    /// Which demo token `authorization` carries, shortened for the narration.
    fn named_in(&self, authorization: &str) -> Option<String> {
        let basic = authorization
            .strip_prefix("Basic ")
            .and_then(|b| {
                use base64::Engine;
                base64::engine::general_purpose::STANDARD.decode(b).ok()
            })
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        [&self.github, &self.google]
            .into_iter()
            .find(|t| authorization.contains(t.as_str()) || basic.contains(t.as_str()))
            .map(|t| format!("{}...", &t[..t.len().min(12)]))
    }
}

/// How one action ended.
enum Ending {
    Allowed,
    Blocked,
    Approved,
    Denied,
    Other,
}

async fn narrate(
    opts: &Options,
    config: &Config,
    config_file: &Path,
    gate: &crate::app::Gate,
    standin: &StandIn,
    tokens: &DemoTokens,
) -> Result<Tally, String> {
    let dir = config_file.parent().unwrap_or(Path::new("."));
    let agent_token = crate::agents::default_token(&config.data_dir)
        .map_err(|e| e.to_string())?
        .ok_or("the gate made no token for the default agent")?;
    let ca = std::fs::read(&gate.ca_cert)
        .map_err(|e| format!("cannot read {}: {e}", gate.ca_cert.display()))?;
    let agent = agent_client(gate.proxy_addr, &agent_token, &ca)?;
    let target = Target::new(
        config,
        format!("dashboard.listen in {}", config_file.display()),
    );
    let dashboard = crate::dashboard::url(gate.dashboard_addr);
    let reviewer_file = config
        .data_dir
        .join(crate::dashboard::reviewers::DEFAULT_TOKEN_FILE);
    let placeholders = &config.placeholders;
    say(&format!(
        "AgentGate demo\n\n\
         \x20 gate        proxy {proxy}, dashboard {dashboard}\n\
         \x20 policy      {policy} (the shipped policy)\n\
         \x20 stand-ins   {addr} plays {hosts}: local stand-ins speaking their wire formats,\n\
         \x20             not the real services; nothing leaves this machine\n\
         \x20 agent       \"default\", holding only placeholders ({gh}, {google});\n\
         \x20             the gate puts the vault's token on what it allows\n\
         \x20 directory   {dir} (config: --config {cfg})\n",
        proxy = gate.proxy_addr,
        policy = config.policies_dir.join("default.policy").display(),
        addr = standin.addr,
        hosts = standin::HOSTS.join(", "),
        gh = placeholders.github,
        google = placeholders.google,
        dir = dir.display(),
        cfg = config_file.display(),
    ));
    if opts.review == Review::Person {
        say(&format!(
            "  reviewing   held requests wait for you: open {dashboard} and sign in with the\n\
             \x20             reviewer token in {}\n",
            reviewer_file.display()
        ));
    }
    let steps = script::steps(placeholders);
    let total = steps.len();
    let mut tally = Tally::default();
    let mut audit_seq = last_seq(config, 0).await;
    for (i, step) in steps.iter().enumerate() {
        let ending = run_step(
            opts.review,
            &agent,
            &target,
            config,
            config_file,
            &dashboard,
            standin,
            tokens,
            &mut audit_seq,
            (i + 1, total),
            step,
        )
        .await?;
        match ending {
            Ending::Allowed => tally.allowed += 1,
            Ending::Blocked => tally.blocked += 1,
            Ending::Approved => tally.approved += 1,
            Ending::Denied => tally.denied += 1,
            Ending::Other => tally.other += 1,
        }
    }
    let verified = crate::audit_cli::verify(config).await;
    say(&format!(
        "Done: {} allowed, {} blocked, {} held and approved, {} held and denied{}.\n\
         Audit: {}\n\
         \x20 every decision: agentgate audit export --config {cfg}\n\
         \x20 the chain:      agentgate audit verify --config {cfg}\n\
         The stand-ins received {} requests; none carried a placeholder.",
        tally.allowed,
        tally.blocked,
        tally.approved,
        tally.denied,
        if tally.other > 0 {
            format!(", {} otherwise", tally.other)
        } else {
            String::new()
        },
        match &verified {
            Ok(text) => text.clone(),
            Err(e) => format!("NOT VERIFIED: {e}"),
        },
        standin.seen().len(),
        cfg = config_file.display(),
    ));
    verified?;
    if let Some(bad) = standin.seen().iter().find(|s| {
        s.authorization
            .as_deref()
            .is_some_and(|a| a.contains("agentgate-placeholder") || tokens.named_in(a).is_none())
    }) {
        return Err(format!(
            "the stand-in for {} received {} {} without the vault's token",
            bad.host, bad.method, bad.path
        ));
    }
    Ok(tally)
}

fn say(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}").and_then(|()| out.flush());
}

fn agent_client(
    proxy: std::net::SocketAddr,
    token: &str,
    ca_pem: &[u8],
) -> Result<reqwest::Client, String> {
    let ca = reqwest::Certificate::from_pem(ca_pem).map_err(|e| format!("the gate's CA: {e}"))?;
    let proxy = reqwest::Proxy::all(format!("http://default:{token}@{proxy}"))
        .map_err(|e| format!("the proxy URL: {e}"))?;
    reqwest::Client::builder()
        .proxy(proxy)
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca)
        .redirect(reqwest::redirect::Policy::none())
        // Past the step-up window: a held request is answered when it is decided or expires.
        .timeout(Duration::from_secs(16 * 60))
        .build()
        .map_err(|e| format!("cannot make the agent's HTTP client: {e}"))
}

/// What the agent got back for one request.
struct Answer {
    status: u16,
    challenge: Option<String>,
    body: Value,
}

#[allow(clippy::too_many_arguments)]
async fn run_step(
    review: Review,
    agent: &reqwest::Client,
    target: &Target,
    config: &Config,
    config_file: &Path,
    dashboard: &str,
    standin: &StandIn,
    tokens: &DemoTokens,
    audit_seq: &mut u64,
    (n, total): (usize, usize),
    step: &Step,
) -> Result<Ending, String> {
    let last_call = step.calls.last().map(Call::line).unwrap_or_default();
    say(&format!(
        "{n:>2}/{total}  {}\n       {last_call}",
        step.title
    ));
    let before = standin.seen().len();
    let mut held = None;
    let mut answer = None;
    for call in &step.calls {
        let (a, h) = send(agent, call, review, target, config_file, dashboard).await?;
        held = held.or(h);
        // A refusal ends the action (a refused push is a 200 git-format report).
        let stop = a.status >= 400 || a.body["decision"].is_string();
        answer = Some(a);
        if stop {
            break;
        }
    }
    let Some(answer) = answer else {
        return Ok(Ending::Other);
    };
    let reached = standin
        .seen()
        .get(before..)
        .map(<[_]>::to_vec)
        .unwrap_or_default();
    let token = reached
        .iter()
        .filter_map(|s| s.authorization.as_deref())
        .find_map(|a| tokens.named_in(a));
    let what: Vec<String> = reached
        .iter()
        .map(|s| format!("{} {}", s.method, s.path.split('?').next().unwrap_or("")))
        .collect();
    let delivered = match (&token, what.as_slice()) {
        (_, []) => "nothing reached the stand-in".to_string(),
        (Some(t), what) => format!(
            "the stand-in received {} with the vault's token ({t}), not the placeholder",
            what.join(" and ")
        ),
        (None, what) => format!(
            "the stand-in received {} WITHOUT the vault's token",
            what.join(" and ")
        ),
    };
    let (decided_by, seq) = decisions(config, *audit_seq).await;
    *audit_seq = seq;
    let ending = match (
        answer.status,
        answer.body["decision"].as_str(),
        held.is_some(),
    ) {
        (_, Some("block"), _) => {
            let rules = if answer.body["git"] == true {
                String::new()
            } else {
                format!("{}: ", rules_of(&answer.body))
            };
            say(&format!(
                "       BLOCKED   {rules}{}\n                 {delivered}",
                answer.body["reason"].as_str().unwrap_or("")
            ));
            Ending::Blocked
        }
        (_, Some(d @ ("denied" | "expired")), _) => {
            let why = match (d, answer.body["note"].as_str()) {
                ("denied", Some(note)) => format!("the reviewer's note: {note}"),
                _ => answer.body["reason"].as_str().unwrap_or("").to_string(),
            };
            say(&format!(
                "       {:<9} {why}\n                 {delivered}",
                d.to_uppercase()
            ));
            if d == "denied" {
                Ending::Denied
            } else {
                Ending::Other
            }
        }
        (s, _, true) if s < 400 && answer.challenge.is_some() => {
            say(&format!(
                "       APPROVED  the gate forwarded it: the stand-in answered {s}\n                 {delivered}"
            ));
            Ending::Approved
        }
        (s, _, false) if s < 400 => {
            say(&format!(
                "       ALLOWED   {decided_by}; the stand-in answered {s}\n                 {delivered}"
            ));
            Ending::Allowed
        }
        (s, _, _) => {
            say(&format!(
                "       ANSWERED  {s}: {}\n                 {delivered}",
                answer.body
            ));
            Ending::Other
        }
    };
    say("");
    Ok(ending)
}

/// Sends one request as the agent and, while it waits, watches for a challenge it raised:
/// narrates the hold and, as `review` says, approves or denies it. Returns the answer and the
/// id of the challenge, if the request was held.
async fn send(
    agent: &reqwest::Client,
    call: &Call,
    review: Review,
    target: &Target,
    config_file: &Path,
    dashboard: &str,
) -> Result<(Answer, Option<String>), String> {
    let seen_before = pending(target).await?;
    let mut req = agent.request(call.method.clone(), &call.url);
    for (name, value) in &call.headers {
        req = req.header(*name, value);
    }
    if !call.body.is_empty() {
        req = req.body(call.body.clone());
    }
    let sent = req.send();
    tokio::pin!(sent);
    let mut held: Option<String> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let resp = loop {
        tokio::select! {
            r = &mut sent => break r,
            _ = tick.tick(), if held.is_none() => {
                let now = pending(target).await?;
                let Some(c) = now.into_iter().find(|c| !seen_before.iter().any(|b| b["id"] == c["id"])) else {
                    continue;
                };
                let id = c["id"].as_str().unwrap_or("").to_string();
                say(&format!(
                    "       HELD      {}: {}\n\
                     \x20                approve or deny it at {dashboard}\n\
                     \x20                or: agentgate approve {id} --config {cfg}",
                    c["rules"].as_array().map(|r| r.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", ")).map(|r| format!("rule {r}")).unwrap_or_default(),
                    c["reasons"].as_array().and_then(|r| r.first()).and_then(Value::as_str).unwrap_or(""),
                    cfg = config_file.display(),
                ));
                let verdict = match review {
                    Review::Person => None,
                    Review::ApproveAll => Some((Verdict::Approve, "approved by agentgate demo --approve-all")),
                    Review::DenyAll => Some((Verdict::Deny, "denied by agentgate demo --deny-all")),
                };
                if let Some((v, note)) = verdict {
                    challenges_cli::decide(target, &id, v, Some(note))
                        .await
                        .map_err(|e| format!("the demo could not decide {id}: {e}"))?;
                    say(&format!("                 ({note})"));
                }
                held = Some(id);
            }
        }
    };
    let resp = resp.map_err(|e| format!("the agent's request {} failed: {e}", call.line()))?;
    let status = resp.status().as_u16();
    let decision = resp
        .headers()
        .get(crate::proxy::respond::DECISION_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let decision = decision.as_deref();
    let challenge = resp
        .headers()
        .get("agentgate-challenge")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let bytes = resp
        .bytes()
        .await
        .map_err(|e| format!("the answer to {} was cut: {e}", call.line()))?;
    let body = serde_json::from_slice(&bytes).unwrap_or_else(|_| git_report(&bytes, decision));
    Ok((
        Answer {
            status,
            challenge,
            body,
        },
        held,
    ))
}

/// A refused push's `report-status`, as `{"decision", "reason"}`: the gate answers git in
/// git's terms (`ng REF REASON`), which git prints as `! [remote rejected] ... (REASON)`.
fn git_report(bytes: &[u8], decision: Option<&str>) -> Value {
    let Some(decision) = decision else {
        return Value::Null;
    };
    let text = String::from_utf8_lossy(bytes);
    let reason = text
        .split("ng ")
        .nth(1)
        .and_then(|l| l.split_once(' '))
        .map(|(_, r)| r.lines().next().unwrap_or(r).to_string())
        .unwrap_or_default();
    serde_json::json!({
        "decision": decision,
        "reason": format!("git is told: ! [remote rejected] ({reason})"),
        "git": true,
    })
}

/// The pending challenges, as the API lists them.
async fn pending(target: &Target) -> Result<Vec<Value>, String> {
    let text = challenges_cli::list(target, Some(State::Pending), true, crate::decider::now_ms())
        .await
        .map_err(|e| format!("the dashboard API: {e}"))?;
    Ok(serde_json::from_str::<Vec<Value>>(&text).unwrap_or_default())
}

/// The audit log's last sequence number after `after` (`after` when it cannot be read: the
/// narration then only misses the rule names).
async fn last_seq(config: &Config, after: u64) -> u64 {
    audit_page(config, after).await.map_or(after, |v| {
        v.last().and_then(|r| r["seq"].as_u64()).unwrap_or(after)
    })
}

async fn audit_page(config: &Config, after: u64) -> Result<Vec<Value>, String> {
    let mut after = after;
    let mut all = Vec::new();
    loop {
        let body =
            crate::audit_cli::api_get(config, &format!("/api/audit?after={after}&limit=1000"))
                .await?;
        let page: Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
        let records = page["records"].as_array().cloned().unwrap_or_default();
        if records.is_empty() {
            return Ok(all);
        }
        after = page["next"].as_u64().unwrap_or(u64::MAX);
        all.extend(records);
    }
}

/// "rule X (audit #N)" for the decision records written since `after`, and the last
/// sequence number.
async fn decisions(config: &Config, after: u64) -> (String, u64) {
    let Ok(records) = audit_page(config, after).await else {
        return ("decided".into(), after);
    };
    let last = records
        .last()
        .and_then(|r| r["seq"].as_u64())
        .unwrap_or(after);
    // One entry per distinct rule list: "rule X (audit #3, #5)".
    let mut parts: Vec<(String, Vec<String>)> = Vec::new();
    for r in records.iter().filter(|r| r["kind"] == "decision") {
        let rules = rules_of(r);
        let seq = format!("#{}", r["seq"]);
        match parts.iter_mut().find(|(k, _)| *k == rules) {
            Some((_, seqs)) => seqs.push(seq),
            None => parts.push((rules, vec![seq])),
        }
    }
    let parts: Vec<String> = parts
        .into_iter()
        .map(|(rules, seqs)| format!("{rules} (audit {})", seqs.join(", ")))
        .collect();
    let text = if parts.is_empty() {
        "decided".into()
    } else {
        parts.join(", ")
    };
    (text, last)
}

fn rules_of(v: &Value) -> String {
    let rules: Vec<&str> = v["rules"]
        .as_array()
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    match rules.as_slice() {
        [] => "no rule".into(),
        [one] => format!("rule {one}"),
        many => format!("rules {}", many.join(", ")),
    }
}
