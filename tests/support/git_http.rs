//! A git server standing in for github.com: HTTPS with a certificate for github.com from the
//! test CA, in front of the real `git http-backend` run as a CGI program, serving bare
//! repositories under a scratch directory. Like GitHub, it answers 401 with a Basic challenge
//! unless a request carries `Basic base64(x-access-token:TOKEN)` with the token it was given,
//! and it records every request's method, path and `Authorization` header.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::{TempDir, TestCa};

/// One request the git server received, and how it answered.
#[derive(Debug, Clone)]
pub struct GitRequest {
    pub method: String,
    /// Path and query, as received.
    pub path: String,
    /// The `Authorization` header, if any.
    pub authorization: Option<String>,
    /// The `Content-Encoding` of the request body, if any.
    pub content_encoding: Option<String>,
    pub status: u16,
}

/// The server; repositories live in `root` (GIT_PROJECT_ROOT).
pub struct GitServer {
    pub addr: SocketAddr,
    pub root: TempDir,
    seen: Arc<Mutex<Vec<GitRequest>>>,
}

/// What each connection's requests need.
#[derive(Clone)]
struct Backend {
    root: PathBuf,
    /// The one `Authorization` value accepted.
    accepted: String,
    seen: Arc<Mutex<Vec<GitRequest>>>,
}

/// `git` must be installed with its `http-backend` program; fails the test saying how if not.
pub fn require_git_http_backend() {
    let out = std::process::Command::new("git")
        .arg("--exec-path")
        .output()
        .unwrap_or_else(|e| panic!("git is not installed ({e}): apt-get install git"));
    let exec = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        Path::new(&exec).join("git-http-backend").is_file(),
        "`git http-backend` is missing from {exec} (the git server these tests run is the real \
         git http-backend): install git with its http-backend (apt-get install git)"
    );
}

