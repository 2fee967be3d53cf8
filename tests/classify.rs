//! Classification as real clients send requests, and the evasion suite: every trick in
//! security.md is classified as what it really does, or refused.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;

use agentgate::actions::catalog::{Catalog, Inspected};
use http::HeaderMap;
use serde_json::{Value, json};

const LIMIT: u64 = 32 * 1024 * 1024;

fn catalog() -> Catalog {
    Catalog::builtin(["github.acme.corp".to_string()].into_iter().collect()).unwrap()
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    h
}

fn inspect(host: &str, method: &str, pq: &str, hs: &[(&str, &str)], body: &[u8]) -> Inspected {
    catalog()
        .inspect(host, method, pq, &headers(hs), body, LIMIT)
        .unwrap_or_else(|e| panic!("{method} {host}{pq}: {e}"))
}

fn one(host: &str, method: &str, pq: &str, hs: &[(&str, &str)], body: &[u8]) -> (String, Value) {
    let mut i = inspect(host, method, pq, hs, body);
    assert_eq!(i.actions.len(), 1);
    let a = i.actions.remove(0);
    (a.name, Value::Object(a.params))
}

fn refused(host: &str, method: &str, pq: &str, hs: &[(&str, &str)], body: &[u8]) -> String {
    match catalog().inspect(host, method, pq, &headers(hs), body, LIMIT) {
        Ok(i) => panic!("{method} {host}{pq} accepted as {:?}", i.actions),
        Err(e) => e.to_string(),
    }
}

const OCTOKIT: &[(&str, &str)] = &[
    ("accept", "application/vnd.github.v3+json"),
    ("authorization", "token agentgate-placeholder-github"),
    (
        "user-agent",
        "octokit-rest.js/21.0.0 octokit-core.js/6.1.2 Node.js/20",
    ),
    ("content-type", "application/json; charset=utf-8"),
];

#[test]
fn octokit_and_pygithub_and_gh_requests() {
    let i = inspect("api.github.com", "DELETE", "/repos/Acme/API", OCTOKIT, b"");
    let a = &i.actions[0];
    assert_eq!(a.name, "github.repos.delete");
    assert_eq!(
        (a.host.as_str(), a.method.as_str(), a.path.as_str()),
        ("api.github.com", "DELETE", "/repos/Acme/API")
    );
    assert_eq!(a.params["owner"], "acme");
    assert_eq!(a.params["repo"], "acme/api");

    let body =
        br#"{"title":"Found a bug","body":"details","labels":["bug"],"assignees":["octocat"]}"#;
    let (name, p) = one(
        "api.github.com",
        "POST",
        "/repos/acme/api/issues",
        OCTOKIT,
        body,
    );
    assert_eq!(name, "github.issues.create");
    assert_eq!(p["title"], "Found a bug");
    assert_eq!(p["labels"], json!(["bug"]));

    // PyGithub: `repo.add_to_collaborators("mallory", permission="push")`.
    let py = &[
        ("authorization", "token agentgate-placeholder-github"),
        ("user-agent", "PyGithub/Python"),
        ("content-type", "application/json"),
    ];
    let (name, p) = one(
        "api.github.com",
        "PUT",
        "/repos/acme/api/collaborators/mallory",
        py,
        br#"{"permission": "push"}"#,
    );
    assert_eq!(name, "github.repos.add-collaborator");
    assert_eq!(p["username"], "mallory");
    assert_eq!(p["permission"], "push");

    // gh: `gh pr list` (REST form) with typed query params.
    let (name, p) = one(
        "api.github.com",
        "GET",
        "/repos/acme/api/pulls?state=open&per_page=30",
        &[("user-agent", "GitHub CLI 2.62.0")],
        b"",
    );
    assert_eq!(name, "github.pulls.list");
    assert_eq!(p["per_page"], 30);
    assert_eq!(p["state"], "open");

    // Deploy keys and webhooks carry their body params.
    let (name, p) = one(
        "api.github.com",
        "POST",
        "/repos/acme/api/hooks",
        OCTOKIT,
        br#"{"name":"web","config":{"url":"https://evil.example/h"},"events":["push"]}"#,
    );
    assert_eq!(name, "github.repos.create-webhook");
    assert_eq!(p["config"]["url"], "https://evil.example/h");
}

