//! Canonicalisation: one parse of the path, query, effective method, body encoding and JSON
//! that every classifier shares. Ambiguity is refused, never repaired (security.md).

use std::io::Read;

use http::HeaderMap;
use serde_json::Value;

use super::ClassifyError;

/// Most path segments a request may have.
const MAX_SEGMENTS: usize = 64;
/// Most Content-Encoding layers decoded.
const MAX_ENCODINGS: usize = 2;
/// Deepest JSON nesting accepted.
const MAX_JSON_DEPTH: usize = 64;

/// Headers with which clients ask a server to treat the request as another method.
pub const METHOD_OVERRIDE_HEADERS: [&str; 3] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

fn bad(msg: impl Into<String>) -> ClassifyError {
    ClassifyError::Malformed(msg.into())
}

/// Checks a request path (no query): no dot segments, empty segments, encoded slashes or
/// backslashes, `;` parameters, NUL or control bytes, percent-encoded unreserved characters,
/// or invalid escapes.
pub fn check_path(path: &str) -> Result<(), ClassifyError> {
    let rest = path
        .strip_prefix('/')
        .ok_or_else(|| bad("the path does not start with '/'"))?;
    if rest.is_empty() {
        return Ok(());
    }
    let mut count = 0;
    for seg in rest.split('/') {
        count += 1;
        if count > MAX_SEGMENTS {
            return Err(bad(format!(
                "the path has more than {MAX_SEGMENTS} segments"
            )));
        }
        check_segment(seg)?;
    }
    Ok(())
}

fn check_segment(seg: &str) -> Result<(), ClassifyError> {
    if seg.is_empty() {
        return Err(bad(
            "the path has an empty segment ('//' or a trailing '/')",
        ));
    }
    if seg == "." || seg == ".." {
        return Err(bad("the path has a dot segment"));
    }
    if has_encoded_slash(seg) {
        // Octokit writes a `/` inside a parameter (a file path, a ref, a branch) as `%2F`.
        // That is accepted only where the pieces are themselves clean segments; the router
        // then lets such a segment stand only for a multi-segment parameter.
        for piece in split_encoded_slash(seg) {
            if piece.is_empty() || piece == "." || piece == ".." {
                return Err(bad(
                    "an encoded slash in the path makes an empty or dot segment",
                ));
            }
        }
    }
    let b = seg.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let (h, l) = match (b.get(i + 1), b.get(i + 2)) {
                    (Some(h), Some(l)) if h.is_ascii_hexdigit() && l.is_ascii_hexdigit() => {
                        (*h, *l)
                    }
                    _ => return Err(bad("the path has an invalid percent escape")),
                };
                let byte = hexval(h) * 16 + hexval(l);
                if byte == b'\\' {
                    return Err(bad("the path has an encoded backslash"));
                }
                if byte < 0x20 || byte == 0x7f {
                    return Err(bad("the path has an encoded control character or NUL"));
                }
                if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
                    return Err(bad(
                        "the path percent-encodes a character that needs no encoding",
                    ));
                }
                i += 3;
            }
            b'\\' => return Err(bad("the path has a backslash")),
            b';' => return Err(bad("the path has a ';' parameter")),
            c if !(0x20..0x7f).contains(&c) => {
                return Err(bad("the path has a control or non-ASCII byte"));
            }
            _ => i += 1,
        }
    }
    // Encoded dots were refused above (percent-encoded unreserved characters), so a segment
    // with no '%' is already known not to decode to a dot segment.
    Ok(())
}

/// Whether a segment holds a percent-encoded `/`.
pub fn has_encoded_slash(seg: &str) -> bool {
    let b = seg.as_bytes();
    memchr::memchr(b'%', b).is_some()
        && b.windows(3)
            .any(|w| w[0] == b'%' && w[1] == b'2' && (w[2] == b'f' || w[2] == b'F'))
}

