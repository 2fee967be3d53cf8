//! Gmail resumable uploads: tracks upload sessions so that a send is decided on the whole
//! message, which Google acts on only at the final PUT (wire-formats.md sections 1.2 and 1.4).
//!
//! Flow: `POST /resumable/upload/gmail/v1/users/{userId}/messages/send?uploadType=resumable`
//! (metadata only; optional `X-Upload-Content-Length`), answered with a `Location` URL carrying
//! `upload_id`; the proxy then calls [`Sessions::start`]. The bytes follow in PUTs to that URL:
//! one PUT with the whole message, or chunks with `Content-Range: bytes a-b/total` (`*` as the
//! total until it is known). Each PUT goes through [`Sessions::chunk`], which answers
//! [`Progress::Partial`] for a chunk Google will answer with 308, and [`Progress::Complete`]
//! with the whole message when the PUT is the one that completes the upload, so the gate
//! decides the action on the whole message before that PUT is forwarded.
//!
//! Refused (fail closed):
//!
//! - at start: an empty or over-long upload id; an id already tracked (the existing session
//!   is kept as it is); a declared length over the per-session limit; a table of size zero;
//! - a PUT for an unknown upload id (the gate never saw the session start, so it cannot know
//!   what is being uploaded), or for a session idle for the TTL or longer (dropped);
//! - a PUT from another agent than the one that started the session (the session is kept);
//! - from the owner (these also drop the session: the client has to start a new upload):
//!   a Content-Range that does not parse (only `bytes a-b/total`, `bytes a-b/*`,
//!   `bytes */total` and `bytes */*`); a range whose length is not the body's; a chunk that
//!   does not start where the previous one ended (gap, overlap or rewind); a total that differs
//!   from the declared length or an earlier total; bytes past the total, the declared length
//!   or the per-session limit; a `*`-total chunk that reaches the known total (Google might
//!   complete the upload on it, so the total must be stated); a status query with a body or a
//!   total below the bytes received; a PUT without Content-Range after chunks.
//!
//! A status query `bytes */total` whose total equals the bytes received completes the upload
//! (Google finalises a session that way), so it returns `Complete`, never `Partial`.
//!
//! Memory: at most `max_sessions` sessions of at most `max_bytes_per_session` bytes each. When
//! the table is full, starting a session first drops the expired ones, then evicts the one idle
//! the longest: the upload that is actually being sent keeps itself fresh, and the new session
//! (whose upstream already exists) is never the one refused. An evicted session's later PUTs
//! are refused as unknown.

use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, Instant};

use super::{ClassifyError, canonical};

/// Longest upload id accepted (Google's are under 200 characters).
pub const MAX_UPLOAD_ID_LEN: usize = 1024;

fn bad(msg: impl Into<String>) -> ClassifyError {
    ClassifyError::Malformed(msg.into())
}

/// The `upload_id` query parameter of a resumable session URL (the upstream's `Location`),
/// percent-decoded as the catalog decodes queries. `None` when it is missing, empty, repeated,
/// over-long or not decodable.
pub fn upload_id_from_location(location: &str) -> Option<String> {
    let location = location.split_once('#').map_or(location, |(l, _)| l);
    let (_, query) = location.split_once('?')?;
    let pairs = canonical::parse_query(query).ok()?;
    let mut ids = pairs
        .into_iter()
        .filter(|(k, _)| k == "upload_id")
        .map(|(_, v)| v);
    let id = ids.next()?;
    if ids.next().is_some() || id.is_empty() || id.len() > MAX_UPLOAD_ID_LEN {
        return None;
    }
    Some(id)
}

/// What a PUT did to its session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// More bytes are expected (Google answers 308); `received` bytes are buffered so far.
    Partial { received: u64 },
    /// This PUT completes the upload: the whole message, and the action the session started as.
    /// The session is gone.
    Complete { message: Vec<u8>, action: String },
}

