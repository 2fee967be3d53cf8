//! Route tables and the segment trie that matches request paths against them.
//!
//! Tables are generated from the providers' API descriptions (`tools/gen_routes.py`) into
//! `src/actions/generated/`. A template is a path of segments: literals, `{name}` (exactly one
//! segment) and `{+name}` (one or more segments, for names such as git refs and file paths
//! that may hold `/`). Matching walks the trie preferring, at each segment, a literal, then a
//! one-segment parameter, then a multi-segment parameter taking as few segments as it can: so
//! `/repos/o/r/branches/a/b/protection` is the protection of branch `a/b`.

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
    literal: HashMap<&'static str, Node>,
    param: Option<Box<Node>>,
    multi: Option<Box<Node>>,
    /// Routes ending here: (method, index into the table).
    routes: Vec<(&'static str, usize)>,
}

#[derive(Debug, Clone, Copy)]
enum Seg {
    Literal(&'static str),
    Param(&'static str),
    Multi(&'static str),
}

/// A trie over one route table.
#[derive(Debug)]
pub struct Router {
    table: &'static [Route],
    root: Node,
}

/// Why a table could not be loaded (a generator bug, caught by tests).
#[derive(Debug, thiserror::Error)]
#[error("route table: {0}")]
pub struct TableError(String);

impl Router {
    /// Builds the trie; two routes with the same method and segment shape are an error.
    pub fn new(table: &'static [Route]) -> Result<Router, TableError> {
        let mut root = Node::default();
        for (i, route) in table.iter().enumerate() {
            let mut node = &mut root;
            for seg in segments(route.template)? {
                node = match seg {
                    Seg::Literal(l) => node.literal.entry(l).or_default(),
                    Seg::Param(_) => node.param.get_or_insert_with(Box::default),
                    Seg::Multi(_) => node.multi.get_or_insert_with(Box::default),
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
        Ok(Router { table, root })
    }

    /// The table this router matches against.
    pub fn table(&self) -> &'static [Route] {
        self.table
    }

    /// Finds the route for `method` and `path` (a canonical path without query); HEAD falls
    /// back to GET. Captured values are percent-decoded.
    pub fn find(&self, method: &str, path: &str) -> Option<(&'static Route, Captured)> {
        let segs: Vec<&str> = path.strip_prefix('/')?.split('/').collect();
        let mut spans = Vec::new();
        let found = walk(&self.root, &segs, 0, method, &mut spans).or_else(|| {
            (method == "HEAD").then(|| walk(&self.root, &segs, 0, "GET", &mut spans))?
        })?;
        let route = &self.table[found];
        let names = segments(route.template).ok()?;
        let mut captured = Vec::new();
        let mut spans = spans.into_iter();
        for seg in names {
            let name = match seg {
                Seg::Literal(_) => continue,
                Seg::Param(n) | Seg::Multi(n) => n,
            };
            let (from, to) = spans.next()?;
            captured.push((name, percent_decode(&segs[from..to].join("/"))));
        }
        Some((route, captured))
    }
}

/// Depth-first match; `spans` collects the segment ranges of parameters on the way.
fn walk(
    node: &Node,
    segs: &[&str],
    at: usize,
    method: &str,
    spans: &mut Vec<(usize, usize)>,
) -> Option<usize> {
    if at == segs.len() {
        return node
            .routes
            .iter()
            .find(|(m, _)| *m == method)
            .map(|(_, i)| *i);
    }
    if let Some(next) = node.literal.get(segs[at]) {
        if let Some(i) = walk(next, segs, at + 1, method, spans) {
            return Some(i);
        }
    }
    if let Some(next) = &node.param {
        if !segs[at].is_empty() {
            spans.push((at, at + 1));
            if let Some(i) = walk(next, segs, at + 1, method, spans) {
                return Some(i);
            }
            spans.pop();
        }
    }
    if let Some(next) = &node.multi {
        for end in at + 1..=segs.len() {
            if segs[end - 1].is_empty() {
                break;
            }
            spans.push((at, end));
            if let Some(i) = walk(next, segs, end, method, spans) {
                return Some(i);
            }
            spans.pop();
        }
    }
    None
}

fn segments(template: &'static str) -> Result<Vec<Seg>, TableError> {
    let rest = template
        .strip_prefix('/')
        .ok_or_else(|| TableError(format!("{template}: does not start with '/'")))?;
    rest.split('/')
        .map(
            |s| match s.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                Some(name) => match name.strip_prefix('+') {
                    Some(multi) => Ok(Seg::Multi(multi)),
                    None => Ok(Seg::Param(name)),
                },
                None if s.contains(['{', '}']) => Err(TableError(format!(
                    "{template}: a segment mixes text and a parameter"
                ))),
                None => Ok(Seg::Literal(s)),
            },
        )
        .collect()
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
