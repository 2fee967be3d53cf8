//! The audit record: what the proxy hands in ([`DecisionRecord`], [`OutcomeRecord`]), what is
//! stored ([`Entry`] inside the chained body), and what is read back ([`Record`]). The byte
//! layout is described in the module doc of [`crate::audit`], *Records and the chain*.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::redact;
use crate::actions::Action;
use crate::policy::Decision;

/// Bytes of a record hash (SHA-256).
pub const HASH_LEN: usize = 32;

/// The `prev` of the first record of a store.
pub const GENESIS: [u8; HASH_LEN] = [0; HASH_LEN];

/// One action of a request, as recorded: its name and its params (redacted and cut).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditAction {
    pub name: String,
    pub params: Map<String, Value>,
}

/// A shadow rule that fired (`would_allow`, `would_step_up`, `would_block`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShadowRule {
    pub rule: String,
    pub effect: String,
}

/// The decision about one request, written (and durable) before any byte of it goes upstream.
///
/// Every string and every param passes through the redaction of [`Audit::decision`]
/// (credentials removed, large values cut) whoever built the record, so fields may be stored
/// shorter than they were given.
///
/// [`Audit::decision`]: super::Audit::decision
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecisionRecord {
    /// Unix milliseconds.
    pub time_ms: i64,
    pub agent: String,
    pub request_id: String,
    pub host: String,
    pub method: String,
    /// The request path without the query.
    pub path: String,
    pub actions: Vec<AuditAction>,
    /// `allow`, `block` or `step_up`, or how a step-up's challenge was settled (`approved`,
    /// `denied`, `expired`, `abandoned`, `interrupted`, `redeemed`; see the module doc of
    /// [`crate::audit`]).
    pub decision: String,
    /// The rules that made the decision.
    pub rules: Vec<String>,
    /// Their reasons, one per rule where the rules gave them.
    pub reasons: Vec<String>,
    /// Rules that fired because a condition could not be evaluated.
    pub fired_on_error: Vec<String>,
    /// Shadow rules that fired (they decide nothing).
    pub shadow: Vec<ShadowRule>,
    /// The credential the request carried: `placeholder`, `foreign` or `none`.
    pub credential: String,
    pub challenge_id: Option<String>,
    pub reviewer: Option<String>,
    pub note: Option<String>,
}

impl DecisionRecord {
    /// The record of `decision` about a request doing `actions` (host, method and path are the
    /// first action's). Step-up details (`challenge_id`, `reviewer`, `note`) start empty; the
    /// caller sets them, and may set `decision` to how a step-up was settled.
    pub fn new(
        time_ms: i64,
        agent: &str,
        request_id: &str,
        credential: &str,
        decision: &Decision,
        actions: &[Action],
    ) -> DecisionRecord {
        let first = actions.first();
        let field = |f: fn(&Action) -> &String| first.map(f).cloned().unwrap_or_default();
        let effect = decision.effect.as_str();
        let mut reasons = Vec::new();
        let mut fired_on_error = Vec::new();
        let mut shadow = Vec::new();
        for f in &decision.fired {
            if f.shadow {
                shadow.push(ShadowRule {
                    rule: f.rule.to_string(),
                    effect: f.effect.to_string(),
                });
            } else if f.effect == effect && decision.rules.contains(&f.rule) {
                push_new(&mut reasons, &f.reason);
            }
            if f.fired_on_error {
                push_new(&mut fired_on_error, &f.rule);
            }
        }
        if reasons.is_empty() && !decision.reason.is_empty() {
            reasons.push(decision.reason.clone());
        }
        DecisionRecord {
            time_ms,
            agent: agent.to_string(),
            request_id: request_id.to_string(),
            host: field(|a| &a.host),
            method: field(|a| &a.method),
            path: field(|a| &a.path),
            actions: actions
                .iter()
                .map(|a| AuditAction {
                    name: a.name.clone(),
                    params: a.params.clone(),
                })
                .collect(),
            decision: effect.to_string(),
            rules: decision.rules.iter().map(|r| r.to_string()).collect(),
            reasons,
            fired_on_error,
            shadow,
            credential: credential.to_string(),
            challenge_id: None,
            reviewer: None,
            note: None,
        }
    }

