//! `GET /api/events`: the feed over a WebSocket.
//!
//! The first message is `{"type":"hello","boot":..,"head":N,"audit_head":M,"now_ms":T}`: it
//! names the gate process (`boot`), the newest event (`head`), the newest audit record and the
//! gate's clock. It is not an event and has no `seq`. Then come the events (see `feed`), each
//! with a `seq` one higher than the last one sent, except across a `resync`:
//!
//! - `?after=SEQ` (and optionally `&boot=ID` from an earlier hello): every event after SEQ
//!   that the ring still holds, then live ones; no event twice, none missing. When the ring no
//!   longer holds them all, when SEQ is beyond the head, or when `boot` names another process,
//!   the client gets `{"seq":HEAD,"type":"resync",..}` first and events after HEAD next.
//! - no `after`: live events from the current head on.
//!
//! A client that reads too slowly falls out of the ring and gets a `resync` the same way: the
//! server never queues events per client. A write that does not complete in [`SEND_TIMEOUT`]
//! closes the connection. A session-cookie client is disconnected when its session ends.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{
    CloseFrame, Role, WebSocketConfig, frame::coding::CloseCode,
};

use super::DashboardState;
use super::feed::{Feed, Since};
use super::guard::{Caller, Via};
use super::reply::{ApiError, Body};
use super::session::Sessions;

/// Longest a single write to a client may take.
const SEND_TIMEOUT: Duration = Duration::from_secs(20);
/// How often an idle connection is pinged (and its session re-checked).
const PING_EVERY: Duration = Duration::from_secs(20);
/// Largest message a client may send (clients have nothing to say but pings and closes).
const MAX_CLIENT_MESSAGE: usize = 4096;

/// Where the client wants to start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Start {
    pub after: Option<u64>,
    pub boot: Option<String>,
}

impl Start {
    pub fn parse(query: &str) -> Result<Start, ApiError> {
        let params = crate::actions::canonical::parse_query(query)
            .map_err(|e| ApiError::BadRequest(format!("the query does not parse: {e}")))?;
        let mut start = Start::default();
        for (k, v) in params {
            match k.as_str() {
                "after" => {
                    start.after = Some(v.parse().map_err(|_| {
                        ApiError::BadRequest("after is an event sequence number".into())
                    })?);
                }
                "boot" => start.boot = Some(v),
                _ => {}
            }
        }
        Ok(start)
    }
}

/// Answers the upgrade (101) and serves the feed on the upgraded connection.
pub fn upgrade(
    state: Arc<DashboardState>,
    mut req: Request<Incoming>,
    caller: Caller,
) -> Result<Response<Body>, ApiError> {
    let h = req.headers();
    let has_token = |name: header::HeaderName, token: &str| {
        h.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    if !has_token(header::CONNECTION, "upgrade") || !has_token(header::UPGRADE, "websocket") {
        return Err(ApiError::BadRequest(
            "GET /api/events is a WebSocket: send Connection: Upgrade, Upgrade: websocket".into(),
        ));
    }
    if h.get(header::SEC_WEBSOCKET_VERSION)
        .map(HeaderValue::as_bytes)
        != Some(b"13")
    {
        return Err(ApiError::BadRequest(
            "Sec-WebSocket-Version must be 13".into(),
        ));
    }
    let Some(key) = h.get(header::SEC_WEBSOCKET_KEY) else {
        return Err(ApiError::BadRequest("Sec-WebSocket-Key is missing".into()));
    };
    let accept = derive_accept_key(key.as_bytes());
    let start = Start::parse(req.uri().query().unwrap_or(""))?;
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match upgrade.await {
            Ok(upgraded) => {
                let config = WebSocketConfig::default()
                    .max_message_size(Some(MAX_CLIENT_MESSAGE))
                    .max_frame_size(Some(MAX_CLIENT_MESSAGE));
                let ws = WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    Some(config),
                )
                .await;
                let ctx = Ctx {
                    feed: &state.feed,
                    sessions: &state.sessions,
                    audit_head: state.audit.stats().last_seq,
                };
                serve(ws, &ctx, start, caller).await;
            }
            Err(e) => tracing::debug!("dashboard: WebSocket upgrade failed: {e}"),
        }
    });
    let mut resp = Response::new(Body::default());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = resp.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    let accept = HeaderValue::from_str(&accept)
        .map_err(|e| ApiError::Internal(format!("accept key: {e}")))?;
    headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    Ok(resp)
}

