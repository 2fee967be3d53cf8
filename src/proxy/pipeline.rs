//! The request pipeline every request on an intercepted tunnel (and every plain-HTTP request)
//! goes through: pin to the tunnel's target -> read the body within the limit -> classify ->
//! decide -> forward the bytes that were inspected -> stream the response back.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Request, Response, Uri, Version, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use tokio::sync::oneshot;

use super::drafts::Drafts;
use super::respond::{self, REQUEST_ID_HEADER, Refusal, RequestId};
use super::resumable::Uploads;
use super::{ProxyState, RespBody};
use crate::actions::catalog::Catalog;
use crate::actions::gmail_batch;
use crate::actions::host::Authority;
use crate::actions::{Action, ClassifyError, canonical};
use crate::agents::Agent;
use crate::audit::{DecisionRecord, OutcomeRecord};
use crate::policy::Effect;
use crate::vault::inject::{self, Credential, Scheme};
use crate::vault::{Provider, Secret};

/// How long, and how much, the gate keeps reading a refused oversized body so that the client
/// sees the 413 instead of a reset connection.
const DRAIN_TIME: Duration = Duration::from_secs(5);

/// Where the requests of one connection (or one plain-HTTP request) are allowed to go.
#[derive(Debug, Clone)]
pub struct Origin {
    /// `https` for intercepted tunnels, the request's own scheme for plain-HTTP requests.
    pub scheme: &'static str,
    /// The pinned upstream: the CONNECT target, or the absolute-form URI's authority.
    pub target: Authority,
    /// Set when the TLS handshake named another host (SNI): every request is refused.
    pub misdirected: Option<String>,
    /// The agent the proxy credentials named (for a tunnel, on its CONNECT).
    pub agent: Arc<Agent>,
}

impl Origin {
    fn default_port(&self) -> u16 {
        if self.scheme == "http" { 80 } else { 443 }
    }
}

/// Runs one request through the pipeline; never fails (refusals become responses).
pub async fn handle(
    state: Arc<ProxyState>,
    origin: Arc<Origin>,
    req: Request<Incoming>,
) -> Response<RespBody> {
    let rid = RequestId::new();
    let method = req.method().clone();
    let started = std::time::Instant::now();
    let mut git = None;
    let result = run(&state, &origin, req, &rid, &mut git).await;
    state.metrics.request_time(started.elapsed());
    let mut resp = match result {
        Ok(resp) => resp,
        Err(refusal) => {
            tracing::info!(request_id = %rid, %method, target = %origin.target, ?refusal, "refused");
            git.and_then(|g| respond::git_refusal(&refusal, &rid, &g))
                .unwrap_or_else(|| respond::refusal(&refusal, &rid))
        }
    };
    if let Ok(v) = HeaderValue::from_str(&rid.to_string()) {
        resp.headers_mut().insert(REQUEST_ID_HEADER, v);
    }
    resp
}

async fn run(
    state: &Arc<ProxyState>,
    origin: &Arc<Origin>,
    req: Request<Incoming>,
    rid: &RequestId,
    git: &mut Option<respond::GitClient>,
) -> Result<Response<RespBody>, Refusal> {
    if let Some(why) = &origin.misdirected {
        return Err(Refusal::Misdirected(why.clone()));
    }
    let agent = origin.agent.name.as_str();
    check_target(origin, &req)?;
    check_headers(&state.limits, req.headers())?;
    let (mut parts, body) = req.into_parts();
    let path = origin_path(&parts.uri)?;
    // The larger steps below are boxed: a future is as large as its largest state, and a
    // connection keeps this one allocated at that size while its request is held (10,000
    // held requests: 6.5 KB each unboxed, 1 KB boxed; `cargo bench --bench held`).
    let mut body = Box::pin(read_body(body, &parts.headers, state.limits.max_body_bytes)).await?;
    let mut actions = classify(state, origin, &mut parts, &mut body, &path)?;
    // A git client is told why it was refused in a form it prints.
    *git = respond::GitClient::of(&parts.method, &actions);
    for action in &mut actions {
        state.drafts.complete_send(agent, action);
    }
    let host = origin.target.host.as_str();
    let provider = inject::provider_for(host, &state.github_enterprise);
    let query = path.split_once('?').map_or("", |(_, q)| q);
    let credential = inject::credential(provider, &state.placeholders, &parts.headers, query)
        .worst(batch_credential(
            state, provider, origin, &parts, &body, &path,
        ));
    let now = crate::decider::now_ms();
    let decision = state
        .decider
        .admit(&actions, agent, credential.as_str(), now);
    state.metrics.decided(&decision);
    // The decision is durable in the audit log before anything goes upstream.
    let record = DecisionRecord::new(
        now,
        agent,
        &rid.to_string(),
        credential.as_str(),
        &decision,
        &actions,
    );
    let seq = Box::pin(state.audit.decision(record)).await.map_err(|e| {
        state.metrics.audit_write_error();
        Refusal::Audit(format!(
            "the audit log cannot record this request ({e}); nothing was forwarded"
        ))
    })?;
    match decision.effect {
        Effect::Allow => {}
        Effect::Block => return Err(Refusal::Blocked(decision)),
        Effect::StepUp => {
            let held = Held {
                parts,
                body,
                path,
                actions,
                provider,
                credential,
            };
            return Box::pin(step_up(state, origin, rid, held, decision)).await;
        }
    }
    let decided = std::time::Instant::now();
    let result = Box::pin(forward(
        state, origin, parts, body, path, &actions, provider, credential,
    ))
    .await;
    record_outcome(state, rid, seq, decided, &result);
    result
}

