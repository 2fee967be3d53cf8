//! Gmail batch requests: frames a `multipart/mixed` batch into its inner HTTP requests
//! (wire-formats.md section 1.7), so that each can be classified as if it came on its own.
//!
//! A batch is one `POST /batch/gmail/v1` whose parts each hold a whole HTTP request, so a
//! send can hide among harmless reads (security.md). This module only frames: the catalog
//! canonicalises and classifies every [`InnerRequest`]. Anything that Google's batch front end
//! could frame differently from this parser is refused rather than repaired:
//!
//! - the outer request: not `POST`; a method-override header (Google applies outer headers to
//!   every part); a Content-Type that is missing, repeated, not `multipart/mixed`, or whose
//!   parameters do not parse (a repeated parameter, an RFC 2231 `name*` parameter, an escape
//!   in a quoted value);
//! - the boundary: missing, repeated, not 1 to 70 characters of the RFC 2046 alphabet, or
//!   ending in a space;
//! - the framing: a line that contains `--boundary` (in any case) without being exactly a
//!   delimiter `--boundary` or the closing delimiter `--boundary--` (so `--boundaryX`, transport
//!   padding, and the boundary inside a body are all refused); no part; more than
//!   [`MAX_PARTS`] parts; no closing delimiter; a delimiter after the closing one; an epilogue
//!   that is not whitespace. A preamble before the first delimiter is allowed (RFC 2046) and
//!   ignored: it cannot hold anything delimiter-like, so every reader skips the same bytes;
//! - a part: headers that do not parse or do not end in a blank line; a header other than
//!   `Content-Type`, `Content-ID`, `Content-Transfer-Encoding` and `MIME-Version`, or one of
//!   these twice; a Content-Type other than `application/http` (`msgtype=request` allowed); a
//!   Content-Transfer-Encoding other than `binary`, `8bit` or `7bit`;
//! - an inner request: a request line that is not `METHOD SP target [SP HTTP/1.1]` (the version
//!   may be left out, as in Google's own examples) with an upper-case method; a target that is
//!   neither a path nor an `http(s)` URL on `gmail.googleapis.com` or `www.googleapis.com` (no
//!   user info, no port other than the scheme's, no fragment); a batch path (nested batch);
//!   headers that do not parse (folded lines included); a Host header for another host;
//!   `Transfer-Encoding`; a repeated or non-numeric Content-Length, or one that disagrees with
//!   the bytes of the part (one trailing line break after the body is allowed, and dropped).
//!
//! Lines may end in CRLF or a bare LF: Google's Python client writes bare LFs throughout.

use http::{HeaderMap, HeaderName, HeaderValue};

use super::{ClassifyError, Request, canonical};

/// Most calls Google accepts in one batch.
pub const MAX_PARTS: usize = 100;
/// Most header fields in one inner request.
const MAX_INNER_HEADERS: usize = 100;
/// Most header fields in one part (only four names are accepted, each once).
const MAX_PART_HEADERS: usize = 8;
/// Longest boundary RFC 2046 allows.
const MAX_BOUNDARY_LEN: usize = 70;
/// Hosts an inner request may name (in an absolute URL or a Host header).
const GMAIL_HOSTS: [&str; 2] = ["gmail.googleapis.com", "www.googleapis.com"];

/// One request framed out of a batch, as it would be sent on its own.
#[derive(Debug, Clone, PartialEq)]
pub struct InnerRequest {
    /// The method as written (upper-case); the catalog applies any method override.
    pub method: String,
    /// The path and query (an absolute URL is reduced to these), not yet canonicalised.
    pub path_and_query: String,
    pub headers: HeaderMap,
    /// The body, by Content-Length when there is one.
    pub body: Vec<u8>,
    /// The part's Content-ID, as written (Google answers with `response-` + this id).
    pub content_id: Option<String>,
    /// Where each `Authorization` value of the inner request's head lies in the batch body
    /// (byte offsets): the only bytes the gate may rewrite when it injects a token into a part.
    pub authorization_spans: Vec<(usize, usize)>,
}

fn bad(msg: impl Into<String>) -> ClassifyError {
    ClassifyError::Malformed(msg.into())
}

/// Whether `path` (without the query) is a batch endpoint: `/batch/gmail/v1`, the retired
/// global `/batch`, or anything else under `/batch` in any case (another API's batch path),
/// so that every batch alias is framed and inspected, and refused when nested.
pub fn is_batch_path(path: &str) -> bool {
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    let Some(rest) = path.strip_prefix('/') else {
        return false;
    };
    let first = rest.split_once('/').map_or(rest, |(seg, _)| seg);
    first.eq_ignore_ascii_case("batch")
}

/// Splits a batch request into its inner requests, in order.
pub fn split(req: &Request<'_>) -> Result<Vec<InnerRequest>, ClassifyError> {
    if req.method != "POST" {
        return Err(bad(format!(
            "a batch request must be POST, not {}",
            req.method
        )));
    }
    for name in canonical::METHOD_OVERRIDE_HEADERS {
        if req.headers.contains_key(name) {
            return Err(bad(format!(
                "a batch request must not carry {name}: Google applies it to every part"
            )));
        }
    }
    let boundary = boundary(req.headers)?;
    let base = req.body.as_ptr() as usize;
    frame(req.body, boundary.as_bytes())?
        .into_iter()
        .enumerate()
        .map(|(i, part)| {
            let mut inner = parse_part(part).map_err(|e| in_part(i + 1, e))?;
            // The spans were taken as addresses inside `req.body`: make them offsets.
            for span in &mut inner.authorization_spans {
                *span = (span.0 - base, span.1 - base);
            }
            Ok(inner)
        })
        .collect()
}

fn in_part(n: usize, e: ClassifyError) -> ClassifyError {
    bad(format!("batch part {n}: {e}"))
}

/// The boundary of the outer `multipart/mixed` Content-Type.
fn boundary(headers: &HeaderMap) -> Result<String, ClassifyError> {
    let mut values = headers.get_all(http::header::CONTENT_TYPE).iter();
    let value = values
        .next()
        .ok_or_else(|| bad("a batch request needs Content-Type: multipart/mixed; boundary=..."))?;
    if values.next().is_some() {
        return Err(bad("the batch request has more than one Content-Type"));
    }
    let value = value
        .to_str()
        .map_err(|_| bad("the batch Content-Type is not ASCII"))?;
    let (media, rest) = value.split_once(';').unwrap_or((value, ""));
    if !media.trim().eq_ignore_ascii_case("multipart/mixed") {
        return Err(bad(format!(
            "a batch request must be multipart/mixed, not {:?}",
            media.trim()
        )));
    }
    let params = parse_params(rest)?;
    let boundary = params
        .into_iter()
        .find_map(|(name, value)| (name == "boundary").then_some(value))
        .ok_or_else(|| bad("the batch Content-Type has no boundary parameter"))?;
    check_boundary(&boundary)?;
    Ok(boundary)
}

