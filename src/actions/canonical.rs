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
    if plain_path(path.as_bytes()) {
        return Ok(());
    }
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

/// The common case in one pass: a path of at most 64 non-empty segments, none a dot
/// segment, of printable ASCII other than `%`, `\\` and `;`. Such a path passes every check of
/// [`check_path`]; anything else (an escape included) goes through them one by one.
fn plain_path(path: &[u8]) -> bool {
    let Some((&b'/', rest)) = path.split_first() else {
        return false;
    };
    if rest.is_empty() {
        return true;
    }
    let (mut segments, mut len, mut dots) = (1, 0usize, 0usize);
    for &c in rest {
        match c {
            b'/' => {
                if len == 0 || (len <= 2 && dots == len) || segments == MAX_SEGMENTS {
                    return false;
                }
                segments += 1;
                len = 0;
                dots = 0;
            }
            b'%' | b'\\' | b';' => return false,
            0x20..0x7f => {
                len += 1;
                dots += usize::from(c == b'.');
            }
            _ => return false,
        }
    }
    len != 0 && !(len <= 2 && dots == len)
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
///
/// A direct parser handles the common case; whatever it does not accept (an error, or a form
/// it leaves alone, such as a lone surrogate escape) goes to serde_json with the strict
/// visitor, which gives the verdict and the error message. The direct parser accepts only
/// what serde_json accepts, with the same value (the unit tests compare them).
pub fn parse_json(bytes: &[u8]) -> Result<Value, ClassifyError> {
    match fast_json::parse(bytes) {
        Some(value) => Ok(value),
        None => parse_json_serde(bytes),
    }
}

/// [`parse_json`] through serde_json alone.
fn parse_json_serde(bytes: &[u8]) -> Result<Value, ClassifyError> {
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

/// A strict JSON parser into `serde_json::Value` that gives up (`None`) rather than report
/// an error: the caller then asks serde_json. Numbers other than small integers are handed
/// to serde_json one token at a time, so their values are serde_json's own.
mod fast_json {
    use serde_json::{Map, Value};

    use super::MAX_JSON_DEPTH;

    pub fn parse(bytes: &[u8]) -> Option<Value> {
        // JSON that serde_json accepts is UTF-8 throughout (only strings may hold non-ASCII
        // bytes, and it checks them), so one check up front covers every string.
        let text = std::str::from_utf8(bytes).ok()?;
        let mut p = Parser {
            text,
            b: bytes,
            i: 0,
        };
        let v = p.value(0)?;
        p.ws();
        (p.i == bytes.len()).then_some(v)
    }

    struct Parser<'a> {
        text: &'a str,
        /// `text` as bytes.
        b: &'a [u8],
        i: usize,
    }

    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;

    impl Parser<'_> {
        fn peek(&self) -> Option<u8> {
            self.b.get(self.i).copied()
        }

        fn ws(&mut self) {
            while let Some(b' ' | b'\n' | b'\t' | b'\r') = self.peek() {
                self.i += 1;
            }
        }

        /// A value at nesting `depth` (the strict visitor's count: the top level is 0).
        fn value(&mut self, depth: usize) -> Option<Value> {
            self.ws();
            match self.peek()? {
                b'{' => self.object(depth),
                b'[' => self.array(depth),
                b'"' => self.string().map(Value::String),
                b't' => self.literal(b"true", Value::Bool(true)),
                b'f' => self.literal(b"false", Value::Bool(false)),
                b'n' => self.literal(b"null", Value::Null),
                b'-' | b'0'..=b'9' => self.number(),
                _ => None,
            }
        }

        fn literal(&mut self, word: &[u8], v: Value) -> Option<Value> {
            let end = self.i + word.len();
            (self.b.get(self.i..end)? == word).then(|| {
                self.i = end;
                v
            })
        }

        fn object(&mut self, depth: usize) -> Option<Value> {
            if depth >= MAX_JSON_DEPTH {
                return None;
            }
            self.i += 1;
            let mut map = Map::new();
            self.ws();
            if self.peek()? == b'}' {
                self.i += 1;
                return Some(Value::Object(map));
            }
            loop {
                self.ws();
                if self.peek()? != b'"' {
                    return None;
                }
                let key = self.string()?;
                self.ws();
                if self.peek()? != b':' {
                    return None;
                }
                self.i += 1;
                let v = self.value(depth + 1)?;
                match map.entry(key) {
                    serde_json::map::Entry::Occupied(_) => return None,
                    serde_json::map::Entry::Vacant(e) => {
                        e.insert(v);
                    }
                }
                self.ws();
                match self.peek()? {
                    b',' => self.i += 1,
                    b'}' => {
                        self.i += 1;
                        return Some(Value::Object(map));
                    }
                    _ => return None,
                }
            }
        }

        fn array(&mut self, depth: usize) -> Option<Value> {
            if depth >= MAX_JSON_DEPTH {
                return None;
            }
            self.i += 1;
            let mut out = Vec::new();
            self.ws();
            if self.peek()? == b']' {
                self.i += 1;
                return Some(Value::Array(out));
            }
            loop {
                out.push(self.value(depth + 1)?);
                self.ws();
                match self.peek()? {
                    b',' => self.i += 1,
                    b']' => {
                        self.i += 1;
                        return Some(Value::Array(out));
                    }
                    _ => return None,
                }
            }
        }

        /// The index of the first `"`, `\\` or control byte at or after `from`.
        fn special(&self, from: usize) -> Option<usize> {
            let rest = self.b.get(from..)?;
            let mut chunks = rest.chunks_exact(8);
            let mut at = from;
            for chunk in &mut chunks {
                let mut word = [0u8; 8];
                word.copy_from_slice(chunk);
                let v = u64::from_le_bytes(word);
                let quote = v ^ (ONES * u64::from(b'"'));
                let backslash = v ^ (ONES * u64::from(b'\\'));
                // A byte is flagged when it is zero (`x - 1` borrows) or below 0x20; the lowest
                // flagged byte is exact, which is the only one used.
                let hit = (quote.wrapping_sub(ONES) & !quote
                    | backslash.wrapping_sub(ONES) & !backslash
                    | v.wrapping_sub(ONES * 0x20) & !v)
                    & HIGH;
                if hit != 0 {
                    return Some(at + (hit.trailing_zeros() / 8) as usize);
                }
                at += 8;
            }
            chunks
                .remainder()
                .iter()
                .position(|&c| c == b'"' || c == b'\\' || c < 0x20)
                .map(|p| at + p)
        }

        /// A string; `self.i` is at its opening quote.
        fn string(&mut self) -> Option<String> {
            let start = self.i + 1;
            let mut at = self.special(start)?;
            if self.b.get(at) == Some(&b'"') {
                self.i = at + 1;
                return self.text.get(start..at).map(str::to_owned);
            }
            // Escapes only shorten the text: find the closing quote for the capacity.
            let mut end = at;
            loop {
                match self.b.get(end)? {
                    b'"' => break,
                    b'\\' => end = self.special(end + 2)?,
                    _ => return None,
                }
            }
            let mut out = String::with_capacity(end - start);
            out.push_str(self.text.get(start..at)?);
            loop {
                match self.b.get(at)? {
                    b'"' => {
                        self.i = at + 1;
                        return Some(out);
                    }
                    b'\\' => at = self.escape(at + 1, &mut out)?,
                    _ => return None,
                }
                let next = self.special(at)?;
                out.push_str(self.text.get(at..next)?);
                at = next;
            }
        }

        /// Decodes the escape whose letter is at `at` into `out`; returns the index after it.
        fn escape(&self, at: usize, out: &mut String) -> Option<usize> {
            let c = match self.b.get(at)? {
                b'"' => '"',
                b'\\' => '\\',
                b'/' => '/',
                b'b' => '\u{8}',
                b'f' => '\u{c}',
                b'n' => '\n',
                b'r' => '\r',
                b't' => '\t',
                b'u' => {
                    let unit = self.hex4(at + 1)?;
                    let (c, next) = match unit {
                        0xd800..=0xdbff => {
                            if self.b.get(at + 5..at + 7)? != b"\\u" {
                                return None;
                            }
                            let low = self.hex4(at + 7)?;
                            if !(0xdc00..=0xdfff).contains(&low) {
                                return None;
                            }
                            let c = 0x10000 + ((unit - 0xd800) << 10) + (low - 0xdc00);
                            (char::from_u32(c)?, at + 11)
                        }
                        0xdc00..=0xdfff => return None,
                        _ => (char::from_u32(unit)?, at + 5),
                    };
                    out.push(c);
                    return Some(next);
                }
                _ => return None,
            };
            out.push(c);
            Some(at + 1)
        }

        fn hex4(&self, at: usize) -> Option<u32> {
            let mut n = 0;
            for &c in self.b.get(at..at + 4)? {
                n = n * 16 + char::from(c).to_digit(16)?;
            }
            Some(n)
        }

        /// A number: integers of up to 18 digits directly, anything else (fractions,
        /// exponents, longer integers, `-0`) through serde_json on the token alone.
        fn number(&mut self) -> Option<Value> {
            let start = self.i;
            let mut i = start;
            let negative = self.b.get(i) == Some(&b'-');
            if negative {
                i += 1;
            }
            let digits_start = i;
            match self.b.get(i)? {
                b'0' => i += 1,
                b'1'..=b'9' => {
                    while let Some(b'0'..=b'9') = self.b.get(i) {
                        i += 1;
                    }
                }
                _ => return None,
            }
            let digits_end = i;
            let mut integer = true;
            if self.b.get(i) == Some(&b'.') {
                integer = false;
                i += 1;
                if !self.b.get(i)?.is_ascii_digit() {
                    return None;
                }
                while let Some(b'0'..=b'9') = self.b.get(i) {
                    i += 1;
                }
            }
            if let Some(b'e' | b'E') = self.b.get(i) {
                integer = false;
                i += 1;
                if let Some(b'+' | b'-') = self.b.get(i) {
                    i += 1;
                }
                if !self.b.get(i)?.is_ascii_digit() {
                    return None;
                }
                while let Some(b'0'..=b'9') = self.b.get(i) {
                    i += 1;
                }
            }
            self.i = i;
            let digits = self.b.get(digits_start..digits_end)?;
            if integer && digits.len() <= 18 {
                let n = digits
                    .iter()
                    .fold(0u64, |n, &d| n * 10 + u64::from(d - b'0'));
                match (negative, i64::try_from(n)) {
                    (false, _) => return Some(Value::from(n)),
                    (true, Ok(n)) if n != 0 => return Some(Value::from(-n)),
                    _ => {}
                }
            }
            super::parse_json_serde(self.b.get(start..i)?).ok()
        }
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
    fn the_plain_path_pass_agrees_with_the_full_checks() {
        let alphabet = [
            b'a', b'/', b'.', b'%', b'2', b'f', b';', b'\\', b' ', 0x7f, 0xc3, b'~',
        ];
        // Every path of up to six bytes over an alphabet of the interesting ones.
        let mut paths: Vec<Vec<u8>> = vec![b"/".to_vec()];
        let mut frontier = paths.clone();
        for _ in 0..5 {
            let mut next = Vec::new();
            for p in &frontier {
                for &c in &alphabet {
                    let mut q = p.clone();
                    q.push(c);
                    next.push(q);
                }
            }
            paths.extend(next.iter().cloned());
            frontier = next;
        }
        paths.push(b"/a".repeat(64));
        paths.push(b"/a".repeat(65));
        paths.push(b"".to_vec());
        paths.push(b"a/b".to_vec());
        let mut plain = 0;
        for p in &paths {
            if plain_path(p) {
                plain += 1;
                let text = std::str::from_utf8(p).unwrap();
                let rest = &text[1..];
                assert!(
                    rest.is_empty() || rest.split('/').all(|seg| check_segment(seg).is_ok()),
                    "{text:?}"
                );
                assert!(rest.split('/').count() <= MAX_SEGMENTS, "{text:?}");
            }
        }
        assert!(plain > 1000, "{plain}");
        assert!(plain_path(b"/repos/acme/api/issues"));
        assert!(!plain_path(&b"/a".repeat(65)));
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

#[cfg(test)]
mod fast_json_tests {
    use super::*;

    /// Whenever the direct parser accepts, serde_json accepts the same value (compared as
    /// values and as serialised text, so `-0.0` and `0` differ).
    fn agree(input: &[u8]) -> bool {
        let fast = fast_json::parse(input);
        let serde = parse_json_serde(input);
        if let Some(v) = &fast {
            let s = serde.as_ref().unwrap_or_else(|e| {
                panic!("{:?}: accepted directly, serde_json says {e}", show(input))
            });
            assert_eq!(v, s, "{:?}", show(input));
            assert_eq!(v.to_string(), s.to_string(), "{:?}", show(input));
        }
        assert_eq!(parse_json(input).ok(), serde.ok(), "{:?}", show(input));
        fast.is_some()
    }

    fn show(input: &[u8]) -> String {
        String::from_utf8_lossy(input).into_owned()
    }

    #[test]
    fn accepted_forms_match_serde_json() {
        for ok in [
            r#"{"title":"Found a bug","body":"a\nb\t\"q\" \\ \/ \b\f\r","labels":["bug"]}"#,
            r#"  {"a" : [ 1 , -2 , 0 , 18446744073709551615 , 123456789012345678 ] }  "#,
            r#"{"u":"\u00e9\u4e2d\uD83D\uDE00\u0000\u001f x","raw":"é中😀"}"#,
            r#"[true,false,null,{},[],"",{"":""}]"#,
            r#"{"n":-9223372036854775808,"m":-9223372036854775809,"f":1.5,"e":1e3,"z":-0}"#,
            r#"{"f":-0.0,"g":2.5E-3,"h":1E+2,"i":0.1,"big":123456789012345678901234567890}"#,
            "\"\u{7f}\"",
            "5",
            "\r\n\t[]\n",
        ] {
            agree(ok.as_bytes());
            assert!(parse_json(ok.as_bytes()).is_ok(), "{ok}");
        }
        assert!(agree(br#"{"a":{"b":[1,"x\ny"]},"c":-3}"#));
        let nested = format!("{}{}", "[".repeat(64), "]".repeat(64));
        assert!(agree(nested.as_bytes()), "64 levels are allowed");
        let long = format!("{{\"raw\":\"{}\"}}", "AbC-_09".repeat(10_000));
        assert!(agree(long.as_bytes()));
    }

    #[test]
    fn refused_forms_are_refused() {
        for bad in [
            "",
            " ",
            "{",
            "}",
            r#"{"a":1,"a":2}"#,
            r#"{"a":{"b":1,"b":1}}"#,
            r#"[{"k":1,"k":1}]"#,
            r#"{"a":1,}"#,
            "[1,]",
            "[1 2]",
            r#"{"a" 1}"#,
            r#"{a:1}"#,
            "01",
            "-",
            "1.",
            ".5",
            "1e",
            "1e+",
            "+1",
            "1.5.3",
            "tru",
            "truex",
            "nul",
            "\"abc",
            "\"a\u{1}b\"",
            "\"tab\there\"",
            r#""\x""#,
            r#""\u12""#,
            r#""\u12G4""#,
            r#""\uD83D""#,
            r#""\uD83Dx""#,
            r#""\uD83D\u0041""#,
            r#""\uDE00""#,
            "1e400",
            "-1e400",
            "{} {}",
            "[] x",
            "/* c */ 1",
            "\u{feff}{}",
            "NaN",
            "Infinity",
        ] {
            agree(bad.as_bytes());
            assert!(parse_json(bad.as_bytes()).is_err(), "{bad:?} accepted");
        }
        assert!(parse_json(b"\"\xff\"").is_err());
        assert!(parse_json(b"\"\xe2\x9c\"").is_err());
        let deep = format!("{}{}", "[".repeat(65), "]".repeat(65));
        assert!(
            parse_json(deep.as_bytes()).is_err(),
            "65 levels are refused"
        );
    }

    /// A small deterministic generator (xorshift), so the test needs no extra crate.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
        fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
            items[self.below(items.len())]
        }
    }

    const WS: [&str; 6] = ["", "", "", " ", "\n\t", "\r\n  "];
    const STRINGS: [&str; 16] = [
        "",
        "a",
        "title",
        "Seen 3 times\\nSteps: run",
        "\\\"q\\\" \\\\ \\/",
        "\\u00e9\\u4E2D",
        "\\uD83D\\uDE00",
        "\\uD83D",
        "\\uDE00x",
        "\\u0000",
        "é中😀",
        "\\b\\f\\r\\t",
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "tab\there",
        "\\x",
        "\u{7f}\u{80}",
    ];
    const NUMBERS: [&str; 16] = [
        "0",
        "-0",
        "7",
        "-7",
        "42",
        "123456789012345678",
        "1234567890123456789",
        "18446744073709551616",
        "-9223372036854775808",
        "-9223372036854775809",
        "1.5",
        "-0.0",
        "2e10",
        "1E-5",
        "1e400",
        "0.30000000000000004",
    ];
    const KEYS: [&str; 5] = ["a", "b", "title", "labels", "\\u0061"];

    fn gen_value(r: &mut Rng, out: &mut String, depth: usize) {
        out.push_str(r.pick(&WS));
        match r.below(if depth > 4 { 4 } else { 6 }) {
            0 => {
                out.push('"');
                out.push_str(r.pick(&STRINGS));
                out.push('"');
            }
            1 => out.push_str(r.pick(&NUMBERS)),
            2 => out.push_str(r.pick(&["true", "false", "null"])),
            3 => out.push_str(r.pick(&NUMBERS)),
            4 => {
                out.push('[');
                let n = r.below(4);
                for i in 0..n {
                    if i > 0 {
                        out.push(',');
                    }
                    gen_value(r, out, depth + 1);
                }
                out.push_str(r.pick(&WS));
                out.push(']');
            }
            _ => {
                out.push('{');
                let n = r.below(4);
                for i in 0..n {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(r.pick(&WS));
                    out.push('"');
                    out.push_str(r.pick(&KEYS));
                    out.push('"');
                    out.push_str(r.pick(&WS));
                    out.push(':');
                    gen_value(r, out, depth + 1);
                }
                out.push_str(r.pick(&WS));
                out.push('}');
            }
        }
        out.push_str(r.pick(&WS));
    }

    #[test]
    fn generated_and_mutated_documents_agree_with_serde_json() {
        const NOISE: &[u8] = b"{}[]\",:\\ u0e.-+Ed\x01\x7f\xc3\xa9\xff";
        let mut r = Rng(0x9e37_79b9_7f4a_7c15);
        let (mut accepted, mut fast) = (0, 0);
        for _ in 0..40_000 {
            let mut doc = String::new();
            gen_value(&mut r, &mut doc, 0);
            let mut bytes = doc.into_bytes();
            for _ in 0..r.below(3) {
                let at = r.below(bytes.len() + 1);
                let noise = NOISE[r.below(NOISE.len())];
                match r.below(3) {
                    0 if at < bytes.len() => {
                        bytes.remove(at);
                    }
                    1 if at < bytes.len() => bytes[at] = noise,
                    _ => bytes.insert(at, noise),
                }
            }
            fast += usize::from(agree(&bytes));
            accepted += usize::from(parse_json(&bytes).is_ok());
        }
        // Both sides are exercised: most valid documents take the direct path.
        assert!(accepted > 10_000 && fast > 8_000, "{accepted} {fast}");
    }
}