#[test]
fn multi_segment_params() {
    let (name, p) = one(
        "api.github.com",
        "PUT",
        "/repos/acme/api/contents/src/main.rs",
        OCTOKIT,
        br#"{"message":"m","content":"eA=="}"#,
    );
    assert_eq!(name, "github.repos.create-or-update-file-contents");
    assert_eq!(
        p["path"], "src/main.rs",
        "the file path, not the request path"
    );
    let (name, p) = one(
        "api.github.com",
        "PATCH",
        "/repos/acme/api/git/refs/heads/main",
        OCTOKIT,
        br#"{"sha":"abc","force":true}"#,
    );
    assert_eq!(name, "github.git.update-ref");
    assert_eq!(p["ref"], "heads/main");
    assert_eq!(p["force"], true);
    let (name, p) = one(
        "api.github.com",
        "DELETE",
        "/repos/acme/api/branches/release/v1/protection",
        OCTOKIT,
        b"",
    );
    assert_eq!(name, "github.repos.delete-branch-protection");
    assert_eq!(p["branch"], "release/v1");
}

#[test]
fn every_github_host_and_alias() {
    let (name, _) = one(
        "uploads.github.com",
        "POST",
        "/repos/acme/api/releases/1/assets?name=a.zip",
        &[("content-type", "application/zip")],
        b"PK\x03\x04 binary",
    );
    assert_eq!(name, "github.repos.upload-release-asset");
    let (name, p) = one(
        "github.acme.corp",
        "DELETE",
        "/api/v3/repos/Acme/Api",
        OCTOKIT,
        b"",
    );
    assert_eq!(name, "github.repos.delete");
    assert_eq!(p["repo"], "acme/api");
    let (name, _) = one("api.github.com", "HEAD", "/repos/acme/api", OCTOKIT, b"");
    assert_eq!(name, "github.repos.get");
    let (name, _) = one("api.github.com", "GET", "/no/such/endpoint", OCTOKIT, b"");
    assert_eq!(name, "http.request");
}

fn b64url(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE.encode(data)
}

const MESSAGE: &[u8] = b"From: agent@acme.com\r\nTo: \"Smith, John\" <JS@Example.COM>,\r\n  bob@acme.com\r\nCc: =?UTF-8?B?SsO2cmc=?= <jorg@acme.com>\r\nBcc: audit@partner.example\r\nSubject: =?UTF-8?Q?Q3_r=C3=A9sum=C3=A9?=\r\n\r\nHello\r\n";