/// One upload in progress.
struct Session {
    agent: String,
    action: String,
    /// The total length, once declared (`X-Upload-Content-Length`) or stated in a range.
    total: Option<u64>,
    buf: Vec<u8>,
    /// Last activity, for the TTL.
    last: Instant,
    /// Order of last activity, for eviction.
    seq: u64,
}

/// The resumable upload sessions the gate has seen start, bounded in count and size.
pub struct Sessions {
    max_sessions: usize,
    max_bytes: u64,
    ttl: Duration,
    sessions: HashMap<String, Session>,
    seq: u64,
}

impl fmt::Debug for Sessions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sessions")
            .field("max_sessions", &self.max_sessions)
            .field("max_bytes", &self.max_bytes)
            .field("ttl", &self.ttl)
            .field("sessions", &self.sessions.len())
            .field("buffered_bytes", &self.buffered_bytes())
            .finish()
    }
}

/// A parsed `Content-Range` request header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Range {
    /// `bytes */total` or `bytes */*`: a status query.
    Status { total: Option<u64> },
    /// `bytes first-last/total` or `bytes first-last/*`.
    Bytes {
        first: u64,
        last: u64,
        total: Option<u64>,
    },
}

impl Sessions {
    /// An empty table: at most `max_sessions` sessions, each buffering at most
    /// `max_bytes_per_session` bytes, each dropped after `ttl` without activity.
    pub fn new(max_sessions: usize, max_bytes_per_session: u64, ttl: Duration) -> Sessions {
        Sessions {
            max_sessions,
            max_bytes: max_bytes_per_session,
            ttl,
            sessions: HashMap::new(),
            seq: 0,
        }
    }

    /// The action the session `upload_id` started as, while it is tracked.
    pub fn action_of(&self, upload_id: &str) -> Option<&str> {
        self.sessions.get(upload_id).map(|s| s.action.as_str())
    }

    /// Sessions tracked (expired ones included until they are dropped).
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// Bytes buffered over all sessions.
    pub fn buffered_bytes(&self) -> u64 {
        self.sessions.values().map(|s| s.buf.len() as u64).sum()
    }

    /// Drops every session idle for the TTL or longer; returns how many were dropped.
    pub fn expire(&mut self, now: Instant) -> usize {
        let before = self.sessions.len();
        let ttl = self.ttl;
        self.sessions.retain(|_, s| !expired(s, ttl, now));
        before - self.sessions.len()
    }

    /// Registers the session `upload_id` that `agent` started as `action`, once the upstream
    /// has answered the start with its `Location`. `declared_len` is `X-Upload-Content-Length`.
    pub fn start(
        &mut self,
        upload_id: &str,
        agent: &str,
        action: &str,
        declared_len: Option<u64>,
        now: Instant,
    ) -> Result<(), ClassifyError> {
        if upload_id.is_empty() || upload_id.len() > MAX_UPLOAD_ID_LEN {
            return Err(bad(format!(
                "an upload id must be 1 to {MAX_UPLOAD_ID_LEN} characters"
            )));
        }
        if self.max_sessions == 0 {
            return Err(bad("resumable uploads are not accepted (no session slots)"));
        }
        if let Some(len) = declared_len.filter(|&len| len > self.max_bytes) {
            return Err(bad(format!(
                "the declared upload length {len} is over the limit of {} bytes",
                self.max_bytes
            )));
        }
        self.expire(now);
        if self.sessions.contains_key(upload_id) {
            return Err(bad("this upload session is already tracked"));
        }
        if self.sessions.len() >= self.max_sessions {
            self.evict_idlest();
        }
        let seq = self.next_seq();
        self.sessions.insert(
            upload_id.to_string(),
            Session {
                agent: agent.to_string(),
                action: action.to_string(),
                total: declared_len,
                buf: Vec::new(),
                last: now,
                seq,
            },
        );
        Ok(())
    }

