//! The `agentgate` binary as a user runs it: `ca init/show`, `run`, and `eval "$(agentgate env)"`
//! followed by unmodified curl and Python `requests` reaching an HTTPS upstream through the gate.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use support::*;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const BIN: &str = env!("CARGO_BIN_EXE_agentgate");

/// Writes a config for a gate that sends api.github.com to `upstream` and trusts `ca`.
fn write_config(dir: &Path, ca: &TestCa, upstream: std::net::SocketAddr) -> std::path::PathBuf {
    ca.write_pem(dir, "upstream-ca.pem");
    let text = format!(
        r#"
[proxy]
listen = "127.0.0.1:{proxy}"
[dashboard]
listen = "127.0.0.1:{dash}"
[paths]
certs = "certs"
data = "data"
[upstream]
extra_roots = ["upstream-ca.pem"]
[upstream.overrides]
"api.github.com" = "{upstream}"
"#,
        proxy = support::free_port(),
        dash = support::free_port(),
    );
    let path = dir.join("agentgate.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Starts `agentgate run --config CONFIG` and waits until it says it is listening.
async fn run_gate(config: &Path) -> (Child, String) {
    let mut child = Command::new(BIN)
        .args(["run", "--config"])
        .arg(config)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut banner = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while let Ok(Ok(Some(line))) = tokio::time::timeout_at(deadline, lines.next_line()).await {
        banner.push_str(&line);
        banner.push('\n');
        if line.contains("eval \"$(agentgate env") {
            break;
        }
    }
    assert!(
        banner.contains("proxy listening on"),
        "gate did not start:\n{banner}"
    );
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, banner)
}

/// Runs `script` in sh after `eval "$(agentgate env --config CONFIG)"`, with a clean
/// environment apart from PATH and HOME.
async fn with_env(config: &Path, script: &str) -> std::process::Output {
    let bin_dir = Path::new(BIN).parent().unwrap();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap());
    let full = format!(
        "set -e; eval \"$(agentgate env --config '{}')\"; {script}",
        config.display()
    );
    Command::new("sh")
        .args(["-c", &full])
        .env_clear()
        .env("PATH", path)
        .env(
            "HOME",
            std::env::var("HOME").unwrap_or_else(|_| "/tmp".into()),
        )
        .output()
        .await
        .unwrap()
}

#[tokio::test]
async fn run_then_env_lets_curl_and_python_reach_the_upstream() {
    let dir = TempDir::new("cli");
    let ca = TestCa::new("upstream");
    let up = FakeUpstream::tls(&ca, &["api.github.com"], &[b"h2", b"http/1.1"]).await;
    let config = write_config(dir.path(), &ca, up.addr);
    let (_gate, banner) = run_gate(&config).await;
    assert!(banner.contains("created a local CA"), "{banner}");
    let key = dir.path().join("certs/ca-key.pem");
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let out = with_env(&config, "curl -sS --fail https://api.github.com/user").await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok GET /user");

    // The shipped default policy is in force: a GraphQL query is allowed and forwarded...
    let py = r#"python3 -c 'import requests; r = requests.post("https://api.github.com/graphql", json={"query": "{ viewer { login } }"}); print(r.status_code, r.text, r.headers["agentgate-request-id"][:4])'"#;
    let out = with_env(&config, py).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "200 ok POST /graphql req_"
    );
    let rec = up.requests().pop().unwrap();
    assert_eq!(rec.body, br#"{"query": "{ viewer { login } }"}"#);

    // ...deleting a repository is blocked with the rule and its reason, and nothing is sent.
    let before = up.requests().len();
    let py = r#"python3 -c 'import requests; r = requests.delete("https://api.github.com/repos/Acme/API"); print(r.status_code, r.headers["agentgate-decision"], r.json()["rules"], r.json()["reason"])'"#;
    let out = with_env(&config, py).await;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "403 block ['no-repo-deletion'] Agents may never delete repositories (acme/api)",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(up.requests().len(), before);
    assert!(dir.path().join("policies/default.policy").is_file());

    // Tunnelled hosts keep verifying against the real roots: the bundle holds them too.
    let bundle = std::fs::read_to_string(dir.path().join("certs/bundle.pem")).unwrap();
    let gate_ca = std::fs::read_to_string(dir.path().join("certs/ca.pem")).unwrap();
    assert!(bundle.ends_with(&gate_ca));
    let system = agentgate::tls::upstream::system_roots().len();
    assert_eq!(bundle.matches("BEGIN CERTIFICATE").count(), system + 1);
}