/// Appends what became of a forwarded request to the audit log (not awaited: a lost outcome
/// never hides a decision, which is already durable).
fn record_outcome(
    state: &ProxyState,
    rid: &RequestId,
    seq: u64,
    decided: std::time::Instant,
    result: &Result<Response<RespBody>, Refusal>,
) {
    let outcome = OutcomeRecord {
        time_ms: crate::decider::now_ms(),
        status: result.as_ref().ok().map(|r| r.status().as_u16()),
        latency_us: u64::try_from(decided.elapsed().as_micros()).unwrap_or(u64::MAX),
        error: result.as_ref().err().map(Refusal::for_audit),
    };
    if let Err(e) = state.audit.outcome(seq, outcome) {
        state.metrics.audit_write_error();
        tracing::warn!(request_id = %rid, "audit: the outcome of record {seq} was not written: {e}");
    }
}

/// A request waiting on a step-up: everything needed to forward exactly what was inspected.
struct Held {
    parts: Parts,
    body: Bytes,
    path: String,
    actions: Vec<Action>,
    provider: Option<Provider>,
    credential: Credential,
}

/// The header an agent sends to say it will not wait (`no`): it gets 428 and a challenge id.
const HOLD_HEADER: &str = "agentgate-hold";
/// The header carrying a challenge id: on the agent's retry, and on the approved response.
const CHALLENGE_HEADER: &str = "agentgate-challenge";

/// The outcome record of an approval that found nobody to answer: nothing was sent upstream.
const NOT_FORWARDED: &str =
    "not forwarded: the agent had gone when the approval came (a retry gets a new challenge)";

/// Where a step-up's task sends the agent's answer; closed when the agent went away.
type Reply = oneshot::Sender<Result<Response<RespBody>, Refusal>>;

