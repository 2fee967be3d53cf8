//! git smart HTTP: maps discovery, fetch and push requests to `git.fetch` / `git.push`, parsing
//! a push's pkt-line command list exactly (wire-formats.md section 4).
//!
//! Endpoints, where `{repo}` is `/owner/name(.git)` on github.com, `/<gist-id>(.git)` on
//! gist.github.com and one or more segments on other git hosts:
//!
//! | request                                        | action      | `phase`     |
//! |------------------------------------------------|-------------|-------------|
//! | `GET {repo}/info/refs?service=git-upload-pack`  | `git.fetch` | `discovery` |
//! | `POST {repo}/git-upload-pack`                   | `git.fetch` | `request`   |
//! | `GET {repo}/info/refs?service=git-receive-pack` | `git.push`  | `discovery` |
//! | `POST {repo}/git-receive-pack`                  | `git.push`  | `request`   |
//!
//! Every action has `repo` (lower-case, no leading `/`, no `.git`), `owner` (the lower-case
//! first segment, when there are at least two), `service` and `phase`. A push request adds
//! `refs`, `push_options`, `capabilities` and `probe`.
//!
//! A push body is read the way git's receive-pack reads it, and anything that receive-pack
//! could read differently from this parser, or that a real git client never sends, is refused
//! rather than repaired: a hostile agent must not be able to hide a ref update from the policy.
//! Fetch bodies are not inspected: a fetch changes nothing upstream.

use std::collections::HashSet;

use serde_json::{Map, Value};

use super::{Action, ClassifyError, Request};

/// Most ref-update commands accepted in one push.
pub const MAX_COMMANDS: usize = 10_000;
/// Most push options accepted in one push.
pub const MAX_PUSH_OPTIONS: usize = 1_000;
/// Most `shallow` lines accepted before the commands.
pub const MAX_SHALLOW: usize = 100_000;
/// Largest pkt-line, its 4-byte length included (git's `LARGE_PACKET_MAX`).
const MAX_PKT_LEN: usize = 65_520;
/// Hosts that serve only APIs: a REST path there (`/repos/o/r/contents/info/refs`) is not git.
const API_ONLY_HOSTS: [&str; 2] = ["api.github.com", "uploads.github.com"];
/// The pack header: `PACK`, a 4-byte version and a 4-byte object count.
const PACK_HEADER_LEN: usize = 12;

/// The two smart-HTTP services.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Service {
    UploadPack,
    ReceivePack,
}

impl Service {
    fn name(self) -> &'static str {
        match self {
            Service::UploadPack => "git-upload-pack",
            Service::ReceivePack => "git-receive-pack",
        }
    }

    fn action(self) -> &'static str {
        match self {
            Service::UploadPack => "git.fetch",
            Service::ReceivePack => "git.push",
        }
    }

    fn from_name(name: &str) -> Option<Service> {
        [Service::UploadPack, Service::ReceivePack]
            .into_iter()
            .find(|s| s.name() == name)
    }
}

/// Which git endpoint a path ends in.
#[derive(Debug, Clone, Copy)]
enum Endpoint {
    InfoRefs,
    Rpc(Service),
}

const ENDPOINTS: [(&str, Endpoint); 3] = [
    ("/info/refs", Endpoint::InfoRefs),
    ("/git-upload-pack", Endpoint::Rpc(Service::UploadPack)),
    ("/git-receive-pack", Endpoint::Rpc(Service::ReceivePack)),
];

fn bad(msg: impl Into<String>) -> ClassifyError {
    ClassifyError::Malformed(msg.into())
}

/// Classifies a git smart-HTTP request.
///
/// `None` when the path does not end in a git endpoint (the caller tries other classifiers);
/// `Some(Err(..))` for a git path that is refused (wrong method, bad service, bad repository
/// path, a push body that does not parse exactly); `Some(Ok(..))` otherwise. The caller adds
/// `agent`, `host`, `method` and `path`.
pub fn classify(req: &Request<'_>) -> Option<Result<Action, ClassifyError>> {
    // GitHub Enterprise Server (and GitLab) serve their REST APIs under `/api/` on the git
    // host itself; GitHub reserves `api` as an account name.
    if API_ONLY_HOSTS.contains(&req.host) || req.path.starts_with("/api/") {
        return None;
    }
    let (repo_path, endpoint, written, canonical) = split_endpoint(req.path)?;
    if written != canonical {
        return Some(Err(bad(format!(
            "the git endpoint {written:?} must be written {canonical:?}"
        ))));
    }
    Some(classify_endpoint(req, repo_path, endpoint))
}

/// Splits `path` into the repository path and the endpoint it ends in, matched without case
/// (so that `/o/r/Git-Receive-Pack` is refused rather than passed on as a plain request).
fn split_endpoint(path: &str) -> Option<(&str, Endpoint, &str, &'static str)> {
    ENDPOINTS.into_iter().find_map(|(suffix, endpoint)| {
        let start = path.len().checked_sub(suffix.len())?;
        let written = path.get(start..)?;
        written.eq_ignore_ascii_case(suffix).then_some((
            path.get(..start)?,
            endpoint,
            written,
            suffix,
        ))
    })
}

fn classify_endpoint(
    req: &Request<'_>,
    repo_path: &str,
    endpoint: Endpoint,
) -> Result<Action, ClassifyError> {
    let repo = Repo::parse(req.host, repo_path)?;
    match endpoint {
        Endpoint::InfoRefs => discovery(req, &repo),
        Endpoint::Rpc(service) => rpc(req, &repo, service),
    }
}

/// `GET {repo}/info/refs?service=...`.
fn discovery(req: &Request<'_>, repo: &Repo) -> Result<Action, ClassifyError> {
    expect_method(req, "GET")?;
    if !req.body.is_empty() {
        return Err(bad("a git info/refs request must not have a body"));
    }
    let service = discovery_service(req.query)?;
    Ok(action(service, repo, "discovery", Map::new()))
}