/// Parses `; name=value` parameters (the text after the media type). Names are lower-cased;
/// a repeated name, an RFC 2231 `name*` and a backslash escape in a quoted value are refused.
fn parse_params(mut s: &str) -> Result<Vec<(String, String)>, ClassifyError> {
    let mut out: Vec<(String, String)> = Vec::new();
    let ows: &[char] = &[' ', '\t'];
    loop {
        s = s.trim_start_matches(ows);
        if s.is_empty() {
            return Ok(out);
        }
        let (name, value, rest) = parse_param(s)?;
        if name.contains('*') {
            return Err(bad(format!(
                "the RFC 2231 parameter {name:?} is not accepted in a Content-Type"
            )));
        }
        if out.iter().any(|(n, _)| *n == name) {
            return Err(bad(format!(
                "the Content-Type parameter {name:?} is given more than once"
            )));
        }
        out.push((name, value));
        s = rest.trim_start_matches(ows);
        match s.strip_prefix(';') {
            Some(after) => s = after,
            None if s.is_empty() => return Ok(out),
            None => return Err(bad("the Content-Type parameters do not parse")),
        }
    }
}

/// One `name=value` at the start of `s`: the lower-case name, the value and what follows.
fn parse_param(s: &str) -> Result<(String, String, &str), ClassifyError> {
    let (name, rest) = s
        .split_once('=')
        .ok_or_else(|| bad("a Content-Type parameter has no '='"))?;
    if name.is_empty() || !name.bytes().all(is_tchar) {
        return Err(bad(format!(
            "the Content-Type parameter name {name:?} is invalid"
        )));
    }
    let name = name.to_ascii_lowercase();
    if let Some(quoted) = rest.strip_prefix('"') {
        let (value, after) = quoted
            .split_once('"')
            .ok_or_else(|| bad("a quoted Content-Type parameter is not closed"))?;
        if value.contains('\\') {
            return Err(bad(
                "escapes in a quoted Content-Type parameter are not accepted",
            ));
        }
        return Ok((name, value.to_string(), after));
    }
    let end = rest.find(';').unwrap_or(rest.len());
    let (value, after) = rest.split_at(end);
    let value = value.trim_end_matches([' ', '\t']);
    if value.is_empty() || value.contains([' ', '\t', '"']) {
        return Err(bad(format!(
            "the Content-Type parameter {name:?} has an invalid value"
        )));
    }
    Ok((name, value.to_string(), after))
}

/// RFC 7230 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// RFC 2046: 1 to 70 `bchars`, not ending in a space.
fn check_boundary(boundary: &str) -> Result<(), ClassifyError> {
    let is_bchar = |b: u8| b.is_ascii_alphanumeric() || b"'()+_,-./:=? ".contains(&b);
    if boundary.is_empty() || boundary.len() > MAX_BOUNDARY_LEN {
        return Err(bad(format!(
            "the batch boundary must be 1 to {MAX_BOUNDARY_LEN} characters, not {}",
            boundary.len()
        )));
    }
    if !boundary.bytes().all(is_bchar) || boundary.ends_with(' ') {
        return Err(bad(format!(
            "the batch boundary {boundary:?} has characters RFC 2046 does not allow"
        )));
    }
    Ok(())
}

/// What one line of the batch body is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Line {
    Delimiter,
    Close,
    Other,
}

/// Classifies a line (without its line break): exactly a delimiter, or free of the boundary
/// in any case. `dash_lower` is `--boundary` in lower case.
fn line_kind(line: &[u8], dash: &[u8], dash_lower: &str) -> Result<Line, ClassifyError> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line == dash {
        return Ok(Line::Delimiter);
    }
    if line.strip_prefix(dash) == Some(b"--") {
        return Ok(Line::Close);
    }
    if contains_ignore_case(line, dash_lower) {
        return Err(bad(
            "a line of the batch contains the boundary but is not exactly a delimiter",
        ));
    }
    Ok(Line::Other)
}

/// Whether `haystack` contains the ASCII `needle_lower` in any case, in linear time (the
/// standard library's two-way string search). Lossy decoding only replaces non-ASCII bytes,
/// which an ASCII needle cannot match, so it neither hides nor invents a match.
fn contains_ignore_case(haystack: &[u8], needle_lower: &str) -> bool {
    haystack.len() >= needle_lower.len()
        && String::from_utf8_lossy(&haystack.to_ascii_lowercase()).contains(needle_lower)
}

/// The lines of `body` as (start, end) offsets, line breaks excluded (the CR stays).
fn lines(body: &[u8]) -> impl Iterator<Item = (usize, usize)> + '_ {
    let mut start = 0;
    std::iter::from_fn(move || {
        if start > body.len() {
            return None;
        }
        let rest = body.get(start..).unwrap_or_default();
        let end = rest
            .iter()
            .position(|&b| b == b'\n')
            .map_or(body.len(), |i| start + i);
        let line = (start, end);
        start = end + 1;
        Some(line)
    })
}

/// Splits the body at its delimiters into part contents (the line break before each
/// delimiter belongs to the delimiter).
fn frame<'a>(body: &'a [u8], boundary: &[u8]) -> Result<Vec<&'a [u8]>, ClassifyError> {
    let dash = [b"--", boundary].concat();
    let dash_lower = String::from_utf8_lossy(&dash).to_ascii_lowercase();
    let mut parts = Vec::new();
    let mut open: Option<usize> = None;
    let mut closed = false;
    for (start, end) in lines(body) {
        let line = body.get(start..end).unwrap_or_default();
        let kind = line_kind(line, &dash, &dash_lower)?;
        if closed {
            if kind != Line::Other {
                return Err(bad("the batch has a delimiter after its closing delimiter"));
            }
            if !line.iter().all(u8::is_ascii_whitespace) {
                return Err(bad("the batch has content after its closing delimiter"));
            }
            continue;
        }
        if kind == Line::Other {
            continue;
        }
        if let Some(from) = open {
            parts.push(part_before(body, from, start));
            if parts.len() > MAX_PARTS {
                return Err(bad(format!(
                    "the batch has more than {MAX_PARTS} parts (Google's limit)"
                )));
            }
        }
        open = Some(end + 1);
        closed = kind == Line::Close;
    }
    if !closed {
        return Err(bad("the batch has no closing delimiter (--boundary--)"));
    }
    if parts.is_empty() {
        return Err(bad("the batch has no parts"));
    }
    Ok(parts)
}