/// What a feed connection reads.
struct Ctx<'a> {
    feed: &'a Feed,
    sessions: &'a Sessions,
    /// The newest audit record when the client connected (for its hello).
    audit_head: u64,
}

/// Why a connection ends.
enum End {
    /// The client went away or a write failed: nothing more to send.
    Gone,
    /// Close with this code and reason.
    Close(CloseCode, &'static str),
}

async fn serve<S>(mut ws: WebSocketStream<S>, ctx: &Ctx<'_>, start: Start, caller: Caller)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let end = feed(&mut ws, ctx, start, &caller).await;
    if let End::Close(code, reason) = end {
        let frame = CloseFrame {
            code,
            reason: reason.into(),
        };
        let _ = tokio::time::timeout(SEND_TIMEOUT, ws.close(Some(frame))).await;
    }
}

async fn feed<S>(ws: &mut WebSocketStream<S>, ctx: &Ctx<'_>, start: Start, caller: &Caller) -> End
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let feed = ctx.feed;
    let mut head = feed.watch();
    let mut closed = feed.closed();
    let mut ended = ctx.sessions.ended();
    let session = match &caller.via {
        Via::Session { key, .. } => Some(*key),
        Via::Bearer => None,
    };
    let alive = || session.is_none_or(|k| ctx.sessions.alive(&k));
    let now = head.borrow_and_update().to_owned();
    let hello = serde_json::json!({
        "type": "hello",
        "boot": feed.boot(),
        "head": now,
        "audit_head": ctx.audit_head,
        "now_ms": crate::decider::now_ms(),
        "reviewer": caller.reviewer,
    });
    if send(ws, Message::text(hello.to_string())).await.is_err() {
        return End::Gone;
    }
    let other_boot = start.boot.as_deref().is_some_and(|b| b != feed.boot());
    let mut last = match start.after {
        Some(_) if other_boot => {
            if resync(ws, now, "the gate restarted since that event")
                .await
                .is_err()
            {
                return End::Gone;
            }
            now
        }
        Some(after) => after,
        None => now,
    };
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.reset();
    loop {
        head.borrow_and_update();
        match catch_up(ws, feed, &mut last).await {
            Ok(()) => {}
            Err(()) => return End::Gone,
        }
        tokio::select! {
            changed = head.changed() => if changed.is_err() {
                return End::Close(CloseCode::Away, "the gate is stopping");
            },
            () = super::feed::until_closed(&mut closed) => {
                return End::Close(CloseCode::Away, "the gate is stopping");
            }
            _ = ended.changed() => if !alive() {
                return End::Close(CloseCode::Policy, "the session ended");
            },
            _ = ping.tick() => {
                if !alive() {
                    return End::Close(CloseCode::Policy, "the session ended");
                }
                if send(ws, Message::Ping(Default::default())).await.is_err() {
                    return End::Gone;
                }
            }
            msg = ws.next() => match msg {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return End::Gone,
                // Pongs and pings are answered by tungstenite; text is ignored.
                Some(Ok(_)) => {}
            },
        }
    }
}

/// Sends every event after `last` (or a resync when the ring lost some).
async fn catch_up<S>(ws: &mut WebSocketStream<S>, feed: &Feed, last: &mut u64) -> Result<(), ()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match feed.since(*last) {
        Since::Events(events) => {
            for e in events {
                send(ws, Message::Text(e.text.clone())).await?;
                *last = e.seq;
            }
        }
        Since::Gap { head } => {
            resync(ws, head, "events were missed: reload the lists").await?;
            *last = head;
        }
    }
    Ok(())
}

async fn resync<S>(ws: &mut WebSocketStream<S>, head: u64, reason: &str) -> Result<(), ()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let v = serde_json::json!({"seq": head, "type": "resync", "reason": reason});
    send(ws, Message::text(v.to_string())).await
}