/// The service of an info/refs request: exactly one query parameter, `service`.
fn discovery_service(query: &[(String, String)]) -> Result<Service, ClassifyError> {
    match query {
        [] => Err(bad(
            "git info/refs without ?service= (the dumb HTTP protocol) is not supported",
        )),
        [(key, value)] if key == "service" => {
            Service::from_name(value).ok_or_else(|| bad(format!("unknown git service {value:?}")))
        }
        _ => Err(bad(
            "git info/refs takes exactly one query parameter, service",
        )),
    }
}

/// `POST {repo}/git-upload-pack` or `POST {repo}/git-receive-pack`.
fn rpc(req: &Request<'_>, repo: &Repo, service: Service) -> Result<Action, ClassifyError> {
    expect_method(req, "POST")?;
    if !req.query.is_empty() {
        return Err(bad(format!(
            "a POST to {} must not have a query string",
            service.name()
        )));
    }
    let extra = match service {
        Service::UploadPack => Map::new(),
        Service::ReceivePack => parse_push(req.body)?.into_params(),
    };
    Ok(action(service, repo, "request", extra))
}

fn expect_method(req: &Request<'_>, method: &str) -> Result<(), ClassifyError> {
    if req.method == method {
        return Ok(());
    }
    Err(bad(format!(
        "git expects {method} on {}, not {}",
        req.path, req.method
    )))
}

fn action(service: Service, repo: &Repo, phase: &str, extra: Map<String, Value>) -> Action {
    let mut params = Map::new();
    params.insert("repo".into(), Value::String(repo.path.clone()));
    if let Some(owner) = &repo.owner {
        params.insert("owner".into(), Value::String(owner.clone()));
    }
    params.insert("service".into(), service.name().into());
    params.insert("phase".into(), phase.into());
    params.extend(extra);
    Action::new(service.action(), params)
}

/// A repository path, lower-cased, without the leading `/` or a trailing `.git`.
#[derive(Debug)]
struct Repo {
    path: String,
    owner: Option<String>,
}

impl Repo {
    fn parse(host: &str, path: &str) -> Result<Repo, ClassifyError> {
        let rest = path
            .strip_prefix('/')
            .filter(|r| !r.is_empty())
            .ok_or_else(|| bad("the git URL has no repository path"))?;
        let mut segs: Vec<String> = rest.split('/').map(str::to_ascii_lowercase).collect();
        if let Some(last) = segs.last_mut() {
            if let Some(name) = last.strip_suffix(".git") {
                *last = name.to_string();
            }
        }
        if let Some(seg) = segs.iter().find(|s| !valid_segment(s)) {
            return Err(bad(format!(
                "the git repository path has an invalid segment {seg:?}"
            )));
        }
        check_segment_count(host, segs.len())?;
        Ok(Repo {
            owner: segs.first().filter(|_| segs.len() >= 2).cloned(),
            path: segs.join("/"),
        })
    }
}

/// A repository path segment: the characters GitHub allows in owner and repository names.
fn valid_segment(seg: &str) -> bool {
    !seg.is_empty()
        && seg != "."
        && seg != ".."
        && seg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// github.com serves `/owner/name`, gist.github.com `/<gist-id>`; other hosts any depth.
fn check_segment_count(host: &str, count: usize) -> Result<(), ClassifyError> {
    let expected = match host {
        "github.com" => 2,
        "gist.github.com" => 1,
        _ => return Ok(()),
    };
    if count == expected {
        return Ok(());
    }
    Err(bad(format!(
        "a git repository path on {host} has {expected} segment(s), not {count}"
    )))
}

/// One pkt-line.
#[derive(Debug, PartialEq, Eq)]
enum Pkt<'a> {
    Flush,
    Data(&'a [u8]),
}

/// Reads pkt-lines off a whole body. Only flush-pkts and data lines are valid in a push.
#[derive(Debug)]
struct PktReader<'a> {
    body: &'a [u8],
    pos: usize,
}

impl<'a> PktReader<'a> {
    fn new(body: &'a [u8]) -> Self {
        PktReader { body, pos: 0 }
    }

    /// The next pkt-line; the end of the body is an error, since every list ends in a flush.
    fn read(&mut self) -> Result<Pkt<'a>, ClassifyError> {
        let head = self.body.get(self.pos..self.pos + 4).ok_or_else(|| {
            if self.pos == self.body.len() {
                bad("the git push body ends before its flush-pkt (0000)")
            } else {
                bad("the git push body ends inside a pkt-line length")
            }
        })?;
        match pkt_len(head)? {
            0 => {
                self.pos += 4;
                Ok(Pkt::Flush)
            }
            1 => Err(bad("a delim-pkt (0001) is not valid in a git push")),
            2 => Err(bad("a response-end-pkt (0002) is not valid in a git push")),
            3 => Err(bad("pkt-line length 0003 is invalid")),
            // Modern git reads 0004 as an empty line, older git as a flush: ambiguous.
            4 => Err(bad("an empty pkt-line (0004) is not valid in a git push")),
            len if len > MAX_PKT_LEN => Err(bad(format!(
                "pkt-line length {len} is over git's maximum of {MAX_PKT_LEN}"
            ))),
            len => {
                let data = self
                    .body
                    .get(self.pos + 4..self.pos + len)
                    .ok_or_else(|| bad("a pkt-line runs past the end of the git push body"))?;
                self.pos += len;
                Ok(Pkt::Data(data))
            }
        }
    }

    /// What follows the last pkt-line read.
    fn rest(&self) -> &'a [u8] {
        self.body.get(self.pos..).unwrap_or_default()
    }
}

/// A 4-hex-digit pkt-line length (either case, as git reads it; no sign, no spaces).
fn pkt_len(head: &[u8]) -> Result<usize, ClassifyError> {
    head.iter()
        .try_fold(0usize, |acc, &b| {
            char::from(b).to_digit(16).map(|d| acc * 16 + d as usize)
        })
        .ok_or_else(|| {
            bad(format!(
                "pkt-line length {:?} is not 4 hex digits",
                String::from_utf8_lossy(head)
            ))
        })
}