    /// The record as stored: credentials redacted, large values cut (see the module doc of
    /// [`crate::audit`], *Secrets and size*).
    pub fn redacted(&self) -> DecisionRecord {
        let t = |s: &String| redact::text(s);
        let ts = |v: &Vec<String>| v.iter().map(|s| redact::text(s)).collect();
        DecisionRecord {
            time_ms: self.time_ms,
            agent: t(&self.agent),
            request_id: t(&self.request_id),
            host: t(&self.host),
            method: t(&self.method),
            path: t(&self.path),
            actions: self
                .actions
                .iter()
                .map(|a| AuditAction {
                    name: t(&a.name),
                    params: redact::params(&a.params),
                })
                .collect(),
            decision: t(&self.decision),
            rules: ts(&self.rules),
            reasons: ts(&self.reasons),
            fired_on_error: ts(&self.fired_on_error),
            shadow: self
                .shadow
                .iter()
                .map(|s| ShadowRule {
                    rule: t(&s.rule),
                    effect: t(&s.effect),
                })
                .collect(),
            credential: t(&self.credential),
            challenge_id: self.challenge_id.as_ref().map(t),
            reviewer: self.reviewer.as_ref().map(t),
            note: self.note.as_ref().map(t),
        }
    }
}

fn push_new(list: &mut Vec<String>, s: &str) {
    if !list.iter().any(|x| x == s) {
        list.push(s.to_string());
    }
}

/// What became of a decided request, appended after it was answered.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OutcomeRecord {
    /// Unix milliseconds.
    pub time_ms: i64,
    /// The upstream's status, when it answered.
    pub status: Option<u16>,
    /// From the decision to the end of the response (or the failure), microseconds.
    pub latency_us: u64,
    /// Why the request failed (upstream unreachable, vault error, ...).
    pub error: Option<String>,
}

/// An outcome as stored: the [`OutcomeRecord`] and the decision it belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutcomeEntry {
    pub decision_seq: u64,
    pub time_ms: i64,
    pub status: Option<u16>,
    pub latency_us: u64,
    pub error: Option<String>,
}

impl OutcomeEntry {
    pub(super) fn new(decision_seq: u64, rec: &OutcomeRecord) -> OutcomeEntry {
        OutcomeEntry {
            decision_seq,
            time_ms: rec.time_ms,
            status: rec.status,
            latency_us: rec.latency_us,
            error: rec.error.as_deref().map(redact::text),
        }
    }
}

/// Written when the oldest records are pruned: the chain's anchor for what remains.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Unix milliseconds.
    pub time_ms: i64,
    /// Every record up to and including this sequence number was pruned.
    pub pruned_through: u64,
    /// Hex SHA-256 of the body of record `pruned_through`: the `prev` of the record after it.
    pub anchor: String,
    /// How many records this pruning removed.
    pub pruned: u64,
}

/// What a stored record is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Entry {
    Decision(Box<DecisionRecord>),
    Outcome(OutcomeEntry),
    Checkpoint(Checkpoint),
}

impl Entry {
    /// Unix milliseconds.
    pub fn time_ms(&self) -> i64 {
        match self {
            Entry::Decision(d) => d.time_ms,
            Entry::Outcome(o) => o.time_ms,
            Entry::Checkpoint(c) => c.time_ms,
        }
    }

    /// The entry as JSON (`{"kind":...}`), ready for [`encode`]. Runs outside the chain lock.
    pub(super) fn to_json(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(self)
    }
}

