//! The one place that turns refusals into HTTP responses for agents (design.md section 3).

use std::fmt;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};

use super::RespBody;
use crate::policy::Decision;

/// Header naming the gate's decision on every refusal.
pub const DECISION_HEADER: &str = "agentgate-decision";
/// Header carrying the request id on every response the gate sends.
pub const REQUEST_ID_HEADER: &str = "agentgate-request-id";

/// Why the gate refused a request, and so which response the agent gets.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    /// The policy blocked the action, or asked for a step-up the gate cannot hold yet (403).
    Blocked(Decision),
    /// No or wrong proxy credentials (407).
    ProxyAuth(String),
    /// A step-up the agent asked not to be held for (428): retry with `agentgate-challenge`.
    StepUpPending {
        decision: Box<Decision>,
        challenge_id: String,
        expires_at: String,
    },
    /// A step-up that was denied, expired or abandoned (403).
    Settled {
        decision: Box<Decision>,
        state: String,
        challenge_id: String,
        note: Option<String>,
    },
    /// Too many requests held (429).
    TooManyHeld(String),
    /// Malformed or ambiguous request (400); nothing forwarded.
    BadRequest(String),
    /// The request names another host than the tunnel it came through (421).
    Misdirected(String),
    /// The body is over the inspection limit (413); nothing forwarded.
    TooLarge { limit: u64 },
    /// Too many header fields (431).
    HeadersTooLarge(String),
    /// The upstream could not be reached or failed (502).
    Upstream(String),
    /// The audit log could not record the decision (503); nothing forwarded.
    Audit(String),
    /// The vault could not supply a token (503); nothing forwarded.
    Vault(String),
    /// The gate is at a capacity limit (503).
    Overloaded(String),
}