/// A step-up: a challenge for a reviewer, and the request held until it is settled (or, with
/// `agentgate-hold: no`, a 428 now and a retry that passes once approved).
///
/// # Who records the settlement
/// Everything from the challenge's creation (or the retry's redemption) to its audit records
/// runs in a task of its own, [`settle`]; the agent's connection only waits for the answer.
/// hyper drops a connection's future when the agent goes away, which used to take the
/// settlement record with it (and an approval with nobody to forward it for). The task is not
/// cancelled by that: it records exactly one settlement per challenge, whoever wins the race
/// and whether or not the agent is still there:
///
/// | settled as | recorded by | audit |
/// |---|---|---|
/// | approved, agent there | the held request's task | decision `approved` (the re-check: `block` if a block fires now), durable before the forward; outcome with the upstream's status |
/// | approved, agent gone | the held request's task | decision `approved` with the reviewer; outcome with no status and the error [`NOT_FORWARDED`]; nothing goes upstream |
/// | denied, expired, abandoned | the held request's task | decision `denied`, `expired` or `abandoned` (reviewer and note for a denial) |
/// | 428 mode: approved, denied, expired | the 428 request's task, which waits for the settlement after answering | decision `approved`, `denied` or `expired`; nothing goes upstream |
/// | 428 mode: redeemed | the retry's task | decision `redeemed` (or the re-check's `block`), then as for an approval |
/// | interrupted (pending when the gate stopped) | `app` at the next start ([`crate::holds::Holds::take_interrupted`]) | decision `interrupted` |
///
/// When the gate stops ([`crate::holds::Holds::close`]), tasks whose challenge is still
/// pending end without a record, leaving it pending for the next start to mark interrupted
/// and record.
///
/// An approval finds the agent gone when its connection closed before the task looked, after
/// the approval: the request is not forwarded (the agent would never read the answer; it gets
/// a new challenge when it retries). Once the task has chosen to forward, the forward runs to
/// its end even if the agent leaves meanwhile, and its outcome is recorded: the upstream
/// receives the request if and only if the audit has an outcome with the upstream's status.
async fn step_up(
    state: &Arc<ProxyState>,
    origin: &Arc<Origin>,
    rid: &RequestId,
    held: Held,
    decision: crate::policy::Decision,
) -> Result<Response<RespBody>, Refusal> {
    let (tx, rx) = oneshot::channel();
    tokio::spawn(settle(
        state.clone(),
        origin.clone(),
        rid.clone(),
        held,
        decision,
        tx,
    ));
    rx.await.unwrap_or_else(|_| {
        Err(Refusal::Audit(
            "the step-up task ended without an answer; nothing was forwarded".into(),
        ))
    })
}

