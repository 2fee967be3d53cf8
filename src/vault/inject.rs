//! Placeholders in, real tokens out (design.md section 5; security.md invariant 3). Pure: it
//! reads and rewrites a request's headers and query, and never sees a body.
//!
//! Where an agent's credential can be: `Authorization` (`Bearer`/`token` in any letter case, or
//! `Basic` with the placeholder as the password or, for the `TOKEN:x-oauth-basic` convention,
//! the user name), and Google's `access_token`/`oauth_token` query parameters. What it is:
//! - `placeholder`: the placeholder of the provider that serves this host;
//! - `foreign`: anything else, a placeholder of another provider included (a placeholder sent to
//!   a host it does not belong to is an exfiltration signal);
//! - `none`.
//!
//! After an allow, [`inject`] removes every credential the agent sent and sets the provider's
//! real token the way the upstream expects it: Bearer for GitHub REST and Gmail, Basic
//! `x-access-token:TOKEN` for git. A placeholder anywhere else (a body, another header) is never
//! replaced.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use http::{HeaderMap, HeaderValue, header};

use super::{Provider, Secret};

/// Hosts whose tokens the gate injects, and the provider of each.
pub const PROVIDER_HOSTS: [(&str, Provider); 5] = [
    ("api.github.com", Provider::Github),
    ("uploads.github.com", Provider::Github),
    ("github.com", Provider::Github),
    ("gmail.googleapis.com", Provider::Google),
    ("www.googleapis.com", Provider::Google),
];

/// The provider that serves `host` (GitHub Enterprise Server hosts are GitHub's).
pub fn provider_for(
    host: &str,
    enterprise: &std::collections::BTreeSet<String>,
) -> Option<Provider> {
    PROVIDER_HOSTS
        .iter()
        .find(|(h, _)| *h == host)
        .map(|(_, p)| *p)
        .or_else(|| enterprise.contains(host).then_some(Provider::Github))
}

/// Query parameters that carry an OAuth access token (Google accepts both).
const TOKEN_PARAMS: [&str; 2] = ["access_token", "oauth_token"];

/// The placeholders agents hold, one per provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placeholders {
    pub github: String,
    pub google: String,
}

impl Default for Placeholders {
    fn default() -> Self {
        Placeholders {
            github: "agentgate-placeholder-github".into(),
            google: "agentgate-placeholder-google".into(),
        }
    }
}

impl Placeholders {
    pub fn of(&self, p: Provider) -> &str {
        match p {
            Provider::Github => &self.github,
            Provider::Google => &self.google,
        }
    }

    /// The provider whose placeholder `value` is.
    fn provider_of(&self, value: &str) -> Option<Provider> {
        Provider::ALL.into_iter().find(|p| self.of(*p) == value)
    }
}

/// What credential a request carries, as the policy sees it (`credential`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    None,
    Placeholder,
    Foreign,
}

impl Credential {
    pub fn as_str(self) -> &'static str {
        match self {
            Credential::None => "none",
            Credential::Placeholder => "placeholder",
            Credential::Foreign => "foreign",
        }
    }

    /// The stricter of two findings: foreign > placeholder > none.
    pub fn worst(self, other: Credential) -> Credential {
        use Credential::*;
        match (self, other) {
            (Foreign, _) | (_, Foreign) => Foreign,
            (Placeholder, _) | (_, Placeholder) => Placeholder,
            _ => None,
        }
    }
}

/// The credential the `Authorization` headers and the query carry, for a host served by
/// `provider` (`None`: a host whose tokens the gate does not hold).
pub fn credential(
    provider: Option<Provider>,
    placeholders: &Placeholders,
    headers: &HeaderMap,
    query: &str,
) -> Credential {
    let mut found = Credential::None;
    let judge = |value: &str| match (placeholders.provider_of(value), provider) {
        (Some(p), Some(q)) if p == q => Credential::Placeholder,
        _ => Credential::Foreign,
    };
    for v in headers.get_all(header::AUTHORIZATION) {
        match authorization_token(v) {
            Some(AuthForm::Token(t)) => found = found.worst(judge(&t)),
            Some(AuthForm::Basic(user, pass)) => {
                // The placeholder may be the password (git, curl -u: the user name is then
                // any login) or the user name (the TOKEN:x-oauth-basic convention, whose
                // password is `x-oauth-basic` or empty). Any other password is a credential.
                let is_ph = |s: &str| placeholders.provider_of(s).is_some();
                let kind = if is_ph(&pass) {
                    judge(&pass)
                } else if is_ph(&user) && matches!(pass.as_str(), "" | "x-oauth-basic") {
                    judge(&user)
                } else {
                    Credential::Foreign
                };
                found = found.worst(kind);
            }
            None => found = Credential::Foreign,
        }
    }
    for (k, v) in query_pairs(query) {
        if TOKEN_PARAMS.contains(&k.as_str()) {
            found = found.worst(judge(&v));
        }
    }
    found
}

