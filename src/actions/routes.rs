//! Route tables and the segment trie that matches request paths against them.
//!
//! Tables are generated from the providers' API descriptions (`tools/gen_routes.py`) into
//! `src/actions/generated/`. A template is a path of segments: literals, `{name}` (exactly one
//! segment), `{+name}` (one or more segments, for names such as git refs and file paths that
//! may hold `/`), and patterns that mix text and parameters inside one segment (Google's
//! `{id}:verb`, GitHub's `{base}...{head}`). Matching walks the trie preferring, at each
//! segment, a literal, then a pattern, then a one-segment parameter, then a multi-segment
//! parameter taking as few segments as it can: so `/repos/o/r/branches/a/b/protection` is the
//! protection of branch `a/b`, and `/keypairs/k1:disable` is the `:disable` method of `k1`.

use std::borrow::Cow;
use std::collections::HashMap;

/// Where a parameter travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loc {
    Path,
    Query,
    Body,
}

/// A parameter's type, from the API description.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ty {
    Str,
    Int,
    Num,
    Bool,
    Array,
    Object,
    /// The description allows several types, or none is given.
    Any,
}

/// One described parameter of an operation.
#[derive(Debug)]
pub struct Param {
    pub name: &'static str,
    pub loc: Loc,
    pub ty: Ty,
}

/// Which variant of an endpoint a route is (uploads carry media, not JSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// JSON (or no) body.
    Plain,
    /// Google media upload: `/upload/...`, the body is the media or a multipart/related.
    UploadSimple,
    /// Google resumable upload: `/resumable/upload/...` starts a session.
    UploadResumable,
}

/// One operation at one method and path template.
#[derive(Debug)]
pub struct Route {
    /// Upper-case HTTP method.
    pub method: &'static str,
    /// Path template, e.g. `/repos/{owner}/{repo}/git/refs/{+ref}`.
    pub template: &'static str,
    /// The action name, e.g. `github.repos.delete`.
    pub action: &'static str,
    pub kind: Kind,
    pub params: &'static [Param],
}

