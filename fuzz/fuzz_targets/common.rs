//! The bodies of the fuzz targets, shared with `tests/fuzz_corpus.rs`, which replays every
//! seed file through exactly this code (style.md habit 13).
//!
//! Each function takes the raw fuzz input, must never panic on any input, and asserts cheap
//! invariants of what the parser accepted. It returns whether the parser accepted the input,
//! so the replay test can check that a corpus reaches both the accepting and refusing paths.
//!
//! Invariant failures are panics: that is how libFuzzer learns of them. The replay test
//! allows `clippy::panic` for the same reason.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::sync::OnceLock;

use agentgate::actions::catalog::Catalog;
use agentgate::actions::host::{self, Authority};
use agentgate::actions::{Action, Request, canonical, git_smart_http, github_graphql, mime};
use agentgate::policy::ast::EffectKw;
use agentgate::policy::eval::{Counts, Decision, Effect, NoCounts};
use agentgate::policy::schema::Schema;
use agentgate::policy::{self, Program, selftest};
use http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{Value, json};

/// A target's body: takes the raw input, returns whether the parser accepted it.
pub type Body = fn(&[u8]) -> bool;

/// Every fuzz target: its name (the `fuzz_targets/<name>.rs` file and `corpus/<name>/`
/// directory) and its body.
pub const TARGETS: &[(&str, Body)] = &[
    ("authority", authority),
    ("canonical", canonical),
    ("inspect", inspect),
    ("git_push", git_push),
    ("mime", mime_message),
    ("graphql", graphql),
    ("policy", policy),
];

/// The GitHub Enterprise Server host the `inspect` target's catalog knows.
pub const ENTERPRISE_HOST: &str = "github.acme.corp";

/// Hosts for `inspect`, chosen by the first input byte.
pub const INSPECT_HOSTS: [&str; 6] = [
    "api.github.com",
    "uploads.github.com",
    "github.com",
    "gmail.googleapis.com",
    "www.googleapis.com",
    ENTERPRISE_HOST,
];

/// Methods for `inspect`, chosen by the second input byte. The proxy hands the catalog
/// whatever token the agent sent, so a few non-canonical spellings are in the list.
pub const INSPECT_METHODS: [&str; 12] = [
    "GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "TRACE", "get", "Post", "delete",
    "PROPFIND",
];

/// Content-Encodings for `canonical`, chosen by the first input byte (`None`: no header).
pub const ENCODINGS: [Option<&str>; 12] = [
    None,
    Some("gzip"),
    Some("x-gzip"),
    Some("deflate"),
    Some("br"),
    Some("zstd"),
    Some("identity"),
    Some("gzip, gzip"),
    Some("br, gzip"),
    Some("GZip , identity"),
    Some("gzip, gzip, gzip"),
    Some("compress"),
];

/// The decoded-size cap for `canonical`: small, so bombs hit it quickly.
pub const CANONICAL_LIMIT: u64 = 4096;
/// The inspection limit for `inspect` (the gate's default is larger; 1 MiB is plenty here).
pub const INSPECT_LIMIT: u64 = 1 << 20;

/// `Authority::parse` with and without a default port, and `canonical_host`.
pub fn authority(data: &[u8]) -> bool {
    let Ok(input) = std::str::from_utf8(data) else {
        return false;
    };
    let bare = Authority::parse(input, None);
    let defaulted = Authority::parse(input, Some(443));
    if let Ok(a) = &bare {
        // An explicit port wins over the default.
        assert_eq!(Ok(a), defaulted.as_ref(), "{input:?}");
    }
    for a in [&bare, &defaulted].into_iter().flatten() {
        check_authority(input, a);
    }
    if let Ok(h) = host::canonical_host(input) {
        check_canonical_host(input, &h);
    }
    bare.is_ok() || defaulted.is_ok()
}