async fn send<S>(ws: &mut WebSocketStream<S>, msg: Message) -> Result<(), ()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match tokio::time::timeout(SEND_TIMEOUT, ws.send(msg)).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dashboard::feed::RING_EVENTS;

    /// A server feeding `feed` to `start` over an in-memory pipe of `buffer` bytes, and the
    /// client end.
    async fn pipe(
        feed: &Arc<Feed>,
        start: Start,
        buffer: usize,
    ) -> WebSocketStream<tokio::io::DuplexStream> {
        let (server_io, client_io) = tokio::io::duplex(buffer);
        let feed = feed.clone();
        tokio::spawn(async move {
            let ws = WebSocketStream::from_raw_socket(server_io, Role::Server, None).await;
            let sessions = Sessions::default();
            let ctx = Ctx {
                feed: &feed,
                sessions: &sessions,
                audit_head: 0,
            };
            let caller = Caller {
                reviewer: "r".into(),
                via: Via::Bearer,
            };
            serve(ws, &ctx, start, caller).await;
        });
        WebSocketStream::from_raw_socket(client_io, Role::Client, None).await
    }

    async fn next(ws: &mut WebSocketStream<tokio::io::DuplexStream>) -> serde_json::Value {
        loop {
            let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            if let Message::Text(t) = m {
                return serde_json::from_str(t.as_str()).unwrap();
            }
        }
    }

    fn publish(feed: &Feed, n: usize) {
        let payload = serde_json::Value::from("x".repeat(200)).to_string();
        for _ in 0..n {
            feed.publish("test", "data", &payload);
        }
    }

    #[tokio::test]
    async fn a_slow_client_falls_out_of_the_ring_and_is_told_to_resync() {
        let feed = Arc::new(Feed::new());
        let mut client = pipe(&feed, Start::default(), 4096).await;
        assert_eq!(next(&mut client).await["type"], "hello");
        // The client stops reading: the server blocks on a full pipe mid-batch...
        publish(&feed, 100);
        tokio::time::sleep(Duration::from_millis(100)).await;
        // ...while the ring moves on past everything it has not sent.
        publish(&feed, 2 * RING_EVENTS);
        let head = feed.head();
        let mut seqs = Vec::new();
        loop {
            let m = next(&mut client).await;
            let seq = m["seq"].as_u64().unwrap();
            if m["type"] == "resync" {
                assert_eq!(seq, head, "a resync stands for everything up to the head");
                break;
            }
            seqs.push(seq);
        }
        assert_eq!(
            seqs,
            (1..=100).collect::<Vec<_>>(),
            "what was sent is contiguous"
        );
        // Then live events again, numbered on from the head.
        publish(&feed, 1);
        assert_eq!(next(&mut client).await["seq"], head + 1);
    }

    #[tokio::test]
    async fn replays_start_after_the_given_seq_or_resync() {
        let feed = Arc::new(Feed::new());
        publish(&feed, 10);
        let boot = feed.boot().to_string();
        let start = |after, boot: Option<&str>| Start {
            after: Some(after),
            boot: boot.map(str::to_string),
        };
        let mut c = pipe(&feed, start(7, Some(&boot)), 1 << 20).await;
        assert_eq!(next(&mut c).await["head"], 10);
        for want in 8..=10 {
            assert_eq!(next(&mut c).await["seq"], want);
        }
        let mut c = pipe(&feed, start(7, Some("another")), 1 << 20).await;
        next(&mut c).await;
        let r = next(&mut c).await;
        assert_eq!(
            (r["type"].as_str(), r["seq"].as_u64()),
            (Some("resync"), Some(10))
        );
        publish(&feed, RING_EVENTS);
        let mut c = pipe(&feed, start(7, Some(&boot)), 1 << 20).await;
        next(&mut c).await;
        let r = next(&mut c).await;
        assert_eq!(r["type"], "resync", "event 8 is no longer in the ring");
        assert_eq!(r["seq"].as_u64(), Some(feed.head()));
    }

    #[test]
    fn start_parses_after_and_boot() {
        assert_eq!(Start::parse("").unwrap(), Start::default());
        let s = Start::parse("after=12&boot=ab").unwrap();
        assert_eq!(s.after, Some(12));
        assert_eq!(s.boot.as_deref(), Some("ab"));
        assert!(Start::parse("after=x").is_err());
        assert!(Start::parse("after=-1").is_err());
    }
}