/// Strips the one trailing LF a text pkt-line may carry, as git does.
fn chomp(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\n").unwrap_or(line)
}

/// What one ref-update command does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Create,
    Update,
    Delete,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Create => "create",
            Kind::Update => "update",
            Kind::Delete => "delete",
        }
    }
}

/// One `<old> SP <new> SP <refname>` command.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RefUpdate {
    name: String,
    old: String,
    new: String,
    kind: Kind,
}

impl RefUpdate {
    fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("name".into(), self.name.clone().into());
        m.insert("old".into(), self.old.clone().into());
        m.insert("new".into(), self.new.clone().into());
        m.insert("kind".into(), self.kind.name().into());
        Value::Object(m)
    }
}

/// A parsed `git-receive-pack` request body.
#[derive(Debug, Default, PartialEq, Eq)]
struct Push {
    refs: Vec<RefUpdate>,
    push_options: Vec<String>,
    capabilities: Vec<String>,
    probe: bool,
}

impl Push {
    fn into_params(self) -> Map<String, Value> {
        let strings = |v: Vec<String>| Value::Array(v.into_iter().map(Value::String).collect());
        let mut m = Map::new();
        m.insert(
            "refs".into(),
            Value::Array(self.refs.iter().map(RefUpdate::to_json).collect()),
        );
        m.insert("push_options".into(), strings(self.push_options));
        m.insert("capabilities".into(), strings(self.capabilities));
        m.insert("probe".into(), Value::Bool(self.probe));
        m
    }
}

/// Parses a push body: `shallow` lines, commands, flush, push options and flush when
/// negotiated, then a packfile (none when every command is a delete). The 4-byte body `0000`
/// is git's probe before a large chunked push.
fn parse_push(body: &[u8]) -> Result<Push, ClassifyError> {
    if body == b"0000" {
        return Ok(Push {
            probe: true,
            ..Push::default()
        });
    }
    let mut reader = PktReader::new(body);
    let list = read_command_list(&mut reader)?;
    let push_options = if list.capabilities.iter().any(|c| c == "push-options") {
        read_push_options(&mut reader)?
    } else {
        Vec::new()
    };
    check_pack(reader.rest(), &list)?;
    Ok(Push {
        refs: list.refs,
        push_options,
        capabilities: list.capabilities,
        probe: false,
    })
}

/// The command list of a push, up to and including its flush.
#[derive(Debug, Default)]
struct CommandList {
    refs: Vec<RefUpdate>,
    capabilities: Vec<String>,
    /// Hex length of every object id in the push (40 for SHA-1, 64 for SHA-256).
    oid_len: Option<usize>,
}

fn read_command_list(reader: &mut PktReader<'_>) -> Result<CommandList, ClassifyError> {
    let mut list = CommandList::default();
    let mut names = HashSet::new();
    let mut shallow = 0usize;
    while let Pkt::Data(line) = reader.read()? {
        let line = chomp(line);
        if let Some(oid) = line.strip_prefix(b"shallow ") {
            shallow += 1;
            check_shallow(oid, shallow, &mut list)?;
            continue;
        }
        if list.refs.len() >= MAX_COMMANDS {
            return Err(bad(format!(
                "a git push may update at most {MAX_COMMANDS} refs"
            )));
        }
        let command = if list.refs.is_empty() {
            first_command(line, &mut list)?
        } else {
            line
        };
        let update = parse_command(command, &mut list.oid_len)?;
        if !names.insert(update.name.clone()) {
            return Err(bad(format!("the git push names {:?} twice", update.name)));
        }
        list.refs.push(update);
    }
    if list.refs.is_empty() {
        return Err(bad(
            "a git push with no commands must be exactly the 4-byte probe 0000",
        ));
    }
    check_object_format(&list)?;
    Ok(list)
}

/// A `shallow <oid>` line: only before the commands, with a well-formed id.
fn check_shallow(oid: &[u8], count: usize, list: &mut CommandList) -> Result<(), ClassifyError> {
    if !list.refs.is_empty() {
        return Err(bad("a git push has a shallow line after its commands"));
    }
    if count > MAX_SHALLOW {
        return Err(bad(format!(
            "a git push may carry at most {MAX_SHALLOW} shallow lines"
        )));
    }
    parse_oid(oid, &mut list.oid_len).map(|_| ())
}

/// Splits the first command from its capabilities (after NUL) and records them.
fn first_command<'a>(line: &'a [u8], list: &mut CommandList) -> Result<&'a [u8], ClassifyError> {
    let Some(nul) = line.iter().position(|&b| b == 0) else {
        return Ok(line);
    };
    let (command, caps) = line.split_at(nul);
    list.capabilities = parse_capabilities(caps.get(1..).unwrap_or_default())?;
    Ok(command)
}

/// Space-separated capabilities: printable ASCII, no name twice, `push-options` without a
/// value (git's receive-pack would also take `push-options=x` as asking for push options).
fn parse_capabilities(caps: &[u8]) -> Result<Vec<String>, ClassifyError> {
    let mut out: Vec<String> = Vec::new();
    let mut seen = HashSet::new();
    for token in caps.split(|&b| b == b' ').filter(|t| !t.is_empty()) {
        let text = std::str::from_utf8(token)
            .ok()
            .filter(|t| t.bytes().all(|b| b.is_ascii_graphic()))
            .ok_or_else(|| {
                bad("a git push capability has a control, NUL or non-ASCII character")
            })?;
        let name = text.split('=').next().unwrap_or(text);
        if name == "push-options" && text != name {
            return Err(bad("the git push capability push-options takes no value"));
        }
        if !seen.insert(name.to_string()) {
            return Err(bad(format!("the git push capability {name:?} is repeated")));
        }
        out.push(text.to_string());
    }
    Ok(out)
}