fn check_authority(input: &str, a: &Authority) {
    assert_ne!(a.port, 0, "{input:?}");
    // The canonical form re-parses to itself, with or without a default port.
    let shown = a.to_string();
    assert_eq!(Authority::parse(&shown, None).as_ref(), Ok(a), "{input:?}");
    assert_eq!(
        Authority::parse(&shown, Some(80)).as_ref(),
        Ok(a),
        "{input:?}"
    );
    let uri_host = a.uri_host();
    assert_eq!(
        Authority::parse(&uri_host, Some(a.port)).as_ref(),
        Ok(a),
        "{input:?}"
    );
    if a.host.contains(':') {
        assert!(a.is_ip(), "{input:?}: an IPv6 host that is not an IP");
    } else {
        check_canonical_host(input, &a.host);
    }
}

fn check_canonical_host(input: &str, h: &str) {
    assert!(!h.is_empty() && h.len() <= 253, "{input:?} -> {h:?}");
    assert!(
        !h.ends_with('.') && !h.starts_with('.'),
        "{input:?} -> {h:?}"
    );
    assert!(!h.contains(".."), "{input:?} -> {h:?}");
    assert!(
        h.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b)),
        "{input:?} -> {h:?}"
    );
    // Idempotent, and the same however the input was cased or dotted.
    assert_eq!(host::canonical_host(h).as_deref(), Ok(h), "{input:?}");
    assert_eq!(
        host::canonical_host(&format!("{}.", h.to_ascii_uppercase())).as_deref(),
        Ok(h),
        "{input:?}"
    );
    // A name that parses as an IPv4 address is exactly its dotted-quad form.
    if let Ok(ip) = h.parse::<std::net::Ipv4Addr>() {
        assert_eq!(ip.to_string(), h, "{input:?}");
    }
}

/// `check_path`, `parse_query`, `parse_json` and `decode_body` (a small limit, and a
/// Content-Encoding chosen by the first byte) over the rest of the input.
pub fn canonical(data: &[u8]) -> bool {
    let Some((&selector, rest)) = data.split_first() else {
        return false;
    };
    let mut accepted = false;
    if let Ok(text) = std::str::from_utf8(rest) {
        let (path, query) = text.split_once('?').unwrap_or((text, ""));
        if canonical::check_path(path).is_ok() {
            check_good_path(path);
            accepted = true;
        }
        if let Ok(pairs) = canonical::parse_query(query) {
            let parts = query.split('&').filter(|p| !p.is_empty()).count();
            assert_eq!(pairs.len(), parts, "{query:?}");
            for (k, v) in &pairs {
                assert!(!k.contains('\0') && !v.contains('\0'), "{query:?}");
            }
        }
    }
    accepted |= check_json(rest);

    let mut headers = HeaderMap::new();
    let coding = ENCODINGS[usize::from(selector) % ENCODINGS.len()];
    if let Some(coding) = coding {
        headers.insert(
            http::header::CONTENT_ENCODING,
            HeaderValue::from_static(coding),
        );
    }
    match canonical::decode_body(&headers, rest, CANONICAL_LIMIT) {
        Ok(None) => {
            assert!(
                matches!(coding, None | Some("identity")),
                "{coding:?} left the body as it was"
            );
        }
        Ok(Some(decoded)) => {
            assert!(
                decoded.len() as u64 <= CANONICAL_LIMIT,
                "{coding:?} decoded {} bytes past the limit",
                decoded.len()
            );
            check_json(&decoded);
            accepted = true;
        }
        Err(_) => {}
    }
    accepted
}