/// The step-up's task (see [`step_up`]): creates or redeems the challenge, answers `reply`,
/// and records the settlement.
async fn settle(
    state: Arc<ProxyState>,
    origin: Arc<Origin>,
    rid: RequestId,
    held: Held,
    decision: crate::policy::Decision,
    mut reply: Reply,
) {
    let (state, origin, rid) = (&*state, &*origin, &rid);
    let agent = origin.agent.name.clone();
    let digest = crate::holds::digest(
        &agent,
        &held.actions,
        &origin.target.host,
        held.parts.method.as_str(),
        &held.path,
        &held.body,
    );
    let header = |name: &str| {
        held.parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    // The retry of a request the agent was not held for.
    if let Some(id) = header(CHALLENGE_HEADER) {
        if reply.is_closed() {
            // Gone already: the approval is left for a retry that will read the answer.
            return;
        }
        let (holds, a, d) = (state.holds.clone(), agent.clone(), digest.clone());
        let redeemed = tokio::task::spawn_blocking(move || {
            holds.redeem(&id, &a, &d, crate::decider::now_ms())
        })
        .await
        .map_err(|e| Refusal::Audit(format!("the holds task failed: {e}")));
        match redeemed {
            Err(refusal) => {
                let _ = reply.send(Err(refusal));
                return;
            }
            Ok(Ok(c)) => {
                let gone = reply.is_closed();
                let result = Box::pin(approved(state, origin, rid, held, &decision, c, gone)).await;
                let _ = reply.send(result);
                return;
            }
            Ok(Err(crate::holds::HoldError::NotApproved {
                state: crate::holds::State::Pending,
            })) => {
                let _ = reply.send(Err(Refusal::StepUpPending {
                    decision: Box::new(decision),
                    challenge_id: header(CHALLENGE_HEADER).unwrap_or_default(),
                    expires_at: String::new(),
                }));
                return;
            }
            // Unknown, used, expired, another request: a new challenge below.
            Ok(Err(_)) => {}
        }
    }
    let hold = header(HOLD_HEADER).is_none_or(|v| !v.eq_ignore_ascii_case("no"));
    let reasons: Vec<String> = decision
        .fired
        .iter()
        .filter(|f| !f.shadow && decision.rules.contains(&f.rule) && !f.reason.is_empty())
        .map(|f| f.reason.clone())
        .collect();
    let new = crate::holds::NewChallenge {
        agent: agent.clone(),
        actions: held.actions.clone(),
        rules: decision.rules.iter().map(|r| r.to_string()).collect(),
        reasons: if reasons.is_empty() {
            vec![decision.reason.clone()]
        } else {
            reasons
        },
        digest,
        hold,
    };
    let created = Box::pin(state.holds.create_async(new, crate::decider::now_ms())).await;
    let (challenge, waiter) = match created {
        Ok(x) => x,
        Err(crate::holds::HoldError::TooMany { limit, .. }) => {
            let _ = reply.send(Err(Refusal::TooManyHeld(format!(
                "too many requests are waiting for a reviewer (limit {limit}); retry later"
            ))));
            return;
        }
        Err(e) => {
            let _ = reply.send(Err(Refusal::Audit(format!(
                "the step-up could not be stored: {e}"
            ))));
            return;
        }
    };
    if !hold {
        let _ = reply.send(Err(Refusal::StepUpPending {
            decision: Box::new(decision.clone()),
            challenge_id: challenge.id,
            expires_at: rfc3339(challenge.expires_ms),
        }));
        // The agent has its answer; the challenge's settlement is recorded when it comes. The
        // body is not kept for that.
        let Held {
            actions,
            credential,
            ..
        } = held;
        let Some(settled) = waiter.settle(std::future::pending()).await else {
            return; // the gate is stopping: interrupted at the next start
        };
        // Approved and already redeemed by a quick retry: this task records the approval,
        // the retry its redemption.
        let label = match settled.state {
            crate::holds::State::Redeemed => crate::holds::State::Approved.as_str(),
            s => s.as_str(),
        };
        let _ = Box::pin(record_settled(
            state,
            origin,
            rid,
            &actions,
            credential.as_str(),
            &decision,
            &settled,
            label,
        ))
        .await;
        return;
    }
    state.metrics.held_change(1);
    let settled = waiter.settle(reply.closed()).await;
    state.metrics.held_change(-1);
    let Some(settled) = settled else {
        let _ = reply.send(Err(Refusal::Audit(
            "the gate is stopping; nothing was forwarded (the challenge will show as interrupted)"
                .into(),
        )));
        return;
    };
    let result = if settled.state == crate::holds::State::Approved {
        let gone = reply.is_closed();
        Box::pin(approved(state, origin, rid, held, &decision, settled, gone)).await
    } else {
        let label = settled.state.as_str();
        let recorded = Box::pin(record_settled(
            state,
            origin,
            rid,
            &held.actions,
            held.credential.as_str(),
            &decision,
            &settled,
            label,
        ))
        .await;
        recorded.and(Err(Refusal::Settled {
            decision: Box::new(decision),
            state: label.to_string(),
            challenge_id: settled.id,
            note: settled.note,
        }))
    };
    let _ = reply.send(result);
}

/// An approved (or, in the 428 mode, redeemed) step-up: decided again with the approved rules
/// (a block that fires now still blocks), recorded, then forwarded as inspected; the response
/// names the challenge. With the agent `gone`, only recorded: approved by the reviewer, not
/// forwarded (see [`step_up`]).
async fn approved(
    state: &ProxyState,
    origin: &Origin,
    rid: &RequestId,
    held: Held,
    step_up: &crate::policy::Decision,
    challenge: crate::holds::Challenge,
    gone: bool,
) -> Result<Response<RespBody>, Refusal> {
    let agent = origin.agent.name.as_str();
    let settled_as = challenge.state.as_str();
    if gone {
        let seq = Box::pin(record_settled(
            state,
            origin,
            rid,
            &held.actions,
            held.credential.as_str(),
            step_up,
            &challenge,
            settled_as,
        ))
        .await?;
        let outcome = OutcomeRecord {
            time_ms: crate::decider::now_ms(),
            status: None,
            latency_us: 0,
            error: Some(NOT_FORWARDED.to_string()),
        };
        if let Err(e) = state.audit.outcome(seq, outcome) {
            state.metrics.audit_write_error();
            tracing::warn!(request_id = %rid, "audit: the outcome of record {seq} was not written: {e}");
        }
        tracing::info!(request_id = %rid, challenge = %challenge.id, "approved, not forwarded: the agent had gone");
        return Err(Refusal::Settled {
            decision: Box::new(step_up.clone()),
            state: settled_as.to_string(),
            challenge_id: challenge.id,
            note: challenge.note,
        });
    }
    let now = crate::decider::now_ms();
    let decision = state.decider.admit_approved(
        &held.actions,
        agent,
        held.credential.as_str(),
        now,
        &challenge.rules,
    );
    state.metrics.decided(&decision);
    let label = if decision.effect == Effect::Allow {
        settled_as
    } else {
        decision.effect.as_str()
    };
    // An approval is recorded with the step-up rules the reviewer approved, then the rules of
    // the re-check (an allow rule that fires once they no longer do).
    let recorded = if decision.effect == Effect::Allow {
        let mut d = decision.clone();
        let mut rules: Vec<_> = challenge.rules.iter().map(|r| r.as_str().into()).collect();
        rules.extend(
            d.rules
                .iter()
                .filter(|r| !challenge.rules.iter().any(|a| a == r.as_str()))
                .cloned(),
        );
        d.rules = rules;
        d
    } else {
        decision.clone()
    };
    let seq = Box::pin(record_settled(
        state,
        origin,
        rid,
        &held.actions,
        held.credential.as_str(),
        &recorded,
        &challenge,
        label,
    ))
    .await?;
    if decision.effect != Effect::Allow {
        return Err(Refusal::Blocked(decision));
    }
    let decided = std::time::Instant::now();
    let Held {
        parts,
        body,
        path,
        actions,
        provider,
        credential,
    } = held;
    // Boxed, as in `run`: this task lives for the whole hold (its other large steps too).
    let result = Box::pin(forward(
        state, origin, parts, body, path, &actions, provider, credential,
    ))
    .await;
    record_outcome(state, rid, seq, decided, &result);
    let mut resp = result?;
    if let Ok(v) = HeaderValue::from_str(&challenge.id) {
        resp.headers_mut().insert(CHALLENGE_HEADER, v);
    }
    Ok(resp)
}

/// The audit record of how a step-up was settled (with the challenge, reviewer and note).
#[allow(clippy::too_many_arguments)]
async fn record_settled(
    state: &ProxyState,
    origin: &Origin,
    rid: &RequestId,
    actions: &[Action],
    credential: &str,
    decision: &crate::policy::Decision,
    challenge: &crate::holds::Challenge,
    label: &str,
) -> Result<u64, Refusal> {
    let mut record = DecisionRecord::new(
        crate::decider::now_ms(),
        &origin.agent.name,
        &rid.to_string(),
        credential,
        decision,
        actions,
    );
    record.decision = label.to_string();
    record.challenge_id = Some(challenge.id.clone());
    record.reviewer = challenge.reviewer.clone();
    record.note = challenge.note.clone();
    state.audit.decision(record).await.map_err(|e| {
        state.metrics.audit_write_error();
        tracing::error!(request_id = %rid, challenge = %challenge.id, "audit: the settlement ({label}) was not recorded: {e}");
        Refusal::Audit(format!(
            "the audit log cannot record this request ({e}); nothing was forwarded"
        ))
    })
}

fn rfc3339(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms).map_or_else(|_| ms.to_string(), |t| t.to_string())
}