/// `object-format=sha1|sha256`, when sent, must agree with the length of the ids.
fn check_object_format(list: &CommandList) -> Result<(), ClassifyError> {
    let Some(format) = list
        .capabilities
        .iter()
        .find_map(|c| c.strip_prefix("object-format="))
    else {
        return Ok(());
    };
    let expected = match format {
        "sha1" => 40,
        "sha256" => 64,
        other => return Err(bad(format!("unknown git object format {other:?}"))),
    };
    if list.oid_len == Some(expected) {
        return Ok(());
    }
    Err(bad(format!(
        "the git push ids do not match object-format={format}"
    )))
}

/// `<old> SP <new> SP <refname>`: ids of one hash length, lower-case hex, not both zero.
fn parse_command(line: &[u8], oid_len: &mut Option<usize>) -> Result<RefUpdate, ClassifyError> {
    let mut parts = line.splitn(3, |&b| b == b' ');
    let (Some(old), Some(new), Some(name)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(bad(format!(
            "a git push command is not '<old> <new> <ref>': {:?}",
            String::from_utf8_lossy(line)
        )));
    };
    let old = parse_oid(old, oid_len)?;
    let new = parse_oid(new, oid_len)?;
    let kind = match (is_zero(&old), is_zero(&new)) {
        (true, true) => return Err(bad("a git push command has two zero ids")),
        (true, false) => Kind::Create,
        (false, true) => Kind::Delete,
        (false, false) => Kind::Update,
    };
    let name = parse_refname(name, kind)?;
    Ok(RefUpdate {
        name,
        old,
        new,
        kind,
    })
}

/// An object id: 40 (SHA-1) or 64 (SHA-256) lower-case hex digits, the same length as every
/// other id in the push.
fn parse_oid(hex: &[u8], oid_len: &mut Option<usize>) -> Result<String, ClassifyError> {
    let well_formed = matches!(hex.len(), 40 | 64)
        && hex
            .iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b));
    if !well_formed {
        return Err(bad(format!(
            "{:?} is not a 40- or 64-digit lower-case hex object id",
            String::from_utf8_lossy(hex)
        )));
    }
    if *oid_len.get_or_insert(hex.len()) != hex.len() {
        return Err(bad("a git push mixes SHA-1 and SHA-256 object ids"));
    }
    Ok(String::from_utf8_lossy(hex).into_owned())
}

fn is_zero(oid: &str) -> bool {
    oid.bytes().all(|b| b == b'0')
}

/// A ref name as git's receive-pack accepts it: `refs/` then a name that passes
/// `check_refname_format` (one level after `refs/` only for deletes). UTF-8 only, so that the
/// policy sees exactly the bytes the server will.
fn parse_refname(raw: &[u8], kind: Kind) -> Result<String, ClassifyError> {
    let name = std::str::from_utf8(raw).map_err(|_| bad("a git push ref name is not UTF-8"))?;
    let refused = |why: &str| bad(format!("the git push ref name {name:?} {why}"));
    let rest = name
        .strip_prefix("refs/")
        .ok_or_else(|| refused("does not start with refs/"))?;
    if let Some(c) = rest.chars().find(|&c| forbidden_in_refname(c)) {
        return Err(refused(&format!("contains the forbidden character {c:?}")));
    }
    if rest.contains("..") || rest.contains("@{") || rest == "@" || rest.ends_with('.') {
        return Err(refused("contains '..' or '@{', is '@', or ends in '.'"));
    }
    let components: Vec<&str> = rest.split('/').collect();
    if components
        .iter()
        .any(|c| c.is_empty() || c.starts_with('.') || c.ends_with(".lock"))
    {
        return Err(refused(
            "has an empty component or one starting with '.' or ending in .lock",
        ));
    }
    if components.len() < 2 && kind != Kind::Delete {
        return Err(refused("has only one level below refs/"));
    }
    Ok(name.to_string())
}

/// Characters git never allows in a ref name: controls, space, `~^:?*[\`.
fn forbidden_in_refname(c: char) -> bool {
    c.is_ascii_control() || matches!(c, ' ' | '~' | '^' | ':' | '?' | '*' | '[' | '\\')
}

/// Push options: text lines up to a flush. No NUL (receive-pack would cut the option there),
/// no control characters, UTF-8.
fn read_push_options(reader: &mut PktReader<'_>) -> Result<Vec<String>, ClassifyError> {
    let mut options = Vec::new();
    while let Pkt::Data(line) = reader.read()? {
        if options.len() >= MAX_PUSH_OPTIONS {
            return Err(bad(format!(
                "a git push may carry at most {MAX_PUSH_OPTIONS} push options"
            )));
        }
        let option = std::str::from_utf8(chomp(line))
            .ok()
            .filter(|o| !o.chars().any(char::is_control))
            .ok_or_else(|| bad("a git push option is not UTF-8 text without control characters"))?;
        options.push(option.to_string());
    }
    Ok(options)
}