/// What `check_path` accepting a path promises.
fn check_good_path(path: &str) {
    assert!(path.starts_with('/'), "{path:?}");
    if path == "/" {
        return;
    }
    assert!(!path.ends_with('/'), "{path:?}");
    assert!(!path.contains("//"), "{path:?}");
    assert!(path.bytes().all(|b| (0x20..0x7f).contains(&b)), "{path:?}");
    assert!(!path.contains('\\') && !path.contains(';'), "{path:?}");
    let lower = path.to_ascii_lowercase();
    for encoded in ["%5c", "%00", "%2e"] {
        assert!(!lower.contains(encoded), "{path:?}");
    }
    // An encoded slash (Octokit's form of `/` inside a parameter) never hides an empty or a
    // dot segment: with it decoded, the path is still clean.
    let slashed = lower.replace("%2f", "/");
    for piece in slashed[1..].split('/') {
        assert!(
            !piece.is_empty() && piece != "." && piece != "..",
            "{path:?}"
        );
    }
    let segments: Vec<&str> = path[1..].split('/').collect();
    assert!(segments.len() <= 64, "{path:?}");
    for seg in segments {
        assert!(!seg.is_empty(), "{path:?}");
        assert!(seg != "." && seg != "..", "{path:?}");
        // Every escape is complete, so decoding is unambiguous.
        let b = seg.as_bytes();
        for (i, _) in b.iter().enumerate().filter(|(_, c)| **c == b'%') {
            assert!(
                b.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                    && b.get(i + 2).is_some_and(u8::is_ascii_hexdigit),
                "{path:?}"
            );
        }
    }
    for dots in ["/./", "/../"] {
        assert!(!format!("{path}/").contains(dots), "{path:?}");
    }
}

/// `parse_json`: anything it accepts, serde_json's own parser accepts with the same value,
/// and the value survives a round trip through the strict parser.
fn check_json(bytes: &[u8]) -> bool {
    let Ok(value) = canonical::parse_json(bytes) else {
        return false;
    };
    let lax: Value = match serde_json::from_slice(bytes) {
        Ok(v) => v,
        Err(e) => panic!("serde_json refuses JSON that parse_json accepted: {e}"),
    };
    assert_eq!(value, lax, "the strict and plain parsers disagree");
    let again = serde_json::to_vec(&value).map(|out| canonical::parse_json(&out));
    assert!(
        matches!(again, Ok(Ok(_))),
        "re-serialised JSON is refused: {again:?}"
    );
    true
}

/// The catalog every `inspect` call uses, built once.
pub fn catalog() -> &'static Catalog {
    static CATALOG: OnceLock<Catalog> = OnceLock::new();
    CATALOG.get_or_init(
        || match Catalog::builtin(BTreeSet::from([ENTERPRISE_HOST.to_string()])) {
            Ok(c) => c,
            Err(e) => panic!("the builtin catalog does not build: {e}"),
        },
    )
}

/// One request for `inspect`: byte 0 picks the host, byte 1 the method; then the
/// path-and-query up to `\n`, header lines (`name: value`) up to an empty line, and the body.
#[derive(Debug)]
pub struct FuzzRequest<'a> {
    pub host: &'static str,
    pub method: &'static str,
    pub target: &'a str,
    pub headers: HeaderMap,
    pub body: &'a [u8],
}

impl<'a> FuzzRequest<'a> {
    pub fn split(data: &'a [u8]) -> Option<FuzzRequest<'a>> {
        let (&h, rest) = data.split_first()?;
        let (&m, rest) = rest.split_first()?;
        let (target, mut rest) = split_line(rest);
        let target = std::str::from_utf8(target).ok()?;
        let mut headers = HeaderMap::new();
        loop {
            let (line, after) = split_line(rest);
            rest = after;
            if line.is_empty() {
                break;
            }
            let Some(colon) = line.iter().position(|&b| b == b':') else {
                continue;
            };
            let name = HeaderName::from_bytes(&line[..colon]);
            let value = HeaderValue::from_bytes(line[colon + 1..].trim_ascii());
            if let (Ok(name), Ok(value)) = (name, value) {
                headers.append(name, value);
            }
        }
        Some(FuzzRequest {
            host: INSPECT_HOSTS[usize::from(h) % INSPECT_HOSTS.len()],
            method: INSPECT_METHODS[usize::from(m) % INSPECT_METHODS.len()],
            target,
            headers,
            body: rest,
        })
    }
}

/// The line up to `\n` (a trailing `\r` dropped) and what follows it.
fn split_line(data: &[u8]) -> (&[u8], &[u8]) {
    let (line, rest) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &data[data.len()..]),
    };
    (line.strip_suffix(b"\r").unwrap_or(line), rest)
}