/// The content from `from` to the delimiter line at `delim`, without the line break before it.
fn part_before(body: &[u8], from: usize, delim: usize) -> &[u8] {
    let content = body.get(from..delim).unwrap_or_default();
    let content = content.strip_suffix(b"\n").unwrap_or(content);
    content.strip_suffix(b"\r").unwrap_or(content)
}

/// The headers of a part, and the inner request after them.
fn parse_part(part: &[u8]) -> Result<InnerRequest, ClassifyError> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_PART_HEADERS];
    let (len, headers) = match httparse::parse_headers(part, &mut slots) {
        Ok(httparse::Status::Complete(done)) => done,
        Ok(httparse::Status::Partial) => {
            return Err(bad("the part headers do not end in a blank line"));
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Err(bad("the part has too many headers"));
        }
        Err(e) => return Err(bad(format!("the part headers do not parse: {e}"))),
    };
    let mut seen: Vec<String> = Vec::new();
    let mut content_id = None;
    for h in headers.iter() {
        let name = h.name.to_ascii_lowercase();
        if seen.contains(&name) {
            return Err(bad(format!("the part header {} is repeated", h.name)));
        }
        let value = std::str::from_utf8(h.value)
            .map_err(|_| bad(format!("the part header {} is not UTF-8", h.name)))?;
        match name.as_str() {
            "content-type" => check_part_type(value)?,
            "content-transfer-encoding" => check_transfer_encoding(value)?,
            "content-id" => content_id = Some(value.to_string()),
            "mime-version" => {}
            _ => {
                return Err(bad(format!(
                    "the part header {} is not accepted in a batch",
                    h.name
                )));
            }
        }
        seen.push(name);
    }
    if !seen.iter().any(|n| n == "content-type") {
        return Err(bad("the part has no Content-Type (application/http)"));
    }
    let mut inner = parse_inner(part.get(len..).unwrap_or_default())?;
    inner.content_id = content_id;
    Ok(inner)
}

fn check_part_type(value: &str) -> Result<(), ClassifyError> {
    let (media, rest) = value.split_once(';').unwrap_or((value, ""));
    if !media.trim().eq_ignore_ascii_case("application/http") {
        return Err(bad(format!(
            "the part Content-Type must be application/http, not {:?}",
            media.trim()
        )));
    }
    for (name, value) in parse_params(rest)? {
        if name != "msgtype" || !value.eq_ignore_ascii_case("request") {
            return Err(bad(format!(
                "the part Content-Type parameter {name:?} is not accepted"
            )));
        }
    }
    Ok(())
}

fn check_transfer_encoding(value: &str) -> Result<(), ClassifyError> {
    if ["binary", "8bit", "7bit"]
        .iter()
        .any(|e| value.eq_ignore_ascii_case(e))
    {
        return Ok(());
    }
    Err(bad(format!(
        "the part Content-Transfer-Encoding must be binary, not {value:?}"
    )))
}

/// One inner request: request line, headers, blank line, body.
fn parse_inner(bytes: &[u8]) -> Result<InnerRequest, ClassifyError> {
    let nl = bytes.iter().position(|&b| b == b'\n');
    let line = bytes.get(..nl.unwrap_or(bytes.len())).unwrap_or_default();
    let rest = nl.and_then(|i| bytes.get(i + 1..)).unwrap_or_default();
    let (method, target) = parse_request_line(line.strip_suffix(b"\r").unwrap_or(line))?;
    let path_and_query = reduce_target(target)?;
    if is_batch_path(&path_and_query) {
        return Err(bad("a batch inside a batch is not accepted"));
    }
    let (headers, body, authorization_spans) = parse_inner_head(rest)?;
    check_inner_headers(&headers)?;
    let body = inner_body(&headers, body)?;
    Ok(InnerRequest {
        method: method.to_string(),
        path_and_query,
        headers,
        body,
        content_id: None,
        authorization_spans,
    })
}

/// `METHOD SP target [SP HTTP/1.1]`, single spaces, an upper-case method.
fn parse_request_line(line: &[u8]) -> Result<(&str, &str), ClassifyError> {
    let line = std::str::from_utf8(line)
        .ok()
        .filter(|l| l.is_ascii())
        .ok_or_else(|| bad("the inner request line is not ASCII"))?;
    let fields: Vec<&str> = line.split(' ').collect();
    let (method, target) = match fields.as_slice() {
        [m, t] | [m, t, "HTTP/1.1"] => (*m, *t),
        _ => {
            return Err(bad(format!(
                "the inner request line {line:?} is not 'METHOD target HTTP/1.1'"
            )));
        }
    };
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(bad(format!(
            "the inner method {method:?} is not a method name"
        )));
    }
    if target.is_empty() || !target.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad(
            "the inner request target is empty or has invalid characters",
        ));
    }
    if target.contains('#') {
        return Err(bad("the inner request target has a fragment"));
    }
    Ok((method, target))
}

/// A path stays; an absolute URL on a Gmail host becomes its path and query.
fn reduce_target(target: &str) -> Result<String, ClassifyError> {
    if target.starts_with("//") {
        return Err(bad(format!(
            "the inner request target {target:?} starts with '//' (a URL without a scheme)"
        )));
    }
    if target.starts_with('/') {
        return Ok(target.to_string());
    }
    let lower = target.to_ascii_lowercase();
    let (rest, default_port) = if lower.starts_with("https://") {
        (target.get(8..).unwrap_or_default(), "443")
    } else if lower.starts_with("http://") {
        (target.get(7..).unwrap_or_default(), "80")
    } else {
        return Err(bad(format!(
            "the inner request target {target:?} is neither a path nor an http(s) URL"
        )));
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    check_gmail_authority(authority, default_port)?;
    if !path.starts_with('/') {
        return Err(bad(format!("the inner request URL {target:?} has no path")));
    }
    Ok(path.to_string())
}

/// `host[:port]` naming a Gmail host, with no user info and only the scheme's default port.
fn check_gmail_authority(authority: &str, default_port: &str) -> Result<(), ClassifyError> {
    let (host, port) = authority
        .split_once(':')
        .unwrap_or((authority, default_port));
    let host = host.to_ascii_lowercase();
    if port == default_port && GMAIL_HOSTS.contains(&host.as_str()) {
        return Ok(());
    }
    Err(bad(format!(
        "an inner request may only name {} or {}, not {authority:?}",
        GMAIL_HOSTS[0], GMAIL_HOSTS[1]
    )))
}

/// The inner headers and the bytes after them. A part that ends right after its header lines
/// (its blank line taken by the delimiter) has no body.
/// The inner head's headers, the body after it, and the addresses of its `Authorization`
/// values (in `rest`'s memory; [`split`] turns them into offsets).
type InnerHead<'a> = (HeaderMap, &'a [u8], Vec<(usize, usize)>);