enum AuthForm {
    Token(String),
    Basic(String, String),
}

/// `Bearer X`, `token X` (any case, extra spaces tolerated), or `Basic base64(user:pass)`.
fn authorization_token(v: &HeaderValue) -> Option<AuthForm> {
    let text = v.to_str().ok()?.trim();
    let (scheme, rest) = text.split_once(char::is_whitespace)?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("token") {
        return Some(AuthForm::Token(rest.to_string()));
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = String::from_utf8(STANDARD.decode(rest).ok()?).ok()?;
        let (user, pass) = decoded.split_once(':').unwrap_or((decoded.as_str(), ""));
        return Some(AuthForm::Basic(user.to_string(), pass.to_string()));
    }
    None
}

/// Query pairs, percent-decoded leniently (for recognising token parameters only).
fn query_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match u8::from_str_radix(s.get(i + 1..i + 3).unwrap_or(""), 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// How the upstream takes the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// `Authorization: Bearer TOKEN` (GitHub REST and GraphQL, Gmail).
    Bearer,
    /// `Authorization: Basic base64(x-access-token:TOKEN)` (git over HTTPS).
    GitBasic,
}

/// Removes every credential the agent sent (the `Authorization` headers and the token query
/// parameters) and sets `token` as the upstream expects it. Returns the new path and query.
pub fn inject(
    headers: &mut HeaderMap,
    path_and_query: &str,
    scheme: Scheme,
    token: &Secret,
) -> Result<String, String> {
    headers.remove(header::AUTHORIZATION);
    let value = match scheme {
        Scheme::Bearer => format!("Bearer {}", token.expose()),
        Scheme::GitBasic => format!(
            "Basic {}",
            STANDARD.encode(format!("x-access-token:{}", token.expose()))
        ),
    };
    let mut value = HeaderValue::from_str(&value).map_err(|_| {
        "the vault's token cannot be sent in a header (it has characters HTTP forbids)".to_string()
    })?;
    value.set_sensitive(true);
    headers.insert(header::AUTHORIZATION, value);
    Ok(strip_token_params(path_and_query))
}

/// A Google batch body with each part's own `Authorization` placeholder (the values at
/// `spans`, byte ranges of the parts' heads found by the batch parser) replaced by `Bearer
/// TOKEN`. Only those values change: a placeholder in a part's body, or any other header, is
/// never touched. `None` when no part carries the placeholder.
pub fn rewrite_part_authorizations(
    body: &[u8],
    spans: &[(usize, usize)],
    placeholders: &Placeholders,
    provider: Provider,
    token: &Secret,
) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(body.len() + 64);
    let mut at = 0;
    let mut changed = false;
    let mut sorted = spans.to_vec();
    sorted.sort_unstable();
    for (start, end) in sorted {
        if start < at || end > body.len() || start > end {
            return None;
        }
        let value = HeaderValue::from_bytes(body.get(start..end)?).ok()?;
        let mut one = HeaderMap::new();
        one.insert(header::AUTHORIZATION, value);
        if credential(Some(provider), placeholders, &one, "") != Credential::Placeholder {
            continue;
        }
        out.extend_from_slice(body.get(at..start)?);
        out.extend_from_slice(format!("Bearer {}", token.expose()).as_bytes());
        at = end;
        changed = true;
    }
    out.extend_from_slice(body.get(at..)?);
    changed.then_some(out)
}