/// `Catalog::inspect` on a whole request; it must never panic, and what it accepts is
/// consistent with the request.
pub fn inspect(data: &[u8]) -> bool {
    let Some(req) = FuzzRequest::split(data) else {
        return false;
    };
    let Ok(got) = catalog().inspect(
        req.host,
        req.method,
        req.target,
        &req.headers,
        req.body,
        INSPECT_LIMIT,
    ) else {
        return false;
    };
    let path = req.target.split_once('?').map_or(req.target, |(p, _)| p);
    check_good_path(path);
    assert!(!got.actions.is_empty(), "{:?}: no actions", req.target);
    if got.method != req.method {
        // Only an honoured X-HTTP-Method-Override changes the method, and only on Google.
        assert!(
            Catalog::honours_method_override(req.host),
            "{} became {} on {}",
            req.method,
            got.method,
            req.host
        );
        assert!(got.method.bytes().all(|b| b.is_ascii_uppercase()));
    }
    if let Some(decoded) = &got.decoded_body {
        assert!(decoded.len() as u64 <= INSPECT_LIMIT);
        assert!(req.headers.contains_key(http::header::CONTENT_ENCODING));
    }
    // A Gmail batch yields one action per inner request: those are checked for the host only.
    let batch = is_batch_path(path);
    for a in &got.actions {
        assert_eq!(a.host, req.host);
        if !batch {
            assert_eq!(a.method, got.method);
            assert_eq!(a.path, path);
        }
        assert!(!a.name.is_empty());
        if a.name == "git.push" && a.params.get("phase") == Some(&Value::from("request")) {
            let body = got.decoded_body.as_deref().unwrap_or(req.body);
            check_push(body, &a.params);
        }
        // A repository with an owner is always `owner/name`, lower-case.
        if let (Some(Value::String(owner)), Some(Value::String(repo))) =
            (a.params.get("owner"), a.params.get("repo"))
        {
            assert_eq!(repo, &repo.to_ascii_lowercase(), "{:?}", a.params);
            assert!(repo.starts_with(&format!("{owner}/")), "{:?}", a.params);
        }
    }
    true
}

/// Whether the first path segment is `batch` (in any case), as the catalog routes it.
fn is_batch_path(path: &str) -> bool {
    let first = path
        .trim_start_matches('/')
        .split('/')
        .next()
        .unwrap_or_default();
    first.eq_ignore_ascii_case("batch")
}

/// The path every `git_push` input is posted to.
pub const PUSH_PATH: &str = "/acme/api.git/git-receive-pack";

/// A `git-receive-pack` POST body through `git_smart_http::classify`.
pub fn git_push(body: &[u8]) -> bool {
    let headers = HeaderMap::new();
    let req = Request {
        host: "github.com",
        method: "POST",
        path: PUSH_PATH,
        query: &[],
        headers: &headers,
        body,
    };
    let result = git_smart_http::classify(&req);
    let Some(result) = result else {
        panic!("{PUSH_PATH} is not classified as git")
    };
    let Ok(action) = result else {
        return false;
    };
    assert_eq!(action.name, "git.push");
    assert_eq!(action.params["repo"], "acme/api");
    check_push(body, &action.params);
    true
}