fn split_encoded_slash(seg: &str) -> impl Iterator<Item = &str> {
    seg.split("%2F").flat_map(|p| p.split("%2f"))
}

fn hexval(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        _ => c.wrapping_sub(b'A').wrapping_add(10),
    }
}

/// Parses a query string into percent-decoded pairs (`+` is a space, as Google and GitHub
/// read it). Invalid escapes and undecodable bytes are refused.
pub fn parse_query(query: &str) -> Result<Vec<(String, String)>, ClassifyError> {
    let mut out = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        out.push((decode_component(k)?, decode_component(v)?));
    }
    Ok(out)
}

fn decode_component(s: &str) -> Result<String, ClassifyError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => match (b.get(i + 1), b.get(i + 2)) {
                (Some(h), Some(l)) if h.is_ascii_hexdigit() && l.is_ascii_hexdigit() => {
                    out.push(hexval(*h) * 16 + hexval(*l));
                    i += 3;
                }
                _ => return Err(bad("the query has an invalid percent escape")),
            },
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    let text = String::from_utf8(out).map_err(|_| bad("the query is not UTF-8"))?;
    if text.contains('\0') {
        return Err(bad("the query contains NUL"));
    }
    Ok(text)
}

/// The method the upstream will act on. Google APIs honour `X-HTTP-Method-Override` on POST,
/// so there it becomes the method; anywhere else an override header is refused, since the
/// gate cannot know whether the upstream honours it.
pub fn effective_method(
    method: &str,
    headers: &HeaderMap,
    honours_override: bool,
) -> Result<String, ClassifyError> {
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(bad(format!(
            "the method {method:?} is not an upper-case method name"
        )));
    }
    // One pass over the headers (cheaper than three lookups, and every copy is seen).
    let mut found: Option<String> = None;
    for (name, v) in headers {
        let name = name.as_str();
        if !name.starts_with("x-") || !METHOD_OVERRIDE_HEADERS.contains(&name) {
            continue;
        }
        if found.is_some() {
            return Err(bad("more than one method override"));
        }
        let v = v
            .to_str()
            .map_err(|_| bad("the method override is not ASCII"))?;
        if !honours_override || name != "x-http-method-override" {
            return Err(bad(format!(
                "the method override header {name} is not accepted for this host"
            )));
        }
        found = Some(v.trim().to_ascii_uppercase());
    }
    match found {
        None => Ok(method.to_string()),
        Some(m) if m.bytes().all(|b| b.is_ascii_uppercase()) && !m.is_empty() => Ok(m),
        Some(_) => Err(bad("the method override is not a method name")),
    }
}

/// Decodes the body's Content-Encoding (gzip, x-gzip, deflate, br, zstd; at most two layers),
/// never producing more than `limit` bytes. `None` when the body is not encoded.
pub fn decode_body(
    headers: &HeaderMap,
    body: &[u8],
    limit: u64,
) -> Result<Option<Vec<u8>>, ClassifyError> {
    let mut codings: Vec<String> = Vec::new();
    for v in headers.get_all(http::header::CONTENT_ENCODING) {
        let v = v
            .to_str()
            .map_err(|_| bad("the Content-Encoding is not ASCII"))?;
        codings.extend(
            v.split(',')
                .map(|c| c.trim().to_ascii_lowercase())
                .filter(|c| !c.is_empty() && c != "identity"),
        );
    }
    if codings.is_empty() {
        return Ok(None);
    }
    if codings.len() > MAX_ENCODINGS {
        return Err(bad("more than two content encodings"));
    }
    let mut data = body.to_vec();
    for coding in codings.iter().rev() {
        data = decode_one(coding, &data, limit)?;
    }
    Ok(Some(data))
}