/// An allowed request: credentials swapped, forwarded, the response streamed back.
#[allow(clippy::too_many_arguments)]
async fn forward(
    state: &ProxyState,
    origin: &Origin,
    mut parts: Parts,
    mut body: Bytes,
    path: String,
    actions: &[Action],
    provider: Option<Provider>,
    credential: Credential,
) -> Result<Response<RespBody>, Refusal> {
    let agent = origin.agent.name.as_str();
    // A Gmail resumable upload starts here: remember the session the upstream creates.
    let upload_start = actions
        .iter()
        .find(|a| a.params.get("resumable").and_then(|v| v.as_str()) == Some("start"))
        .map(|a| (a.clone(), parts.headers.clone()));
    let draft_write = actions.iter().find(|a| Drafts::writes_draft(a)).cloned();
    let (path, token) = credentials(
        state,
        origin,
        provider,
        credential,
        actions,
        &mut parts.headers,
        path,
    )
    .await?;
    if let (Some(token), Some(Provider::Google)) = (&token, provider) {
        if let Some(rewritten) = batch_part_tokens(state, origin, &parts, &body, &path, token) {
            body = Bytes::from(rewritten);
        }
    }
    drop(token);
    let upstream = upstream_request(parts, body, origin, &path)?;
    let upstream_started = std::time::Instant::now();
    let resp = state
        .forwarder
        .send(upstream)
        .await
        .map_err(Refusal::Upstream)?;
    state.metrics.upstream_time(upstream_started.elapsed());
    if let Some((action, request_headers)) = upload_start {
        if resp.status().is_success() {
            state
                .uploads
                .started(agent, &action, &request_headers, resp.headers());
        }
    }
    if let Some(action) = draft_write {
        return Ok(downstream(state.drafts.written(agent, &action, resp).await));
    }
    Ok(downstream(resp.map(BodyExt::boxed)))
}

