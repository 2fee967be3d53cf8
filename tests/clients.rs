//! Real clients through the gate, and what the upstream received classified back: the shapes
//! unmodified tools send are the shapes the catalog understands.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::Path;
use std::process::Command;

use agentgate::actions::catalog::Catalog;
use support::*;

/// Classifies a request exactly as the upstream received it.
fn classify(host: &str, rec: &Recorded) -> Vec<agentgate::actions::Action> {
    let catalog = Catalog::builtin(Default::default()).unwrap();
    catalog
        .inspect(
            host,
            &rec.method,
            &rec.path,
            &rec.headers,
            &rec.body,
            1 << 25,
        )
        .unwrap_or_else(|e| panic!("{} {}: {e}", rec.method, rec.path))
        .actions
}

fn git(dir: &Path, gate: &TestGate, args: &[&str]) -> std::process::Output {
    Command::new("git")
        .current_dir(dir)
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap())
        .env("HOME", dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HTTPS_PROXY", gate.proxy_url())
        .env("GIT_SSL_CAINFO", gate.ca_file())
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_AUTHOR_NAME", "Agent")
        .env("GIT_AUTHOR_EMAIL", "agent@acme.com")
        .env("GIT_COMMITTER_NAME", "Agent")
        .env("GIT_COMMITTER_EMAIL", "agent@acme.com")
        .output()
        .unwrap()
}

// Multi-threaded: git runs as a blocking child process while the gate serves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_git_push_and_ls_remote_classify_as_git_actions() {
    let ca = TestCa::new("upstream");
    let up = FakeUpstream::tls(&ca, &["github.com"], &[b"http/1.1"]).await;
    let gate = TestGate::start(&ca, &[("github.com", up.addr)], |_| {}).await;
    let work = TempDir::new("git");
    let repo = work.path();
    let run = |args: &[&str]| {
        let out = git(repo, &gate, args);
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    };
    run(&["init", "-q", "-b", "main"]);
    std::fs::write(repo.join("README.md"), "hello\n").unwrap();
    run(&["add", "README.md"]);
    run(&["commit", "-q", "-m", "first"]);
    run(&["branch", "feature/x"]);
    let url = "https://github.com/Acme/API.git";
    run(&["ls-remote", url]);
    run(&["push", "-q", "-o", "ci.skip", url, "main", "feature/x"]);

    let seen = up.requests();
    let named: Vec<(String, String)> = seen
        .iter()
        .map(|r| {
            let a = classify("github.com", r);
            assert_eq!(a.len(), 1);
            (
                a[0].name.clone(),
                a[0].params["phase"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(
        named.contains(&("git.fetch".into(), "discovery".into())),
        "{named:?}"
    );
    assert!(
        named.contains(&("git.push".into(), "discovery".into())),
        "{named:?}"
    );
    let push = seen
        .iter()
        .find(|r| r.method == "POST")
        .expect("no receive-pack POST");
    let action = &classify("github.com", push)[0];
    assert_eq!(action.name, "git.push");
    assert_eq!(action.params["repo"], "acme/api");
    let refs = action.params["refs"].as_array().unwrap();
    let names: Vec<&str> = refs.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["refs/heads/main", "refs/heads/feature/x"]);
    assert!(refs.iter().all(|r| r["kind"] == "create"));
    assert_eq!(
        action.params["push_options"],
        serde_json::json!(["ci.skip"])
    );

    // Deleting a branch is a push whose ref has kind "delete".
    run(&["push", "-q", url, ":refs/heads/feature/x"]);
    let push = up
        .requests()
        .into_iter()
        .rfind(|r| r.method == "POST")
        .unwrap();
    let action = &classify("github.com", &push)[0];
    assert_eq!(action.params["refs"][0]["kind"], "delete");
    assert_eq!(action.params["refs"][0]["name"], "refs/heads/feature/x");
}

#[tokio::test]
async fn curl_and_python_requests_shapes_classify() {
    let ca = TestCa::new("upstream");
    let up = FakeUpstream::tls(&ca, &["api.github.com"], &[b"h2", b"http/1.1"]).await;
    let gate = TestGate::start(&ca, &[("api.github.com", up.addr)], |_| {}).await;
    let (code, _, err) = gate
        .curl(&[
            "-X",
            "DELETE",
            "-H",
            "Authorization: Bearer agentgate-placeholder-github",
            "https://api.github.com/repos/Acme/API",
        ])
        .await;
    assert_eq!(code, 200, "{err}");
    let rec = up.requests().pop().unwrap();
    let a = &classify("api.github.com", &rec)[0];
    assert_eq!(
        (a.name.as_str(), a.params["repo"].as_str()),
        ("github.repos.delete", Some("acme/api"))
    );

    let py = format!(
        r#"import requests
s = requests.Session()
s.proxies = {{"https": "{proxy}"}}
s.verify = "{ca}"
r = s.put("https://api.github.com/repos/acme/api/collaborators/mallory", json={{"permission": "admin"}},
          headers={{"Authorization": "token agentgate-placeholder-github"}})
print(r.status_code)"#,
        proxy = gate.proxy_url(),
        ca = gate.ca_file().display()
    );
    // A clean environment: requests lets REQUESTS_CA_BUNDLE override a session's `verify`.
    let out = tokio::process::Command::new("python3")
        .args(["-c", &py])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap())
        .output()
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "200",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rec = up.requests().pop().unwrap();
    let a = &classify("api.github.com", &rec)[0];
    assert_eq!(a.name, "github.repos.add-collaborator");
    assert_eq!(a.params["permission"], "admin");
    assert_eq!(a.params["username"], "mallory");
}