fn decode_one(coding: &str, data: &[u8], limit: u64) -> Result<Vec<u8>, ClassifyError> {
    let reader: Box<dyn Read + '_> = match coding {
        "gzip" | "x-gzip" => Box::new(flate2::read::MultiGzDecoder::new(data)),
        "deflate" => Box::new(flate2::read::ZlibDecoder::new(data)),
        "br" => Box::new(brotli_decompressor::Decompressor::new(data, 8192)),
        "zstd" => Box::new(
            ruzstd::decoding::StreamingDecoder::new(data)
                .map_err(|e| bad(format!("the zstd body cannot be decoded: {e}")))?,
        ),
        other => {
            return Err(bad(format!(
                "the content encoding {other:?} is not supported"
            )));
        }
    };
    let mut out = Vec::new();
    reader
        .take(limit.saturating_add(1))
        .read_to_end(&mut out)
        .map_err(|e| bad(format!("the {coding} body cannot be decoded: {e}")))?;
    if out.len() as u64 > limit {
        return Err(bad(format!(
            "the decoded body is over the inspection limit of {limit} bytes"
        )));
    }
    Ok(out)
}

/// Parses JSON strictly: duplicate keys (at any depth) and nesting past 64 levels are refused;
/// comments and trailing data are already refused by the parser.
pub fn parse_json(bytes: &[u8]) -> Result<Value, ClassifyError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde::de::DeserializeSeed::deserialize(StrictSeed(0), &mut de)
        .map_err(|e| bad(format!("the JSON body is refused: {e}")))?;
    de.end()
        .map_err(|e| bad(format!("the JSON body is refused: {e}")))?;
    Ok(value)
}

struct StrictSeed(usize);

impl<'de> serde::de::DeserializeSeed<'de> for StrictSeed {
    type Value = Value;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(StrictVisitor(self.0))
    }
}

struct StrictVisitor(usize);

impl<'de> serde::de::Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let depth = self.deeper::<A::Error>()?;
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(StrictSeed(depth))? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let depth = self.deeper::<A::Error>()?;
        let mut out = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            match out.entry(key) {
                serde_json::map::Entry::Occupied(e) => {
                    let msg = format!("duplicate key {:?}", e.key());
                    return Err(serde::de::Error::custom(msg));
                }
                serde_json::map::Entry::Vacant(e) => {
                    e.insert(map.next_value_seed(StrictSeed(depth))?);
                }
            }
        }
        Ok(Value::Object(out))
    }
}