/// The path and query without the token query parameters (other pairs kept byte for byte).
pub fn strip_token_params(path_and_query: &str) -> String {
    let Some((path, query)) = path_and_query.split_once('?') else {
        return path_and_query.to_string();
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|p| {
            let k = p.split_once('=').map_or(*p, |(k, _)| k);
            !TOKEN_PARAMS.contains(&decode(k).as_str())
        })
        .collect();
    if kept.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{}", kept.join("&"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        m
    }

    fn basic(user: &str, pass: &str) -> String {
        format!("Basic {}", STANDARD.encode(format!("{user}:{pass}")))
    }

    #[test]
    fn every_client_form_of_the_placeholder_is_recognised() {
        let ph = Placeholders::default();
        let gh = Some(Provider::Github);
        for v in [
            "Bearer agentgate-placeholder-github".to_string(),
            "token agentgate-placeholder-github".into(),
            "TOKEN   agentgate-placeholder-github ".into(),
            "bearer agentgate-placeholder-github".into(),
            basic("x-access-token", "agentgate-placeholder-github"),
            basic("agentgate-placeholder-github", "x-oauth-basic"),
        ] {
            assert_eq!(
                credential(gh, &ph, &h(&[("authorization", &v)]), ""),
                Credential::Placeholder,
                "{v}"
            );
        }
        let g = Some(Provider::Google);
        assert_eq!(
            credential(
                g,
                &ph,
                &HeaderMap::new(),
                "alt=json&access_token=agentgate-placeholder-google"
            ),
            Credential::Placeholder
        );
        assert_eq!(
            credential(g, &ph, &HeaderMap::new(), "alt=json"),
            Credential::None
        );
    }

    #[test]
    fn anything_else_is_foreign() {
        let ph = Placeholders::default();
        let gh = Some(Provider::Github);
        for v in [
            "Bearer ghp_0123456789abcdef0123456789abcdef0123".to_string(),
            "Bearer agentgate-placeholder-google".into(), // another provider's placeholder
            basic("x-access-token", "ghp_real"),
            basic("agentgate-placeholder-github", "ghp_real"), // a token next to the placeholder
            "Digest username=x".into(),
            "agentgate-placeholder-github".into(), // no scheme
        ] {
            assert_eq!(
                credential(gh, &ph, &h(&[("authorization", &v)]), ""),
                Credential::Foreign,
                "{v}"
            );
        }
        // A placeholder plus a real token in a second header is foreign.
        let two = h(&[
            ("authorization", "Bearer agentgate-placeholder-github"),
            ("authorization", "Bearer ghp_real"),
        ]);
        assert_eq!(credential(gh, &ph, &two, ""), Credential::Foreign);
        // A real token in the query.
        assert_eq!(
            credential(
                Some(Provider::Google),
                &ph,
                &HeaderMap::new(),
                "oauth_token=ya29.real"
            ),
            Credential::Foreign
        );
        // A host whose tokens the gate does not hold: even a placeholder is foreign there.
        assert_eq!(
            credential(
                None,
                &ph,
                &h(&[("authorization", "Bearer agentgate-placeholder-github")]),
                ""
            ),
            Credential::Foreign
        );
    }

    #[test]
    fn injection_replaces_every_agent_credential() {
        let token = Secret::new("ghs_REAL".into());
        let mut headers = h(&[
            ("authorization", "token agentgate-placeholder-github"),
            ("x-other", "agentgate-placeholder-github"),
        ]);
        let pq = inject(
            &mut headers,
            "/repos/a/b?access_token=agentgate-placeholder-github&x=1",
            Scheme::Bearer,
            &token,
        )
        .unwrap();
        assert_eq!(headers.get_all(header::AUTHORIZATION).iter().count(), 1);
        assert_eq!(headers[header::AUTHORIZATION], "Bearer ghs_REAL");
        assert!(headers[header::AUTHORIZATION].is_sensitive());
        // Another header's placeholder is not touched.
        assert_eq!(headers["x-other"], "agentgate-placeholder-github");
        assert_eq!(pq, "/repos/a/b?x=1");
        let mut headers = HeaderMap::new();
        inject(
            &mut headers,
            "/a/b.git/git-receive-pack",
            Scheme::GitBasic,
            &token,
        )
        .unwrap();
        assert_eq!(
            headers[header::AUTHORIZATION],
            format!("Basic {}", STANDARD.encode("x-access-token:ghs_REAL")).as_str()
        );
        assert_eq!(strip_token_params("/p?oauth_token=x"), "/p");
        assert_eq!(strip_token_params("/p"), "/p");
    }
}
