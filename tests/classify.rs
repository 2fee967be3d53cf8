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

#[test]
fn gmail_on_every_host_and_upload_variant() {
    let google = &[
        ("authorization", "Bearer agentgate-placeholder-google"),
        ("content-type", "application/json"),
        ("user-agent", "google-api-python-client/2.202.0"),
    ];
    for host in ["gmail.googleapis.com", "www.googleapis.com"] {
        let (name, p) = one(
            host,
            "POST",
            "/gmail/v1/users/me/messages/send?alt=json",
            google,
            br#"{"raw":"VG86IGFAYi5jb20NCg0KaGk="}"#,
        );
        assert_eq!(name, "gmail.users.messages.send");
        assert_eq!(p["userId"], "me");
        for prefix in ["/upload", "/resumable/upload"] {
            let (name, _) = one(
                host,
                "POST",
                &format!("{prefix}/gmail/v1/users/me/messages/send?uploadType=media"),
                &[("content-type", "message/rfc822")],
                b"To: a@b.com\r\n\r\nhi",
            );
            assert_eq!(name, "gmail.users.messages.send", "{host}{prefix}");
        }
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
fn path_tricks_are_refused() {
    for path in [
        "/repos/acme/api/../other",
        "/repos/acme/./api",
        "//repos/acme/api",
        "/repos//acme/api",
        "/repos/acme/api/",
        "/repos/acme%2fapi",
        "/repos/acme%2Fapi/x",
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