/// The credentials the parts of a Google batch carry in their own headers or URLs (a real
/// token hidden in a part is as foreign as one on the outer request). Part-level placeholders
/// are not replaced: the batch is forwarded as inspected, and the outer request's token is the
/// one the gate sets.
fn batch_credential(
    state: &ProxyState,
    provider: Option<Provider>,
    origin: &Origin,
    parts: &Parts,
    body: &Bytes,
    path: &str,
) -> Credential {
    if provider != Some(Provider::Google) || !gmail_batch::is_batch_path(path) {
        return Credential::None;
    }
    let (path_only, query) = path.split_once('?').unwrap_or((path, ""));
    let Ok(query) = canonical::parse_query(query) else {
        return Credential::Foreign;
    };
    let req = crate::actions::Request {
        host: &origin.target.host,
        method: parts.method.as_str(),
        path: path_only,
        query: &query,
        headers: &parts.headers,
        body,
    };
    match gmail_batch::split(&req) {
        Ok(inner) => inner.iter().fold(Credential::None, |acc, part| {
            let q = part.path_and_query.split_once('?').map_or("", |(_, q)| q);
            acc.worst(inject::credential(
                provider,
                &state.placeholders,
                &part.headers,
                q,
            ))
        }),
        // The catalog accepted this batch, so it splits; if it ever did not, refuse to trust it.
        Err(_) => Credential::Foreign,
    }
}

/// After an allow: the agent's placeholder (or, on git, no credential at all: git sends none
/// until a 401) is replaced by the real token fetched from the vault now, for the agent's
/// vault identity. Nothing is injected over plain HTTP, for a host no provider serves, or when
/// the request carries a foreign credential the policy chose to let through.
async fn credentials(
    state: &ProxyState,
    origin: &Origin,
    provider: Option<Provider>,
    credential: Credential,
    actions: &[Action],
    headers: &mut http::HeaderMap,
    path: String,
) -> Result<(String, Option<Secret>), Refusal> {
    let Some(provider) = provider.filter(|_| origin.scheme == "https") else {
        return Ok((path, None));
    };
    let git = actions.iter().any(|a| a.name.starts_with("git."));
    let wanted = match credential {
        Credential::Placeholder => true,
        Credential::None => git,
        Credential::Foreign => false,
    };
    if !wanted {
        return Ok((path, None));
    }
    let user = origin
        .agent
        .user
        .clone()
        .unwrap_or_else(|| origin.agent.name.clone());
    let token = state.vault.token(&user, provider).await.map_err(|e| {
        state.metrics.vault_error(provider.name());
        Refusal::Vault(format!(
            "the vault could not supply a {provider} token for agent {:?} (vault user {user:?}): {e}; nothing was forwarded",
            origin.agent.name
        ))
    })?;
    let scheme = if git {
        Scheme::GitBasic
    } else {
        Scheme::Bearer
    };
    let path = inject::inject(headers, &path, scheme, &token).map_err(|e| {
        Refusal::Vault(format!(
            "the {provider} token the vault supplied for agent {:?} (vault user {user:?}) cannot be used: {e}; nothing was forwarded",
            origin.agent.name
        ))
    })?;
    Ok((path, Some(token)))
}

/// A Google batch whose parts carry their own `Authorization` placeholder (the Google API
/// Python client writes one into every part, and Google prefers it to the outer request's):
/// those values, and only those, get the real token.
fn batch_part_tokens(
    state: &ProxyState,
    origin: &Origin,
    parts: &Parts,
    body: &Bytes,
    path: &str,
    token: &Secret,
) -> Option<Vec<u8>> {
    if !gmail_batch::is_batch_path(path) {
        return None;
    }
    let (path_only, query) = path.split_once('?').unwrap_or((path, ""));
    let query = canonical::parse_query(query).ok()?;
    let req = crate::actions::Request {
        host: &origin.target.host,
        method: parts.method.as_str(),
        path: path_only,
        query: &query,
        headers: &parts.headers,
        body,
    };
    let spans: Vec<(usize, usize)> = gmail_batch::split(&req)
        .ok()?
        .into_iter()
        .flat_map(|p| p.authorization_spans)
        .collect();
    inject::rewrite_part_authorizations(body, &spans, &state.placeholders, Provider::Google, token)
}