/// After the lists: a packfile when any ref is created or updated, nothing when every command
/// is a delete (receive-pack then reads no pack, so trailing bytes would go unseen).
fn check_pack(rest: &[u8], list: &CommandList) -> Result<(), ClassifyError> {
    let delete_only = list.refs.iter().all(|r| r.kind == Kind::Delete);
    if delete_only {
        if rest.is_empty() {
            return Ok(());
        }
        return Err(bad(
            "a delete-only git push has bytes after its command list",
        ));
    }
    let trailer = list.oid_len.unwrap_or(40) / 2;
    let version = rest.get(4..8);
    let well_formed = rest.starts_with(b"PACK")
        && matches!(version, Some([0, 0, 0, 2 | 3]))
        && rest.len() >= PACK_HEADER_LEN + trailer;
    if well_formed {
        return Ok(());
    }
    Err(bad(
        "a git push that creates or updates refs must end in a packfile (PACK, version 2 or 3)",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderMap;
    use serde_json::json;

    const Z40: &str = "0000000000000000000000000000000000000000";
    const A40: &str = "1111111111111111111111111111111111111111";
    const B40: &str = "2222222222222222222222222222222222222222";
    const C40: &str = "3333333333333333333333333333333333333333";

    /// One command as `(old, new, refname)`.
    type Cmd<'a> = (&'a str, &'a str, &'a str);

    /// An empty version-2 pack, as `git pack-objects` writes it (header + SHA-1 trailer).
    fn empty_pack() -> Vec<u8> {
        let mut p = b"PACK\0\0\0\x02\0\0\0\0".to_vec();
        p.extend(hex::decode("029d08823bd8a8eab510ad6ac75c823cfd3ed31e").unwrap());
        p
    }

    /// One pkt-line, as git's `packet_buf_write` frames it.
    fn pkt(payload: impl AsRef<[u8]>) -> Vec<u8> {
        let payload = payload.as_ref();
        let mut out = format!("{:04x}", payload.len() + 4).into_bytes();
        out.extend_from_slice(payload);
        out
    }

    /// A push body the way send-pack builds it: caps after NUL on the first command (with
    /// git's leading space), flush, options and flush if any, then the pack (if given).
    fn push_body(cmds: &[Cmd<'_>], caps: &str, opts: &[&str], pack: bool) -> Vec<u8> {
        let mut body = Vec::new();
        for (i, (old, new, name)) in cmds.iter().enumerate() {
            let line = match i {
                0 => format!("{old} {new} {name}\0{caps}\n"),
                _ => format!("{old} {new} {name}\n"),
            };
            body.extend(pkt(line));
        }
        body.extend(b"0000");
        if !opts.is_empty() {
            for o in opts {
                body.extend(pkt(format!("{o}\n")));
            }
            body.extend(b"0000");
        }
        if pack {
            body.extend(empty_pack());
        }
        body
    }

    fn run(
        host: &str,
        method: &str,
        path: &str,
        query: &[(&str, &str)],
        body: &[u8],
    ) -> Option<Result<Action, ClassifyError>> {
        let headers = HeaderMap::new();
        let query: Vec<(String, String)> = query
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        classify(&Request {
            host,
            method,
            path,
            query: &query,
            headers: &headers,
            body,
        })
    }

    fn push(body: &[u8]) -> Result<Action, ClassifyError> {
        run(
            "github.com",
            "POST",
            "/acme/api.git/git-receive-pack",
            &[],
            body,
        )
        .unwrap_or_else(|| Err(bad("not classified as git")))
    }

    fn push_ok(body: &[u8]) -> Map<String, Value> {
        match push(body) {
            Ok(a) => {
                assert_eq!(a.name, "git.push");
                a.params
            }
            Err(e) => panic!("push refused: {e}"),
        }
    }

    fn push_err(body: &[u8]) -> String {
        match push(body) {
            Ok(a) => panic!("push accepted: {:?}", a.params),
            Err(ClassifyError::Malformed(why)) => why,
        }
    }

    #[test]
    fn single_update() {
        let body = push_body(
            &[(A40, B40, "refs/heads/main")],
            " report-status",
            &[],
            true,
        );
        let p = push_ok(&body);
        assert_eq!(
            Value::Object(p),
            json!({
                "repo": "acme/api", "owner": "acme", "service": "git-receive-pack",
                "phase": "request",
                "refs": [{"name": "refs/heads/main", "old": A40, "new": B40, "kind": "update"}],
                "push_options": [], "capabilities": ["report-status"], "probe": false
            })
        );
    }

    #[test]
    fn create_and_delete() {
        let body = push_body(
            &[(Z40, A40, "refs/heads/new"), (B40, Z40, "refs/tags/old")],
            " report-status delete-refs",
            &[],
            true,
        );
        let p = push_ok(&body);
        assert_eq!(p["refs"][0]["kind"], "create");
        assert_eq!(p["refs"][1]["kind"], "delete");
        assert_eq!(p["refs"][1]["name"], "refs/tags/old");
        assert_eq!(p["refs"][1]["new"], Z40);
    }

    #[test]
    fn multi_command_with_capabilities_and_push_options() {
        let caps = " report-status side-band-64k atomic push-options agent=git/2.47.0";
        let body = push_body(
            &[
                (A40, B40, "refs/heads/main"),
                (Z40, C40, "refs/heads/feature/x"),
                (C40, Z40, "refs/heads/gone"),
            ],
            caps,
            &["ci.skip", "merge_request.create"],
            true,
        );
        let p = push_ok(&body);
        assert_eq!(
            p["capabilities"],
            json!([
                "report-status",
                "side-band-64k",
                "atomic",
                "push-options",
                "agent=git/2.47.0"
            ])
        );
        assert_eq!(
            p["push_options"],
            json!(["ci.skip", "merge_request.create"])
        );
        let names: Vec<&Value> = p["refs"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| &r["name"])
            .collect();
        assert_eq!(
            names,
            ["refs/heads/main", "refs/heads/feature/x", "refs/heads/gone"]
        );
        assert_eq!(p["probe"], false);
    }

    #[test]
    fn push_options_negotiated_but_empty_list() {
        let mut body = push_body(
            &[(A40, B40, "refs/heads/main")],
            " push-options",
            &[],
            false,
        );
        body.extend(b"0000");
        body.extend(empty_pack());
        assert_eq!(push_ok(&body)["push_options"], json!([]));
    }

    #[test]
    fn delete_only_push_has_no_pack() {
        let body = push_body(
            &[(A40, Z40, "refs/heads/old")],
            " report-status delete-refs",
            &[],
            false,
        );
        let p = push_ok(&body);
        assert_eq!(p["refs"][0]["kind"], "delete");
        // One level below refs/ is allowed for a delete, as receive-pack allows it.
        let body = push_body(&[(A40, Z40, "refs/stash")], "", &[], false);
        assert_eq!(push_ok(&body)["refs"][0]["name"], "refs/stash");
    }

    #[test]
    fn the_probe() {
        let p = push_ok(b"0000");
        assert_eq!(p["probe"], true);
        assert_eq!(p["refs"], json!([]));
        assert_eq!(p["push_options"], json!([]));
        assert_eq!(p["capabilities"], json!([]));
    }

    #[test]
    fn sha256_ids() {
        let (old, new) = ("a".repeat(64), "b".repeat(64));
        let caps = " report-status object-format=sha256";
        let mut body = push_body(&[(&old, &new, "refs/heads/main")], caps, &[], false);
        let mut pack = b"PACK\0\0\0\x02\0\0\0\0".to_vec();
        pack.extend([0u8; 32]);
        body.extend(pack);
        let p = push_ok(&body);
        assert_eq!(p["refs"][0]["old"], old);
        // A 20-byte trailer is too short for a SHA-256 pack.
        let mut short = push_body(&[(&old, &new, "refs/heads/main")], caps, &[], false);
        short.extend(empty_pack());
        assert!(push_err(&short).contains("packfile"));
        // Without object-format the id length alone decides.
        let body = push_body(&[(&old, &"0".repeat(64), "refs/heads/x")], "", &[], false);
        assert_eq!(push_ok(&body)["refs"][0]["kind"], "delete");
    }

    #[test]
    fn object_format_must_match_ids() {
        let body = push_body(
            &[(A40, B40, "refs/heads/main")],
            " object-format=sha256",
            &[],
            true,
        );
        assert!(push_err(&body).contains("object-format"));
        let body = push_body(
            &[(A40, B40, "refs/heads/main")],
            " object-format=md5",
            &[],
            true,
        );
        assert!(push_err(&body).contains("object format"));
        let body = push_body(
            &[(A40, B40, "refs/heads/main")],
            " object-format=sha1",
            &[],
            true,
        );
        push_ok(&body);
    }

    #[test]
    fn shallow_lines_are_skipped() {
        let mut body = pkt(format!("shallow {C40}\n"));
        body.extend(pkt(format!("shallow {A40}")));
        body.extend(push_body(
            &[(A40, B40, "refs/heads/main")],
            " report-status",
            &[],
            true,
        ));
        let p = push_ok(&body);
        assert_eq!(p["refs"].as_array().map(Vec::len), Some(1));
    }

    #[test]
    fn uppercase_pkt_length_is_read_as_git_reads_it() {
        // A 170-byte line has length 0x00AE.
        let name = format!("refs/heads/{}", "n".repeat(76));
        let line = format!("{A40} {B40} {name}\n");
        assert_eq!(line.len() + 4, 0xae);
        let mut body = format!("00AE{line}0000").into_bytes();
        body.extend(empty_pack());
        push_ok(&body);
    }

    #[test]
    fn discovery_for_both_services() {
        for (service, name) in [
            ("git-upload-pack", "git.fetch"),
            ("git-receive-pack", "git.push"),
        ] {
            let a = run(
                "github.com",
                "GET",
                "/acme/api/info/refs",
                &[("service", service)],
                b"",
            );
            let a = a
                .and_then(Result::ok)
                .map(|a| (a.name, Value::Object(a.params)));
            assert_eq!(
                a,
                Some((
                    name.to_string(),
                    json!({"repo": "acme/api", "owner": "acme", "service": service, "phase": "discovery"})
                ))
            );
        }
    }

    #[test]
    fn fetch_request() {
        let body = [
            pkt("command=ls-refs\n"),
            b"0001".to_vec(),
            pkt("peel\n"),
            b"0000".to_vec(),
        ]
        .concat();
        let a = run(
            "github.com",
            "POST",
            "/acme/api.git/git-upload-pack",
            &[],
            &body,
        );
        let a = a
            .and_then(Result::ok)
            .map(|a| (a.name, Value::Object(a.params)));
        assert_eq!(
            a,
            Some((
                "git.fetch".to_string(),
                json!({"repo": "acme/api", "owner": "acme", "service": "git-upload-pack", "phase": "request"})
            ))
        );
    }

    #[test]
    fn dot_git_suffix_and_case_are_canonical() {
        let q = [("service", "git-receive-pack")];
        for path in [
            "/Acme/API.git/info/refs",
            "/acme/api/info/refs",
            "/ACME/Api.GIT/info/refs",
        ] {
            let p = run("github.com", "GET", path, &q, b"")
                .and_then(Result::ok)
                .map(|a| a.params);
            assert_eq!(
                p.as_ref().map(|p| &p["repo"]),
                Some(&json!("acme/api")),
                "{path}"
            );
            assert_eq!(
                p.as_ref().map(|p| &p["owner"]),
                Some(&json!("acme")),
                "{path}"
            );
        }
    }

    #[test]
    fn gist_single_segment() {
        let q = [("service", "git-upload-pack")];
        let a = run("gist.github.com", "GET", "/AbC123.git/info/refs", &q, b"");
        let p = a.and_then(Result::ok).map(|a| a.params);
        assert_eq!(p.as_ref().map(|p| &p["repo"]), Some(&json!("abc123")));
        assert_eq!(p.as_ref().map(|p| p.contains_key("owner")), Some(false));
        let a = run("gist.github.com", "GET", "/user/abc123/info/refs", &q, b"");
        assert!(matches!(a, Some(Err(_))), "two segments on gist.github.com");
    }

    #[test]
    fn other_hosts_take_any_depth() {
        let q = [("service", "git-upload-pack")];
        let a = run(
            "git.example.com",
            "GET",
            "/group/sub/proj.git/info/refs",
            &q,
            b"",
        );
        let p = a.and_then(Result::ok).map(|a| a.params);
        assert_eq!(
            p.as_ref().map(|p| &p["repo"]),
            Some(&json!("group/sub/proj"))
        );
        assert_eq!(p.as_ref().map(|p| &p["owner"]), Some(&json!("group")));
    }

    #[test]
    fn non_git_paths_are_none() {
        for path in [
            "/repos/o/r",
            "/o/r/info",
            "/o/r/git-receive-packx",
            "/o/r/info/refs/",
            "/o/r/xinfo/refs/x",
            "/o/r.git/info/lfs/objects/batch",
        ] {
            assert!(
                run("github.com", "POST", path, &[], b"").is_none(),
                "{path}"
            );
        }
        let contents = "/repos/o/r/contents/info/refs";
        assert!(run("api.github.com", "GET", contents, &[], b"").is_none());
        assert!(
            run(
                "ghe.example.com",
                "GET",
                "/api/v3/repos/o/r/contents/info/refs",
                &[],
                b""
            )
            .is_none()
        );
        let branch = "/repos/o/r/git/refs/heads/git-receive-pack";
        assert!(run("api.github.com", "PATCH", branch, &[], b"").is_none());
    }

    fn refused(host: &str, method: &str, path: &str, query: &[(&str, &str)], body: &[u8]) -> bool {
        matches!(run(host, method, path, query, body), Some(Err(_)))
    }

    #[test]
    fn bad_endpoints_are_refused() {
        let recv = [("service", "git-receive-pack")];
        let gh = "github.com";
        assert!(refused(gh, "GET", "/o/r/git-receive-pack", &[], b""));
        assert!(refused(gh, "PUT", "/o/r/git-upload-pack", &[], b""));
        assert!(refused(gh, "POST", "/o/r/info/refs", &recv, b""));
        assert!(refused(gh, "HEAD", "/o/r/info/refs", &recv, b""));
        assert!(refused(gh, "GET", "/o/r/info/refs", &[], b""));
        assert!(refused(
            gh,
            "GET",
            "/o/r/info/refs",
            &[("service", "git-receive-pack\0")],
            b""
        ));
        assert!(refused(
            gh,
            "GET",
            "/o/r/info/refs",
            &[("service", "git-upload-archive")],
            b""
        ));
        assert!(refused(
            gh,
            "GET",
            "/o/r/info/refs",
            &[("service", "GIT-RECEIVE-PACK")],
            b""
        ));
        let two = [
            ("service", "git-upload-pack"),
            ("service", "git-receive-pack"),
        ];
        assert!(refused(gh, "GET", "/o/r/info/refs", &two, b""));
        let extra = [("service", "git-upload-pack"), ("x", "1")];
        assert!(refused(gh, "GET", "/o/r/info/refs", &extra, b""));
        assert!(refused(gh, "GET", "/o/r/info/refs", &recv, b"body"));
        assert!(refused(gh, "POST", "/o/r/git-receive-pack", &recv, b"0000"));
        assert!(refused(gh, "POST", "/o/r/Git-Receive-Pack", &[], b"0000"));
        assert!(refused(gh, "GET", "/o/r/INFO/refs", &recv, b""));
    }

    #[test]
    fn bad_repo_paths_are_refused() {
        let q = [("service", "git-upload-pack")];
        for (host, path) in [
            ("github.com", "/info/refs"),
            ("git.example.com", "/info/refs"),
            ("github.com", "/o/info/refs"),
            ("github.com", "/o/r/x/info/refs"),
            ("github.com", "/o/.git/info/refs"),
            ("github.com", "/o/../info/refs"),
            ("github.com", "/o//info/refs"),
            ("github.com", "/o/r%20x/info/refs"),
            ("github.com", "/o/r%2Fx/info/refs"),
            ("gist.github.com", "/.git/info/refs"),
        ] {
            assert!(refused(host, "GET", path, &q, b""), "{host}{path}");
        }
    }

    #[test]
    fn framing_evasions_are_refused() {
        let good = push_body(
            &[(A40, B40, "refs/heads/main")],
            " report-status",
            &[],
            true,
        );
        let cmd = pkt(format!("{A40} {B40} refs/heads/main\n"));
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("truncated pkt-line", good[..30].to_vec()),
            ("truncated length", b"00".to_vec()),
            (
                "bad hex length",
                [b"00zz".to_vec(), good[4..].to_vec()].concat(),
            ),
            (
                "signed hex length",
                [b"+05b".to_vec(), good[4..].to_vec()].concat(),
            ),
            ("length 2", b"0002".to_vec()),
            ("length 3", b"0003".to_vec()),
            (
                "empty pkt",
                [
                    cmd.clone(),
                    b"0004".to_vec(),
                    b"0000".to_vec(),
                    empty_pack(),
                ]
                .concat(),
            ),
            (
                "delim in push",
                [cmd.clone(), b"0001".to_vec(), empty_pack()].concat(),
            ),
            ("missing flush", cmd.clone()),
            (
                "over max length",
                [b"fff5".to_vec(), vec![b'a'; 0xfff5]].concat(),
            ),
            (
                "no commands then pack",
                [b"0000".to_vec(), empty_pack()].concat(),
            ),
            ("two flushes only", b"00000000".to_vec()),
            ("empty body", Vec::new()),
            (
                "junk after flush",
                [cmd.clone(), b"0000junk".to_vec()].concat(),
            ),
            (
                "pkt after flush",
                [
                    cmd.clone(),
                    b"0000".to_vec(),
                    pkt(format!("{B40} {C40} refs/heads/x")),
                ]
                .concat(),
            ),
            (
                "update without pack",
                [cmd.clone(), b"0000".to_vec()].concat(),
            ),
            (
                "pack version 4",
                [
                    cmd.clone(),
                    b"0000PACK\0\0\0\x04\0\0\0\0".to_vec(),
                    vec![0; 20],
                ]
                .concat(),
            ),
            (
                "pack without trailer",
                [cmd.clone(), b"0000PACK\0\0\0\x02\0\0\0\0".to_vec()].concat(),
            ),
        ];
        for (what, body) in cases {
            assert!(push(&body).is_err(), "{what} accepted");
        }
    }

    #[test]
    fn command_evasions_are_refused() {
        let a39 = &A40[..39];
        let a64 = "a".repeat(64);
        let upper = A40.to_uppercase().replace('1', "A");
        let cases: Vec<(&str, Vec<Cmd<'_>>)> = vec![
            ("39-hex id", vec![(a39, B40, "refs/heads/main")]),
            ("mixed-length ids", vec![(A40, &a64, "refs/heads/main")]),
            ("upper-case id", vec![(&upper, B40, "refs/heads/main")]),
            ("two zero ids", vec![(Z40, Z40, "refs/heads/main")]),
            ("space in ref", vec![(A40, B40, "refs/heads/a b")]),
            ("dot-dot in ref", vec![(A40, B40, "refs/heads/../config")]),
            ("control char in ref", vec![(A40, B40, "refs/heads/a\x07")]),
            ("CR in ref", vec![(A40, B40, "refs/heads/main\r")]),
            ("tab in ref", vec![(A40, B40, "refs/heads/\tmain")]),
            ("not under refs/", vec![(A40, B40, "HEAD")]),
            ("empty ref", vec![(A40, B40, "")]),
            ("one level update", vec![(A40, B40, "refs/main")]),
            ("trailing slash", vec![(A40, B40, "refs/heads/main/")]),
            ("double slash", vec![(A40, B40, "refs/heads//main")]),
            ("lock", vec![(A40, B40, "refs/heads/main.lock")]),
            ("dot component", vec![(A40, B40, "refs/heads/.hidden")]),
            ("at-brace", vec![(A40, B40, "refs/heads/a@{1}")]),
            ("glob", vec![(A40, B40, "refs/heads/*")]),
            ("tilde", vec![(A40, B40, "refs/heads/a~1")]),
            (
                "duplicate ref",
                vec![(A40, B40, "refs/heads/main"), (B40, C40, "refs/heads/main")],
            ),
            (
                "second id mixed",
                vec![(A40, B40, "refs/heads/a"), (&a64, &a64, "refs/heads/b")],
            ),
        ];
        for (what, cmds) in cases {
            let body = push_body(&cmds, " report-status", &[], true);
            assert!(push(&body).is_err(), "{what} accepted");
        }
    }

    #[test]
    fn line_evasions_are_refused() {
        let flush_pack = [b"0000".to_vec(), empty_pack()].concat();
        let first = pkt(format!("{A40} {B40} refs/heads/main\0 report-status\n"));
        let cases: Vec<(&str, Vec<u8>)> = vec![
            (
                "NUL in ref",
                [
                    pkt(format!("{A40} {B40} refs/heads/ma\0in\0 report-status\n")),
                    flush_pack.clone(),
                ]
                .concat(),
            ),
            (
                "NUL on a later line",
                [
                    first.clone(),
                    pkt(format!("{B40} {C40} refs/heads/x\0 push-options\n")),
                    flush_pack.clone(),
                ]
                .concat(),
            ),
            (
                "LF inside ref",
                [
                    pkt(format!("{A40} {B40} refs/heads/a\nb\0\n")),
                    flush_pack.clone(),
                ]
                .concat(),
            ),
            (
                "missing ref",
                [pkt(format!("{A40} {B40}\n")), flush_pack.clone()].concat(),
            ),
            (
                "double space",
                [
                    pkt(format!("{A40}  {B40} refs/heads/main\n")),
                    flush_pack.clone(),
                ]
                .concat(),
            ),
            (
                "push-cert",
                [pkt("push-cert\0 report-status\n"), flush_pack.clone()].concat(),
            ),
            (
                "bad shallow",
                [
                    pkt(format!("shallow {}\n", &A40[..39])),
                    first.clone(),
                    flush_pack.clone(),
                ]
                .concat(),
            ),
            (
                "shallow with junk",
                [
                    pkt(format!("shallow {A40}x\n")),
                    first.clone(),
                    flush_pack.clone(),
                ]
                .concat(),
            ),
            (
                "shallow after command",
                [
                    first.clone(),
                    pkt(format!("shallow {A40}\n")),
                    flush_pack.clone(),
                ]
                .concat(),
            ),
            (
                "non-UTF-8 ref",
                [
                    pkt([
                        format!("{A40} {B40} refs/heads/").into_bytes(),
                        vec![0xff, b'\n'],
                    ]
                    .concat()),
                    flush_pack.clone(),
                ]
                .concat(),
            ),
        ];
        for (what, body) in cases {
            assert!(push(&body).is_err(), "{what} accepted");
        }
    }

    #[test]
    fn capability_and_option_evasions_are_refused() {
        let cmd = [(A40, B40, "refs/heads/main")];
        for caps in [
            " push-options=1",
            " atomic atomic",
            " agent=\x01",
            " report-status\tpush-options",
        ] {
            let body = push_body(&cmd, caps, &[], true);
            assert!(push(&body).is_err(), "caps {caps:?} accepted");
        }
        // Options sent without negotiating push-options are bytes where the pack should be.
        let body = push_body(&cmd, " report-status", &["ci.skip"], true);
        assert!(push_err(&body).contains("packfile"));
        // Negotiated, but the list never ends.
        let mut body = push_body(&cmd, " push-options", &[], false);
        body.extend(pkt("ci.skip\n"));
        assert!(push_err(&body).contains("flush"));
        for opt in ["a\0b", "a\x1bb", "a\nb"] {
            let body = push_body(&cmd, " push-options", &[opt], true);
            assert!(push(&body).is_err(), "option {opt:?} accepted");
        }
        // git -o '' frames an empty option as 0004, which older git read as a flush.
        let mut body = push_body(&cmd, " push-options", &[], false);
        body.extend(b"00040000");
        body.extend(empty_pack());
        assert!(push_err(&body).contains("0004"));
    }

    #[test]
    fn delete_only_push_with_trailing_bytes_is_refused() {
        let body = push_body(&[(A40, Z40, "refs/heads/old")], "", &[], true);
        assert!(push_err(&body).contains("delete-only"));
    }

    #[test]
    fn command_cap() {
        let names: Vec<String> = (0..=MAX_COMMANDS)
            .map(|i| format!("refs/heads/b{i}"))
            .collect();
        let cmds: Vec<Cmd<'_>> = names.iter().map(|n| (Z40, A40, n.as_str())).collect();
        let body = push_body(&cmds, "", &[], true);
        assert!(push_err(&body).contains("at most"));
        let body = push_body(&cmds[..MAX_COMMANDS], "", &[], true);
        assert_eq!(
            push_ok(&body)["refs"].as_array().map(Vec::len),
            Some(MAX_COMMANDS)
        );
    }
}