/// A path parameter captured by a match, percent-decoded.
pub type Captured = Vec<(&'static str, String)>;

#[derive(Debug, Default)]
struct Node {
    /// Literal segments, lower-cased: matching ignores ASCII case, so `/REPOS/o/r` is the same
    /// operation as `/repos/o/r` whether or not the upstream would accept it (stricter).
    literal: HashMap<String, Node, Fnv>,
    /// Segments mixing text and parameters, keyed by their shape (parameter names blanked).
    patterns: Vec<(String, Vec<Part>, Node)>,
    param: Option<Box<Node>>,
    multi: Option<Box<Node>>,
    /// Routes ending here: (method, index into the table).
    routes: Vec<(&'static str, usize)>,
}

/// FNV-1a for the literal-segment maps: segments are short, and SipHash's keyed strength buys
/// nothing here (the maps are built once from the static tables, and a lookup never inserts).
#[derive(Debug, Default, Clone, Copy)]
struct Fnv;

impl std::hash::BuildHasher for Fnv {
    type Hasher = FnvHasher;
    fn build_hasher(&self) -> FnvHasher {
        FnvHasher(0xcbf2_9ce4_8422_2325)
    }
}

struct FnvHasher(u64);

impl std::hash::Hasher for FnvHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

#[derive(Debug, Clone)]
enum Seg {
    Literal(&'static str),
    Param(&'static str),
    Multi(&'static str),
    Pattern(Vec<Part>),
}

/// A piece of a pattern segment.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(&'static str),
    Param(&'static str),
}

fn shape(parts: &[Part]) -> String {
    parts
        .iter()
        .map(|p| match p {
            Part::Text(t) => (*t).to_string(),
            Part::Param(_) => "{}".to_string(),
        })
        .collect()
}

/// A trie over one route table.
#[derive(Debug)]
pub struct Router {
    table: &'static [Route],
    root: Node,
    /// Per route, the names of its parameters in template order.
    names: Vec<Vec<&'static str>>,
    /// Per route, whether its path and query parameter names are all different and none
    /// begins with `body_` (see [`Match::distinct_names`]).
    distinct: Vec<bool>,
}

/// Why a table could not be loaded (a generator bug, caught by tests).
#[derive(Debug, thiserror::Error)]
#[error("route table: {0}")]
pub struct TableError(String);

impl Router {
    /// Builds the trie; two routes with the same method and segment shape are an error.
    pub fn new(table: &'static [Route]) -> Result<Router, TableError> {
        let mut root = Node::default();
        let mut names = Vec::with_capacity(table.len());
        let mut distinct = Vec::with_capacity(table.len());
        for (i, route) in table.iter().enumerate() {
            let segs = segments(route.template)?;
            let route_names = param_names(&segs);
            if route_names.len() > MAX_CAPTURES {
                return Err(TableError(format!(
                    "{}: more than {MAX_CAPTURES} parameters",
                    route.template
                )));
            }
            distinct.push(distinct_names(&route_names, route));
            names.push(route_names);
            let mut node = &mut root;
            for seg in segs {
                node = match seg {
                    Seg::Literal(l) => node.literal.entry(l.to_ascii_lowercase()).or_default(),
                    Seg::Param(_) => node.param.get_or_insert_with(Box::default),
                    Seg::Multi(_) => node.multi.get_or_insert_with(Box::default),
                    Seg::Pattern(parts) => {
                        let key = shape(&parts);
                        let at = match node.patterns.iter().position(|(k, _, _)| *k == key) {
                            Some(at) => at,
                            None => {
                                node.patterns.push((key, parts, Node::default()));
                                node.patterns.len() - 1
                            }
                        };
                        &mut node.patterns[at].2
                    }
                };
            }
            if let Some((_, j)) = node.routes.iter().find(|(m, _)| *m == route.method) {
                return Err(TableError(format!(
                    "{} {} and {} overlap",
                    route.method, route.template, table[*j].template
                )));
            }
            node.routes.push((route.method, i));
        }
        Ok(Router {
            table,
            root,
            names,
            distinct,
        })
    }

    /// The table this router matches against.
    pub fn table(&self) -> &'static [Route] {
        self.table
    }

    /// Finds the route for `method` and `path` (a canonical path without query); HEAD falls
    /// back to GET. Captured values are percent-decoded.
    pub fn find(&self, method: &str, path: &str) -> Option<(&'static Route, Captured)> {
        let found = self.matched(method, path)?;
        let captured = found
            .captures(path)
            .map(|(n, v)| (n, v.into_owned()))
            .collect();
        Some((found.route, captured))
    }

    /// Like [`Router::find`], without allocating: the parameter values stay byte ranges of
    /// `path` until [`Match::captures`] decodes them.
    pub fn matched(&self, method: &str, path: &str) -> Option<Match<'_>> {
        // Segment byte ranges, on the stack: the canonicaliser allows at most 64 segments;
        // longer paths match nothing.
        let bytes = path.as_bytes();
        if bytes.first() != Some(&b'/') {
            return None;
        }
        let mut buf = [(0usize, 0usize); 64];
        let mut count = 0;
        let mut start = 1;
        for (i, &c) in bytes.iter().enumerate().skip(1) {
            if c == b'/' {
                *buf.get_mut(count)? = (start, i);
                count += 1;
                start = i + 1;
            }
        }
        *buf.get_mut(count)? = (start, bytes.len());
        count += 1;
        let path = Path {
            text: path,
            segs: &buf[..count],
        };
        let mut raw = Ranges::default();
        let found = walk(&self.root, &path, 0, method, &mut raw).or_else(|| {
            (method == "HEAD").then(|| walk(&self.root, &path, 0, "GET", &mut raw))?
        })?;
        let route = self.table.get(found)?;
        let names = self.names.get(found)?;
        if names.len() != raw.len {
            return None;
        }
        Some(Match {
            route,
            names,
            distinct: self.distinct.get(found).copied().unwrap_or(false),
            ranges: raw,
        })
    }
}

/// Most parameters one route may have (checked when a table loads).
const MAX_CAPTURES: usize = 16;

/// Byte ranges of captured parameter values, on the stack.
#[derive(Debug, Clone, Copy)]
struct Ranges {
    buf: [(usize, usize); MAX_CAPTURES],
    len: usize,
}

impl Default for Ranges {
    fn default() -> Ranges {
        Ranges {
            buf: [(0, 0); MAX_CAPTURES],
            len: 0,
        }
    }
}

impl Ranges {
    /// Adds a range; false when full (no route has that many parameters).
    fn push(&mut self, range: (usize, usize)) -> bool {
        match self.buf.get_mut(self.len) {
            Some(slot) => {
                *slot = range;
                self.len += 1;
                true
            }
            None => false,
        }
    }

    fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }
}

/// A matched route and where its parameter values are in the path.
#[derive(Debug)]
pub struct Match<'r> {
    pub route: &'static Route,
    names: &'r [&'static str],
    distinct: bool,
    ranges: Ranges,
}