    /// Accounts for one PUT of `bytes` to the session `upload_id` by `agent`, with its
    /// `Content-Range` header (`None` when it has none).
    pub fn chunk(
        &mut self,
        upload_id: &str,
        agent: &str,
        content_range: Option<&str>,
        bytes: &[u8],
        now: Instant,
    ) -> Result<Progress, ClassifyError> {
        let session = self.sessions.get(upload_id).ok_or_else(|| {
            bad("unknown upload session: the gate did not see it start, so it cannot tell what is being uploaded; start a new upload")
        })?;
        if expired(session, self.ttl, now) {
            self.sessions.remove(upload_id);
            return Err(bad("the upload session has expired; start a new upload"));
        }
        if session.agent != agent {
            return Err(bad("the upload session belongs to another agent"));
        }
        let Some(mut session) = self.sessions.remove(upload_id) else {
            return Err(bad("unknown upload session"));
        };
        let range = content_range.map(parse_range).transpose()?;
        match advance(&mut session, range, bytes, self.max_bytes)? {
            Step::Partial => {
                let received = session.buf.len() as u64;
                session.last = now;
                session.seq = self.next_seq();
                self.sessions.insert(upload_id.to_string(), session);
                Ok(Progress::Partial { received })
            }
            Step::Complete => Ok(Progress::Complete {
                message: session.buf,
                action: session.action,
            }),
        }
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// Evicts the session idle the longest.
    fn evict_idlest(&mut self) {
        let idlest = self
            .sessions
            .iter()
            .min_by_key(|(_, s)| s.seq)
            .map(|(id, _)| id.clone());
        if let Some(id) = idlest {
            self.sessions.remove(&id);
        }
    }
}

fn expired(session: &Session, ttl: Duration, now: Instant) -> bool {
    now.saturating_duration_since(session.last) >= ttl
}

/// What a PUT does, once accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Partial,
    Complete,
}

/// Applies one PUT to a session (which the caller drops on error).
fn advance(
    s: &mut Session,
    range: Option<Range>,
    bytes: &[u8],
    max: u64,
) -> Result<Step, ClassifyError> {
    let received = s.buf.len() as u64;
    match range {
        None => {
            if received != 0 {
                return Err(bad(
                    "a PUT without Content-Range after chunks; the upload session is dropped",
                ));
            }
            set_total(s, bytes.len() as u64, max)?;
            s.buf.extend_from_slice(bytes);
            Ok(Step::Complete)
        }
        Some(Range::Status { total }) => {
            if !bytes.is_empty() {
                return Err(bad(
                    "a status query (Content-Range: bytes */...) must have an empty body",
                ));
            }
            let Some(total) = total else {
                return Ok(Step::Partial);
            };
            set_total(s, total, max)?;
            match total.cmp(&received) {
                std::cmp::Ordering::Less => Err(bad(format!(
                    "the upload total {total} is below the {received} bytes already received"
                ))),
                std::cmp::Ordering::Equal => Ok(Step::Complete),
                std::cmp::Ordering::Greater => Ok(Step::Partial),
            }
        }
        Some(Range::Bytes { first, last, total }) => append(s, first, last, total, bytes, max),
    }
}

/// A `bytes first-last/total` chunk: contiguous, inside the total and the limits.
fn append(
    s: &mut Session,
    first: u64,
    last: u64,
    total: Option<u64>,
    bytes: &[u8],
    max: u64,
) -> Result<Step, ClassifyError> {
    let received = s.buf.len() as u64;
    if first != received {
        let what = if first > received {
            "a gap"
        } else {
            "an overlap"
        };
        return Err(bad(format!(
            "the chunk starts at byte {first} but {received} bytes were received ({what}); the upload session is dropped"
        )));
    }
    let end = last.saturating_add(1);
    if end - first != bytes.len() as u64 {
        return Err(bad(format!(
            "the Content-Range covers {} bytes but the body has {}",
            end - first,
            bytes.len()
        )));
    }
    if let Some(total) = total {
        set_total(s, total, max)?;
    }
    if end > max {
        return Err(bad(format!(
            "the upload is over the limit of {max} bytes; the upload session is dropped"
        )));
    }
    match s.total {
        Some(known) if end > known => Err(bad(format!(
            "the chunk ends past the upload's total of {known} bytes"
        ))),
        Some(known) if end == known && total.is_none() => Err(bad(
            "the chunk that completes the upload must state the total (bytes a-b/total)",
        )),
        Some(known) => {
            s.buf.extend_from_slice(bytes);
            Ok(if end == known {
                Step::Complete
            } else {
                Step::Partial
            })
        }
        None => {
            s.buf.extend_from_slice(bytes);
            Ok(Step::Partial)
        }
    }
}

