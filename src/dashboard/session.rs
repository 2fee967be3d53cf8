//! Browser sessions: `POST /api/login` trades the reviewer token for a session cookie
//! (`HttpOnly; SameSite=Strict; Path=/`) naming a random 256-bit id, and a CSRF token the page
//! sends back in `x-csrf-token` on every state change. Sessions live in memory only (a
//! restarted gate asks reviewers to log in again) and expire after [`TTL`].
//!
//! The store keeps the SHA-256 of each id, not the id, so a lookup's timing says nothing
//! about stored ids. At most [`MAX_SESSIONS`] exist at once; a new login beyond that ends the
//! session closest to its expiry.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderValue, header};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::watch;

use super::lock;
use super::reply::ApiError;

/// The session cookie's name.
pub const COOKIE: &str = "agentgate_session";
/// How long a session lasts from its login.
pub const TTL: Duration = Duration::from_secs(12 * 3600);
/// Most sessions at once.
pub const MAX_SESSIONS: usize = 256;

/// The store's key for a session: SHA-256 of its id.
pub type Key = [u8; 32];

/// One logged-in browser.
#[derive(Debug, Clone)]
pub struct Session {
    pub reviewer: String,
    pub csrf: String,
    /// Unix milliseconds.
    pub expires_ms: i64,
    expires: Instant,
    /// Login order: of sessions expiring at the same instant, the older one goes first.
    serial: u64,
}

impl Session {
    /// Whether `presented` is this session's CSRF token (constant time).
    pub fn csrf_matches(&self, presented: &str) -> bool {
        bool::from(self.csrf.as_bytes().ct_eq(presented.as_bytes()))
    }
}

/// What a login hands out.
#[derive(Debug, Clone)]
pub struct NewSession {
    pub id: String,
    pub csrf: String,
    pub expires_ms: i64,
}

#[derive(Debug)]
pub struct Sessions {
    map: Mutex<HashMap<Key, Session>>,
    serial: std::sync::atomic::AtomicU64,
    ttl: Duration,
    /// Bumped whenever a session ends early (logout), so open feeds re-check theirs.
    ended: watch::Sender<u64>,
}

impl Default for Sessions {
    fn default() -> Self {
        Sessions::new(TTL)
    }
}

impl Sessions {
    pub fn new(ttl: Duration) -> Sessions {
        Sessions {
            map: Mutex::new(HashMap::new()),
            serial: std::sync::atomic::AtomicU64::new(0),
            ttl,
            ended: watch::channel(0).0,
        }
    }

    /// Starts a session for `reviewer`.
    pub fn create(&self, reviewer: &str, now_ms: i64) -> Result<NewSession, ApiError> {
        let id = random_hex()?;
        let csrf = random_hex()?;
        let ttl_ms = i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX);
        let session = Session {
            reviewer: reviewer.to_string(),
            csrf: csrf.clone(),
            expires_ms: now_ms.saturating_add(ttl_ms),
            expires: Instant::now() + self.ttl,
            serial: self
                .serial
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        };
        let expires_ms = session.expires_ms;
        let mut map = lock(&self.map);
        let now = Instant::now();
        map.retain(|_, s| s.expires > now);
        if map.len() >= MAX_SESSIONS {
            let oldest = map
                .iter()
                .min_by_key(|(_, s)| (s.expires, s.serial))
                .map(|(k, _)| *k);
            if let Some(k) = oldest {
                map.remove(&k);
                self.ended.send_modify(|n| *n += 1);
            }
        }
        map.insert(key(&id), session);
        Ok(NewSession {
            id,
            csrf,
            expires_ms,
        })
    }

    /// The live session a cookie value names.
    pub fn find(&self, id: &str) -> Option<(Key, Session)> {
        let k = key(id);
        let mut map = lock(&self.map);
        match map.get(&k) {
            Some(s) if s.expires > Instant::now() => Some((k, s.clone())),
            Some(_) => {
                map.remove(&k);
                None
            }
            None => None,
        }
    }

    /// Whether the session `k` still exists and has not expired.
    pub fn alive(&self, k: &Key) -> bool {
        lock(&self.map)
            .get(k)
            .is_some_and(|s| s.expires > Instant::now())
    }

    /// Ends the session `k` (logout).
    pub fn end(&self, k: &Key) {
        if lock(&self.map).remove(k).is_some() {
            self.ended.send_modify(|n| *n += 1);
        }
    }

    /// Changes whenever a session ends early.
    pub fn ended(&self) -> watch::Receiver<u64> {
        self.ended.subscribe()
    }
}

fn key(id: &str) -> Key {
    Sha256::digest(id.as_bytes()).into()
}

fn random_hex() -> Result<String, ApiError> {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b)
        .map_err(|e| ApiError::Unavailable(format!("no randomness for a session: {e}")))?;
    Ok(hex::encode(b))
}

/// The session id in the request's cookies, if any.
pub fn cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name.trim() == COOKIE).then(|| value.trim().to_string())
        })
}

/// The `Set-Cookie` of a new session. No `Secure`: the dashboard is plain HTTP on a loopback
/// address (a `Secure` cookie would never be sent back); `HttpOnly` keeps it from scripts and
/// `SameSite=Strict` from every cross-site request.
pub fn set_cookie(id: &str, ttl: Duration) -> Result<HeaderValue, ApiError> {
    HeaderValue::from_str(&format!(
        "{COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
        ttl.as_secs()
    ))
    .map_err(|e| ApiError::Internal(format!("session cookie: {e}")))
}

/// The `Set-Cookie` that removes the session cookie.
pub fn clear_cookie() -> HeaderValue {
    HeaderValue::from_static("agentgate_session=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_are_found_by_their_id_until_they_end() {
        let s = Sessions::new(TTL);
        let n = s.create("alice", 1_000).unwrap();
        assert_eq!(n.id.len(), 64, "256 random bits, hex");
        assert_ne!(n.id, n.csrf);
        assert_eq!(n.expires_ms, 1_000 + 12 * 3600 * 1000);
        let (k, found) = s.find(&n.id).unwrap();
        assert_eq!(found.reviewer, "alice");
        assert!(found.csrf_matches(&n.csrf));
        assert!(!found.csrf_matches("nope"));
        assert!(!found.csrf_matches(""));
        assert!(s.find("nope").is_none());
        let ended = s.ended();
        s.end(&k);
        assert!(ended.has_changed().unwrap());
        assert!(s.find(&n.id).is_none());
        assert!(!s.alive(&k));
    }

    #[test]
    fn expired_sessions_are_gone() {
        let s = Sessions::new(Duration::ZERO);
        let n = s.create("alice", 0).unwrap();
        assert!(s.find(&n.id).is_none());
    }

    #[test]
    fn the_store_is_bounded() {
        let s = Sessions::new(TTL);
        let first = s.create("a", 0).unwrap();
        for _ in 0..MAX_SESSIONS {
            s.create("a", 0).unwrap();
        }
        assert!(s.find(&first.id).is_none(), "the oldest made room");
        assert_eq!(lock(&s.map).len(), MAX_SESSIONS);
    }

    #[test]
    fn the_cookie_is_read_among_others() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; agentgate_session=abc ; b=2"),
        );
        assert_eq!(cookie(&h).as_deref(), Some("abc"));
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("xagentgate_session=abc"),
        );
        assert_eq!(cookie(&h), None);
        let v = set_cookie("abc", TTL).unwrap();
        let v = v.to_str().unwrap();
        assert!(v.contains("HttpOnly") && v.contains("SameSite=Strict") && v.contains("Path=/"));
        assert!(!v.contains("Secure"));
    }
}