/// A stored record, read back.
///
/// Serialised (for the dashboard API) as the stored body plus `hash`:
/// `{"seq":..,"kind":..,..,"prev":..,"hash":..}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Record {
    pub seq: u64,
    #[serde(flatten)]
    pub entry: Entry,
    /// Hex SHA-256 of the previous record's body.
    pub prev: String,
    /// Hex SHA-256 of this record's body (`line`).
    pub hash: String,
    /// The stored body, byte for byte: one line of `agentgate audit export`. Its SHA-256 is
    /// `hash`, and the next record's `prev`.
    #[serde(skip)]
    pub line: String,
}

/// The body as parsed.
#[derive(Deserialize)]
struct Body {
    seq: u64,
    #[serde(flatten)]
    entry: Entry,
    prev: String,
}

/// Builds a record's body and stored value from the entry's JSON (see the module doc of
/// [`crate::audit`]): `body = {"seq":SEQ,` ++ entry fields ++ `,"prev":"HEX"}` and
/// `value = sha256(body) ++ body`. Returns the value and the body's hash.
pub(super) fn encode(
    seq: u64,
    entry_json: &[u8],
    prev: &[u8; HASH_LEN],
) -> (Vec<u8>, [u8; HASH_LEN]) {
    // `entry_json` is a JSON object with at least `kind`: `{` fields `}`.
    let inner = entry_json
        .get(1..entry_json.len().saturating_sub(1))
        .unwrap_or_default();
    let mut value = Vec::with_capacity(HASH_LEN + inner.len() + 112);
    value.extend_from_slice(&[0; HASH_LEN]);
    value.extend_from_slice(b"{\"seq\":");
    value.extend_from_slice(seq.to_string().as_bytes());
    value.push(b',');
    value.extend_from_slice(inner);
    value.extend_from_slice(b",\"prev\":\"");
    value.extend_from_slice(hex::encode(prev).as_bytes());
    value.extend_from_slice(b"\"}");
    let hash: [u8; HASH_LEN] = Sha256::digest(&value[HASH_LEN..]).into();
    value[..HASH_LEN].copy_from_slice(&hash);
    (value, hash)
}

/// Why a stored value is not a sound record on its own (links are checked by `verify`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Bad {
    Short(usize),
    Hash,
    Parse(String),
    Seq(u64),
}

impl std::fmt::Display for Bad {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Bad::Short(n) => write!(f, "it is {n} bytes, too short to hold a record"),
            Bad::Hash => f.write_str("its content does not match its hash (it was changed)"),
            Bad::Parse(e) => write!(f, "it is not a record ({e})"),
            Bad::Seq(s) => write!(f, "it claims to be record {s}"),
        }
    }
}

/// Splits a stored value into its hash and body; checks the hash when `check` is set.
pub(super) fn split(value: &[u8], check: bool) -> Result<([u8; HASH_LEN], &[u8]), Bad> {
    if value.len() <= HASH_LEN {
        return Err(Bad::Short(value.len()));
    }
    let (stored, body) = value.split_at(HASH_LEN);
    let mut hash = [0; HASH_LEN];
    hash.copy_from_slice(stored);
    if check && Sha256::digest(body).as_slice() != stored {
        return Err(Bad::Hash);
    }
    Ok((hash, body))
}

