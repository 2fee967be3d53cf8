//! What the audit log may keep of agent-controlled values: credentials removed, large values
//! cut down to their length and hash. Pure; every record passes through here before it is
//! encoded (see the module doc of [`crate::audit`], *Secrets and size*).

use std::borrow::Cow;

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// What a credential is replaced with.
pub const REDACTED: &str = "[redacted]";
/// Longest string kept whole (bytes); longer ones are cut.
pub const MAX_STRING: usize = 1024;
/// Most elements of an array, or keys of an object, kept; larger ones are cut.
pub const MAX_ITEMS: usize = 64;
/// Deepest nesting kept; containers below it are cut.
pub const MAX_DEPTH: usize = 8;
/// String bytes kept per action's params; once spent, further strings are cut.
pub const PARAMS_BYTES: usize = 16 * 1024;
/// Values (strings, numbers, containers) kept per action's params; once spent, containers are
/// cut.
pub const PARAMS_NODES: usize = 1024;
/// Longest free text (path, reasons, notes, errors) kept whole; longer text is truncated.
pub const MAX_TEXT: usize = 1024;

/// Token shapes (wire-formats.md 6.2, and the gate's own agent tokens): a prefix and the fewest
/// token characters that must follow it. Real tokens are far longer; the minimum keeps words
/// such as `ghs_a` from being taken for one.
const TOKEN_PREFIXES: &[(&str, usize)] = &[
    ("ghp_", 12),
    ("gho_", 12),
    ("ghu_", 12),
    ("ghs_", 12),
    ("ghr_", 12),
    ("github_pat_", 12),
    ("ya29.", 12),
    ("1//", 12),
    ("AIza", 12),
    ("agt_", 12),
];

/// Last words of a key name whose value is a credential (`access_token`, `clientSecret`,
/// `x-api-key`, `Proxy-Authorization`, ...). `secret_name` or `key_id` end in another word
/// and are kept.
const SECRET_WORDS: &[&str] = &[
    "token",
    "tokens",
    "secret",
    "secrets",
    "password",
    "passwd",
    "passphrase",
    "pwd",
    "authorization",
    "key",
    "apikey",
    "credential",
    "credentials",
    "cookie",
];

fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.')
}

/// The token-shaped run starting at `at`, if one does: its end.
fn token_at(bytes: &[u8], at: usize) -> Option<usize> {
    let rest = &bytes[at..];
    for (prefix, min_tail) in TOKEN_PREFIXES {
        if rest.starts_with(prefix.as_bytes()) {
            let tail = rest[prefix.len()..]
                .iter()
                .take_while(|b| is_token_char(**b))
                .count();
            if tail >= *min_tail {
                return Some(at + prefix.len() + tail);
            }
        }
    }
    None
}

/// `s` with every token-shaped run replaced by [`REDACTED`]; borrowed when there is none.
pub fn redact_str(s: &str) -> Cow<'_, str> {
    let bytes = s.as_bytes();
    let mut out: Option<String> = None;
    let (mut copied, mut i) = (0, 0);
    while i < bytes.len() {
        // Every prefix starts with one of these bytes; skip the rest cheaply.
        if !matches!(bytes[i], b'g' | b'y' | b'1' | b'A' | b'a') {
            i += 1;
            continue;
        }
        match token_at(bytes, i) {
            Some(end) => {
                // Prefixes and token characters are ASCII, so both ends are char boundaries.
                let o = out.get_or_insert_with(|| String::with_capacity(s.len()));
                o.push_str(&s[copied..i]);
                o.push_str(REDACTED);
                copied = end;
                i = end;
            }
            None => i += 1,
        }
    }
    match out {
        None => Cow::Borrowed(s),
        Some(mut o) => {
            o.push_str(&s[copied..]);
            Cow::Owned(o)
        }
    }
}

/// Whether a key of this name holds a credential (its last word, digits dropped, is `token`,
/// `secret`, `password`, `authorization`, `key`, `cookie` or the like).
pub fn is_secret_key(name: &str) -> bool {
    let mut last = String::new();
    let mut prev_lower = false;
    for c in name.chars() {
        if !c.is_ascii_alphanumeric() {
            last.clear();
            prev_lower = false;
            continue;
        }
        // camelCase: an upper-case letter after a lower-case one starts a word.
        if c.is_ascii_uppercase() && prev_lower {
            last.clear();
        }
        prev_lower = c.is_ascii_lowercase() || c.is_ascii_digit();
        last.push(c.to_ascii_lowercase());
    }
    // A trailing separator (`token_`) leaves `last` empty; judge the name by its last word.
    if last.is_empty() {
        let trimmed = name.trim_end_matches(|c: char| !c.is_ascii_alphanumeric());
        return !trimmed.is_empty() && trimmed.len() < name.len() && is_secret_key(trimmed);
    }
    // `password2`, `token1`: the word without its trailing digits.
    SECRET_WORDS.contains(&last.trim_end_matches(|c: char| c.is_ascii_digit()))
}