/// What an accepted push body promises: the refs are exactly the commands of the first
/// pkt-line list (read here by an independent, minimal reader), each well-formed.
fn check_push(body: &[u8], params: &serde_json::Map<String, Value>) {
    let refs = params["refs"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    if params["probe"] == Value::Bool(true) {
        assert_eq!(body, b"0000");
        assert!(refs.is_empty());
        return;
    }
    let names: Vec<&str> = refs.iter().filter_map(|r| r["name"].as_str()).collect();
    assert_eq!(names.len(), refs.len());
    assert_eq!(
        names,
        first_list_refnames(body),
        "the policy sees other refs"
    );
    let unique: BTreeSet<&str> = names.iter().copied().collect();
    assert_eq!(unique.len(), names.len(), "a ref named twice");
    let mut oid_len = None;
    let mut any_pack = false;
    for r in refs {
        let (old, new) = (r["old"].as_str(), r["new"].as_str());
        let (Some(old), Some(new)) = (old, new) else {
            panic!("a ref without ids: {r}")
        };
        for oid in [old, new] {
            assert!(matches!(oid.len(), 40 | 64), "{oid:?}");
            assert_eq!(
                *oid_len.get_or_insert(oid.len()),
                oid.len(),
                "mixed id lengths"
            );
            assert!(
                oid.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            );
        }
        let zero = |s: &str| s.bytes().all(|b| b == b'0');
        let kind = match (zero(old), zero(new)) {
            (true, false) => "create",
            (false, true) => "delete",
            (false, false) => "update",
            (true, true) => panic!("a command with two zero ids: {r}"),
        };
        assert_eq!(r["kind"], kind);
        any_pack |= kind != "delete";
        let name = r["name"].as_str().unwrap_or_default();
        assert!(name.starts_with("refs/"), "{name:?}");
        assert!(!name.contains("..") && !name.contains("//") && !name.ends_with('/'));
        assert!(!name.bytes().any(|b| b.is_ascii_control() || b == b' '));
    }
    let caps = params["capabilities"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let options = params["push_options"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    if !options.is_empty() {
        assert!(caps.iter().any(|c| c == "push-options"), "{caps:?}");
    }
    if any_pack {
        assert!(
            body.windows(4).any(|w| w == b"PACK"),
            "a create/update without a pack"
        );
    }
}

/// The ref names of the first pkt-line list of a push body, read the simplest way:
/// 4 hex digits of length, flush at `0000`, capabilities after NUL, `shallow` lines skipped.
fn first_list_refnames(body: &[u8]) -> Vec<&str> {
    let mut names = Vec::new();
    let mut pos = 0;
    while let Some(head) = body.get(pos..pos + 4) {
        let len = std::str::from_utf8(head)
            .ok()
            .and_then(|h| usize::from_str_radix(h, 16).ok())
            .unwrap_or(0);
        if len < 4 {
            break;
        }
        let line = body.get(pos + 4..pos + len).unwrap_or_default();
        pos += len;
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        let line = line.split(|&b| b == 0).next().unwrap_or_default();
        if line.starts_with(b"shallow ") {
            continue;
        }
        let name = line.splitn(3, |&b| b == b' ').nth(2).unwrap_or_default();
        names.push(std::str::from_utf8(name).unwrap_or("<not utf-8>"));
    }
    names
}

/// `mime`: one RFC 5322 message through `mime::extract`. An accepted message's recipients are
/// exactly its to, cc and bcc (de-duplicated), every address is lower-case, and `size` is the
/// message length.
pub fn mime_message(message: &[u8]) -> bool {
    let Ok(params) = mime::extract(message) else {
        return false;
    };
    let list = |k: &str| -> Vec<String> {
        params[k]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut union: Vec<String> = Vec::new();
    for k in ["to", "cc", "bcc"] {
        for a in list(k) {
            if !union.contains(&a) {
                union.push(a);
            }
        }
    }
    assert_eq!(list("recipients"), union, "recipients are to + cc + bcc");
    for a in list("recipients").iter().chain(list("from").iter()) {
        assert_eq!(a, &a.to_lowercase(), "addresses are lower-cased");
    }
    assert_eq!(params["size"], Value::from(message.len()));
    true
}

/// `graphql`: a GitHub GraphQL body. The first byte picks the form: even, a JSON body as-is;
/// odd, a raw `application/graphql` document. An accepted body yields at least one action, all
/// named `github.graphql.*` or (unparsed) `http.request`.
pub fn graphql(data: &[u8]) -> bool {
    let Some((&form, body)) = data.split_first() else {
        return false;
    };
    let mut headers = HeaderMap::new();
    let ct = if form % 2 == 0 {
        "application/json"
    } else {
        "application/graphql"
    };
    headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static(ct));
    let req = Request {
        host: "api.github.com",
        method: "POST",
        path: "/graphql",
        query: &[],
        headers: &headers,
        body,
    };
    let Ok(actions) = github_graphql::classify(&req) else {
        return false;
    };
    assert!(
        !actions.is_empty(),
        "an accepted GraphQL body has an action"
    );
    for a in &actions {
        assert!(
            a.name.starts_with("github.graphql.") || a.name == "http.request",
            "unexpected action {}",
            a.name
        );
    }
    true
}

/// The action catalog's schema every `policy` call checks against, built once.
pub fn policy_schema() -> &'static Schema {
    static SCHEMA: OnceLock<Schema> = OnceLock::new();
    SCHEMA.get_or_init(Schema::builtin)
}

/// The time every `policy` decision is made at: Tuesday 2026-03-03 10:00:00 UTC.
pub const POLICY_NOW_MS: i64 = 1_772_532_000_000;

fn policy_action(name: &str, host: &str, method: &str, path: &str, params: Value) -> Action {
    let Value::Object(params) = params else {
        panic!("params are an object");
    };
    Action {
        name: name.into(),
        host: host.into(),
        method: method.into(),
        path: path.into(),
        params,
    }
}

/// The fixed requests every compiled `policy` input decides: a push with three refs, a Gmail
/// send with five recipients, a REST delete, a REST read, a GraphQL mutation outside the
/// catalog, an unmapped request and a CONNECT elsewhere.
pub fn policy_actions() -> Vec<Action> {
    vec![
        policy_action(
            "git.push",
            "github.com",
            "POST",
            "/acme/api.git/git-receive-pack",
            json!({
                "owner": "acme", "repo": "acme/api", "service": "git-receive-pack",
                "refs": [
                    {"name": "refs/heads/main", "old": "a", "new": "b", "kind": "update"},
                    {"name": "refs/heads/feature", "old": "0", "new": "c", "kind": "create"},
                    {"name": "refs/tags/v1", "old": "d", "new": "0", "kind": "delete"}
                ],
                "push_options": ["ci.skip"], "capabilities": ["atomic"], "probe": false
            }),
        ),
        policy_action(
            "gmail.users.messages.send",
            "gmail.googleapis.com",
            "POST",
            "/gmail/v1/users/me/messages/send",
            json!({
                "userId": "me",
                "to": ["bob@acme.com", "eve@evil.test"], "cc": ["carol@corp.acme.net"],
                "bcc": ["dave@acme.com.evil.test", "x@EXAMPLE.com"],
                "recipients": ["bob@acme.com", "eve@evil.test", "carol@corp.acme.net",
                               "dave@acme.com.evil.test", "x@example.com"],
                "subject": "Release notes", "size": 51234, "recipients_known": true,
                "attachments": [{"name": "notes.pdf", "type": "application/pdf", "size": 26800}]
            }),
        ),
        policy_action(
            "github.repos.delete",
            "api.github.com",
            "DELETE",
            "/repos/acme/api",
            json!({"owner": "acme", "repo": "acme/api"}),
        ),
        policy_action(
            "github.issues.create",
            "api.github.com",
            "POST",
            "/repos/acme/api/issues",
            json!({"owner": "acme", "repo": "acme/api", "title": "hello", "labels": ["bug"],
                   "milestone": 4}),
        ),
        policy_action(
            "github.graphql.fuzzMutation",
            "api.github.com",
            "POST",
            "/graphql",
            json!({"alias": "m", "input": {"repositoryId": "R_1"}, "n": 3}),
        ),
        policy_action(
            "http.request",
            "api.github.com",
            "GET",
            "/no/such",
            json!({}),
        ),
        policy_action(
            "net.connect",
            "evil.test",
            "CONNECT",
            "",
            json!({"host": "evil.test", "port": 443}),
        ),
    ]
}

/// Every count is large: exercises the other side of `count(...) >= N`.
struct ManyCounts;

impl Counts for ManyCounts {
    fn count(&self, _: &str, _: &str, _: u64, _: i64) -> u64 {
        1_000_000
    }
}

/// Checks a one-action decision against the program that made it: with no enforcing rule
/// fired it is the default's (never allow), or an allow by the approved step-up rules that
/// would have fired (an approval); else the most severe effect among them, decided by
/// exactly the rules of that effect. An approved step_up rule never fires.
fn check_decision(program: &Program, d: &Decision, approved: &[String]) {
    let rule = |id: &str| {
        program
            .rules
            .iter()
            .find(|r| r.id == id)
            .unwrap_or_else(|| panic!("{id} fired but is no rule"))
    };
    let mut winners: Vec<(Effect, &str)> = Vec::new();
    for f in &d.fired {
        let r = rule(&f.rule);
        assert_eq!(r.shadow, f.shadow, "{}: shadow", f.rule);
        assert!(
            !(r.effect == EffectKw::StepUp && approved.iter().any(|a| *a == r.id)),
            "the approved rule {} still fires",
            r.id
        );
        if !r.shadow {
            winners.push((r.effect.into(), &r.id));
        }
    }
    match winners.iter().map(|(e, _)| *e).max() {
        // Only approved step-ups would have fired: the approval allows, named by those rules.
        None if d.effect == Effect::Allow => {
            assert!(!d.rules.is_empty(), "{d:?}");
            for id in &d.rules {
                assert!(
                    approved.iter().any(|a| a == id),
                    "{id} allowed without approval: {d:?}"
                );
                assert_eq!(rule(id).effect, EffectKw::StepUp, "{d:?}");
            }
        }
        None => {
            assert_eq!(d.effect, Effect::from(program.default.effect), "{d:?}");
            assert_eq!(d.rules, ["default"]);
        }
        Some(top) => {
            assert_eq!(d.effect, top, "{d:?}");
            let mut ids: Vec<&str> = winners
                .iter()
                .filter(|(e, _)| *e == top)
                .map(|(_, id)| *id)
                .collect();
            ids.sort_unstable();
            assert_eq!(d.rules, ids, "the rules of the winning effect decide");
        }
    }
}

/// `policy`: the whole input as one policy file (non-UTF-8 is skipped), parsed and checked
/// against the built-in catalog. A set that compiles has a default other than allow; its test
/// blocks run; it decides the fixed requests of [`policy_actions`] (alone and together, with
/// and without counts and approvals) into decisions made only by enforcing rules of the
/// winning effect, or by the default; and deciding several actions gives the strictest.
pub fn policy(data: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(data) else {
        return false;
    };
    let program = match policy::compile(vec![policy::source("f.policy", text)], policy_schema()) {
        Ok(p) => p,
        Err(errors) => {
            assert!(!errors.0.is_empty(), "a refusal says why");
            for e in &errors.0 {
                assert!(!e.message.is_empty(), "an error has a message");
                let _ = e.to_string();
            }
            return false;
        }
    };
    assert_ne!(
        program.default.effect,
        EffectKw::Allow,
        "`default allow` loaded"
    );
    let results = selftest::run(&program);
    assert_eq!(results.len(), program.tests.len());
    for r in &results {
        assert_eq!(
            r.passed,
            r.failure.is_none(),
            "{}: passed and failure disagree",
            r.name
        );
    }
    let actions = policy_actions();
    let step_ups: Vec<String> = program
        .rules
        .iter()
        .filter(|r| r.effect == EffectKw::StepUp)
        .map(|r| r.id.to_string())
        .collect();
    for approved in [&[][..], &step_ups[..]] {
        for counts in [&NoCounts as &dyn Counts, &ManyCounts] {
            let mut strictest = Effect::Allow;
            for a in &actions {
                let d = program.decide_all(
                    std::slice::from_ref(a),
                    "coder",
                    POLICY_NOW_MS,
                    approved,
                    counts,
                );
                check_decision(&program, &d, approved);
                assert_eq!(d.action, a.name);
                strictest = strictest.max(d.effect);
            }
            let all = program.decide_all(&actions, "coder", POLICY_NOW_MS, approved, counts);
            assert_eq!(all.effect, strictest, "several actions: the strictest wins");
        }
    }
    true
}