/// The actions of a request. On intercepted hosts the catalog canonicalises and classifies
/// it (and a Content-Encoding is replaced by the decoded bytes, which are then forwarded);
/// the data requests of a Gmail resumable upload are classified against their session.
fn classify(
    state: &ProxyState,
    origin: &Origin,
    parts: &mut Parts,
    body: &mut Bytes,
    path: &str,
) -> Result<Vec<Action>, Refusal> {
    let host = origin.target.host.as_str();
    if !state.intercepts(host) {
        return Ok(vec![Action::net_connect(&origin.target)]);
    }
    let bad = |e: ClassifyError| Refusal::BadRequest(e.to_string());
    if Catalog::honours_method_override(host) {
        if let Some(id) = Uploads::upload_id(path).map_err(bad)? {
            let path_only = path.split('?').next().unwrap_or(path);
            canonical::check_path(path_only).map_err(bad)?;
            if parts.headers.contains_key(header::CONTENT_ENCODING) {
                return Err(Refusal::BadRequest(
                    "upload chunks are forwarded as sent and may not carry a Content-Encoding"
                        .into(),
                ));
            }
            let mut action = state
                .uploads
                .chunk(
                    &origin.agent.name,
                    &id,
                    parts.method.as_str(),
                    &parts.headers,
                    body,
                )
                .map_err(bad)?;
            action.host = host.to_string();
            action.method = parts.method.to_string();
            action.path = path_only.to_string();
            return Ok(vec![action]);
        }
    }
    let limit = state.limits.max_body_bytes;
    let inspected = state
        .catalog
        .inspect(
            host,
            parts.method.as_str(),
            path,
            &parts.headers,
            body,
            limit,
        )
        .map_err(bad)?;
    if let Some(decoded) = inspected.decoded_body {
        // Forward what was inspected: the decoded bytes, without the encoding.
        *body = Bytes::from(decoded);
        parts.headers.remove(header::CONTENT_ENCODING);
    }
    Ok(inspected.actions)
}

/// Header limits, and framing that must not be ambiguous.
fn check_headers(limits: &crate::config::Limits, headers: &HeaderMap) -> Result<(), Refusal> {
    let bytes: usize = headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len())
        .sum();
    if bytes > limits.max_header_bytes {
        return Err(Refusal::HeadersTooLarge(format!(
            "the request's header fields add up to {bytes} bytes; the gate accepts at most {} (limits.max_header_bytes)",
            limits.max_header_bytes
        )));
    }
    if headers.len() > limits.max_headers {
        return Err(Refusal::HeadersTooLarge(format!(
            "the request has {} header fields; the gate accepts at most {} (limits.max_headers)",
            headers.len(),
            limits.max_headers
        )));
    }
    // hyper already drops Content-Length next to Transfer-Encoding on HTTP/1.1 (and closes the
    // connection after the response); kept as a guard should any server path not do so.
    if headers.contains_key(header::TRANSFER_ENCODING)
        && headers.contains_key(header::CONTENT_LENGTH)
    {
        return Err(Refusal::BadRequest(
            "the request has both Content-Length and Transfer-Encoding".into(),
        ));
    }
    Ok(())
}

/// The request must name the pinned target, in its URI and Host header alike.
fn check_target(origin: &Origin, req: &Request<Incoming>) -> Result<(), Refusal> {
    let named = |what: &str, value: &str| -> Result<(), Refusal> {
        let a = Authority::parse(value, Some(origin.default_port())).map_err(|e| {
            Refusal::BadRequest(format!("the {what} {value:?} is not a valid host: {e}"))
        })?;
        if a != origin.target {
            return Err(Refusal::Misdirected(format!(
                "this connection goes to {}; the request's {what} names {a}",
                origin.target
            )));
        }
        Ok(())
    };
    if req.uri().scheme().is_none() && req.uri().authority().is_some() {
        return Err(Refusal::BadRequest(format!(
            "the request target {} is authority-form, which only CONNECT uses",
            req.uri()
        )));
    }
    if let Some(scheme) = req.uri().scheme_str() {
        if scheme != origin.scheme {
            return Err(Refusal::Misdirected(format!(
                "this connection speaks {}; the request's URI says {scheme}",
                origin.scheme
            )));
        }
    }
    if let Some(auth) = req.uri().authority() {
        named("URI authority", auth.as_str())?;
    }
    let mut hosts = req.headers().get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(_), Some(_)) => Err(Refusal::BadRequest(
            "the request has more than one Host header".into(),
        )),
        (Some(h), None) => {
            let value = h
                .to_str()
                .map_err(|_| Refusal::BadRequest("the Host header is not ASCII".into()))?;
            named("Host header", value)
        }
        (None, _) if req.uri().authority().is_some() => Ok(()),
        (None, _) => Err(Refusal::BadRequest("the request names no host".into())),
    }
}