/// Free text as stored: token shapes redacted, then truncated to [`MAX_TEXT`] bytes with a
/// note of the full length and the hash of the (redacted) whole.
pub fn text(s: &str) -> String {
    let r = redact_str(s);
    if r.len() <= MAX_TEXT {
        return r.into_owned();
    }
    let mut end = MAX_TEXT;
    while !r.is_char_boundary(end) {
        end -= 1;
    }
    format!(
        "{}... [cut: {} bytes, sha256 {}]",
        &r[..end],
        r.len(),
        hex::encode(Sha256::digest(r.as_bytes()))
    )
}

/// What remains of the per-action allowance.
struct Budget {
    bytes: usize,
    nodes: usize,
}

/// An action's params as stored: credentials redacted, then cut to the limits above.
pub fn params(map: &Map<String, Value>) -> Map<String, Value> {
    let mut budget = Budget {
        bytes: PARAMS_BYTES,
        nodes: PARAMS_NODES,
    };
    object(map, 0, &mut budget)
}

fn object(map: &Map<String, Value>, depth: usize, budget: &mut Budget) -> Map<String, Value> {
    let mut out = Map::new();
    for (k, v) in map {
        let v = if is_secret_key(k) && !v.is_null() {
            Value::String(REDACTED.into())
        } else {
            value(v, depth + 1, budget)
        };
        out.insert(redact_str(k).into_owned(), v);
    }
    out
}