fn authorization_spans(
    parsed: &[u8],
    rest: &[u8],
    headers: &[httparse::Header<'_>],
) -> Vec<(usize, usize)> {
    // `parsed` is `rest` itself or a copy of it with a line break added: offsets into it are
    // offsets into `rest`.
    let (from, to) = (parsed.as_ptr() as usize, rest.as_ptr() as usize);
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("authorization"))
        .map(|h| {
            let start = h.value.as_ptr() as usize - from + to;
            (start, start + h.value.len())
        })
        .collect()
}

fn parse_inner_head(rest: &[u8]) -> Result<InnerHead<'_>, ClassifyError> {
    if rest.is_empty() {
        return Ok((HeaderMap::new(), rest, Vec::new()));
    }
    let mut slots = [httparse::EMPTY_HEADER; MAX_INNER_HEADERS];
    let parsed = httparse::parse_headers(rest, &mut slots);
    if let Ok(httparse::Status::Complete((len, headers))) = parsed {
        let spans = authorization_spans(rest, rest, headers);
        return Ok((
            to_header_map(headers)?,
            rest.get(len..).unwrap_or_default(),
            spans,
        ));
    }
    match parsed {
        Ok(_) if rest.ends_with(b"\n") => {
            let closed = [rest, b"\n"].concat();
            let mut slots = [httparse::EMPTY_HEADER; MAX_INNER_HEADERS];
            match httparse::parse_headers(&closed, &mut slots) {
                Ok(httparse::Status::Complete((len, headers))) if len == closed.len() => {
                    let spans = authorization_spans(&closed, rest, headers);
                    Ok((to_header_map(headers)?, &[], spans))
                }
                _ => Err(bad("the inner request headers do not parse")),
            }
        }
        Ok(_) => Err(bad("the inner request headers do not end in a line break")),
        Err(httparse::Error::TooManyHeaders) => Err(bad(format!(
            "the inner request has more than {MAX_INNER_HEADERS} headers"
        ))),
        Err(e) => Err(bad(format!("the inner request headers do not parse: {e}"))),
    }
}

fn to_header_map(headers: &[httparse::Header<'_>]) -> Result<HeaderMap, ClassifyError> {
    let mut map = HeaderMap::new();
    for h in headers {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|e| bad(format!("inner header {:?}: {e}", h.name)))?;
        let value = HeaderValue::from_bytes(h.value)
            .map_err(|e| bad(format!("inner header {:?}: {e}", h.name)))?;
        map.append(name, value);
    }
    Ok(map)
}

fn check_inner_headers(headers: &HeaderMap) -> Result<(), ClassifyError> {
    if headers.contains_key(http::header::TRANSFER_ENCODING) {
        return Err(bad("Transfer-Encoding is not accepted in an inner request"));
    }
    let mut hosts = headers.get_all(http::header::HOST).iter();
    if let Some(host) = hosts.next() {
        if hosts.next().is_some() {
            return Err(bad("the inner request has more than one Host header"));
        }
        let host = host
            .to_str()
            .map_err(|_| bad("the inner Host header is not ASCII"))?;
        check_gmail_authority(host, "443")?;
    }
    Ok(())
}