impl Match<'_> {
    /// Whether the route's path parameters and described query parameters all have different
    /// names, none beginning with `body_`: then no two of them, nor one of them and a body
    /// field renamed `body_<name>`, can land on the same params key.
    pub fn distinct_names(&self) -> bool {
        self.distinct
    }

    /// The path parameters in template order, percent-decoded (borrowed from `path`, the
    /// path given to [`Router::matched`], when there is nothing to decode).
    pub fn captures<'p>(
        &self,
        path: &'p str,
    ) -> impl Iterator<Item = (&'static str, Cow<'p, str>)> + use<'_, 'p> {
        let ranges = self.ranges.buf.get(..self.ranges.len).unwrap_or_default();
        self.names.iter().zip(ranges).map(move |(n, &(from, to))| {
            let v = path.get(from..to).unwrap_or_default();
            let v = if v.contains('%') {
                Cow::Owned(percent_decode(v))
            } else {
                Cow::Borrowed(v)
            };
            (*n, v)
        })
    }
}

/// A request path split into segments (byte ranges of `text`).
struct Path<'a> {
    text: &'a str,
    segs: &'a [(usize, usize)],
}

impl Path<'_> {
    fn seg(&self, at: usize) -> &str {
        let (from, to) = self.segs[at];
        self.text.get(from..to).unwrap_or_default()
    }
}

/// Depth-first match; `raw` collects the byte ranges of parameter values on the way.
fn walk(node: &Node, path: &Path<'_>, at: usize, method: &str, raw: &mut Ranges) -> Option<usize> {
    if at == path.segs.len() {
        return node
            .routes
            .iter()
            .find(|(m, _)| *m == method)
            .map(|(_, i)| *i);
    }
    let seg = path.seg(at);
    let folded = if seg.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(seg.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(seg)
    };
    if let Some(next) = node.literal.get(folded.as_ref()) {
        if let Some(i) = walk(next, path, at + 1, method, raw) {
            return Some(i);
        }
    }
    let (seg_start, seg_end) = path.segs[at];
    // A segment with an encoded `/` stands only for a multi-segment parameter.
    let one_segment = !super::canonical::has_encoded_slash(seg);
    for (_, parts, next) in node.patterns.iter().filter(|_| one_segment) {
        let mark = raw.len;
        if match_pattern(parts, seg, seg_start, raw) {
            if let Some(i) = walk(next, path, at + 1, method, raw) {
                return Some(i);
            }
        }
        raw.truncate(mark);
    }
    if let Some(next) = &node.param {
        if !seg.is_empty() && one_segment && raw.push((seg_start, seg_end)) {
            if let Some(i) = walk(next, path, at + 1, method, raw) {
                return Some(i);
            }
            raw.len -= 1;
        }
    }
    if let Some(next) = &node.multi {
        for end in at + 1..=path.segs.len() {
            if path.seg(end - 1).is_empty() {
                break;
            }
            if !raw.push((seg_start, path.segs[end - 1].1)) {
                break;
            }
            if let Some(i) = walk(next, path, end, method, raw) {
                return Some(i);
            }
            raw.len -= 1;
        }
    }
    None
}

