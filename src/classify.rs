//! `agentgate classify`: one raw HTTP/1.1 request in, its actions and the current decision out
//! as JSON, through the same canonicalisation and catalog as the proxy.

use http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{Value, json};

use crate::actions::Action;
use crate::actions::catalog::Catalog;
use crate::actions::host::Authority;
use crate::config::Config;
use crate::decider::now_ms;
use crate::policy::Active;

/// Most header fields read from the request.
const MAX_HEADERS: usize = 128;

/// A request that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ClassifyCliError(String);

fn err(msg: impl Into<String>) -> ClassifyCliError {
    ClassifyCliError(msg.into())
}

/// Classifies `raw` (an HTTP/1.1 request with an absolute-form URI or a Host header) the way
/// the running gate would, and returns the JSON report.
pub fn classify_raw(
    config: &Config,
    catalog: &Catalog,
    policy: &Active,
    raw: &[u8],
) -> Result<Value, ClassifyCliError> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut slots);
    let head_len = match req.parse(raw) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return Err(err(
                "the request head is incomplete (no blank line after the headers)",
            ));
        }
        Err(e) => return Err(err(format!("the request head cannot be parsed: {e}"))),
    };
    let method = req.method.ok_or_else(|| err("no method"))?;
    let target = req.path.ok_or_else(|| err("no request target"))?;
    let mut headers = HeaderMap::new();
    for h in req.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|e| err(format!("header {:?}: {e}", h.name)))?;
        let value = HeaderValue::from_bytes(h.value)
            .map_err(|e| err(format!("header {:?}: {e}", h.name)))?;
        headers.append(name, value);
    }
    let body = body(&headers, &raw[head_len..])?;
    let (authority, path) = split_target(target, &headers)?;
    if Catalog::honours_method_override(&authority.host)
        && crate::proxy::resumable::Uploads::upload_id(&path)
            .map_err(|e| err(format!("the gate refuses this request (400): {e}")))?
            .is_some()
    {
        return Err(err(
            "this is a chunk of a resumable upload session (upload_id): the running gate decides it by its session, on the whole message when the upload completes; classify sees one request and cannot",
        ));
    }
    let actions = if config.intercept.contains(&authority.host) {
        catalog
            .inspect(
                &authority.host,
                method,
                &path,
                &headers,
                &body,
                config.limits.max_body_bytes,
            )
            .map_err(|e| err(format!("the gate refuses this request (400): {e}")))?
            .actions
    } else {
        vec![Action::net_connect(&authority)]
    };
    let decision = policy.preview(&actions, "", now_ms());
    Ok(json!({ "actions": actions, "decision": decision }))
}

fn split_target(
    target: &str,
    headers: &HeaderMap,
) -> Result<(Authority, String), ClassifyCliError> {
    if let Some(rest) = target
        .strip_prefix("https://")
        .or_else(|| target.strip_prefix("http://"))
    {
        let port = if target.starts_with("https") { 443 } else { 80 };
        let (auth, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let authority =
            Authority::parse(auth, Some(port)).map_err(|e| err(format!("host {auth:?}: {e}")))?;
        let path = if path.is_empty() { "/" } else { path };
        return Ok((authority, path.to_string()));
    }
    let host = headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .ok_or_else(|| err("the request has neither an absolute-form URI nor a Host header"))?;
    let authority =
        Authority::parse(host, Some(443)).map_err(|e| err(format!("Host {host:?}: {e}")))?;
    Ok((authority, target.to_string()))
}

/// The body by Content-Length, chunked coding, or the rest of the input.
fn body(headers: &HeaderMap, rest: &[u8]) -> Result<Vec<u8>, ClassifyCliError> {
    let chunked = headers
        .get(http::header::TRANSFER_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    if chunked {
        return dechunk(rest);
    }
    match headers
        .get(http::header::CONTENT_LENGTH)
        .map(|v| v.to_str().ok().and_then(|s| s.parse::<usize>().ok()))
    {
        None => Ok(rest.to_vec()),
        Some(Some(n)) if n <= rest.len() => Ok(rest[..n].to_vec()),
        Some(Some(n)) => Err(err(format!(
            "Content-Length says {n} bytes but {} follow",
            rest.len()
        ))),
        Some(None) => Err(err("the Content-Length is not a number")),
    }
}

fn dechunk(mut data: &[u8]) -> Result<Vec<u8>, ClassifyCliError> {
    let mut out = Vec::new();
    loop {
        let line_end = find_crlf(data).ok_or_else(|| err("a chunk size line is not terminated"))?;
        let size_text =
            std::str::from_utf8(&data[..line_end]).map_err(|_| err("bad chunk size"))?;
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| err(format!("bad chunk size {size_text:?}")))?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if data.len() < size + 2 || &data[size..size + 2] != b"\r\n" {
            return Err(err("a chunk is shorter than its size"));
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

fn find_crlf(data: &[u8]) -> Option<usize> {
    data.windows(2).position(|w| w == b"\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(raw: &str) -> Result<Value, ClassifyCliError> {
        let config = Config::defaults_in(std::path::Path::new("."));
        let catalog = Catalog::builtin(Default::default()).unwrap();
        let schema = crate::policy::schema::Schema::builtin();
        let program = crate::policy::load(
            vec![crate::policy::source(
                "default.policy",
                crate::app::DEFAULT_POLICY,
            )],
            &schema,
        )
        .unwrap();
        classify_raw(&config, &catalog, &Active::with(program), raw.as_bytes())
    }

    #[test]
    fn absolute_form_and_host_header() {
        let v = run("DELETE https://api.github.com/repos/Acme/Api HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!(v["actions"][0]["name"], "github.repos.delete");
        assert_eq!(v["actions"][0]["params"]["repo"], "acme/api");
        assert_eq!(v["decision"]["effect"], "block");
        assert_eq!(v["decision"]["rules"][0], "no-repo-deletion");
        let v = run("POST /repos/acme/api/issues HTTP/1.1\r\nHost: api.github.com\r\nContent-Length: 13\r\n\r\n{\"title\":\"t\"}").unwrap();
        assert_eq!(v["actions"][0]["params"]["title"], "t");
        let v = run("POST /repos/acme/api/issues HTTP/1.1\r\nHost: api.github.com\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"tit\r\n8\r\nle\":\"t\"}\r\n0\r\n\r\n").unwrap();
        assert_eq!(v["actions"][0]["params"]["title"], "t");
    }

    #[test]
    fn other_hosts_are_net_connect_and_bad_input_is_an_error() {
        let v = run("GET http://example.com/ HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!(v["actions"][0]["name"], "net.connect");
        assert_eq!(v["decision"]["effect"], "block");
        assert!(run("GET / HTTP/1.1\r\n\r\n").is_err());
        let chunk = run("PUT https://gmail.googleapis.com/upload/gmail/v1/users/me/messages/send?uploadType=resumable&upload_id=S1 HTTP/1.1\r\nContent-Length: 5\r\n\r\nFrom:")
            .unwrap_err();
        assert!(chunk.to_string().contains("session"), "{chunk}");
        assert!(run("GET /x HTTP/1.1\r\nHost: api.github.com\r\n").is_err());
        assert!(
            run("GET /a/../b HTTP/1.1\r\nHost: api.github.com\r\n\r\n")
                .unwrap_err()
                .to_string()
                .contains("400")
        );
        assert!(
            run("POST /x HTTP/1.1\r\nHost: api.github.com\r\nContent-Length: 9\r\n\r\nab").is_err()
        );
    }
}