/// The path and query, which must be origin-form (`/...`).
fn origin_path(uri: &Uri) -> Result<String, Refusal> {
    match uri.path_and_query() {
        Some(pq) if pq.as_str().starts_with('/') => Ok(pq.as_str().to_string()),
        _ => Err(Refusal::BadRequest(format!(
            "the request target {uri} is not a path starting with '/'"
        ))),
    }
}

/// Reads the whole body within `limit`; never decides on a prefix.
async fn read_body(mut body: Incoming, headers: &HeaderMap, limit: u64) -> Result<Bytes, Refusal> {
    let declared = content_length(headers)?;
    if declared.is_some_and(|n| n > limit) {
        drain(body, limit);
        return Err(Refusal::TooLarge { limit });
    }
    let mut buf = BytesMut::with_capacity(declared.unwrap_or(0) as usize);
    while let Some(frame) = body.frame().await {
        let frame = frame
            .map_err(|e| Refusal::BadRequest(format!("the request body could not be read: {e}")))?;
        if let Ok(data) = frame.into_data() {
            if (buf.len() + data.len()) as u64 > limit {
                drain(body, limit);
                return Err(Refusal::TooLarge { limit });
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}

fn content_length(headers: &HeaderMap) -> Result<Option<u64>, Refusal> {
    match headers.get(header::CONTENT_LENGTH) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse().ok())
            .map(Some)
            .ok_or_else(|| Refusal::BadRequest("the Content-Length header is not a number".into())),
    }
}

/// Keeps reading (and discarding) a refused body for a while so the client reads the 413.
fn drain(mut body: Incoming, limit: u64) {
    tokio::spawn(async move {
        let mut seen: u64 = 0;
        let _ = tokio::time::timeout(DRAIN_TIME, async {
            while let Some(Ok(frame)) = body.frame().await {
                seen += frame.data_ref().map_or(0, |d| d.len() as u64);
                if seen > limit.saturating_mul(2) {
                    break;
                }
            }
        })
        .await;
    });
}

/// Builds the upstream request from the parts the pipeline inspected.
fn upstream_request(
    parts: Parts,
    body: Bytes,
    origin: &Origin,
    path: &str,
) -> Result<Request<Full<Bytes>>, Refusal> {
    let authority = if origin.target.port == origin.default_port() {
        origin.target.uri_host()
    } else {
        origin.target.to_string()
    };
    let uri: Uri = format!("{}://{}{}", origin.scheme, authority, path)
        .parse()
        .map_err(|e| Refusal::BadRequest(format!("the request target cannot be forwarded: {e}")))?;
    let had_length = parts.headers.contains_key(header::CONTENT_LENGTH);
    let mut headers = parts.headers;
    strip_hop_by_hop(&mut headers);
    headers.remove(header::HOST);
    // The gate already holds the whole body: an expectation of 100-continue was the agent's
    // question to the gate, not to the upstream.
    headers.remove(header::EXPECT);
    if had_length || !body.is_empty() {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    }
    let mut req = Request::new(Full::new(body));
    *req.method_mut() = parts.method;
    *req.uri_mut() = uri;
    *req.version_mut() = Version::HTTP_11;
    *req.headers_mut() = headers;
    Ok(req)
}

/// The upstream's response with hop-by-hop headers removed; the body streams through.
fn downstream(resp: Response<RespBody>) -> Response<RespBody> {
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    parts.version = Version::HTTP_11;
    Response::from_parts(parts, body)
}

/// Headers that describe one hop, never forwarded (RFC 9110 section 7.6.1).
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Removes the hop-by-hop headers and every header the Connection header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect();
    for name in named {
        headers.remove(name.as_str());
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_connection_named_headers_go() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, X-Secret-Hop"),
        );
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(
            "proxy-authorization",
            HeaderValue::from_static("Basic eA=="),
        );
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("x-end-to-end", HeaderValue::from_static("kept"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert_eq!(h["x-end-to-end"], "kept");
    }
}