/// The body: by Content-Length when given (which must match the bytes, give or take one line
/// break), else everything up to the delimiter.
fn inner_body(headers: &HeaderMap, rest: &[u8]) -> Result<Vec<u8>, ClassifyError> {
    let mut lengths = headers.get_all(http::header::CONTENT_LENGTH).iter();
    let Some(length) = lengths.next() else {
        return Ok(rest.to_vec());
    };
    if lengths.next().is_some() {
        return Err(bad("the inner request has more than one Content-Length"));
    }
    let length = length
        .to_str()
        .ok()
        .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|v| v.parse::<usize>().ok())
        .ok_or_else(|| bad("the inner Content-Length is not a number"))?;
    let (body, tail) = rest.split_at_checked(length).unwrap_or((rest, &[]));
    if body.len() == length && matches!(tail, b"" | b"\n" | b"\r\n") {
        return Ok(body.to_vec());
    }
    Err(bad(format!(
        "the inner Content-Length {length} disagrees with the {} bytes of the part",
        rest.len()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::CONTENT_TYPE;

    const B: &str = "batch_foobarbaz";

    fn split_with(
        content_type: Option<&str>,
        method: &str,
        body: &[u8],
    ) -> Result<Vec<InnerRequest>, ClassifyError> {
        let mut headers = HeaderMap::new();
        if let Some(ct) = content_type {
            headers.insert(CONTENT_TYPE, HeaderValue::from_str(ct).unwrap());
        }
        split(&Request {
            host: "gmail.googleapis.com",
            method,
            path: "/batch/gmail/v1",
            query: &[],
            headers: &headers,
            body,
        })
    }

    fn run(body: &[u8]) -> Result<Vec<InnerRequest>, ClassifyError> {
        split_with(
            Some(&format!("multipart/mixed; boundary={B}")),
            "POST",
            body,
        )
    }

    fn ok(body: &[u8]) -> Vec<InnerRequest> {
        match run(body) {
            Ok(parts) => parts,
            Err(e) => panic!("batch refused: {e}"),
        }
    }

    fn err(body: &[u8]) -> String {
        match run(body) {
            Ok(parts) => panic!("batch accepted: {parts:?}"),
            Err(e) => e.to_string(),
        }
    }

    /// A part: the usual part headers, then `inner` as written.
    fn part(inner: &str) -> String {
        format!("Content-Type: application/http\r\nContent-ID: <item>\r\n\r\n{inner}")
    }

    /// A CRLF batch of whole part contents.
    fn batch(parts: &[String]) -> Vec<u8> {
        let mut s = String::new();
        for p in parts {
            s += &format!("--{B}\r\n{p}\r\n");
        }
        s += &format!("--{B}--\r\n");
        s.into_bytes()
    }

    fn get(path: &str) -> String {
        part(&format!("GET {path} HTTP/1.1\r\n\r\n"))
    }

    fn post(path: &str, body: &str) -> String {
        part(&format!(
            "POST {path} HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ))
    }

    #[test]
    fn python_client_batch() {
        // As googleapiclient's BatchHttpRequest writes it (email.generator: bare LFs, a quoted
        // boundary, outer headers suppressed, `<uuid + n>` Content-IDs).
        let boundary = "===============7330845974216740156==";
        let body = format!(
            "--{boundary}\n\
             Content-Type: application/http\n\
             MIME-Version: 1.0\n\
             Content-Transfer-Encoding: binary\n\
             Content-ID: <9d0a4a3e-1f4c-4a8e-9a57-3d3f1b2c7e10 + 1>\n\
             \n\
             GET /gmail/v1/users/me/messages/18c1f?format=metadata&alt=json HTTP/1.1\n\
             Content-Type: application/json\n\
             MIME-Version: 1.0\n\
             accept: application/json\n\
             accept-encoding: gzip, deflate\n\
             user-agent: (gzip)\n\
             x-goog-api-client: gdcl/2.108.0 gl-python/3.11.4\n\
             authorization: Bearer agentgate-placeholder\n\
             Host: gmail.googleapis.com\n\
             \n\
             \n\
             --{boundary}\n\
             Content-Type: application/http\n\
             MIME-Version: 1.0\n\
             Content-Transfer-Encoding: binary\n\
             Content-ID: <9d0a4a3e-1f4c-4a8e-9a57-3d3f1b2c7e10 + 2>\n\
             \n\
             POST /gmail/v1/users/me/messages/18c1f/modify?alt=json HTTP/1.1\n\
             Content-Type: application/json\n\
             MIME-Version: 1.0\n\
             accept: application/json\n\
             authorization: Bearer agentgate-placeholder\n\
             Host: gmail.googleapis.com\n\
             content-length: 30\n\
             \n\
             {{\"removeLabelIds\": [\"UNREAD\"]}}\n\
             --{boundary}--\n"
        );
        let parts = split_with(
            Some(&format!("multipart/mixed; boundary=\"{boundary}\"")),
            "POST",
            body.as_bytes(),
        )
        .unwrap();
        assert_eq!(parts.len(), 2);
        let (a, b) = (&parts[0], &parts[1]);
        assert_eq!(a.method, "GET");
        assert_eq!(
            a.path_and_query,
            "/gmail/v1/users/me/messages/18c1f?format=metadata&alt=json"
        );
        assert_eq!(a.body, b"");
        assert_eq!(
            a.content_id.as_deref(),
            Some("<9d0a4a3e-1f4c-4a8e-9a57-3d3f1b2c7e10 + 1>")
        );
        assert_eq!(a.headers["authorization"], "Bearer agentgate-placeholder");
        assert_eq!(a.headers["host"], "gmail.googleapis.com");
        assert_eq!(a.headers.len(), 8);
        assert_eq!(b.method, "POST");
        assert_eq!(
            b.path_and_query,
            "/gmail/v1/users/me/messages/18c1f/modify?alt=json"
        );
        assert_eq!(b.body, br#"{"removeLabelIds": ["UNREAD"]}"#);
        assert_eq!(
            b.content_id.as_deref(),
            Some("<9d0a4a3e-1f4c-4a8e-9a57-3d3f1b2c7e10 + 2>")
        );
        // The same batch with the boundary unquoted.
        let parts = split_with(
            Some(&format!("multipart/mixed; boundary={boundary}")),
            "POST",
            body.as_bytes(),
        );
        assert_eq!(parts.map(|p| p.len()), Ok(2));
    }

    /// Byte for byte what googleapiclient's `BatchHttpRequest` sends for a labels list and a
    /// send: generated with Python's `email` package exactly as the client calls it.
    const PYTHON_BATCH: &str = r#"--===============0539433514124946750==
Content-Type: application/http
MIME-Version: 1.0
Content-Transfer-Encoding: binary
Content-ID: <9d0a4a3e-1f4c-4a8e-9a57-3d3f1b2c7e10 + 1>

GET /gmail/v1/users/me/labels?alt=json HTTP/1.1
Content-Type: application/json
MIME-Version: 1.0
accept: application/json
authorization: Bearer agentgate-placeholder
Host: gmail.googleapis.com


--===============0539433514124946750==
Content-Type: application/http
MIME-Version: 1.0
Content-Transfer-Encoding: binary
Content-ID: <9d0a4a3e-1f4c-4a8e-9a57-3d3f1b2c7e10 + 2>

POST /gmail/v1/users/me/messages/send?alt=json HTTP/1.1
Content-Type: application/json
MIME-Version: 1.0
accept: application/json
authorization: Bearer agentgate-placeholder
Host: gmail.googleapis.com
content-length: 43

{"raw": "VG86IHZAZXhhbXBsZS5jb20NCg0KaGk="}
--===============0539433514124946750==--
"#;

    #[test]
    fn python_generator_bytes() {
        let parts = split_with(
            Some("multipart/mixed; boundary=\"===============0539433514124946750==\""),
            "POST",
            PYTHON_BATCH.as_bytes(),
        )
        .unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].method, "GET");
        assert_eq!(
            parts[0].path_and_query,
            "/gmail/v1/users/me/labels?alt=json"
        );
        assert_eq!(parts[0].body, b"");
        assert_eq!(parts[1].method, "POST");
        assert_eq!(
            parts[1].path_and_query,
            "/gmail/v1/users/me/messages/send?alt=json"
        );
        assert_eq!(
            parts[1].body,
            br#"{"raw": "VG86IHZAZXhhbXBsZS5jb20NCg0KaGk="}"#
        );
        assert_eq!(parts[1].headers["content-length"], "43");
        assert_eq!(
            parts[1].content_id.as_deref(),
            Some("<9d0a4a3e-1f4c-4a8e-9a57-3d3f1b2c7e10 + 2>")
        );
    }

    #[test]
    fn send_hidden_among_gets() {
        let raw = r#"{"raw":"VG86IHZpY3RpbUBleGFtcGxlLmNvbQ0KDQpoaQ"}"#;
        let parts = ok(&batch(&[
            get("/gmail/v1/users/me/labels"),
            get("/gmail/v1/users/me/messages?q=is%3Aunread"),
            post("/gmail/v1/users/me/messages/send", raw),
            get("/gmail/v1/users/me/profile"),
        ]));
        let summary: Vec<(&str, &str)> = parts
            .iter()
            .map(|p| (p.method.as_str(), p.path_and_query.as_str()))
            .collect();
        assert_eq!(
            summary,
            [
                ("GET", "/gmail/v1/users/me/labels"),
                ("GET", "/gmail/v1/users/me/messages?q=is%3Aunread"),
                ("POST", "/gmail/v1/users/me/messages/send"),
                ("GET", "/gmail/v1/users/me/profile"),
            ]
        );
        assert_eq!(parts[2].body, raw.as_bytes());
        assert_eq!(parts[2].headers["content-type"], "application/json");
        assert!(
            parts
                .iter()
                .all(|p| p.content_id.as_deref() == Some("<item>"))
        );
    }

    #[test]
    fn absolute_urls_are_reduced_to_paths() {
        let parts = ok(&batch(&[
            get("https://www.googleapis.com/gmail/v1/users/me/labels"),
            get("https://gmail.googleapis.com:443/gmail/v1/users/me/drafts?maxResults=5"),
            get("HTTPS://Gmail.GoogleAPIs.com/gmail/v1/users/me/profile"),
            post(
                "http://www.googleapis.com/gmail/v1/users/me/messages/send",
                "{}",
            ),
        ]));
        let paths: Vec<&str> = parts.iter().map(|p| p.path_and_query.as_str()).collect();
        assert_eq!(
            paths,
            [
                "/gmail/v1/users/me/labels",
                "/gmail/v1/users/me/drafts?maxResults=5",
                "/gmail/v1/users/me/profile",
                "/gmail/v1/users/me/messages/send",
            ]
        );
        for target in [
            "https://evil.example.com/gmail/v1/users/me/messages/send",
            "https://gmail.googleapis.com.evil.example.com/gmail/v1/users/me/labels",
            "https://user@gmail.googleapis.com/gmail/v1/users/me/labels",
            "https://gmail.googleapis.com@evil.example.com/gmail/v1/users/me/labels",
            "https://gmail.googleapis.com:8443/gmail/v1/users/me/labels",
            "http://gmail.googleapis.com:443/gmail/v1/users/me/labels",
            "https://gmail.googleapis.com./gmail/v1/users/me/labels",
            "https://storage.googleapis.com/gmail/v1/users/me/labels",
            "https://gmail.googleapis.com",
            "https://gmail.googleapis.com?alt=json",
            "ftp://gmail.googleapis.com/gmail/v1/users/me/labels",
            "//gmail.googleapis.com/gmail/v1/users/me/labels",
            "gmail.googleapis.com/gmail/v1/users/me/labels",
            "*",
        ] {
            let why = err(&batch(&[get(target)]));
            assert!(why.starts_with("batch part 1: "), "{target}: {why}");
        }
    }

    #[test]
    fn google_documentation_style() {
        // Google's batch guide: no HTTP version, a blank line after each request, and a
        // Content-Length body followed by a line break before the delimiter.
        let body = format!(
            "--{B}\r\nContent-Type: application/http\r\nContent-ID: <item1:12930812@barnyard.example.com>\r\n\r\n\
             GET /gmail/v1/users/me/labels/INBOX\r\n\r\n\
             --{B}\r\nContent-Type: application/http\r\nContent-ID: <item2:12930812@barnyard.example.com>\r\n\r\n\
             PUT /gmail/v1/users/me/labels/Label_1\r\nContent-Type: application/json\r\nContent-Length: 15\r\nIf-Match: \"etag\"\r\n\r\n\
             {{\"name\":\"farm\"}}\r\n\r\n\
             --{B}--\r\n"
        );
        let parts = ok(body.as_bytes());
        assert_eq!(parts[0].method, "GET");
        assert_eq!(parts[0].path_and_query, "/gmail/v1/users/me/labels/INBOX");
        assert!(parts[0].headers.is_empty());
        assert_eq!(parts[0].body, b"");
        assert_eq!(parts[1].method, "PUT");
        assert_eq!(parts[1].body, br#"{"name":"farm"}"#);
        assert_eq!(parts[1].headers["if-match"], "\"etag\"");
        assert_eq!(
            parts[1].content_id.as_deref(),
            Some("<item2:12930812@barnyard.example.com>")
        );
    }

    #[test]
    fn body_without_content_length_runs_to_the_delimiter() {
        let parts = ok(&batch(&[part(
            "POST /gmail/v1/users/me/messages/send HTTP/1.1\r\nContent-Type: application/json\r\n\r\n{\"raw\":\"eA\"}",
        )]));
        assert_eq!(parts[0].body, br#"{"raw":"eA"}"#);
        // Headers that run to the end of the part: no body.
        let parts = ok(&batch(&[part(
            "GET /gmail/v1/users/me/labels HTTP/1.1\r\nAccept: */*\r\n",
        )]));
        assert_eq!(parts[0].headers["accept"], "*/*");
        assert_eq!(parts[0].body, b"");
    }

    #[test]
    fn preamble_is_ignored_and_epilogue_may_be_blank() {
        let mut body = b"This is a multi-part message in MIME format.\r\n\r\n".to_vec();
        body.extend(batch(&[get("/gmail/v1/users/me/labels")]));
        body.extend(b"\r\n  \r\n");
        assert_eq!(ok(&body).len(), 1);
        // Without a line break after the closing delimiter.
        let body = format!("--{B}\r\n{}\r\n--{B}--", get("/gmail/v1/users/me/labels"));
        assert_eq!(ok(body.as_bytes()).len(), 1);
    }

    #[test]
    fn batch_paths() {
        for path in [
            "/batch/gmail/v1",
            "/batch",
            "/batch/gmail/v1?alt=json",
            "/BATCH/gmail/v1",
            "/Batch",
            "/batch/drive/v3",
        ] {
            assert!(is_batch_path(path), "{path}");
        }
        for path in [
            "/gmail/v1/users/me/messages/batchDelete",
            "/gmail/v1/batch",
            "/batches",
            "/batchx/gmail/v1",
            "batch",
            "",
            "/",
        ] {
            assert!(!is_batch_path(path), "{path}");
        }
    }

    #[test]
    fn outer_request_refusals() {
        let body = batch(&[get("/gmail/v1/users/me/labels")]);
        let refused = |ct: Option<&str>, method: &str| split_with(ct, method, &body).is_err();
        assert!(refused(
            Some(&format!("multipart/mixed; boundary={B}")),
            "PUT"
        ));
        assert!(refused(None, "POST"));
        assert!(refused(
            Some(&format!("multipart/related; boundary={B}")),
            "POST"
        ));
        assert!(refused(
            Some(&format!("multipart/mixed; boundary={B}; boundary={B}")),
            "POST"
        ));
        assert!(refused(
            Some(&format!("multipart/mixed; Boundary={B}; boundary=x")),
            "POST"
        ));
        assert!(refused(
            Some(&format!("multipart/mixed; boundary*={B}")),
            "POST"
        ));
        assert!(refused(
            Some(&format!("multipart/mixed; boundary*0={B}")),
            "POST"
        ));
        assert!(refused(Some("multipart/mixed"), "POST"));
        assert!(refused(Some("multipart/mixed; charset=utf-8"), "POST"));
        assert!(refused(
            Some(&format!("multipart/mixed; boundary=\"{B}")),
            "POST"
        ));
        assert!(refused(
            Some(&format!("multipart/mixed; boundary=\"{B}\\\"\"")),
            "POST"
        ));
        assert!(refused(
            Some(&format!("multipart/mixed; boundary={B} x")),
            "POST"
        ));
        assert!(refused(
            Some(&format!("multipart/mixed; boundary {B}")),
            "POST"
        ));
        assert!(!refused(
            Some(&format!(
                "Multipart/Mixed ; boundary=\"{B}\" ; charset=utf-8;"
            )),
            "POST"
        ));
        // Two Content-Type headers.
        let mut headers = HeaderMap::new();
        headers.append(
            CONTENT_TYPE,
            HeaderValue::from_str(&format!("multipart/mixed; boundary={B}")).unwrap(),
        );
        headers.append(
            CONTENT_TYPE,
            HeaderValue::from_static("multipart/mixed; boundary=other"),
        );
        let split_headers = |headers: &HeaderMap| {
            split(&Request {
                host: "gmail.googleapis.com",
                method: "POST",
                path: "/batch/gmail/v1",
                query: &[],
                headers,
                body: &body,
            })
        };
        assert!(split_headers(&headers).is_err());
        // A method override would apply to every part.
        let mut headers = HeaderMap::new();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_str(&format!("multipart/mixed; boundary={B}")).unwrap(),
        );
        assert!(split_headers(&headers).is_ok());
        headers.insert("x-http-method-override", HeaderValue::from_static("POST"));
        assert!(split_headers(&headers).is_err());
    }

    #[test]
    fn boundary_refusals() {
        let boundary_ok = |b: &str| {
            let body = format!(
                "--{b}\r\n{}\r\n--{b}--\r\n",
                get("/gmail/v1/users/me/labels")
            );
            split_with(
                Some(&format!("multipart/mixed; boundary=\"{b}\"")),
                "POST",
                body.as_bytes(),
            )
            .is_ok()
        };
        assert!(boundary_ok(&"a".repeat(70)));
        assert!(boundary_ok("'()+_,-./:=? x"));
        assert!(boundary_ok("-"));
        assert!(!boundary_ok(&"a".repeat(71)));
        assert!(!boundary_ok(""));
        assert!(!boundary_ok("a@b"));
        assert!(!boundary_ok("a;b"));
        assert!(!boundary_ok("ab "));
        assert!(!boundary_ok("é"));
    }

    #[test]
    fn framing_refusals() {
        let labels = get("/gmail/v1/users/me/labels");
        let send = post("/gmail/v1/users/me/messages/send", "{\"raw\":\"eA\"}");
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("no parts", format!("--{B}--\r\n").into_bytes()),
            ("empty body", Vec::new()),
            ("no delimiter at all", b"hello\r\n".to_vec()),
            (
                "no closing delimiter",
                format!("--{B}\r\n{labels}\r\n").into_bytes(),
            ),
            (
                "no closing delimiter, two parts",
                format!("--{B}\r\n{labels}\r\n--{B}\r\n{send}").into_bytes(),
            ),
            (
                "delimiter-like line",
                format!("--{B}\r\n{labels}\r\n--{B}X\r\n{send}\r\n--{B}--\r\n").into_bytes(),
            ),
            (
                "transport padding",
                format!("--{B}  \r\n{labels}\r\n--{B}--\r\n").into_bytes(),
            ),
            (
                "closing delimiter with a suffix",
                format!("--{B}\r\n{labels}\r\n--{B}--x\r\n").into_bytes(),
            ),
            (
                "boundary in another case",
                format!(
                    "--{B}\r\n{labels}\r\n--{}\r\n{send}\r\n--{B}--\r\n",
                    B.to_uppercase()
                )
                .into_bytes(),
            ),
            (
                "boundary inside a body",
                batch(&[post(
                    "/gmail/v1/users/me/messages/send",
                    &format!("{{\"raw\":\"x--{B}\"}}"),
                )]),
            ),
            (
                "boundary in the preamble",
                [
                    format!("junk --{B}\r\n").into_bytes(),
                    batch(std::slice::from_ref(&labels)),
                ]
                .concat(),
            ),
            (
                "part after the closing delimiter",
                [
                    batch(std::slice::from_ref(&labels)),
                    format!("--{B}\r\n{send}\r\n--{B}--\r\n").into_bytes(),
                ]
                .concat(),
            ),
            (
                "epilogue",
                [
                    batch(std::slice::from_ref(&labels)),
                    b"trailing text\r\n".to_vec(),
                ]
                .concat(),
            ),
            (
                "bare CR delimiter",
                format!("--{B}\r\n{labels}\r\n--{B}\r\r\n{send}\r\n--{B}--\r\n").into_bytes(),
            ),
        ];
        for (what, body) in cases {
            assert!(run(&body).is_err(), "{what}");
        }
    }

    #[test]
    fn boundary_search_ignores_case_and_non_ascii() {
        assert!(contains_ignore_case(b"x--BaTcH_y", "--batch_y"));
        assert!(contains_ignore_case(b"\xff\xfe--batch_y\xff", "--batch_y"));
        assert!(!contains_ignore_case(b"--batch\xff_y", "--batch_y"));
        assert!(!contains_ignore_case(b"--batch", "--batch_y"));
        // Linear on hostile input: a long line of dashes against a boundary of dashes.
        let boundary = "-".repeat(70);
        let body = format!("--{boundary}\r\n{}", "-".repeat(4_000_000));
        let ct = format!("multipart/mixed; boundary=\"{boundary}\"");
        assert!(split_with(Some(&ct), "POST", body.as_bytes()).is_err());
    }

    #[test]
    fn part_count_limit() {
        let parts: Vec<String> = (0..MAX_PARTS)
            .map(|_| get("/gmail/v1/users/me/labels"))
            .collect();
        assert_eq!(ok(&batch(&parts)).len(), MAX_PARTS);
        let parts: Vec<String> = (0..=MAX_PARTS)
            .map(|_| get("/gmail/v1/users/me/labels"))
            .collect();
        assert!(err(&batch(&parts)).contains("more than 100 parts"));
    }

    #[test]
    fn part_header_refusals() {
        let inner = "GET /gmail/v1/users/me/labels HTTP/1.1\r\n\r\n";
        for headers in [
            "Content-Type: text/plain\r\n",
            "Content-Type: application/http-x\r\n",
            "Content-Type: application/http; msgtype=response\r\n",
            "Content-Type: application/http; charset=utf-8\r\n",
            "Content-ID: <1>\r\n",
            "",
            "Content-Type: application/http\r\nContent-Type: application/http\r\n",
            "Content-Type: application/http\r\nContent-ID: <1>\r\nContent-ID: <2>\r\n",
            "Content-Type: application/http\r\nContent-Transfer-Encoding: base64\r\n",
            "Content-Type: application/http\r\nContent-Transfer-Encoding: quoted-printable\r\n",
            "Content-Type: application/http\r\nContent-Encoding: gzip\r\n",
            "Content-Type: application/http\r\nContent-Length: 42\r\n",
            "Content-Type: application/http\r\nX-Other: 1\r\n",
            "Content-Type: application/http\r\n folded\r\n",
            "Content-Type : application/http\r\n",
        ] {
            let body = batch(&[format!("{headers}\r\n{inner}")]);
            assert!(run(&body).is_err(), "{headers:?}");
        }
        // Part headers that never end.
        assert!(run(&batch(&["Content-Type: application/http".to_string()])).is_err());
        // Accepted spellings.
        for headers in [
            "content-type: Application/HTTP\r\n",
            "Content-Type: application/http; msgtype=request\r\n",
            "Content-Type: application/http\r\nContent-Transfer-Encoding: 8bit\r\nMIME-Version: 1.0\r\n",
        ] {
            let body = batch(&[format!("{headers}\r\n{inner}")]);
            assert!(run(&body).is_ok(), "{headers:?}");
        }
    }

    #[test]
    fn nested_batches_are_refused() {
        for path in [
            "/batch/gmail/v1",
            "/batch",
            "https://www.googleapis.com/batch/gmail/v1",
            "/batch?alt=json",
        ] {
            let inner = batch(&[get("/gmail/v1/users/me/messages/send")]);
            let nested = part(&format!(
                "POST {path} HTTP/1.1\r\nContent-Type: multipart/mixed; boundary=inner\r\nContent-Length: {}\r\n\r\n{}",
                inner.len(),
                String::from_utf8_lossy(&inner).replace(B, "inner")
            ));
            assert!(
                err(&batch(&[nested])).contains("batch inside a batch"),
                "{path}"
            );
        }
    }

    #[test]
    fn inner_request_refusals() {
        for inner in [
            "",
            "GET\r\n\r\n",
            "GET /gmail/v1/users/me/labels HTTP/1.0\r\n\r\n",
            "GET /gmail/v1/users/me/labels HTTP/2\r\n\r\n",
            "GET  /gmail/v1/users/me/labels HTTP/1.1\r\n\r\n",
            "GET /gmail/v1/users/me/labels  HTTP/1.1\r\n\r\n",
            "GET\t/gmail/v1/users/me/labels HTTP/1.1\r\n\r\n",
            "get /gmail/v1/users/me/labels HTTP/1.1\r\n\r\n",
            "G-T /gmail/v1/users/me/labels HTTP/1.1\r\n\r\n",
            "GET /gmail/v1/users/me/labels HTTP/1.1 extra\r\n\r\n",
            "GET /gmail/v1/users/me/labels#frag HTTP/1.1\r\n\r\n",
            "GET /gmail/v1/users/me/lab\u{e9}ls HTTP/1.1\r\n\r\n",
            "GET /gmail/v1/users/me/labels HTTP/1.1\r\nAccept: */*\r\n folded\r\n\r\n",
            "GET /gmail/v1/users/me/labels HTTP/1.1\r\nno colon\r\n\r\n",
            "GET /gmail/v1/users/me/labels HTTP/1.1\r\nAccept : */*\r\n\r\n",
            "GET /gmail/v1/users/me/labels HTTP/1.1\r\nAccept: a\rb\r\n\r\n",
            "GET /gmail/v1/users/me/labels HTTP/1.1\r\nAccept: */*",
            "GET /gmail/v1/users/me/labels HTTP/1.1\r\nHost: evil.example.com\r\n\r\n",
            "GET /gmail/v1/users/me/labels HTTP/1.1\r\nHost: gmail.googleapis.com\r\nHost: gmail.googleapis.com\r\n\r\n",
            "POST /gmail/v1/users/me/messages/send HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
            "POST /gmail/v1/users/me/messages/send HTTP/1.1\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n{}",
        ] {
            let why = err(&batch(&[part(inner)]));
            assert!(why.starts_with("batch part 1: "), "{inner:?}: {why}");
        }
        // The error names the part.
        let why = err(&batch(&[
            get("/gmail/v1/users/me/labels"),
            part("get /x HTTP/1.1\r\n\r\n"),
        ]));
        assert!(why.starts_with("batch part 2: "), "{why}");
    }

    #[test]
    fn inner_content_length_must_match() {
        let with = |cl: &str, body: &str| {
            batch(&[part(&format!(
                "POST /gmail/v1/users/me/messages/send HTTP/1.1\r\nContent-Type: application/json\r\n{cl}\r\n{body}"
            ))])
        };
        let raw = "{\"raw\":\"eA\"}";
        assert_eq!(
            ok(&with("Content-Length: 12\r\n", raw))[0].body,
            raw.as_bytes()
        );
        // One line break after the body is dropped.
        assert_eq!(
            ok(&with("Content-Length: 12\r\n", &format!("{raw}\r\n")))[0].body,
            raw.as_bytes()
        );
        assert_eq!(
            ok(&with("Content-Length: 12\r\n", &format!("{raw}\n")))[0].body,
            raw.as_bytes()
        );
        for (cl, body) in [
            ("Content-Length: 11\r\n", raw.to_string()),
            ("Content-Length: 13\r\n", raw.to_string()),
            ("Content-Length: 2\r\n", format!("{{}}{raw}")),
            ("Content-Length: 12\r\n", format!("{raw}\r\n\r\n")),
            ("Content-Length: 12\r\n", format!("{raw} ")),
            ("Content-Length: 0\r\n", raw.to_string()),
            (
                "Content-Length: 12\r\nContent-Length: 12\r\n",
                raw.to_string(),
            ),
            ("Content-Length: +12\r\n", raw.to_string()),
            ("Content-Length: 12, 12\r\n", raw.to_string()),
            ("Content-Length: 0x0c\r\n", raw.to_string()),
            (
                "Content-Length: 99999999999999999999999\r\n",
                raw.to_string(),
            ),
        ] {
            assert!(run(&with(cl, &body)).is_err(), "{cl:?} {body:?}");
        }
    }
}