/// Matches one segment (starting at byte `offset` of the path) against a pattern, pushing the
/// ranges of its parameters; each parameter takes a non-empty run up to the first occurrence
/// of the text after it.
fn match_pattern(parts: &[Part], seg: &str, offset: usize, raw: &mut Ranges) -> bool {
    let mut pos = 0;
    for (i, part) in parts.iter().enumerate() {
        let rest = seg.get(pos..).unwrap_or_default();
        match part {
            Part::Text(t) => {
                if !rest.starts_with(t) {
                    return false;
                }
                pos += t.len();
            }
            Part::Param(_) => {
                let end = match parts.get(i + 1) {
                    Some(Part::Text(t)) => match rest.find(t) {
                        Some(e) => e,
                        None => return false,
                    },
                    Some(Part::Param(_)) => return false,
                    None => rest.len(),
                };
                if end == 0 {
                    return false;
                }
                if !raw.push((offset + pos, offset + pos + end)) {
                    return false;
                }
                pos += end;
            }
        }
    }
    pos == seg.len()
}

/// See [`Match::distinct_names`].
fn distinct_names(path_names: &[&'static str], route: &Route) -> bool {
    let query = route.params.iter().filter(|p| p.loc == Loc::Query);
    let all: Vec<&str> = path_names
        .iter()
        .copied()
        .chain(query.map(|p| p.name))
        .collect();
    all.iter().enumerate().all(|(i, n)| {
        !n.starts_with("body_") && all.get(i + 1..).is_none_or(|rest| !rest.contains(n))
    })
}

fn param_names(segs: &[Seg]) -> Vec<&'static str> {
    let mut names = Vec::new();
    for seg in segs {
        match seg {
            Seg::Literal(_) => {}
            Seg::Param(n) | Seg::Multi(n) => names.push(*n),
            Seg::Pattern(parts) => names.extend(parts.iter().filter_map(|p| match p {
                Part::Param(n) => Some(*n),
                Part::Text(_) => None,
            })),
        }
    }
    names
}

fn segments(template: &'static str) -> Result<Vec<Seg>, TableError> {
    let rest = template
        .strip_prefix('/')
        .ok_or_else(|| TableError(format!("{template}: does not start with '/'")))?;
    rest.split('/').map(|s| segment(template, s)).collect()
}

fn segment(template: &str, s: &'static str) -> Result<Seg, TableError> {
    if let Some(name) = s.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
        if !name.contains(['{', '}']) {
            return Ok(match name.strip_prefix('+') {
                Some(multi) => Seg::Multi(multi),
                None => Seg::Param(name),
            });
        }
    }
    if !s.contains(['{', '}']) {
        return Ok(Seg::Literal(s));
    }
    let bad = || TableError(format!("{template}: cannot read the segment {s:?}"));
    let mut parts = Vec::new();
    let mut rest = s;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix('{') {
            let close = after.find('}').ok_or_else(bad)?;
            let name = &after[..close];
            let follows_param = matches!(parts.last(), Some(Part::Param(_)));
            if name.is_empty() || name.starts_with('+') || follows_param {
                return Err(bad());
            }
            parts.push(Part::Param(name));
            rest = &after[close + 1..];
        } else {
            let end = rest.find('{').unwrap_or(rest.len());
            if rest[..end].contains('}') {
                return Err(bad());
            }
            parts.push(Part::Text(&rest[..end]));
            rest = &rest[end..];
        }
    }
    Ok(Seg::Pattern(parts))
}

