//! What the gate has seen written into Gmail drafts. `drafts.send` usually carries only the
//! draft's id: its recipients are those of the last `drafts.create`/`drafts.update` the gate
//! forwarded for that draft, when it saw one; otherwise the action says they are unknown.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, PoisonError};

use bytes::Bytes;
use http::Response;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde_json::{Map, Value};

use super::RespBody;
use crate::actions::Action;

/// Drafts remembered at once (the oldest is forgotten first).
const MAX_DRAFTS: usize = 4096;
/// Largest `drafts.create` response read to learn the new draft's id.
const MAX_RESPONSE: usize = 1024 * 1024;
/// The message params a draft lends to the send.
const MESSAGE_PARAMS: [&str; 8] = [
    "to",
    "cc",
    "bcc",
    "recipients",
    "from",
    "subject",
    "attachments",
    "size",
];

type Key = (String, String, String);

/// Message params of drafts, by (agent, userId, draft id).
#[derive(Debug, Default)]
pub struct Drafts(Mutex<Book>);

#[derive(Debug, Default)]
struct Book {
    params: HashMap<Key, Map<String, Value>>,
    order: VecDeque<Key>,
}

fn key(agent: &str, params: &Map<String, Value>, id: &str) -> Option<Key> {
    let user = params.get("userId")?.as_str()?;
    Some((agent.to_string(), user.to_string(), id.to_string()))
}

impl Drafts {
    /// Adds the recipients of a known draft to a `drafts.send` that names only its id.
    pub fn complete_send(&self, agent: &str, action: &mut Action) {
        if action.name != "gmail.users.drafts.send"
            || action.params.get("recipients_known") != Some(&Value::Bool(false))
        {
            return;
        }
        let Some(id) = action.params.get("id").and_then(Value::as_str) else {
            return;
        };
        let Some(k) = key(agent, &action.params, id) else {
            return;
        };
        let book = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(known) = book.params.get(&k) {
            for (name, value) in known {
                action.params.insert(name.clone(), value.clone());
            }
            action
                .params
                .insert("recipients_known".into(), Value::Bool(true));
        }
    }

    fn remember(&self, k: Key, action: &Action) {
        let mut known = Map::new();
        for name in MESSAGE_PARAMS {
            if let Some(v) = action.params.get(name) {
                known.insert(name.to_string(), v.clone());
            }
        }
        let mut book = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if book.params.insert(k.clone(), known).is_none() {
            book.order.push_back(k);
            while book.order.len() > MAX_DRAFTS {
                if let Some(old) = book.order.pop_front() {
                    book.params.remove(&old);
                }
            }
        }
    }

    /// Whether this action writes a draft whose contents the gate should remember.
    pub fn writes_draft(action: &Action) -> bool {
        matches!(
            action.name.as_str(),
            "gmail.users.drafts.create" | "gmail.users.drafts.update"
        ) && action.params.get("recipients_known") == Some(&Value::Bool(true))
    }

    /// After the upstream accepted a draft write: remembers the draft's message params. For an
    /// update the id is in the path; for a create it is in the (small, JSON) response, which is
    /// read here and handed back to the agent unchanged.
    pub async fn written(
        &self,
        agent: &str,
        action: &Action,
        resp: Response<Incoming>,
    ) -> Response<RespBody> {
        if !resp.status().is_success() {
            return resp.map(BodyExt::boxed);
        }
        if action.name == "gmail.users.drafts.update" {
            if let Some(k) = action
                .params
                .get("id")
                .and_then(Value::as_str)
                .and_then(|id| key(agent, &action.params, id))
            {
                self.remember(k, action);
            }
            return resp.map(BodyExt::boxed);
        }
        let (parts, body) = resp.into_parts();
        let bytes = match Limited::new(body, MAX_RESPONSE).collect().await {
            Ok(c) => c.to_bytes(),
            Err(e) => {
                tracing::warn!("drafts.create response not read: {e}");
                Bytes::new()
            }
        };
        let id = serde_json::from_slice::<Value>(&bytes)
            .ok()
            .and_then(|v| v.get("id").and_then(Value::as_str).map(str::to_string));
        if let Some(k) = id.and_then(|id| key(agent, &action.params, &id)) {
            self.remember(k, action);
        }
        Response::from_parts(
            parts,
            Full::new(bytes).map_err(|never| match never {}).boxed(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draft(name: &str, id: Option<&str>, recipients_known: bool) -> Action {
        let mut p = Map::new();
        p.insert("userId".into(), Value::from("me"));
        if let Some(id) = id {
            p.insert("id".into(), Value::from(id));
        }
        p.insert("recipients_known".into(), Value::Bool(recipients_known));
        if recipients_known {
            p.insert("recipients".into(), serde_json::json!(["x@evil.example"]));
        }
        Action::new(name, p)
    }

    #[test]
    fn a_send_learns_the_recipients_of_a_draft_the_gate_saw_written() {
        let d = Drafts::default();
        let update = draft("gmail.users.drafts.update", Some("r1"), true);
        d.remember(key("", &update.params, "r1").unwrap(), &update);
        let mut send = draft("gmail.users.drafts.send", Some("r1"), false);
        d.complete_send("", &mut send);
        assert_eq!(send.params["recipients_known"], true);
        assert_eq!(send.params["recipients"][0], "x@evil.example");
        let mut other = draft("gmail.users.drafts.send", Some("r2"), false);
        d.complete_send("", &mut other);
        assert_eq!(other.params["recipients_known"], false);
        let mut other_agent = draft("gmail.users.drafts.send", Some("r1"), false);
        d.complete_send("someone-else", &mut other_agent);
        assert_eq!(other_agent.params["recipients_known"], false);
    }
}
