//! The demo agent's ten actions: the requests an unmodified client would send for each, with
//! the placeholder tokens an agent behind the gate holds.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use sha1::{Digest, Sha1};

use super::standin::{MAIN_COMMIT, pkt};
use crate::vault::inject::Placeholders;

/// One HTTP request of an action.
#[derive(Debug, Clone)]
pub struct Call {
    pub method: http::Method,
    pub url: String,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

/// One of the demo agent's actions: what it means to do and the requests that do it (a git
/// push is the ref advertisement, then the push).
#[derive(Debug, Clone)]
pub struct Step {
    pub title: &'static str,
    pub calls: Vec<Call>,
}

impl Call {
    /// `METHOD host/path`, for the narration.
    pub fn line(&self) -> String {
        let rest = self.url.strip_prefix("https://").unwrap_or(&self.url);
        format!("{} {rest}", self.method)
    }
}

fn call(method: http::Method, url: &str, headers: Vec<(&'static str, String)>) -> Call {
    Call {
        method,
        url: url.to_string(),
        headers,
        body: Vec::new(),
    }
}

fn json(method: http::Method, url: &str, auth: &str, body: serde_json::Value) -> Call {
    Call {
        body: body.to_string().into_bytes(),
        ..call(
            method,
            url,
            vec![
                ("authorization", auth.to_string()),
                ("content-type", "application/json".into()),
            ],
        )
    }
}

/// The ten actions, in the order the demo runs them.
pub fn steps(placeholders: &Placeholders) -> Vec<Step> {
    let github = format!("Bearer {}", placeholders.github);
    let google = format!("Bearer {}", placeholders.google);
    let git_auth = format!(
        "Basic {}",
        STANDARD.encode(format!("x-access-token:{}", placeholders.github))
    );
    let gh_headers = |auth: &str| {
        vec![
            ("authorization", auth.to_string()),
            ("accept", "application/vnd.github+json".into()),
            ("x-github-api-version", "2022-11-28".into()),
        ]
    };
    let commit = Commit::new("Fix the login timeout (#42)");
    vec![
        Step {
            title: "read the open issues of acme/api",
            calls: vec![call(
                http::Method::GET,
                "https://api.github.com/repos/acme/api/issues?state=open&per_page=30",
                gh_headers(&github),
            )],
        },
        Step {
            title: "list the newest mail",
            calls: vec![call(
                http::Method::GET,
                "https://gmail.googleapis.com/gmail/v1/users/me/messages?maxResults=3",
                vec![("authorization", google.clone())],
            )],
        },
        Step {
            title: "comment on issue #42",
            calls: vec![{
                let mut c = json(
                    http::Method::POST,
                    "https://api.github.com/repos/acme/api/issues/42/comments",
                    &github,
                    serde_json::json!({"body": "I can reproduce this; a fix is on feature/login-timeout."}),
                );
                c.headers
                    .push(("accept", "application/vnd.github+json".into()));
                c
            }],
        },
        Step {
            title: "send mail inside the company",
            calls: vec![send_mail(
                &google,
                "bob@example.com",
                "Standup notes",
                "Login timeout: fix pushed to a branch, review welcome.",
            )],
        },
        Step {
            title: "send mail outside the company",
            calls: vec![send_mail(
                &google,
                "jane@partner.example.org",
                "Q3 roadmap",
                "Here is our internal roadmap, as you asked.",
            )],
        },
        Step {
            title: "push the branch feature/login-timeout",
            calls: push(&git_auth, "refs/heads/feature/login-timeout", None, &commit),
        },
        Step {
            title: "push to main",
            calls: push(&git_auth, "refs/heads/main", Some(MAIN_COMMIT), &commit),
        },
        Step {
            title: "delete the repository acme/api",
            calls: vec![call(
                http::Method::DELETE,
                "https://api.github.com/repos/acme/api",
                gh_headers(&github),
            )],
        },
        Step {
            title: "add mallory as a collaborator on acme/api",
            calls: vec![json(
                http::Method::PUT,
                "https://api.github.com/repos/acme/api/collaborators/mallory",
                &github,
                serde_json::json!({"permission": "admin"}),
            )],
        },
        Step {
            title: "create a mail filter that forwards invoices outside",
            calls: vec![json(
                http::Method::POST,
                "https://gmail.googleapis.com/gmail/v1/users/me/settings/filters",
                &google,
                serde_json::json!({
                    "criteria": {"from": "billing@example.com"},
                    "action": {"forward": "collector@mailbox.example.net"}
                }),
            )],
        },
    ]
}

/// `users.messages.send` with the message in `raw` (base64url RFC 5322), as Google's clients
/// send it.
fn send_mail(auth: &str, to: &str, subject: &str, text: &str) -> Call {
    let message = format!(
        "From: agent@example.com\r\nTo: {to}\r\nSubject: {subject}\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/plain; charset=UTF-8\r\n\r\n{text}\r\n"
    );
    json(
        http::Method::POST,
        "https://gmail.googleapis.com/gmail/v1/users/me/messages/send",
        auth,
        serde_json::json!({"raw": URL_SAFE_NO_PAD.encode(message)}),
    )
}

/// A push as git sends it: the receive-pack ref advertisement, then one command updating
/// `name` from `old` (None: a new ref) to the commit, with a pack holding the commit.
fn push(auth: &str, name: &str, old: Option<&str>, commit: &Commit) -> Vec<Call> {
    let zero = "0".repeat(40);
    let mut body = Vec::new();
    pkt(
        &mut body,
        format!(
            "{} {} {name}\0report-status agent=git/2.47.3\n",
            old.unwrap_or(&zero),
            commit.id
        )
        .as_bytes(),
    );
    body.extend_from_slice(b"0000");
    body.extend_from_slice(&commit.pack);
    let headers = |content: Option<&str>| {
        let mut h = vec![
            ("authorization", auth.to_string()),
            ("user-agent", "git/2.47.3".into()),
        ];
        if let Some(c) = content {
            h.push(("content-type", c.to_string()));
            h.push(("accept", "application/x-git-receive-pack-result".into()));
        }
        h
    };
    vec![
        call(
            http::Method::GET,
            "https://github.com/acme/api.git/info/refs?service=git-receive-pack",
            headers(None),
        ),
        Call {
            body,
            ..call(
                http::Method::POST,
                "https://github.com/acme/api.git/git-receive-pack",
                headers(Some("application/x-git-receive-pack-request")),
            )
        },
    ]
}

/// A commit on top of the stand-in's `main` (with git's empty tree), its id, and the pack
/// (version 2, one object) that carries it.
#[derive(Debug, Clone)]
struct Commit {
    id: String,
    pack: Vec<u8>,
}

impl Commit {
    fn new(message: &str) -> Commit {
        const EMPTY_TREE: &str = "4b825dc642cb6eb9a060e54bf8d69288fbee4904";
        let when = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let who = format!("Demo Agent <agent@example.com> {when} +0000");
        let content = format!(
            "tree {EMPTY_TREE}\nparent {MAIN_COMMIT}\nauthor {who}\ncommitter {who}\n\n{message}\n"
        );
        let mut object = format!("commit {}\0", content.len()).into_bytes();
        object.extend_from_slice(content.as_bytes());
        let id = hex::encode(Sha1::digest(&object));
        let mut pack = b"PACK\0\0\0\x02\0\0\0\x01".to_vec();
        // The object header: type 1 (commit) and the size, 4 bits then 7 bits a byte.
        let mut size = content.len();
        let mut byte = (1u8 << 4) | (size & 0x0f) as u8;
        size >>= 4;
        while size > 0 {
            pack.push(byte | 0x80);
            byte = (size & 0x7f) as u8;
            size >>= 7;
        }
        pack.push(byte);
        pack.extend_from_slice(&zlib(content.as_bytes()));
        let trailer = Sha1::digest(&pack);
        pack.extend_from_slice(&trailer);
        Commit { id, pack }
    }
}

fn zlib(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    // Writing to a Vec cannot fail.
    let _ = z.write_all(data);
    z.finish().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_commit_and_its_pack_are_what_git_would_make() {
        let c = Commit::new("m");
        assert_eq!(c.id.len(), 40);
        assert_eq!(&c.pack[..12], b"PACK\0\0\0\x02\0\0\0\x01");
        let (body, trailer) = c.pack.split_at(c.pack.len() - 20);
        assert_eq!(Sha1::digest(body).as_slice(), trailer);
        // The object inflates to the commit whose SHA-1 is the id.
        let mut header = 12;
        while c.pack[header] & 0x80 != 0 {
            header += 1;
        }
        let mut z = flate2::read::ZlibDecoder::new(&body[header + 1..]);
        let mut content = Vec::new();
        std::io::Read::read_to_end(&mut z, &mut content).unwrap();
        let mut object = format!("commit {}\0", content.len()).into_bytes();
        object.extend_from_slice(&content);
        assert_eq!(hex::encode(Sha1::digest(&object)), c.id);
        assert!(String::from_utf8(content).unwrap().contains(MAIN_COMMIT));
    }

    #[test]
    fn ten_steps_each_with_the_placeholder() {
        let p = Placeholders::default();
        let steps = steps(&p);
        assert_eq!(steps.len(), 10);
        for s in &steps {
            for c in &s.calls {
                let auth = &c
                    .headers
                    .iter()
                    .find(|(n, _)| *n == "authorization")
                    .unwrap()
                    .1;
                let decoded = auth
                    .strip_prefix("Basic ")
                    .map(|b| String::from_utf8(STANDARD.decode(b).unwrap()).unwrap());
                assert!(
                    auth.contains(&p.github)
                        || auth.contains(&p.google)
                        || decoded.is_some_and(|d| d.ends_with(&p.github)),
                    "{}: {auth}",
                    s.title
                );
            }
        }
    }
}
