//! Action patterns: `.`-separated segments; `**` matches one or more whole segments, `*` inside
//! a segment any run of characters other than `.`, everything else exactly.

/// Most segments a pattern may have (bounds the matcher's recursion).
pub const MAX_SEGMENTS: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    /// `**`
    Many,
    /// A segment with `*` wildcards: the literal pieces between them.
    Glob(Vec<String>),
    Exact(String),
}

/// A compiled action pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    pub text: String,
    segs: Vec<Seg>,
}

impl Pattern {
    /// Compiles a pattern; `Err` says why it is not one.
    pub fn new(text: &str) -> Result<Pattern, String> {
        let parts: Vec<&str> = text.split('.').collect();
        if parts.len() > MAX_SEGMENTS {
            return Err(format!(
                "the pattern has {} segments; at most {MAX_SEGMENTS} are accepted",
                parts.len()
            ));
        }
        let mut segs = Vec::with_capacity(parts.len());
        for p in parts {
            if p.is_empty() {
                return Err(format!("the pattern {text} has an empty segment"));
            }
            segs.push(if p == "**" {
                Seg::Many
            } else if p.contains("**") {
                return Err(format!(
                    "`**` must be a whole segment (in {text}); use `*` inside a segment"
                ));
            } else if p.contains('*') {
                Seg::Glob(p.split('*').map(str::to_string).collect())
            } else {
                Seg::Exact(p.to_string())
            });
        }
        Ok(Pattern {
            text: text.to_string(),
            segs,
        })
    }

    /// Whether the pattern names exactly one action (no wildcard).
    pub fn is_exact(&self) -> bool {
        self.segs.iter().all(|s| matches!(s, Seg::Exact(_)))
    }

    pub fn matches(&self, name: &str) -> bool {
        match_segs(&self.segs, Some(name))
    }

    /// The literal text of each non-`**` segment (wildcards removed): candidates for probing
    /// open action families.
    pub fn literal_pieces(&self) -> Vec<String> {
        self.segs
            .iter()
            .filter_map(|s| match s {
                Seg::Many => None,
                Seg::Glob(pieces) => Some(pieces.concat()),
                Seg::Exact(e) => Some(e.clone()),
            })
            .collect()
    }
}

/// `name` is what is left of the action name, `None` once every segment is used. It is walked
/// in place, without splitting it into a list first: patterns are matched against the whole
/// catalog at load, so this runs about a million times for a large set.
fn match_segs(pat: &[Seg], name: Option<&str>) -> bool {
    let (Some(seg), Some(name)) = (pat.first(), name) else {
        return pat.is_empty() && name.is_none();
    };
    let (first, rest) = split_segment(name);
    match seg {
        Seg::Many => {
            // One or more whole segments: try the rest of the pattern after each.
            let mut left = rest;
            loop {
                if match_segs(&pat[1..], left) {
                    return true;
                }
                let Some(l) = left else {
                    return false;
                };
                left = split_segment(l).1;
            }
        }
        Seg::Exact(e) => e == first && match_segs(&pat[1..], rest),
        Seg::Glob(pieces) => glob_seg(pieces, first) && match_segs(&pat[1..], rest),
    }
}

/// The first segment of a name and what follows its `.` (`None` for the last segment). A
/// plain byte scan: names are short, and `split_once`'s searcher costs more than the search.
fn split_segment(name: &str) -> (&str, Option<&str>) {
    match name
        .bytes()
        .position(|b| b == b'.')
        .and_then(|i| name.split_at_checked(i))
    {
        Some((first, dot_rest)) => (first, dot_rest.get(1..)),
        None => (name, None),
    }
}

/// `pieces` are the literal runs between `*`s: the first anchors the start, the last the end.
fn glob_seg(pieces: &[String], s: &str) -> bool {
    let (Some(first), Some(last)) = (pieces.first(), pieces.last()) else {
        return true;
    };
    if pieces.len() == 1 {
        return first == s;
    }
    let Some(mut rest) = s.strip_prefix(first.as_str()) else {
        return false;
    };
    let middle = &pieces[1..pieces.len() - 1];
    for m in middle {
        match rest.find(m.as_str()) {
            Some(i) => rest = &rest[i + m.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, n: &str) -> bool {
        Pattern::new(p).unwrap().matches(n)
    }

    #[test]
    fn segments_and_wildcards() {
        assert!(m("github.repos.delete", "github.repos.delete"));
        assert!(!m("github.repos.delete", "github.repos.delete-x"));
        assert!(m("github.**", "github.repos.delete"));
        assert!(m("github.**", "github.a"));
        assert!(!m("github.**", "github"));
        assert!(m("**", "git.push"));
        assert!(m(
            "github.orgs.set-membership-*",
            "github.orgs.set-membership-for-user"
        ));
        assert!(!m(
            "github.orgs.set-membership-*",
            "github.orgs.remove-membership"
        ));
        assert!(m("gmail.users.*.send", "gmail.users.messages.send"));
        assert!(!m("gmail.users.*.send", "gmail.users.messages.x.send"));
        assert!(m("gmail.**.send", "gmail.users.messages.send"));
        assert!(m("*", "x"));
        assert!(m("a*b*c", "abc"));
        assert!(m("a*b*c", "aXbYc"));
        assert!(!m("a*b*c", "ac"));
        assert!(!m("ab*ba", "aba"));
        assert!(m("**.send", "gmail.users.messages.send"));
        assert!(m("gmail.**", "gmail.users.messages.send"));
        assert!(m("a.**.b.**.c", "a.x.b.y.z.c"));
        assert!(!m("a.**.b.**.c", "a.b.c"));
        assert!(!m("a.b", "a"));
        assert!(Pattern::new("a..b").is_err());
        assert!(Pattern::new("a.b**").is_err());
        assert!(Pattern::new(&vec!["a"; 40].join(".")).is_err());
    }

    /// The matcher as first written (split the name into a list, then match), kept as the
    /// reference the in-place walk must agree with.
    fn reference(pat: &[Seg], name: &[&str]) -> bool {
        match (pat.first(), name.first()) {
            (None, None) => true,
            (None, Some(_)) | (Some(_), None) => false,
            (Some(Seg::Many), Some(_)) => {
                (1..=name.len()).any(|n| reference(&pat[1..], &name[n..]))
            }
            (Some(Seg::Exact(e)), Some(n)) => e == n && reference(&pat[1..], &name[1..]),
            (Some(Seg::Glob(pieces)), Some(n)) => {
                glob_seg(pieces, n) && reference(&pat[1..], &name[1..])
            }
        }
    }

    #[test]
    fn the_in_place_walk_agrees_with_the_split_list() {
        let patterns = "** * a a.* a.** **.a *.* **.** a.**.b a.**.b.**.c **.b.** a*.*b *.**.* \
                        a.b.c **.* a*b*.**";
        // `_` stands for the empty name.
        let names = "_ . a b a. .a a.b a.b.c a.x.b a.x.b.y.c ab.cb a..b a.b. x.a a.a.a.a axb.b.c";
        for p in patterns.split_whitespace() {
            let pat = Pattern::new(p).unwrap();
            for n in names.split(' ').map(|n| if n == "_" { "" } else { n }) {
                let parts: Vec<&str> = n.split('.').collect();
                assert_eq!(pat.matches(n), reference(&pat.segs, &parts), "{p} vs {n:?}");
            }
        }
    }
}