#[test]
fn gmail_sends_on_every_host_and_body_shape() {
    let google = &[
        ("authorization", "Bearer agentgate-placeholder-google"),
        ("content-type", "application/json"),
        ("user-agent", "google-api-python-client/2.202.0"),
    ];
    let raw = format!(r#"{{"raw":"{}"}}"#, b64url(MESSAGE));
    for host in ["gmail.googleapis.com", "www.googleapis.com"] {
        let (name, p) = one(
            host,
            "POST",
            "/gmail/v1/users/me/messages/send?alt=json",
            google,
            raw.as_bytes(),
        );
        assert_eq!(name, "gmail.users.messages.send");
        assert_eq!(p["userId"], "me");
        assert_eq!(p["body_shape"], "raw");
        assert_eq!(
            p["recipients"],
            json!([
                "js@example.com",
                "bob@acme.com",
                "jorg@acme.com",
                "audit@partner.example"
            ])
        );
        assert_eq!(p["subject"], "Q3 résumé");
        assert!(
            p.get("raw").is_none(),
            "the base64 copy is not kept in params"
        );
        let (name, p) = one(
            host,
            "POST",
            "/upload/gmail/v1/users/me/messages/send?uploadType=media",
            &[("content-type", "message/rfc822")],
            MESSAGE,
        );
        assert_eq!(
            (name.as_str(), p["body_shape"].as_str()),
            ("gmail.users.messages.send", Some("media"))
        );
        assert_eq!(p["bcc"], json!(["audit@partner.example"]));
        let (name, p) = one(
            host,
            "POST",
            "/resumable/upload/gmail/v1/users/me/messages/send?uploadType=resumable",
            &[
                ("content-type", "application/json"),
                ("x-upload-content-type", "message/rfc822"),
            ],
            b"{}",
        );
        assert_eq!(
            (name.as_str(), p["resumable"].as_str()),
            ("gmail.users.messages.send", Some("start"))
        );
    }
    let (name, p) = one(
        "gmail.googleapis.com",
        "POST",
        "/gmail/v1/users/me/settings/filters",
        google,
        br#"{"criteria":{"from":"boss@acme.com"},"action":{"forward":"evil@example.com"}}"#,
    );
    assert_eq!(name, "gmail.users.settings.filters.create");
    assert_eq!(p["action"]["forward"], "evil@example.com");
    // A send whose message cannot be read is refused, never passed as an unknown send.
    refused(
        "gmail.googleapis.com",
        "POST",
        "/gmail/v1/users/me/messages/send",
        google,
        br#"{"raw":"%%%not base64"}"#,
    );
    refused(
        "gmail.googleapis.com",
        "POST",
        "/gmail/v1/users/me/messages/send",
        google,
        br#"{}"#,
    );
}

#[test]
fn a_send_hidden_in_a_batch_is_found() {
    let send = format!(r#"{{"raw":"{}"}}"#, b64url(MESSAGE));
    let body = format!(
        "--===============7330845974216740156==\nContent-Type: application/http\nMIME-Version: 1.0\nContent-Transfer-Encoding: binary\nContent-ID: <a+1>\n\nGET /gmail/v1/users/me/messages?maxResults=1 HTTP/1.1\nContent-Type: application/json\nMIME-Version: 1.0\naccept: application/json\ncontent-length: 0\n\n\n--===============7330845974216740156==\nContent-Type: application/http\nMIME-Version: 1.0\nContent-Transfer-Encoding: binary\nContent-ID: <a+2>\n\nPOST /gmail/v1/users/me/messages/send?alt=json HTTP/1.1\nContent-Type: application/json\nMIME-Version: 1.0\naccept: application/json\ncontent-length: {}\n\n{}\n--===============7330845974216740156==--",
        send.len(),
        send
    );
    let ct = "multipart/mixed; boundary=\"===============7330845974216740156==\"";
    for host in ["gmail.googleapis.com", "www.googleapis.com"] {
        let i = inspect(
            host,
            "POST",
            "/batch/gmail/v1",
            &[("content-type", ct)],
            body.as_bytes(),
        );
        let names: Vec<&str> = i.actions.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(
            names,
            ["gmail.users.messages.list", "gmail.users.messages.send"]
        );
        assert_eq!(
            i.actions[1].params["recipients"][3],
            "audit@partner.example"
        );
        assert_eq!(i.actions[1].path, "/gmail/v1/users/me/messages/send");
    }
    // A batch that names another boundary-like line, or nests a batch, is refused.
    let nested = body.replace(
        "POST /gmail/v1/users/me/messages/send?alt=json",
        "POST /batch/gmail/v1",
    );
    refused(
        "gmail.googleapis.com",
        "POST",
        "/batch/gmail/v1",
        &[("content-type", ct)],
        nested.as_bytes(),
    );
    let smuggled = body.replace(
        "--===============7330845974216740156==--",
        "--===============7330845974216740156==X\n--===============7330845974216740156==--",
    );
    refused(
        "gmail.googleapis.com",
        "POST",
        "/batch/gmail/v1",
        &[("content-type", ct)],
        smuggled.as_bytes(),
    );
}

#[test]
fn method_override_changes_the_action_or_is_refused() {
    let (name, _) = one(
        "gmail.googleapis.com",
        "POST",
        "/gmail/v1/users/me/messages/123",
        &[("x-http-method-override", "DELETE")],
        b"",
    );
    assert_eq!(name, "gmail.users.messages.delete");
    refused(
        "api.github.com",
        "POST",
        "/repos/acme/api",
        &[("x-http-method-override", "DELETE")],
        b"",
    );
    refused(
        "gmail.googleapis.com",
        "POST",
        "/gmail/v1/users/me/messages/123",
        &[("x-http-method", "DELETE")],
        b"",
    );
    refused(
        "gmail.googleapis.com",
        "POST",
        "/gmail/v1/users/me/messages/123",
        &[
            ("x-http-method-override", "DELETE"),
            ("x-http-method-override", "GET"),
        ],
        b"",
    );
}

#[test]
fn octokit_encoded_slashes_in_multi_segment_params() {
    // @octokit/endpoint writes `/` inside path parameters as %2F (captured from
    // `endpoint("GET /repos/{owner}/{repo}/contents/{path}", ...)` and friends).
    let (name, p) = one(
        "api.github.com",
        "GET",
        "/repos/Acme/API/contents/src%2Fmain.rs",
        OCTOKIT,
        b"",
    );
    assert_eq!(
        (name.as_str(), p["path"].as_str()),
        ("github.repos.get-content", Some("src/main.rs"))
    );
    let (name, p) = one(
        "api.github.com",
        "PATCH",
        "/repos/acme/api/git/refs/heads%2Ffeature%2Fx",
        OCTOKIT,
        br#"{"sha":"abc","force":true}"#,
    );
    assert_eq!(
        (name.as_str(), p["ref"].as_str()),
        ("github.git.update-ref", Some("heads/feature/x"))
    );
    let (name, p) = one(
        "api.github.com",
        "DELETE",
        "/repos/acme/api/branches/release%2Fv1/protection",
        OCTOKIT,
        b"",
    );
    assert_eq!(
        (name.as_str(), p["branch"].as_str()),
        ("github.repos.delete-branch-protection", Some("release/v1"))
    );
    // The same request with a plain slash is the same action with the same params.
    let (name2, p2) = one(
        "api.github.com",
        "DELETE",
        "/repos/acme/api/branches/release/v1/protection",
        OCTOKIT,
        b"",
    );
    assert_eq!((name2, p2["branch"].clone()), (name, p["branch"].clone()));
    // Anywhere else an encoded slash is refused.
    refused(
        "api.github.com",
        "DELETE",
        "/repos/acme%2Fapi",
        OCTOKIT,
        b"",
    );
    refused(
        "api.github.com",
        "GET",
        "/repos/acme/api/pulls%2F1",
        OCTOKIT,
        b"",
    );
    refused("api.github.com", "GET", "/no%2Fsuch", OCTOKIT, b"");
    refused(
        "api.github.com",
        "GET",
        "/repos/acme/api/contents/a%2F..%2Fb",
        OCTOKIT,
        b"",
    );
}

#[test]
fn letter_case_cannot_hide_an_action() {
    let (name, p) = one("api.github.com", "DELETE", "/REPOS/Acme/API", OCTOKIT, b"");
    assert_eq!(
        name, "github.repos.delete",
        "literal segments match in any case"
    );
    assert_eq!(p["repo"], "acme/api");
    refused("api.github.com", "delete", "/repos/acme/api", OCTOKIT, b"");
    refused("api.github.com", "Delete", "/repos/acme/api", OCTOKIT, b"");
}

#[test]
fn path_tricks_are_refused() {
    for path in [
        "/repos/acme/api/../other",
        "/repos/acme/./api",
        "//repos/acme/api",
        "/repos//acme/api",
        "/repos/acme/api/",
        "/repos/acme%2fapi",
        "/repos/acme%2Fapi/x",
        "/repos/acme/api/contents/a%2F%2Fb",
        "/repos/acme%5capi",
        "/repos/acme/api;jsessionid=1",
        "/repos/acme/api%00",
        "/rep%6fs/acme/api",
        "/repos/%2e%2e/api",
    ] {
        refused("api.github.com", "DELETE", path, OCTOKIT, b"");
    }
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

#[test]
fn compressed_bodies_are_inspected_decoded() {
    let body = br#"{"title":"hidden in gzip"}"#;
    let mut hs = OCTOKIT.to_vec();
    hs.push(("content-encoding", "gzip"));
    let i = inspect(
        "api.github.com",
        "POST",
        "/repos/acme/api/issues",
        &hs,
        &gzip(body),
    );
    assert_eq!(i.actions[0].params["title"], "hidden in gzip");
    assert_eq!(i.decoded_body.as_deref(), Some(&body[..]));
    refused(
        "api.github.com",
        "POST",
        "/repos/acme/api/issues",
        &hs,
        b"not gzip at all",
    );
    let mut hs2 = OCTOKIT.to_vec();
    hs2.push(("content-encoding", "compress"));
    refused(
        "api.github.com",
        "POST",
        "/repos/acme/api/issues",
        &hs2,
        body,
    );
}

#[test]
fn duplicate_keys_and_repeated_params_are_refused() {
    refused(
        "api.github.com",
        "PUT",
        "/repos/acme/api/collaborators/bob",
        OCTOKIT,
        br#"{"permission":"pull","permission":"admin"}"#,
    );
    refused(
        "api.github.com",
        "POST",
        "/repos/acme/api/hooks",
        OCTOKIT,
        br#"{"config":{"url":"a","url":"b"}}"#,
    );
    refused(
        "api.github.com",
        "GET",
        "/repos/acme/api/pulls?state=open&state=closed",
        OCTOKIT,
        b"",
    );
    refused(
        "api.github.com",
        "POST",
        "/repos/acme/api/issues",
        OCTOKIT,
        b"{not json",
    );
}

#[test]
fn graphql_mutations_behind_aliases_and_fragments_are_named() {
    let gh = &[
        ("content-type", "application/json"),
        ("user-agent", "GitHub CLI 2.62.0"),
    ];
    let body = br#"{"query":"mutation { harmless: deleteRef(input: {refId: \"R1\"}) { clientMutationId } ...F } fragment F on Mutation { mergePullRequest(input: {pullRequestId: \"P1\"}) { clientMutationId } }"}"#;
    let i = inspect("api.github.com", "POST", "/graphql", gh, body);
    let names: Vec<&str> = i.actions.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "github.graphql.deleteRef",
            "github.graphql.mergePullRequest"
        ]
    );
    assert_eq!(i.actions[0].params["alias"], "harmless");
    assert_eq!(i.actions[0].params["input"]["refId"], "R1");
    assert!(
        i.actions
            .iter()
            .all(|a| a.host == "api.github.com" && a.path == "/graphql")
    );
    let q = inspect(
        "github.acme.corp",
        "POST",
        "/api/graphql",
        gh,
        br#"{"query":"query { viewer { login } }"}"#,
    );
    assert_eq!(q.actions[0].name, "github.graphql.query");
    let p = inspect(
        "api.github.com",
        "POST",
        "/graphql",
        gh,
        br#"{"extensions":{"persistedQuery":{"version":1,"sha256Hash":"abc"}}}"#,
    );
    assert_eq!(p.actions[0].name, "http.request");
    assert_eq!(p.actions[0].params["unparsed"], true);
    refused(
        "api.github.com",
        "POST",
        "/graphql",
        gh,
        br#"{"query":"{a}","query":"mutation{deleteRef(input:{})}"}"#,
    );
}
