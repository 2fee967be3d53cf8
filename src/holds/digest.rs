//! The digest a challenge is bound to: SHA-256 over a canonical encoding of who asked for what
//! (security.md: "approvals are bound to bytes"; a changed body is a new challenge).

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::actions::Action;

/// Hex SHA-256 over: a version tag, `agent`, the actions as canonical JSON (object keys sorted
/// at every level, no whitespace), `host`, `method`, `path` (pass the path with its query) and
/// the SHA-256 of `body` (the bytes the upstream is to receive). Every field is framed by its
/// length (u64, big-endian), so no two different inputs share an encoding.
pub fn digest(
    agent: &str,
    actions: &[Action],
    host: &str,
    method: &str,
    path: &str,
    body: &[u8],
) -> String {
    let mut h = Sha256::new();
    let mut field = |bytes: &[u8]| {
        h.update((bytes.len() as u64).to_be_bytes());
        h.update(bytes);
    };
    field(b"agentgate-challenge-v1");
    field(agent.as_bytes());
    let mut json = Vec::new();
    json.push(b'[');
    for (i, a) in actions.iter().enumerate() {
        if i > 0 {
            json.push(b',');
        }
        let v = serde_json::json!({
            "name": a.name, "host": a.host, "method": a.method, "path": a.path,
            "params": Value::Object(a.params.clone()),
        });
        canonical(&v, &mut json);
    }
    json.push(b']');
    field(&json);
    field(host.as_bytes());
    field(method.as_bytes());
    field(path.as_bytes());
    field(&Sha256::digest(body));
    hex::encode(h.finalize())
}

/// `v` as JSON with object keys sorted (by their UTF-8 bytes) at every level.
fn canonical(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push(b'{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                scalar(&Value::String(k.clone()), out);
                out.push(b':');
                if let Some(x) = m.get(k) {
                    canonical(x, out);
                }
            }
            out.push(b'}');
        }
        Value::Array(a) => {
            out.push(b'[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                canonical(x, out);
            }
            out.push(b']');
        }
        other => scalar(other, out),
    }
}

fn scalar(v: &Value, out: &mut Vec<u8>) {
    // Writing a scalar into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, v);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Map, json};

    fn action(params: Value) -> Action {
        let Value::Object(m) = params else {
            return Action::new("x", Map::new());
        };
        let mut a = Action::new("github.repos.delete", m);
        a.host = "api.github.com".into();
        a.method = "DELETE".into();
        a.path = "/repos/o/r".into();
        a
    }

    #[test]
    fn key_order_does_not_matter_but_everything_else_does() {
        let a = action(json!({"owner": "o", "repo": "o/r", "n": {"b": 1, "a": [1, 2]}}));
        let mut m = Map::new();
        m.insert("n".into(), json!({"a": [1, 2], "b": 1}));
        m.insert("repo".into(), json!("o/r"));
        m.insert("owner".into(), json!("o"));
        let mut b = a.clone();
        b.params = m;
        let d = |acts: &[Action], body: &[u8]| {
            digest(
                "coder",
                acts,
                "api.github.com",
                "DELETE",
                "/repos/o/r",
                body,
            )
        };
        assert_eq!(d(std::slice::from_ref(&a), b""), d(&[b], b""));
        assert_eq!(d(std::slice::from_ref(&a), b"").len(), 64);
        assert_ne!(
            d(std::slice::from_ref(&a), b""),
            d(std::slice::from_ref(&a), b"x")
        );
        assert_ne!(
            d(std::slice::from_ref(&a), b""),
            digest(
                "other",
                std::slice::from_ref(&a),
                "api.github.com",
                "DELETE",
                "/repos/o/r",
                b""
            )
        );
        // Framing: moving a byte between fields changes the digest.
        assert_ne!(
            digest("ab", &[], "c", "GET", "/", b""),
            digest("a", &[], "bc", "GET", "/", b"")
        );
        let mut c = a.clone();
        c.params.insert("repo".into(), json!("o/s"));
        assert_ne!(d(&[a], b""), d(&[c], b""));
    }
}