impl GitServer {
    /// Starts on 127.0.0.1:0 with a certificate for github.com from `ca` (HTTP/2 and
    /// HTTP/1.1, as github.com offers), accepting `token` only.
    pub async fn start(ca: &TestCa, token: &str) -> GitServer {
        require_git_http_backend();
        let root = TempDir::new("git-server");
        let cfg = ca.server_config(&["github.com"], &[b"h2", b"http/1.1"]);
        let acceptor = TlsAcceptor::from(Arc::new(cfg));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let accepted = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("x-access-token:{token}"))
        );
        let backend = Backend {
            root: root.path().to_path_buf(),
            accepted,
            seen: seen.clone(),
        };
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (acceptor, backend) = (acceptor.clone(), backend.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(move |req| {
                        let backend = backend.clone();
                        async move { Ok::<_, Infallible>(backend.serve(req).await) }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        GitServer { addr, root, seen }
    }

    /// Creates the bare repository `name` (e.g. `acme/api.git`) with `http.receivepack true`
    /// and one commit on `main` adding `README.md`; returns its path.
    pub fn create_repo(&self, name: &str) -> PathBuf {
        let bare = self.root.path().join(name);
        let seed = TempDir::new("git-seed");
        let git = |dir: &Path, args: &[&str]| {
            let out = local_git(dir, args);
            assert!(
                out.status.success(),
                "git {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        std::fs::create_dir_all(&bare).unwrap();
        git(&bare, &["init", "-q", "--bare", "-b", "main"]);
        git(&bare, &["config", "http.receivepack", "true"]);
        git(seed.path(), &["init", "-q", "-b", "main"]);
        std::fs::write(seed.path().join("README.md"), "# api\n").unwrap();
        git(seed.path(), &["add", "README.md"]);
        git(seed.path(), &["commit", "-q", "-m", "initial commit"]);
        git(seed.path(), &["push", "-q", bare.to_str().unwrap(), "main"]);
        bare
    }

    /// The refs of repository `name` and the commit each points at.
    pub fn refs(&self, name: &str) -> BTreeMap<String, String> {
        let out = local_git(
            &self.root.path().join(name),
            &["for-each-ref", "--format=%(refname) %(objectname)"],
        );
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(r, id)| (r.to_string(), id.to_string()))
            .collect()
    }

    /// The subject of the commit `rev` in repository `name`.
    pub fn subject(&self, name: &str, rev: &str) -> String {
        let out = local_git(
            &self.root.path().join(name),
            &["log", "-1", "--format=%s", rev],
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    pub fn requests(&self) -> Vec<GitRequest> {
        self.seen.lock().unwrap().clone()
    }
}

/// git on the server's own files (no network), isolated from the user's and system config.
fn local_git(dir: &Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new("git")
        .current_dir(dir)
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_AUTHOR_NAME", "Maintainer")
        .env("GIT_AUTHOR_EMAIL", "maintainer@example.com")
        .env("GIT_COMMITTER_NAME", "Maintainer")
        .env("GIT_COMMITTER_EMAIL", "maintainer@example.com")
        .output()
        .unwrap()
}

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn full(b: impl Into<Bytes>) -> Body {
    BodyExt::boxed(Full::new(b.into()))
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

impl Backend {
    /// Checks the credentials, runs the CGI, records the exchange.
    async fn serve(&self, req: Request<Incoming>) -> Response<Body> {
        let (parts, body) = req.into_parts();
        let body = body
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        let authorization = header(&parts.headers, "authorization");
        let resp = if authorization.as_deref() == Some(self.accepted.as_str()) {
            self.cgi(&parts, &body).await
        } else {
            Response::builder()
                .status(StatusCode::UNAUTHORIZED)
                .header("www-authenticate", "Basic realm=\"GitHub\"")
                .body(full("Invalid username or token.\n"))
                .unwrap()
        };
        self.seen.lock().unwrap().push(GitRequest {
            method: parts.method.to_string(),
            path: parts
                .uri
                .path_and_query()
                .map(|p| p.to_string())
                .unwrap_or_default(),
            authorization,
            content_encoding: header(&parts.headers, "content-encoding"),
            status: resp.status().as_u16(),
        });
        resp
    }

    /// Runs `git http-backend` for one request (RFC 3875 variables) and turns its output
    /// into a response.
    async fn cgi(&self, parts: &http::request::Parts, body: &[u8]) -> Response<Body> {
        let mut cmd = tokio::process::Command::new("git");
        cmd.arg("http-backend")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", &self.root)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_PROJECT_ROOT", &self.root)
            .env("GIT_HTTP_EXPORT_ALL", "1")
            .env("REMOTE_USER", "x-access-token")
            .env("REMOTE_ADDR", "127.0.0.1")
            .env("GATEWAY_INTERFACE", "CGI/1.1")
            .env("SERVER_PROTOCOL", "HTTP/1.1")
            .env("REQUEST_METHOD", parts.method.as_str())
            .env("PATH_INFO", parts.uri.path())
            .env("QUERY_STRING", parts.uri.query().unwrap_or(""))
            .env("CONTENT_LENGTH", body.len().to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (var, name) in [
            ("CONTENT_TYPE", "content-type"),
            ("HTTP_CONTENT_ENCODING", "content-encoding"),
            ("GIT_PROTOCOL", "git-protocol"),
        ] {
            if let Some(v) = header(&parts.headers, name) {
                cmd.env(var, v);
            }
        }
        let mut child = cmd.spawn().unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let input = body.to_vec();
        let writer = tokio::spawn(async move {
            let _ = stdin.write_all(&input).await;
        });
        let out = child.wait_with_output().await.unwrap();
        let _ = writer.await;
        cgi_response(&out.stdout).unwrap_or_else(|| {
            Response::builder()
                .status(StatusCode::INTERNAL_SERVER_ERROR)
                .body(full(format!(
                    "git http-backend gave no CGI response: {}",
                    String::from_utf8_lossy(&out.stderr)
                )))
                .unwrap()
        })
    }
}

/// A CGI program's output as a response: header lines up to an empty line (`Status: 404 Not
/// Found` sets the status, 200 without it), then the body.
fn cgi_response(out: &[u8]) -> Option<Response<Body>> {
    let (head_len, sep) = [&b"\r\n\r\n"[..], b"\n\n"]
        .iter()
        .filter_map(|sep| {
            out.windows(sep.len())
                .position(|w| w == *sep)
                .map(|i| (i, sep.len()))
        })
        .min()?;
    let head = std::str::from_utf8(&out[..head_len]).ok()?;
    let mut resp = Response::builder();
    let mut status = StatusCode::OK;
    for line in head.lines() {
        let (name, value) = line.split_once(':')?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            let code = value.split(' ').next()?.parse().ok()?;
            status = StatusCode::from_u16(code).ok()?;
        } else {
            resp = resp.header(name.trim(), value);
        }
    }
    resp.status(status)
        .body(full(out[head_len + sep..].to_vec()))
        .ok()
}