fn value(v: &Value, depth: usize, budget: &mut Budget) -> Value {
    budget.nodes = budget.nodes.saturating_sub(1);
    match v {
        Value::String(s) => {
            if s.len() > MAX_STRING || s.len() > budget.bytes {
                let r = redact_str(s);
                return cut(s.len(), r.as_bytes());
            }
            budget.bytes -= s.len();
            Value::String(redact_str(s).into_owned())
        }
        Value::Array(a) => {
            if depth > MAX_DEPTH || a.len() > MAX_ITEMS || a.len() > budget.nodes {
                return cut_container(v, a.len());
            }
            Value::Array(a.iter().map(|x| value(x, depth + 1, budget)).collect())
        }
        Value::Object(m) => {
            if depth > MAX_DEPTH || m.len() > MAX_ITEMS || m.len() > budget.nodes {
                return cut_container(v, m.len());
            }
            Value::Object(object(m, depth, budget))
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => v.clone(),
    }
}

/// The marker that stands for a value too large to keep: its length (bytes of a string,
/// elements of an array, keys of an object) and the SHA-256 of the redacted value.
fn cut(len: usize, redacted: &[u8]) -> Value {
    let mut m = Map::new();
    m.insert("cut".into(), Value::Bool(true));
    m.insert("len".into(), Value::from(len));
    m.insert(
        "sha256".into(),
        Value::String(hex::encode(Sha256::digest(redacted))),
    );
    Value::Object(m)
}

/// A container is hashed as the compact JSON of its fully redacted form (no size limits), so
/// no secret reaches the store even through a hash.
fn cut_container(v: &Value, len: usize) -> Value {
    let redacted = redact_all(v);
    let bytes = serde_json::to_vec(&redacted).unwrap_or_default();
    cut(len, &bytes)
}

fn redact_all(v: &Value) -> Value {
    match v {
        Value::String(s) => Value::String(redact_str(s).into_owned()),
        Value::Array(a) => Value::Array(a.iter().map(redact_all).collect()),
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| {
                    let v = if is_secret_key(k) && !v.is_null() {
                        Value::String(REDACTED.into())
                    } else {
                        redact_all(v)
                    };
                    (redact_str(k).into_owned(), v)
                })
                .collect(),
        ),
        Value::Null | Value::Bool(_) | Value::Number(_) => v.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const GHP: &str = "ghp_0123456789abcdefABCDEF0123456789abcd";

    #[test]
    fn token_shapes_are_redacted_anywhere_in_a_string() {
        for token in [
            GHP,
            "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz",
            "gho_16C7e42F292c6912E7710c838347Ae178B4a",
            "ghu_16C7e42F292c6912E7710c838347Ae178B4a",
            "ghs_16C7e42F292c6912E7710c838347Ae178B4a",
            "ghr_1B4a2e77838347a7E420ce178F2E7c6912E169246c34E1ccbF66C46812d16D5B1A9Dc86A1498",
            "ya29.a0AfH6SMBx-abc_DEF.ghi",
            "1//0gLx-abcdefghijklmnop",
            "AIzaSyA-1234567890abcdefghijklmnopqrs",
            "agt_Zm9vYmFyYmF6cXV4cXV1eHF1dXhxdXV4cXV1eA",
        ] {
            assert_eq!(redact_str(token), REDACTED, "{token}");
            let s = format!("use token={token}, please");
            assert_eq!(redact_str(&s), "use token=[redacted], please");
        }
        assert_eq!(redact_str(&format!("{GHP}{GHP}")), REDACTED);
        assert_eq!(redact_str(&format!("{GHP} {GHP}")), "[redacted] [redacted]");
    }

    #[test]
    fn ordinary_text_is_borrowed_unchanged() {
        for s in [
            "",
            "ghs_a",
            "agt_x",
            "http://host1//path",
            "AIza",
            "a github issue about ghp_ tokens",
            "ünïcödé ghp_ 1// ya29.",
        ] {
            assert!(matches!(redact_str(s), Cow::Borrowed(_)), "{s}");
        }
    }

    #[test]
    fn key_names_that_hold_credentials() {
        for k in [
            "token",
            "access_token",
            "oauth_token",
            "accessToken",
            "client_secret",
            "password",
            "Authorization",
            "Proxy-Authorization",
            "x-api-key",
            "apiKey",
            "private_key",
            "cookie",
            "token_",
            "password2",
        ] {
            assert!(is_secret_key(k), "{k}");
        }
        for k in [
            "secret_name",
            "key_id",
            "keyword",
            "monkey",
            "tokenizer",
            "title",
            "",
            "_",
        ] {
            assert!(!is_secret_key(k), "{k}");
        }
    }

    #[test]
    fn params_are_redacted_and_cut() {
        let long = "x".repeat(MAX_STRING + 1);
        let many: Vec<u32> = (0..MAX_ITEMS as u32 + 1).collect();
        let p = json!({
            "title": "hi",
            "body": format!("leak {GHP}"),
            "password": "hunter2",
            "nested": {"access_token": ["a", "b"], "ok": 1, "none": null},
            "long": long,
            "many": many,
        });
        let Value::Object(m) = p else { unreachable!() };
        let out = Value::Object(params(&m));
        assert_eq!(out["title"], "hi");
        assert_eq!(out["body"], "leak [redacted]");
        assert_eq!(out["password"], REDACTED);
        assert_eq!(out["nested"]["access_token"], REDACTED);
        assert_eq!(out["nested"]["ok"], 1);
        assert_eq!(out["nested"]["none"], Value::Null);
        assert_eq!(out["long"]["cut"], true);
        assert_eq!(out["long"]["len"], MAX_STRING + 1);
        let want = hex::encode(Sha256::digest(vec![b'x'; MAX_STRING + 1]));
        assert_eq!(out["long"]["sha256"], want);
        assert_eq!(out["many"]["len"], MAX_ITEMS + 1);
    }

    #[test]
    fn a_cut_value_hashes_its_redacted_form() {
        let s = format!("{GHP} {}", "y".repeat(MAX_STRING));
        let Value::Object(m) = json!({ "s": s }) else {
            unreachable!()
        };
        let out = params(&m);
        let want = format!("{REDACTED} {}", "y".repeat(MAX_STRING));
        assert_eq!(out["s"]["sha256"], hex::encode(Sha256::digest(want)));
        assert_eq!(out["s"]["len"], s.len());
    }

    #[test]
    fn the_budget_bounds_a_wide_deep_value() {
        let leaf = "z".repeat(MAX_STRING);
        let row: Vec<&str> = vec![&leaf; MAX_ITEMS];
        let grid: Vec<Vec<&str>> = vec![row; MAX_ITEMS];
        let Value::Object(m) = json!({ "grid": grid }) else {
            unreachable!()
        };
        let out = serde_json::to_vec(&params(&m)).unwrap();
        assert!(
            out.len() < 4 * PARAMS_BYTES + PARAMS_NODES * 128,
            "{}",
            out.len()
        );
        let mut deep = json!("bottom");
        for _ in 0..MAX_DEPTH + 4 {
            deep = json!([deep]);
        }
        let Value::Object(m) = json!({ "deep": deep }) else {
            unreachable!()
        };
        let text = serde_json::to_string(&params(&m)).unwrap();
        assert!(text.contains("\"cut\":true"), "{text}");
    }

    #[test]
    fn long_text_is_truncated_with_its_length() {
        let s = format!("{GHP} {}", "é".repeat(MAX_TEXT));
        let t = text(&s);
        assert!(t.starts_with("[redacted] é"));
        assert!(t.contains(&format!(
            "[cut: {} bytes, sha256 ",
            REDACTED.len() + 1 + 2 * MAX_TEXT
        )));
        assert!(t.len() < MAX_TEXT + 120);
        assert_eq!(text("short"), "short");
    }
}