/// Decodes the stored value of key `seq` (the hash is checked only when `check` is set).
pub(super) fn decode(seq: u64, value: &[u8], check: bool) -> Result<Record, Bad> {
    let (hash, body) = split(value, check)?;
    let parsed: Body = serde_json::from_slice(body).map_err(|e| Bad::Parse(e.to_string()))?;
    if parsed.seq != seq {
        return Err(Bad::Seq(parsed.seq));
    }
    let line = String::from_utf8(body.to_vec()).map_err(|e| Bad::Parse(e.to_string()))?;
    Ok(Record {
        seq,
        entry: parsed.entry,
        prev: parsed.prev,
        hash: hex::encode(hash),
        line,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Effect, Fired};
    use serde_json::json;

    fn fired(
        rule: &str,
        effect: &'static str,
        shadow: bool,
        on_error: bool,
        reason: &str,
    ) -> Fired {
        Fired {
            rule: rule.into(),
            effect,
            shadow,
            fired_on_error: on_error,
            errors: Vec::new(),
            reason: reason.into(),
            annotations: None,
            action: "github.repos.delete".into(),
        }
    }

    fn sample() -> DecisionRecord {
        let decision = Decision {
            effect: Effect::Block,
            action: "github.repos.delete".into(),
            rules: vec!["no-delete".into()],
            reason: "deleting repos is not allowed".into(),
            fired: vec![
                fired(
                    "no-delete",
                    "block",
                    false,
                    true,
                    "deleting repos is not allowed",
                ),
                fired("watch", "would_step_up", true, false, "watching"),
            ],
        };
        let mut params = Map::new();
        params.insert("repo".into(), json!("acme/api"));
        let action = Action {
            host: "api.github.com".into(),
            method: "DELETE".into(),
            path: "/repos/acme/api".into(),
            ..Action::new("github.repos.delete", params)
        };
        DecisionRecord::new(
            1_772_532_000_000,
            "coder",
            "r-1",
            "placeholder",
            &decision,
            &[action],
        )
    }

    #[test]
    fn a_decision_record_is_built_from_the_decision() {
        let d = sample();
        assert_eq!(d.decision, "block");
        assert_eq!(d.host, "api.github.com");
        assert_eq!(d.method, "DELETE");
        assert_eq!(d.path, "/repos/acme/api");
        assert_eq!(d.rules, ["no-delete"]);
        assert_eq!(d.reasons, ["deleting repos is not allowed"]);
        assert_eq!(d.fired_on_error, ["no-delete"]);
        assert_eq!(
            d.shadow,
            [ShadowRule {
                rule: "watch".into(),
                effect: "would_step_up".into()
            }]
        );
        assert_eq!(d.actions[0].params["repo"], "acme/api");
    }

    #[test]
    fn encode_then_decode_gives_the_record_back() {
        let entry = Entry::Decision(Box::new(sample()));
        let json = entry.to_json().unwrap();
        let prev = [7u8; HASH_LEN];
        let (value, hash) = encode(42, &json, &prev);
        let body = &value[HASH_LEN..];
        assert!(body.starts_with(b"{\"seq\":42,\"kind\":\"decision\",\"time_ms\":"));
        assert!(body.ends_with(format!(",\"prev\":\"{}\"}}", hex::encode(prev)).as_bytes()));
        let r = decode(42, &value, true).unwrap();
        assert_eq!(r.entry, entry);
        assert_eq!(r.prev, hex::encode(prev));
        assert_eq!(r.hash, hex::encode(hash));
        assert_eq!(r.line.as_bytes(), body);
        // The API form is the body plus the hash.
        let api = serde_json::to_value(&r).unwrap();
        let mut want: Value = serde_json::from_slice(body).unwrap();
        want["hash"] = json!(hex::encode(hash));
        assert_eq!(api, want);
        // The live feed's form, made from the stored value without decoding, is the same.
        let feed = crate::audit::api_json(&value, &hash).unwrap();
        assert_eq!(serde_json::from_str::<Value>(&feed).unwrap(), api);
    }

    #[test]
    fn decode_names_what_is_wrong() {
        let json = Entry::Checkpoint(Checkpoint {
            time_ms: 1,
            pruned_through: 3,
            anchor: hex::encode([1u8; 32]),
            pruned: 3,
        })
        .to_json()
        .unwrap();
        let (mut value, _) = encode(9, &json, &GENESIS);
        assert_eq!(decode(8, &value, true), Err(Bad::Seq(9)));
        assert_eq!(decode(9, &value[..10], true), Err(Bad::Short(10)));
        let last = value.len() - 3;
        value[last] ^= 1;
        assert_eq!(decode(9, &value, true), Err(Bad::Hash));
        value[HASH_LEN] = b'[';
        assert!(matches!(decode(9, &value, false), Err(Bad::Parse(_))));
    }
}