#[tokio::test]
async fn env_prints_every_variable_for_every_client() {
    let dir = TempDir::new("env");
    let ca = TestCa::new("upstream");
    let config = write_config(dir.path(), &ca, "127.0.0.1:9".parse().unwrap());
    let out = Command::new(BIN)
        .args(["env", "--config"])
        .arg(&config)
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for var in [
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
        "NO_PROXY",
        "no_proxy",
        "SSL_CERT_FILE",
        "CURL_CA_BUNDLE",
        "GIT_SSL_CAINFO",
        "REQUESTS_CA_BUNDLE",
        "NODE_EXTRA_CA_CERTS",
        "GITHUB_TOKEN",
        "GH_TOKEN",
        "GOOGLE_OAUTH_ACCESS_TOKEN",
    ] {
        assert!(
            text.contains(&format!("export {var}=")),
            "{var} missing:\n{text}"
        );
    }
    // The default agent's credentials are in the proxy URL; the token file is private.
    let token = std::fs::read_to_string(dir.path().join("data/agent-default.token")).unwrap();
    assert!(
        text.contains(&format!(
            "export HTTPS_PROXY='http://default:{}@",
            token.trim()
        )),
        "{text}"
    );
    assert!(text.contains("export GITHUB_TOKEN='agentgate-placeholder-github'"));

    // A configured agent: env needs its token (the gate keeps only the hash).
    let cfg_text = std::fs::read_to_string(&config).unwrap();
    let new = Command::new(BIN)
        .args(["agent", "new", "coder"])
        .output()
        .await
        .unwrap();
    assert!(new.status.success());
    let printed = String::from_utf8(new.stdout).unwrap();
    let agent_token = printed
        .split("AGENTGATE_AGENT_TOKEN='")
        .nth(1)
        .and_then(|s| s.split('\'').next())
        .unwrap()
        .to_string();
    let block = printed.split_once("[[agents]]").unwrap().1;
    std::fs::write(&config, format!("{cfg_text}\n[[agents]]{block}")).unwrap();
    let without = Command::new(BIN)
        .args(["env", "--agent", "coder", "--config"])
        .arg(&config)
        .env_remove("AGENTGATE_AGENT_TOKEN")
        .output()
        .await
        .unwrap();
    assert!(!without.status.success());
    assert!(String::from_utf8_lossy(&without.stderr).contains("AGENTGATE_AGENT_TOKEN"));
    let wrong = Command::new(BIN)
        .args(["env", "--agent", "coder", "--config"])
        .arg(&config)
        .env("AGENTGATE_AGENT_TOKEN", "agt_wrong")
        .output()
        .await
        .unwrap();
    assert!(!wrong.status.success());
    let with = Command::new(BIN)
        .args(["env", "--agent", "coder", "--config"])
        .arg(&config)
        .env("AGENTGATE_AGENT_TOKEN", &agent_token)
        .output()
        .await
        .unwrap();
    assert!(
        with.status.success(),
        "{}",
        String::from_utf8_lossy(&with.stderr)
    );
    assert!(
        String::from_utf8(with.stdout)
            .unwrap()
            .contains(&format!("http://coder:{agent_token}@"))
    );
    let bundle = dir.path().join("certs/bundle.pem");
    assert!(text.contains(&format!(
        "'{}'",
        std::path::absolute(&bundle).unwrap().display()
    )));
}

#[tokio::test]
async fn ca_init_and_show() {
    let dir = TempDir::new("ca");
    let certs = dir.path().join("c");
    let out = Command::new(BIN)
        .args(["ca", "init", "--dir"])
        .arg(&certs)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let created = String::from_utf8(out.stdout).unwrap();
    let out = Command::new(BIN)
        .args(["ca", "show", "--dir"])
        .arg(&certs)
        .output()
        .await
        .unwrap();
    let shown = String::from_utf8(out.stdout).unwrap();
    let fp = shown
        .lines()
        .nth(1)
        .unwrap()
        .strip_prefix("SHA-256 ")
        .unwrap();
    assert_eq!(fp.len(), 32 * 3 - 1);
    assert!(created.contains(fp));
    // A second init never overwrites the key.
    let out = Command::new(BIN)
        .args(["ca", "init", "--dir"])
        .arg(&certs)
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("ca-key.pem"));
}

/// Runs `agentgate run --config CONFIG`, expects exit status 1, returns its stderr.
async fn run_fails(config: &Path) -> String {
    let out = Command::new(BIN)
        .args(["run", "--config"])
        .arg(config)
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn run_refuses_a_ca_key_others_can_read() {
    let dir = TempDir::new("perm");
    let ca = TestCa::new("upstream");
    let config = write_config(dir.path(), &ca, "127.0.0.1:9".parse().unwrap());
    let certs = dir.path().join("certs");
    agentgate::tls::ca::create(&certs).unwrap();
    let key = certs.join("ca-key.pem");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = run_fails(&config).await;
    assert!(
        err.contains("readable by group or others") && err.contains("chmod 600"),
        "{err}"
    );
}

#[tokio::test]
async fn a_bad_config_is_a_clear_error() {
    let dir = TempDir::new("badcfg");
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[proxy]\nlisten = \"nowhere\"\n").unwrap();
    let err = run_fails(&path).await;
    assert!(
        err.contains("proxy.listen") && err.contains("bad.toml"),
        "{err}"
    );
}