/// Records the upload's total, which must agree with any declared or earlier one.
fn set_total(s: &mut Session, total: u64, max: u64) -> Result<(), ClassifyError> {
    if total > max {
        return Err(bad(format!(
            "the upload total {total} is over the limit of {max} bytes"
        )));
    }
    match s.total {
        Some(known) if known != total => Err(bad(format!(
            "the upload total changed from {known} to {total}; the upload session is dropped"
        ))),
        _ => {
            s.total = Some(total);
            Ok(())
        }
    }
}

/// `bytes first-last/total`, `bytes first-last/*`, `bytes */total` or `bytes */*`.
fn parse_range(value: &str) -> Result<Range, ClassifyError> {
    let invalid = || {
        bad(format!(
            "the Content-Range {value:?} is not 'bytes a-b/total'"
        ))
    };
    let (unit, spec) = value.split_once(' ').ok_or_else(invalid)?;
    if !unit.eq_ignore_ascii_case("bytes") {
        return Err(invalid());
    }
    let (span, total) = spec.split_once('/').ok_or_else(invalid)?;
    let total = match total {
        "*" => None,
        t => Some(number(t).ok_or_else(invalid)?),
    };
    if span == "*" {
        return Ok(Range::Status { total });
    }
    let (first, last) = span.split_once('-').ok_or_else(invalid)?;
    let (first, last) = (
        number(first).ok_or_else(invalid)?,
        number(last).ok_or_else(invalid)?,
    );
    if first > last {
        return Err(invalid());
    }
    Ok(Range::Bytes { first, last, total })
}

