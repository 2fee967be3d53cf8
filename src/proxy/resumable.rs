//! Gmail resumable uploads in the pipeline. The POST that starts a session only declares an
//! upload; the message arrives in later PUTs to the session URL. The gate registers a session
//! when the upstream accepts the start, buffers every chunk it forwards (bounded), and decides
//! the send on the request that completes the message, on the whole message.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use http::{HeaderMap, header};
use serde_json::Value;

use crate::actions::gmail_resumable::{Progress, Sessions, upload_id_from_location};
use crate::actions::{Action, ClassifyError, canonical, mime};

/// Upload sessions tracked at once; the oldest idle one is dropped past this.
const MAX_SESSIONS: usize = 32;
/// How long a session may sit idle.
const SESSION_TTL: Duration = Duration::from_secs(6 * 60 * 60);
/// Gmail's own cap on a message (the discovery document's `maxSize`).
const GMAIL_MAX_MESSAGE: u64 = 36_700_160;

/// The gate's upload sessions.
#[derive(Debug)]
pub struct Uploads(Mutex<Sessions>);

impl Uploads {
    /// Sessions buffering at most `max_bytes` each (and never more than Gmail accepts).
    pub fn new(max_bytes: u64) -> Uploads {
        let cap = max_bytes.min(GMAIL_MAX_MESSAGE);
        Uploads(Mutex::new(Sessions::new(MAX_SESSIONS, cap, SESSION_TTL)))
    }

    /// The upload id of a request on a Google host that carries one in its query.
    pub fn upload_id(path_and_query: &str) -> Result<Option<String>, ClassifyError> {
        let Some((_, query)) = path_and_query.split_once('?') else {
            return Ok(None);
        };
        let pairs = canonical::parse_query(query)?;
        let mut ids = pairs.iter().filter(|(k, _)| k == "upload_id");
        match (ids.next(), ids.next()) {
            (None, _) => Ok(None),
            (Some((_, id)), None) => Ok(Some(id.clone())),
            (Some(_), Some(_)) => Err(ClassifyError::Malformed(
                "the query names upload_id more than once".into(),
            )),
        }
    }

    /// Classifies one data request of a session: the session's action, with the message
    /// params once this request completes it.
    pub fn chunk(
        &self,
        agent: &str,
        upload_id: &str,
        method: &str,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<Action, ClassifyError> {
        if method != "PUT" && method != "POST" {
            return Err(ClassifyError::Malformed(format!(
                "{method} is not an upload request"
            )));
        }
        let mut ranges = headers.get_all(header::CONTENT_RANGE).iter();
        let range = match (ranges.next(), ranges.next()) {
            (_, Some(_)) => {
                return Err(ClassifyError::Malformed(
                    "more than one Content-Range header".into(),
                ));
            }
            (Some(v), None) => Some(v.to_str().map_err(|_| {
                ClassifyError::Malformed("the Content-Range header is not ASCII".into())
            })?),
            (None, None) => None,
        };
        let mut sessions = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let action = sessions.action_of(upload_id).map(str::to_string);
        match sessions.chunk(upload_id, agent, range, body, Instant::now())? {
            Progress::Partial { received } => {
                let mut params = serde_json::Map::new();
                params.insert("resumable".into(), Value::from("chunk"));
                params.insert("received".into(), Value::from(received));
                params.insert("recipients_known".into(), Value::Bool(false));
                Ok(Action::new(&action.unwrap_or_default(), params))
            }
            Progress::Complete { message, action } => {
                drop(sessions);
                let mut params = mime::extract(&message)?;
                params.insert("body_shape".into(), Value::from("resumable"));
                params.insert("recipients_known".into(), Value::Bool(true));
                Ok(Action::new(&action, params))
            }
        }
    }

    /// After the upstream accepted a session start, remembers the session it created.
    pub fn started(&self, agent: &str, action: &Action, request: &HeaderMap, response: &HeaderMap) {
        let Some(location) = response.get(header::LOCATION).and_then(|v| v.to_str().ok()) else {
            return;
        };
        let Some(id) = upload_id_from_location(location) else {
            return;
        };
        let declared = request
            .get("x-upload-content-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let mut sessions = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Err(e) = sessions.start(&id, agent, &action.name, declared, Instant::now()) {
            tracing::warn!("upload session not tracked (its chunks will be refused): {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_completing_chunk_carries_the_whole_message_params() {
        let uploads = Uploads::new(1 << 20);
        let start = Action::new("gmail.users.messages.send", serde_json::Map::new());
        let mut req = HeaderMap::new();
        let message =
            b"From: a@acme.com\r\nTo: Bob <BOB@example.com>\r\nSubject: hi\r\n\r\nbody\r\n";
        req.insert(
            "x-upload-content-length",
            message.len().to_string().parse().unwrap(),
        );
        let mut resp = HeaderMap::new();
        resp.insert(
            header::LOCATION,
            "https://www.googleapis.com/upload/gmail/v1/users/me/messages/send?uploadType=resumable&upload_id=U1"
                .parse()
                .unwrap(),
        );
        uploads.started("", &start, &req, &resp);
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_RANGE,
            format!("bytes 0-4/{}", message.len()).parse().unwrap(),
        );
        let a = uploads.chunk("", "U1", "PUT", &h, &message[..5]).unwrap();
        assert_eq!(a.name, "gmail.users.messages.send");
        assert_eq!(a.params["resumable"], "chunk");
        assert_eq!(a.params["recipients_known"], false);
        h.insert(
            header::CONTENT_RANGE,
            format!("bytes 5-{}/{}", message.len() - 1, message.len())
                .parse()
                .unwrap(),
        );
        let a = uploads.chunk("", "U1", "PUT", &h, &message[5..]).unwrap();
        assert_eq!(
            a.params["recipients"],
            serde_json::json!(["bob@example.com"])
        );
        assert_eq!(a.params["body_shape"], "resumable");
        assert!(
            uploads.chunk("", "U1", "PUT", &h, &message[5..]).is_err(),
            "session is gone"
        );
        let mut two = HeaderMap::new();
        two.append(header::CONTENT_RANGE, "bytes 0-1/2".parse().unwrap());
        two.append(header::CONTENT_RANGE, "bytes 0-1/2".parse().unwrap());
        assert!(uploads.chunk("", "U1", "PUT", &two, b"ab").is_err());
    }
}