impl Refusal {
    fn status(&self) -> StatusCode {
        match self {
            Refusal::Blocked(_) => StatusCode::FORBIDDEN,
            Refusal::ProxyAuth(_) => StatusCode::PROXY_AUTHENTICATION_REQUIRED,
            Refusal::StepUpPending { .. } => StatusCode::PRECONDITION_REQUIRED,
            Refusal::Settled { .. } => StatusCode::FORBIDDEN,
            Refusal::TooManyHeld(_) => StatusCode::TOO_MANY_REQUESTS,
            Refusal::BadRequest(_) => StatusCode::BAD_REQUEST,
            Refusal::Misdirected(_) => StatusCode::MISDIRECTED_REQUEST,
            Refusal::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Refusal::HeadersTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Refusal::Upstream(_) => StatusCode::BAD_GATEWAY,
            Refusal::Overloaded(_) | Refusal::Vault(_) | Refusal::Audit(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }

    /// A stable machine-readable code for the kind of error (absent on policy blocks).
    fn code(&self) -> Option<&'static str> {
        match self {
            Refusal::Blocked(_) | Refusal::StepUpPending { .. } | Refusal::Settled { .. } => None,
            Refusal::TooManyHeld(_) => Some("too_many_held"),
            Refusal::ProxyAuth(_) => Some("proxy_auth_required"),
            Refusal::BadRequest(_) => Some("bad_request"),
            Refusal::Misdirected(_) => Some("misdirected_request"),
            Refusal::TooLarge { .. } => Some("body_too_large"),
            Refusal::HeadersTooLarge(_) => Some("headers_too_large"),
            Refusal::Upstream(_) => Some("upstream_failed"),
            Refusal::Overloaded(_) => Some("overloaded"),
            Refusal::Vault(_) => Some("vault_unavailable"),
            Refusal::Audit(_) => Some("audit_unavailable"),
        }
    }

    fn reason(&self) -> String {
        match self {
            Refusal::Blocked(d) => d.reason.clone(),
            Refusal::StepUpPending { decision: d, .. } | Refusal::Settled { decision: d, .. } => {
                d.reason.clone()
            }
            Refusal::TooLarge { limit } => format!(
                "the request body is over the gate's inspection limit of {limit} bytes; nothing was forwarded"
            ),
            Refusal::BadRequest(r)
            | Refusal::ProxyAuth(r)
            | Refusal::TooManyHeld(r)
            | Refusal::Misdirected(r)
            | Refusal::HeadersTooLarge(r)
            | Refusal::Upstream(r)
            | Refusal::Overloaded(r)
            | Refusal::Vault(r)
            | Refusal::Audit(r) => r.clone(),
        }
    }

    /// The refusal as the audit log's outcome records it: the code and the reason, as the
    /// agent got them (`upstream_failed: the upstream ... could not be reached ...`).
    pub fn for_audit(&self) -> String {
        match self.code() {
            Some(code) => format!("{code}: {}", self.reason()),
            None => self.reason(),
        }
    }

    /// The JSON body the agent receives.
    pub fn body(&self, request_id: &RequestId) -> Value {
        match self {
            Refusal::Blocked(d) => json!({
                "decision": d.effect.as_str(),
                "action": d.action,
                "rules": d.rules,
                "reason": d.reason,
                "request_id": request_id.to_string(),
            }),
            Refusal::StepUpPending {
                decision,
                challenge_id,
                expires_at,
            } => json!({
                "decision": "step_up",
                "action": decision.action,
                "rules": decision.rules,
                "reason": decision.reason,
                "challenge_id": challenge_id,
                "expires_at": expires_at,
                "request_id": request_id.to_string(),
            }),
            Refusal::Settled {
                decision,
                state,
                challenge_id,
                note,
            } => json!({
                "decision": state,
                "action": decision.action,
                "rules": decision.rules,
                "reason": decision.reason,
                "challenge_id": challenge_id,
                "note": note,
                "request_id": request_id.to_string(),
            }),
            other => json!({
                "decision": "error",
                "error": other.code(),
                "reason": other.reason(),
                "request_id": request_id.to_string(),
            }),
        }
    }

    /// Whether the connection should close after this response (ambiguous framing).
    fn closes(&self) -> bool {
        matches!(self, Refusal::BadRequest(_) | Refusal::TooLarge { .. })
    }
}

/// Builds the response for a refusal.
pub fn refusal(r: &Refusal, request_id: &RequestId) -> Response<RespBody> {
    let decision = match r {
        Refusal::Blocked(d) => d.effect.as_str(),
        Refusal::StepUpPending { .. } => "step_up",
        Refusal::Settled { state, .. } => match state.as_str() {
            "denied" => "denied",
            "expired" => "expired",
            _ => "abandoned",
        },
        _ => "error",
    };
    let body = r.body(request_id).to_string();
    let mut resp = Response::new(full(body));
    *resp.status_mut() = r.status();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(DECISION_HEADER, HeaderValue::from_static(decision));
    if let Ok(v) = HeaderValue::from_str(&request_id.to_string()) {
        h.insert(REQUEST_ID_HEADER, v);
    }
    if matches!(r, Refusal::ProxyAuth(_)) {
        h.insert(
            header::PROXY_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"agentgate\""),
        );
    }
    if r.closes() {
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// A git client refused by the gate, told why in a form git prints (a JSON body it never
/// shows). Only policy refusals and the gate's own failures use it; the proxy's 407 and the
/// request errors keep their usual answers.
#[derive(Debug, Clone, PartialEq)]
pub enum GitClient {
    /// A push (`POST .../git-receive-pack`): answered as GitHub answers a push a hook declined,
    /// `200` with a `report-status` that rejects every ref with the reason (git prints
    /// `! [remote rejected] main -> main (reason)` and fails), in side-band when the client
    /// asked for it, with the reason also on the progress band (`remote: ...`).
    Push { refs: Vec<String>, sideband: bool },
    /// A ref advertisement (`GET .../info/refs`): the usual status with a `text/plain` body,
    /// which git prints as `remote: ...` lines.
    Discovery,
}

impl GitClient {
    /// The git request among `actions`, if the request is one git talks to (a push's commands,
    /// or a ref advertisement).
    pub fn of(method: &http::Method, actions: &[crate::actions::Action]) -> Option<GitClient> {
        let [a] = actions else { return None };
        if !a.name.starts_with("git.") {
            return None;
        }
        match (a.params.get("phase").and_then(Value::as_str), method) {
            (Some("discovery"), &http::Method::GET) => Some(GitClient::Discovery),
            (Some("request"), &http::Method::POST) if a.name == "git.push" => {
                let strings = |k: &str| -> Vec<String> {
                    a.params
                        .get(k)
                        .and_then(Value::as_array)
                        .map(|v| {
                            v.iter()
                                .filter_map(Value::as_str)
                                .map(str::to_string)
                                .collect()
                        })
                        .unwrap_or_default()
                };
                let refs = a
                    .params
                    .get("refs")
                    .and_then(Value::as_array)
                    .map(|refs| {
                        refs.iter()
                            .filter_map(|r| r.get("name").and_then(Value::as_str))
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default();
                let sideband = strings("capabilities")
                    .iter()
                    .any(|c| c == "side-band-64k" || c == "side-band");
                Some(GitClient::Push { refs, sideband })
            }
            _ => None,
        }
    }
}

/// The answer to a git client for `r`, or `None` when `r` keeps its usual answer.
pub fn git_refusal(
    r: &Refusal,
    request_id: &RequestId,
    git: &GitClient,
) -> Option<Response<RespBody>> {
    let what = match r {
        Refusal::Blocked(d) => format!("blocked by rule {}", d.rules.join(", ")),
        Refusal::Settled { state, note, .. } => match (state.as_str(), note) {
            ("denied", Some(n)) if !n.is_empty() => format!("denied by a reviewer ({n})"),
            ("denied", _) => "denied by a reviewer".to_string(),
            ("expired", _) => "no reviewer decided in time".to_string(),
            (other, _) => other.to_string(),
        },
        Refusal::Vault(_)
        | Refusal::Audit(_)
        | Refusal::Overloaded(_)
        | Refusal::TooManyHeld(_)
        | Refusal::Upstream(_) => "not forwarded".to_string(),
        _ => return None,
    };
    // One line: git shows a ref's reason and each progress line as they are.
    let line: String = format!("AgentGate: {what}: {} [{request_id}]", r.reason())
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(900)
        .collect();
    let mut resp = refusal(r, request_id);
    let (content_type, body) = match git {
        GitClient::Discovery => (
            "text/plain; charset=utf-8",
            format!("{line}\n").into_bytes(),
        ),
        GitClient::Push { refs, sideband } => {
            *resp.status_mut() = StatusCode::OK;
            let mut report = Vec::new();
            pkt_line(&mut report, b"unpack ok\n");
            for name in refs {
                pkt_line(&mut report, format!("ng {name} {line}\n").as_bytes());
            }
            report.extend_from_slice(b"0000");
            let body = if *sideband {
                let mut out = Vec::new();
                pkt_line(&mut out, format!("\x02{line}\n").as_bytes());
                // Band 1 carries the report; a packet holds at most 65,515 bytes of it.
                for chunk in report.chunks(65_515) {
                    let mut band = Vec::with_capacity(chunk.len() + 1);
                    band.push(1);
                    band.extend_from_slice(chunk);
                    pkt_line(&mut out, &band);
                }
                out.extend_from_slice(b"0000");
                out
            } else {
                report
            };
            ("application/x-git-receive-pack-result", body)
        }
    };
    *resp.body_mut() = full(body);
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    Some(resp)
}

/// Appends one pkt-line (its length in four hex digits, then the data).
fn pkt_line(out: &mut Vec<u8>, data: &[u8]) {
    out.extend_from_slice(format!("{:04x}", data.len() + 4).as_bytes());
    out.extend_from_slice(data);
}

/// An empty `200` (the answer to an accepted CONNECT).
pub fn connect_established() -> Response<RespBody> {
    Response::new(full(Bytes::new()))
}

/// A whole HTTP/1.1 response, as bytes, for refusing a connection before any parser runs
/// (the connection limit).
pub fn raw_overloaded() -> Vec<u8> {
    let r = Refusal::Overloaded(
        "the gate is at its connection limit (limits.max_connections); retry shortly".into(),
    );
    let body = r.body(&RequestId::new()).to_string();
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n{DECISION_HEADER}: error\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn full(body: impl Into<Bytes>) -> RespBody {
    Full::new(body.into())
        .map_err(|never| match never {})
        .boxed()
}

/// A request id: unique within the process and across restarts (random prefix + counter).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(u64, u64);

impl RequestId {
    pub fn new() -> RequestId {
        static PREFIX: OnceLock<u64> = OnceLock::new();
        static COUNTER: AtomicU64 = AtomicU64::new(1);
        let prefix = *PREFIX.get_or_init(|| {
            let mut b = [0u8; 8];
            let _ = getrandom::fill(&mut b);
            u64::from_le_bytes(b) & 0xffff_ffff
        });
        RequestId(prefix, COUNTER.fetch_add(1, Ordering::Relaxed))
    }
}

impl Default for RequestId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "req_{:08x}{:08x}", self.0, self.1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Effect;

    #[test]
    fn block_body_matches_the_contract() {
        let rid = RequestId::new();
        let r = Refusal::Blocked(Decision {
            effect: Effect::Block,
            action: "net.connect".into(),
            rules: vec!["r1".into()],
            reason: "no".into(),
            fired: Vec::new(),
        });
        let resp = refusal(&r, &rid);
        assert_eq!(resp.status(), 403);
        assert_eq!(resp.headers()[DECISION_HEADER], "block");
        let v = r.body(&rid);
        assert_eq!(v["decision"], "block");
        assert_eq!(v["action"], "net.connect");
        assert_eq!(v["rules"][0], "r1");
        assert_eq!(v["request_id"], rid.to_string());
    }

    /// The pkt-lines of `data` up to its first flush, and what follows it.
    fn pkts(mut data: &[u8]) -> (Vec<Vec<u8>>, &[u8]) {
        let mut out = Vec::new();
        loop {
            let len = usize::from_str_radix(std::str::from_utf8(&data[..4]).unwrap(), 16).unwrap();
            if len == 0 {
                return (out, &data[4..]);
            }
            out.push(data[4..len].to_vec());
            data = &data[len..];
        }
    }

    async fn body_of(resp: Response<RespBody>) -> Vec<u8> {
        resp.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec()
    }

    #[tokio::test]
    async fn a_refused_push_is_a_report_that_rejects_each_ref() {
        let rid = RequestId::new();
        let r = Refusal::Blocked(Decision {
            effect: Effect::Block,
            action: "git.push".into(),
            rules: vec!["no-tags".into()],
            reason: "no tags\nplease".into(),
            fired: Vec::new(),
        });
        let refs = vec!["refs/tags/v1".to_string(), "refs/heads/x".to_string()];
        let line = format!("AgentGate: blocked by rule no-tags: no tags please [{rid}]");
        // Without side-band: the report itself.
        let git = GitClient::Push {
            refs: refs.clone(),
            sideband: false,
        };
        let resp = git_refusal(&r, &rid, &git).unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()[DECISION_HEADER], "block");
        assert_eq!(
            resp.headers()[header::CONTENT_TYPE],
            "application/x-git-receive-pack-result"
        );
        let body = body_of(resp).await;
        let (report, rest) = pkts(&body);
        assert!(rest.is_empty());
        assert_eq!(
            report,
            [
                b"unpack ok\n".to_vec(),
                format!("ng refs/tags/v1 {line}\n").into_bytes(),
                format!("ng refs/heads/x {line}\n").into_bytes(),
            ]
        );
        // With side-band: the reason on band 2, the same report inside band 1.
        let git = GitClient::Push {
            refs,
            sideband: true,
        };
        let body = body_of(git_refusal(&r, &rid, &git).unwrap()).await;
        let (bands, rest) = pkts(&body);
        assert!(rest.is_empty());
        assert_eq!(
            bands[0],
            [b"\x02".as_slice(), line.as_bytes(), b"\n"].concat()
        );
        assert_eq!(bands.len(), 2);
        assert_eq!(bands[1][0], 1);
        let (inner, rest) = pkts(&bands[1][1..]);
        assert!(rest.is_empty());
        assert_eq!(inner, report);
    }

    #[tokio::test]
    async fn a_refused_ref_advertisement_is_text_and_other_refusals_keep_json() {
        let rid = RequestId::new();
        let r = Refusal::Vault("the vault is down".into());
        let resp = git_refusal(&r, &rid, &GitClient::Discovery).unwrap();
        assert_eq!(resp.status(), 503);
        assert_eq!(
            resp.headers()[header::CONTENT_TYPE],
            "text/plain; charset=utf-8"
        );
        assert_eq!(
            body_of(resp).await,
            format!("AgentGate: not forwarded: the vault is down [{rid}]\n").into_bytes()
        );
        // A proxy-credential or framing refusal is not the push's fault to report.
        assert!(
            git_refusal(&Refusal::ProxyAuth("x".into()), &rid, &GitClient::Discovery).is_none()
        );
        assert!(
            git_refusal(
                &Refusal::BadRequest("x".into()),
                &rid,
                &GitClient::Discovery
            )
            .is_none()
        );
    }

    #[test]
    fn request_ids_are_distinct() {
        assert_ne!(RequestId::new().to_string(), RequestId::new().to_string());
    }

    #[test]
    fn raw_overloaded_is_a_complete_response() {
        let raw = String::from_utf8(raw_overloaded()).unwrap();
        let (head, body) = raw.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 503"));
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let v: Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"], "overloaded");
    }
}