/// Percent-decodes a path segment (invalid escapes are kept as written; the canonicaliser
/// refuses them before matching).
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push(h * 16 + l);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static TABLE: &[Route] = &[
        Route {
            method: "GET",
            template: "/repos/{owner}/{repo}/branches/{+branch}",
            action: "get-branch",
            kind: Kind::Plain,
            params: &[],
        },
        Route {
            method: "GET",
            template: "/repos/{owner}/{repo}/branches/{+branch}/protection",
            action: "get-protection",
            kind: Kind::Plain,
            params: &[],
        },
        Route {
            method: "GET",
            template: "/repos/{owner}/{repo}/contents/{+path}",
            action: "get-content",
            kind: Kind::Plain,
            params: &[],
        },
        Route {
            method: "GET",
            template: "/repos/{owner}/{repo}",
            action: "get-repo",
            kind: Kind::Plain,
            params: &[],
        },
        Route {
            method: "DELETE",
            template: "/repos/{owner}/{repo}",
            action: "delete-repo",
            kind: Kind::Plain,
            params: &[],
        },
        Route {
            method: "GET",
            template: "/repos/{owner}/{repo}/pulls",
            action: "list-pulls",
            kind: Kind::Plain,
            params: &[],
        },
        Route {
            method: "GET",
            template: "/user/repos",
            action: "list-mine",
            kind: Kind::Plain,
            params: &[],
        },
        Route {
            method: "GET",
            template: "/user/{id}",
            action: "get-user-by-id",
            kind: Kind::Plain,
            params: &[],
        },
        Route {
            method: "GET",
            template: "/keys/{id}",
            action: "get-key",
            kind: Kind::Plain,
            params: &[],
        },
        Route {
            method: "POST",
            template: "/keys/{id}:disable",
            action: "disable-key",
            kind: Kind::Plain,
            params: &[],
        },
        Route {
            method: "GET",
            template: "/compare/{base}...{head}",
            action: "compare",
            kind: Kind::Plain,
            params: &[],
        },
        Route {
            method: "GET",
            template: "/compare/{+basehead}",
            action: "compare-bh",
            kind: Kind::Plain,
            params: &[],
        },
    ];

    fn find(m: &str, p: &str) -> Option<(&'static str, Vec<(&'static str, String)>)> {
        let r = Router::new(TABLE).unwrap();
        r.find(m, p).map(|(route, c)| (route.action, c))
    }

    #[test]
    fn literals_win_over_params_and_multi_takes_the_fewest_segments() {
        assert_eq!(find("GET", "/user/repos").unwrap().0, "list-mine");
        assert_eq!(find("GET", "/user/42").unwrap().0, "get-user-by-id");
        let (a, c) = find("GET", "/repos/o/r/branches/feat/x/protection").unwrap();
        assert_eq!(a, "get-protection");
        assert_eq!(c[2], ("branch", "feat/x".to_string()));
        let (a, c) = find("GET", "/repos/o/r/branches/feat/x").unwrap();
        assert_eq!(a, "get-branch");
        assert_eq!(c[2].1, "feat/x");
        let (_, c) = find("GET", "/repos/O/R/contents/dir/a%20b.txt").unwrap();
        assert_eq!(
            c,
            vec![
                ("owner", "O".into()),
                ("repo", "R".into()),
                ("path", "dir/a b.txt".into())
            ]
        );
    }

    #[test]
    fn pattern_segments() {
        let (a, c) = find("POST", "/keys/k%201:disable").unwrap();
        assert_eq!((a, c), ("disable-key", vec![("id", "k 1".to_string())]));
        assert_eq!(find("GET", "/keys/k1:disable").unwrap().0, "get-key");
        assert!(find("POST", "/keys/:disable").is_none());
        let (a, c) = find("GET", "/compare/main...feat").unwrap();
        assert_eq!(a, "compare");
        assert_eq!(c, vec![("base", "main".into()), ("head", "feat".into())]);
        assert_eq!(find("GET", "/compare/a/b...c").unwrap().0, "compare-bh");
    }

    #[test]
    fn literals_ignore_case_and_params_keep_it() {
        let (a, c) = find("DELETE", "/REPOS/Acme/Api").unwrap();
        assert_eq!(a, "delete-repo");
        assert_eq!(c[0].1, "Acme");
    }

    #[test]
    fn methods_and_head() {
        assert_eq!(find("DELETE", "/repos/o/r").unwrap().0, "delete-repo");
        assert_eq!(find("HEAD", "/repos/o/r").unwrap().0, "get-repo");
        assert!(find("POST", "/repos/o/r").is_none());
        assert!(find("GET", "/repos/o").is_none());
        assert!(
            find("GET", "/repos/o/r/").is_none(),
            "empty segment is no parameter"
        );
        assert!(find("GET", "repos/o/r").is_none());
    }

    #[test]
    fn overlapping_routes_are_a_table_error() {
        static BAD: &[Route] = &[
            Route {
                method: "GET",
                template: "/a/{x}",
                action: "a",
                kind: Kind::Plain,
                params: &[],
            },
            Route {
                method: "GET",
                template: "/a/{y}",
                action: "b",
                kind: Kind::Plain,
                params: &[],
            },
        ];
        assert!(Router::new(BAD).is_err());
    }
}