/// Decimal digits only (no sign, no spaces), within u64.
fn number(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEND: &str = "gmail.users.messages.send";
    const MSG: &[u8] = b"To: a@example.com\r\n\r\nhi";

    fn ttl() -> Duration {
        Duration::from_secs(600)
    }

    fn table() -> (Sessions, Instant) {
        (Sessions::new(4, 64, ttl()), Instant::now())
    }

    fn started(declared: Option<u64>) -> (Sessions, Instant) {
        let (mut s, t0) = table();
        s.start("up1", "agent-a", SEND, declared, t0).unwrap();
        (s, t0)
    }

    fn complete(message: &[u8]) -> Result<Progress, ClassifyError> {
        Ok(Progress::Complete {
            message: message.to_vec(),
            action: SEND.to_string(),
        })
    }

    fn partial(received: u64) -> Result<Progress, ClassifyError> {
        Ok(Progress::Partial { received })
    }

    #[test]
    fn location_upload_id() {
        let loc = "https://gmail.googleapis.com/upload/gmail/v1/users/me/messages/send?uploadType=resumable&upload_id=ADPycdv-3_xYz";
        assert_eq!(
            upload_id_from_location(loc).as_deref(),
            Some("ADPycdv-3_xYz")
        );
        assert_eq!(
            upload_id_from_location("/upload/x?upload_id=a%2Bb#frag").as_deref(),
            Some("a+b")
        );
        for loc in [
            "https://gmail.googleapis.com/upload/gmail/v1/users/me/messages/send",
            "https://gmail.googleapis.com/upload?uploadType=resumable",
            "https://gmail.googleapis.com/upload?upload_id=",
            "https://gmail.googleapis.com/upload?upload_id=a&upload_id=b",
            "https://gmail.googleapis.com/upload?upload_id=%zz",
            "https://gmail.googleapis.com/upload#?upload_id=a",
        ] {
            assert_eq!(upload_id_from_location(loc), None, "{loc}");
        }
        let long = format!("/u?upload_id={}", "a".repeat(MAX_UPLOAD_ID_LEN + 1));
        assert_eq!(upload_id_from_location(&long), None);
    }

    #[test]
    fn one_shot_put() {
        let (mut s, t0) = started(Some(MSG.len() as u64));
        assert_eq!(s.chunk("up1", "agent-a", None, MSG, t0), complete(MSG));
        assert!(s.is_empty());
        // Without a declared length too.
        let (mut s, t0) = started(None);
        assert_eq!(s.chunk("up1", "agent-a", None, MSG, t0), complete(MSG));
        // Completing removes the session: a replay is refused.
        assert!(s.chunk("up1", "agent-a", None, MSG, t0).is_err());
    }

    #[test]
    fn one_shot_put_with_full_range() {
        let (mut s, t0) = started(None);
        let range = format!("bytes 0-{}/{}", MSG.len() - 1, MSG.len());
        assert_eq!(
            s.chunk("up1", "agent-a", Some(&range), MSG, t0),
            complete(MSG)
        );
    }

    #[test]
    fn three_chunks() {
        let (mut s, t0) = started(Some(10));
        let a = |s: &mut Sessions, r: &str, b: &[u8]| s.chunk("up1", "agent-a", Some(r), b, t0);
        assert_eq!(a(&mut s, "bytes 0-3/10", b"0123"), partial(4));
        assert_eq!(s.buffered_bytes(), 4);
        assert_eq!(a(&mut s, "bytes 4-7/10", b"4567"), partial(8));
        assert_eq!(a(&mut s, "bytes 8-9/10", b"89"), complete(b"0123456789"));
        assert!(s.is_empty());
        // The total unknown until the last chunk, as clients streaming a message send it.
        let (mut s, t0) = started(None);
        let a = |s: &mut Sessions, r: &str, b: &[u8]| s.chunk("up1", "agent-a", Some(r), b, t0);
        assert_eq!(a(&mut s, "bytes 0-3/*", b"0123"), partial(4));
        assert_eq!(a(&mut s, "Bytes 4-7/*", b"4567"), partial(8));
        assert_eq!(a(&mut s, "bytes 8-9/10", b"89"), complete(b"0123456789"));
    }

    #[test]
    fn query_status() {
        let (mut s, t0) = started(Some(10));
        let q = |s: &mut Sessions, r: &str, b: &[u8]| s.chunk("up1", "agent-a", Some(r), b, t0);
        assert_eq!(q(&mut s, "bytes */*", b""), partial(0));
        assert_eq!(q(&mut s, "bytes 0-3/10", b"0123"), partial(4));
        assert_eq!(q(&mut s, "bytes */10", b""), partial(4));
        assert_eq!(q(&mut s, "bytes */*", b""), partial(4));
        assert_eq!(
            q(&mut s, "bytes 4-9/10", b"456789"),
            complete(b"0123456789")
        );
        // A status query with a body is refused (and drops the session).
        let (mut s, t0) = started(None);
        assert!(
            s.chunk("up1", "agent-a", Some("bytes */*"), b"x", t0)
                .is_err()
        );
        assert!(s.is_empty());
    }

    #[test]
    fn status_query_with_the_reached_total_completes() {
        // Google finalises a session on `bytes */total` once it holds `total` bytes.
        let (mut s, t0) = started(None);
        let q = |s: &mut Sessions, r: &str, b: &[u8]| s.chunk("up1", "agent-a", Some(r), b, t0);
        assert_eq!(q(&mut s, "bytes 0-3/*", b"0123"), partial(4));
        assert_eq!(q(&mut s, "bytes */4", b""), complete(b"0123"));
        // A total below what was received.
        let (mut s, t0) = started(None);
        let q = |s: &mut Sessions, r: &str, b: &[u8]| s.chunk("up1", "agent-a", Some(r), b, t0);
        assert_eq!(q(&mut s, "bytes 0-3/*", b"0123"), partial(4));
        assert!(q(&mut s, "bytes */3", b"").is_err());
    }

    #[test]
    fn out_of_order_chunk_is_refused() {
        let (mut s, t0) = started(Some(10));
        let err = s.chunk("up1", "agent-a", Some("bytes 4-7/10"), b"4567", t0);
        assert!(matches!(err, Err(ClassifyError::Malformed(ref m)) if m.contains("gap")));
        // The session is dropped: the rest of the upload is refused too.
        assert!(
            s.chunk("up1", "agent-a", Some("bytes 0-3/10"), b"0123", t0)
                .is_err()
        );
        let (mut s, t0) = started(Some(10));
        let c = |s: &mut Sessions, r: &str, b: &[u8]| s.chunk("up1", "agent-a", Some(r), b, t0);
        assert_eq!(c(&mut s, "bytes 0-3/10", b"0123"), partial(4));
        assert!(c(&mut s, "bytes 8-9/10", b"89").is_err());
    }

    #[test]
    fn overlap_and_rewind_are_refused() {
        for (second, bytes) in [
            ("bytes 2-5/10", &b"2345"[..]),
            ("bytes 0-3/10", b"0123"),
            ("bytes 3-9/10", b"3456789"),
        ] {
            let (mut s, t0) = started(Some(10));
            let c = |s: &mut Sessions, r: &str, b: &[u8]| s.chunk("up1", "agent-a", Some(r), b, t0);
            assert_eq!(c(&mut s, "bytes 0-3/10", b"0123"), partial(4));
            let err = c(&mut s, second, bytes);
            assert!(
                matches!(err, Err(ClassifyError::Malformed(ref m)) if m.contains("overlap")),
                "{second}"
            );
        }
        // Rewind after two chunks.
        let (mut s, t0) = started(Some(10));
        let c = |s: &mut Sessions, r: &str, b: &[u8]| s.chunk("up1", "agent-a", Some(r), b, t0);
        assert_eq!(c(&mut s, "bytes 0-3/10", b"0123"), partial(4));
        assert_eq!(c(&mut s, "bytes 4-7/10", b"4567"), partial(8));
        assert!(c(&mut s, "bytes 0-3/10", b"0123").is_err());
    }

    #[test]
    fn unknown_session_is_refused() {
        let (mut s, t0) = started(None);
        let err = s.chunk("up2", "agent-a", None, MSG, t0);
        assert!(matches!(err, Err(ClassifyError::Malformed(ref m)) if m.contains("unknown")));
        assert_eq!(s.len(), 1);
        let (mut empty, t0) = table();
        assert!(
            empty
                .chunk("up1", "agent-a", Some("bytes */*"), b"", t0)
                .is_err()
        );
    }

    #[test]
    fn another_agent_is_refused() {
        let (mut s, t0) = started(Some(10));
        let err = s.chunk("up1", "agent-b", Some("bytes 0-3/10"), b"0123", t0);
        assert!(matches!(err, Err(ClassifyError::Malformed(ref m)) if m.contains("another agent")));
        assert!(s.chunk("up1", "agent-b", None, b"0123456789", t0).is_err());
        // The owner's session is untouched.
        assert_eq!(
            s.chunk("up1", "agent-a", None, b"0123456789", t0),
            complete(b"0123456789")
        );
    }

    #[test]
    fn changed_total_is_refused() {
        let (mut s, t0) = started(None);
        let c = |s: &mut Sessions, r: &str, b: &[u8]| s.chunk("up1", "agent-a", Some(r), b, t0);
        assert_eq!(c(&mut s, "bytes 0-3/10", b"0123"), partial(4));
        assert!(c(&mut s, "bytes 4-7/12", b"4567").is_err());
        // Against the declared length.
        let (mut s, t0) = started(Some(10));
        assert!(
            s.chunk("up1", "agent-a", Some("bytes 0-3/12"), b"0123", t0)
                .is_err()
        );
        let (mut s, t0) = started(Some(10));
        assert!(s.chunk("up1", "agent-a", None, b"012345678", t0).is_err());
        // A status query naming another total.
        let (mut s, t0) = started(Some(10));
        assert!(
            s.chunk("up1", "agent-a", Some("bytes */11"), b"", t0)
                .is_err()
        );
    }

    #[test]
    fn limits_are_enforced() {
        // Per-session limit of 64 bytes.
        let (mut s, t0) = table();
        assert!(s.start("big", "agent-a", SEND, Some(65), t0).is_err());
        assert!(s.is_empty());
        let (mut s, t0) = started(None);
        assert!(s.chunk("up1", "agent-a", None, &[b'x'; 65], t0).is_err());
        let (mut s, t0) = started(None);
        let c = |s: &mut Sessions, r: &str, b: &[u8]| s.chunk("up1", "agent-a", Some(r), b, t0);
        assert_eq!(c(&mut s, "bytes 0-31/*", &[b'x'; 32]), partial(32));
        assert!(c(&mut s, "bytes 32-64/*", &[b'x'; 33]).is_err());
        let (mut s, t0) = started(None);
        assert!(
            s.chunk("up1", "agent-a", Some("bytes 0-3/65"), b"0123", t0)
                .is_err()
        );
        // Exactly at the limit is fine.
        let (mut s, t0) = started(Some(64));
        assert_eq!(
            s.chunk("up1", "agent-a", None, &[b'x'; 64], t0),
            complete(&[b'x'; 64])
        );
    }

    #[test]
    fn declared_length_is_enforced() {
        let (mut s, t0) = started(Some(6));
        let c = |s: &mut Sessions, r: &str, b: &[u8]| s.chunk("up1", "agent-a", Some(r), b, t0);
        assert!(c(&mut s, "bytes 0-6/*", b"0123456").is_err());
        // A `*` chunk that reaches the declared length must state the total.
        let (mut s, t0) = started(Some(6));
        let c = |s: &mut Sessions, r: &str, b: &[u8]| s.chunk("up1", "agent-a", Some(r), b, t0);
        assert_eq!(c(&mut s, "bytes 0-2/*", b"012"), partial(3));
        assert!(c(&mut s, "bytes 3-5/*", b"345").is_err());
        // Bytes past a stated total.
        let (mut s, t0) = started(None);
        assert!(
            s.chunk("up1", "agent-a", Some("bytes 0-4/4"), b"01234", t0)
                .is_err()
        );
    }

    #[test]
    fn bad_content_ranges_are_refused() {
        for (range, body) in [
            ("bytes 0-3", &b"0123"[..]),
            ("bytes=0-3/10", b"0123"),
            ("bytes 0-3 /10", b"0123"),
            ("bytes  0-3/10", b"0123"),
            ("bytes 3-0/10", b"0123"),
            ("bytes -3/10", b"0123"),
            ("bytes 0-/10", b"0123"),
            ("bytes +0-3/10", b"0123"),
            ("bytes 0-3/+10", b"0123"),
            ("bytes 0-3/-1", b"0123"),
            ("bytes 0-3/10/10", b"0123"),
            ("items 0-3/10", b"0123"),
            ("bytes */", b""),
            ("bytes *", b""),
            ("bytes 0-18446744073709551616/*", b"0123"),
            ("", b"0123"),
            // The range and the body disagree.
            ("bytes 0-3/10", b"012"),
            ("bytes 0-3/10", b"01234"),
            ("bytes 0-0/10", b""),
        ] {
            let (mut s, t0) = started(Some(10));
            assert!(
                s.chunk("up1", "agent-a", Some(range), body, t0).is_err(),
                "{range:?}"
            );
        }
    }

    #[test]
    fn put_without_range_after_chunks_is_refused() {
        let (mut s, t0) = started(None);
        let c = |s: &mut Sessions, r: Option<&str>, b: &[u8]| s.chunk("up1", "agent-a", r, b, t0);
        assert_eq!(c(&mut s, Some("bytes 0-3/*"), b"0123"), partial(4));
        assert!(c(&mut s, None, b"456789").is_err());
    }

    #[test]
    fn expiry() {
        let (mut s, t0) = started(Some(10));
        let c = |s: &mut Sessions, r: &str, b: &[u8], t| s.chunk("up1", "agent-a", Some(r), b, t);
        // Activity keeps the session alive.
        let t1 = t0 + ttl() / 2;
        assert_eq!(c(&mut s, "bytes 0-3/10", b"0123", t1), partial(4));
        let t2 = t1 + ttl() - Duration::from_secs(1);
        assert_eq!(c(&mut s, "bytes 4-7/10", b"4567", t2), partial(8));
        // Idle for the whole TTL: dropped.
        let err = c(&mut s, "bytes 8-9/10", b"89", t2 + ttl());
        assert!(matches!(err, Err(ClassifyError::Malformed(ref m)) if m.contains("expired")));
        assert!(s.is_empty());
        // The sweep drops idle sessions.
        let (mut s, t0) = table();
        s.start("a", "agent-a", SEND, None, t0).unwrap();
        s.start("b", "agent-a", SEND, None, t0 + ttl() / 2).unwrap();
        assert_eq!(s.expire(t0 + ttl()), 1);
        assert_eq!(s.len(), 1);
        assert_eq!(s.expire(t0 + ttl() * 2), 1);
        assert!(s.is_empty());
    }

    #[test]
    fn eviction_drops_the_idlest() {
        let mut s = Sessions::new(2, 64, ttl());
        let t0 = Instant::now();
        s.start("a", "agent-a", SEND, None, t0).unwrap();
        s.start("b", "agent-b", SEND, None, t0).unwrap();
        // `a` is active, so `b` is the idlest when `c` arrives.
        assert_eq!(
            s.chunk("a", "agent-a", Some("bytes 0-1/*"), b"01", t0),
            partial(2)
        );
        s.start("c", "agent-c", SEND, None, t0).unwrap();
        assert_eq!(s.len(), 2);
        assert!(s.chunk("b", "agent-b", None, b"x", t0).is_err());
        assert_eq!(
            s.chunk("a", "agent-a", Some("bytes 2-3/4"), b"23", t0),
            complete(b"0123")
        );
        assert_eq!(s.chunk("c", "agent-c", None, b"x", t0), complete(b"x"));
        // Expired sessions go first, before any live one is evicted.
        let mut s = Sessions::new(2, 64, ttl());
        s.start("old", "agent-a", SEND, None, t0).unwrap();
        s.start("live", "agent-a", SEND, None, t0 + ttl()).unwrap();
        s.start("new", "agent-a", SEND, None, t0 + ttl()).unwrap();
        assert!(s.chunk("live", "agent-a", None, b"x", t0 + ttl()).is_ok());
        assert!(s.chunk("new", "agent-a", None, b"x", t0 + ttl()).is_ok());
    }

    #[test]
    fn start_refusals() {
        let (mut s, t0) = started(Some(10));
        let c = |s: &mut Sessions, r: &str, b: &[u8]| s.chunk("up1", "agent-a", Some(r), b, t0);
        assert_eq!(c(&mut s, "bytes 0-3/10", b"0123"), partial(4));
        // Registering the same id again neither resets nor hands over the session.
        assert!(s.start("up1", "agent-b", SEND, None, t0).is_err());
        assert!(s.start("up1", "agent-a", SEND, Some(10), t0).is_err());
        assert_eq!(
            c(&mut s, "bytes 4-9/10", b"456789"),
            complete(b"0123456789")
        );
        assert!(s.start("", "agent-a", SEND, None, t0).is_err());
        let long = "a".repeat(MAX_UPLOAD_ID_LEN + 1);
        assert!(s.start(&long, "agent-a", SEND, None, t0).is_err());
        let mut none = Sessions::new(0, 64, ttl());
        assert!(none.start("up1", "agent-a", SEND, None, t0).is_err());
    }

    #[test]
    fn the_action_comes_from_the_start() {
        let (mut s, t0) = table();
        s.start("d", "agent-a", "gmail.users.drafts.create", None, t0)
            .unwrap();
        assert_eq!(
            s.chunk("d", "agent-a", None, MSG, t0),
            Ok(Progress::Complete {
                message: MSG.to_vec(),
                action: "gmail.users.drafts.create".to_string()
            })
        );
    }
}