impl StrictVisitor {
    fn deeper<E: serde::de::Error>(&self) -> Result<usize, E> {
        if self.0 >= MAX_JSON_DEPTH {
            return Err(E::custom("nesting too deep"));
        }
        Ok(self.0 + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn paths() {
        for ok in [
            "/",
            "/repos/o/r",
            "/repos/o/r/contents/a%20b.txt",
            "/x/%E2%9C%93",
            "/a:b@c",
            "/repos/o/r/contents/src%2Fmain.rs",
            "/repos/o/r/git/refs/heads%2ffeature%2Fx",
        ] {
            assert!(check_path(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "repos",
            "/repos//o",
            "/repos/o/",
            "/repos/./o",
            "/repos/../o",
            "/repos/%2e%2e/o",
            "/repos/%2E/o",
            "/repos/o%2F..%2Fr",
            "/repos/o%2F%2Fr",
            "/repos/%2Fr",
            "/repos/o%2F.",
            "/repos/o%5cr",
            "/repos/o\\r",
            "/repos/o;x=1/r",
            "/repos/o%00",
            "/repos/o%0a",
            "/repos/o%zz",
            "/repos/o%4",
            "/rep%6fs/o/r",
            "/repos/o\u{7f}",
        ] {
            assert!(check_path(bad).is_err(), "{bad:?} accepted");
        }
        let long = "/a".repeat(65);
        assert!(check_path(&long).is_err());
    }

    #[test]
    fn queries() {
        let q = parse_query("a=1&b=x+y&c=%2F%26&d&&e=").unwrap();
        assert_eq!(
            q,
            vec![
                ("a".into(), "1".into()),
                ("b".into(), "x y".into()),
                ("c".into(), "/&".into()),
                ("d".into(), "".into()),
                ("e".into(), "".into())
            ]
        );
        assert!(parse_query("a=%zz").is_err());
        assert!(parse_query("a=%00").is_err());
        assert!(parse_query("a=%ff").is_err());
    }

    #[test]
    fn method_override() {
        let mut h = HeaderMap::new();
        assert_eq!(effective_method("POST", &h, true).unwrap(), "POST");
        h.insert("x-http-method-override", "delete".parse().unwrap());
        assert_eq!(effective_method("POST", &h, true).unwrap(), "DELETE");
        assert!(
            effective_method("POST", &h, false).is_err(),
            "refused where not honoured"
        );
        assert!(effective_method("delete", &HeaderMap::new(), true).is_err());
        assert!(effective_method("DEL ETE", &HeaderMap::new(), true).is_err());
        let mut h2 = HeaderMap::new();
        h2.insert("x-http-method", "DELETE".parse().unwrap());
        assert!(effective_method("POST", &h2, true).is_err());
        h.append("x-http-method-override", "GET".parse().unwrap());
        assert!(effective_method("POST", &h, true).is_err());
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn bodies_are_decoded_within_the_limit() {
        let mut h = HeaderMap::new();
        assert_eq!(decode_body(&h, b"plain", 10).unwrap(), None);
        h.insert("content-encoding", "gzip".parse().unwrap());
        assert_eq!(
            decode_body(&h, &gzip(b"hello"), 10).unwrap().unwrap(),
            b"hello"
        );
        let bomb = gzip(&vec![0u8; 1_000_000]);
        assert!(
            decode_body(&h, &bomb, 1000)
                .unwrap_err()
                .to_string()
                .contains("limit")
        );
        assert!(decode_body(&h, b"not gzip", 10).is_err());
        h.insert("content-encoding", "compress".parse().unwrap());
        assert!(decode_body(&h, b"x", 10).is_err());
        h.insert("content-encoding", "gzip, gzip, gzip".parse().unwrap());
        assert!(decode_body(&h, b"x", 10).is_err());
        h.insert("content-encoding", "gzip, identity".parse().unwrap());
        assert_eq!(decode_body(&h, &gzip(b"ok"), 10).unwrap().unwrap(), b"ok");
    }

    #[test]
    fn known_brotli_and_zstd_streams_decode() {
        let mut h = HeaderMap::new();
        // `printf hello | brotli -c` and `printf hello | zstd -c`
        let br: &[u8] = &[0x0b, 0x02, 0x80, 0x68, 0x65, 0x6c, 0x6c, 0x6f, 0x03];
        h.insert("content-encoding", "br".parse().unwrap());
        assert_eq!(decode_body(&h, br, 100).unwrap().unwrap(), b"hello");
        let zst: &[u8] = &[
            0x28, 0xb5, 0x2f, 0xfd, 0x04, 0x58, 0x29, 0x00, 0x00, 0x68, 0x65, 0x6c, 0x6c, 0x6f,
            0x1c, 0x0b, 0x63, 0x25,
        ];
        h.insert("content-encoding", "zstd".parse().unwrap());
        let got = decode_body(&h, zst, 100);
        assert_eq!(got.unwrap().unwrap(), b"hello");
    }

    #[test]
    fn strict_json() {
        assert_eq!(parse_json(br#"{"a":{"b":[1,2]}}"#).unwrap()["a"]["b"][1], 2);
        assert!(parse_json(br#"{"a":1,"a":2}"#).is_err());
        assert!(parse_json(br#"{"x":{"a":1,"a":2}}"#).is_err());
        assert!(parse_json(br#"[{"a":1,"a":2}]"#).is_err());
        assert!(parse_json(br#"{"a":1} trailing"#).is_err());
        assert!(parse_json(b"{\"a\":1 /* c */}").is_err());
        let deep = format!("{}{}", "[".repeat(100), "]".repeat(100));
        assert!(parse_json(deep.as_bytes()).is_err());
    }
}
