//! Reviewers: the people (and tools) allowed to approve held requests and read the audit and
//! metrics. Configured as `[[reviewers]]` (SHA-256 of each token); with none configured, the
//! gate creates one reviewer, `reviewer`, whose token it keeps (mode 0600) in
//! `data/reviewer.token`.

use std::path::Path;

use subtle::ConstantTimeEq;

use crate::agents::{self, AgentsError};
use crate::config::Principal;

/// The reviewer the gate creates when none is configured.
pub const DEFAULT_REVIEWER: &str = "reviewer";
/// Where its token is kept, in the data directory.
pub const DEFAULT_TOKEN_FILE: &str = "reviewer.token";

#[derive(Debug, Clone)]
pub struct Reviewers {
    list: Vec<(String, [u8; 32])>,
}

impl Reviewers {
    /// The configured reviewers, or the default one (its token created when missing).
    pub fn load(configured: &[Principal], data_dir: &Path) -> Result<Reviewers, AgentsError> {
        if !configured.is_empty() {
            return Ok(Reviewers {
                list: configured
                    .iter()
                    .map(|p| (p.name.clone(), p.token_sha256))
                    .collect(),
            });
        }
        let token = agents::ensure_token_file(data_dir, DEFAULT_TOKEN_FILE)?;
        Ok(Reviewers {
            list: vec![(DEFAULT_REVIEWER.into(), agents::sha256(&token))],
        })
    }

    /// The reviewer an `Authorization: Bearer TOKEN` header names.
    pub fn authenticate(&self, header: Option<&http::HeaderValue>) -> Option<String> {
        let text = header?.to_str().ok()?.trim();
        let (scheme, token) = text.split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        self.by_token(token)
    }

    /// The reviewer whose token is `token` (a browser login's body).
    pub fn by_token(&self, token: &str) -> Option<String> {
        if token.trim().is_empty() {
            return None;
        }
        let presented = agents::sha256(token.trim());
        let mut found = None;
        for (name, digest) in &self.list {
            if bool::from(digest.ct_eq(&presented)) {
                found = Some(name.clone());
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_name_reviewers() {
        let r = Reviewers::load(
            &[Principal {
                name: "alice".into(),
                token_sha256: agents::sha256("rev-token"),
                user: None,
            }],
            Path::new("/nonexistent"),
        )
        .unwrap();
        let h = |v: &str| http::HeaderValue::from_str(v).unwrap();
        assert_eq!(
            r.authenticate(Some(&h("Bearer rev-token"))).as_deref(),
            Some("alice")
        );
        assert_eq!(
            r.authenticate(Some(&h("bearer rev-token"))).as_deref(),
            Some("alice")
        );
        assert_eq!(r.authenticate(Some(&h("Bearer nope"))), None);
        assert_eq!(r.authenticate(Some(&h("Basic cmV2LXRva2Vu"))), None);
        assert_eq!(r.authenticate(None), None);
    }
}
