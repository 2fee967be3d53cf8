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
        let parts: Vec<&str> = name.split('.').collect();
        match_segs(&self.segs, &parts)
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

fn match_segs(pat: &[Seg], name: &[&str]) -> bool {
    match (pat.first(), name.first()) {
        (None, None) => true,
        (None, Some(_)) | (Some(_), None) => false,
        (Some(Seg::Many), Some(_)) => {
            // One or more whole segments.
            (1..=name.len()).any(|n| match_segs(&pat[1..], &name[n..]))
        }
        (Some(Seg::Exact(e)), Some(n)) => e == n && match_segs(&pat[1..], &name[1..]),
        (Some(Seg::Glob(pieces)), Some(n)) => {
            glob_seg(pieces, n) && match_segs(&pat[1..], &name[1..])
        }
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
        assert!(Pattern::new("a..b").is_err());
        assert!(Pattern::new("a.b**").is_err());
        assert!(Pattern::new(&vec!["a"; 40].join(".")).is_err());
    }
}
