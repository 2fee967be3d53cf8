//! The demo's stand-ins for the GitHub and Gmail APIs: one HTTPS server on 127.0.0.1 that
//! answers as `api.github.com` (REST), `github.com` (git smart HTTP, receive-pack) and
//! `gmail.googleapis.com` (Gmail v1), with a certificate from a CA made for this run only.
//!
//! They speak the real wire formats for the few calls the demo makes, keep nothing, and say
//! what they are in every answer (`x-agentgate-demo: stand-in`). They record what arrived,
//! including the credential, so the demo can show the token the gate put on the request.
//! Nothing here is used by `agentgate run`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

/// The names the stand-in's certificate carries.
pub const HOSTS: [&str; 3] = ["api.github.com", "github.com", "gmail.googleapis.com"];

/// The commit `refs/heads/main` of the stand-in's `acme/api.git` points at.
pub const MAIN_COMMIT: &str = "5f1c0de5b2a1e6f0c3d4b5a6978899aabbccddee";

/// The most a request body may carry (the demo sends small ones).
const MAX_BODY: usize = 1 << 20;

/// One request as the stand-in received it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub host: String,
    pub method: String,
    pub path: String,
    /// The `Authorization` header, as received.
    pub authorization: Option<String>,
}

/// A running stand-in server.
#[derive(Debug)]
pub struct StandIn {
    pub addr: SocketAddr,
    /// The PEM of the CA that signed the stand-in's certificate (the gate trusts it through
    /// `upstream.extra_roots`; nothing else does).
    pub ca_pem: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: JoinHandle<()>,
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl StandIn {
    /// Every request received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Starts the server on 127.0.0.1 with a new CA and certificate.
    pub async fn start() -> Result<StandIn, String> {
        let (ca_pem, tls) = certificates()?;
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .map_err(|e| format!("stand-in: cannot listen on 127.0.0.1: {e}"))?;
        let addr = listener
            .local_addr()
            .map_err(|e| format!("stand-in: {e}"))?;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let acceptor = TlsAcceptor::from(Arc::new(tls));
        let recorded = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                let recorded = recorded.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |req| {
                        let recorded = recorded.clone();
                        async move { Ok::<_, Infallible>(answer(req, &recorded).await) }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Ok(StandIn {
            addr,
            ca_pem,
            seen,
            task,
        })
    }
}

/// A CA for this run and a certificate for [`HOSTS`] signed by it.
fn certificates() -> Result<(String, rustls::ServerConfig), String> {
    let err = |e: rcgen::Error| format!("stand-in certificate: {e}");
    let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(err)?;
    let mut ca = CertificateParams::default();
    ca.distinguished_name.push(
        DnType::CommonName,
        "AgentGate demo stand-in CA (not a real CA)",
    );
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key).map_err(err)?;
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(err)?;
    let mut leaf = CertificateParams::new(HOSTS.iter().map(|h| h.to_string()).collect::<Vec<_>>())
        .map_err(err)?;
    leaf.distinguished_name
        .push(DnType::CommonName, "AgentGate demo stand-in");
    let cert = leaf.signed_by(&key, &issuer).map_err(err)?;
    let chain: Vec<CertificateDer<'static>> = vec![cert.der().clone()];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let mut config = rustls::ServerConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("stand-in TLS: {e}"))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| format!("stand-in TLS: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok((ca_cert.pem(), config))
}

type Body = Full<Bytes>;

async fn answer(req: Request<Incoming>, seen: &Mutex<Vec<Seen>>) -> Response<Body> {
    let host = req
        .uri()
        .host()
        .map(str::to_string)
        .or_else(|| {
            req.headers()
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(|h| h.split(':').next().unwrap_or(h).to_string())
        })
        .unwrap_or_default();
    let method = req.method().as_str().to_string();
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let authorization = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    seen.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(Seen {
            host: host.clone(),
            method: method.clone(),
            path: path.clone(),
            authorization,
        });
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return json_reply(
                StatusCode::PAYLOAD_TOO_LARGE,
                &json!({"message": "the demo stand-in takes bodies up to 1 MiB"}),
            );
        }
    };
    match host.as_str() {
        "api.github.com" => github_rest(&method, &path),
        "github.com" => git(&method, &path, &body),
        "gmail.googleapis.com" => gmail(&method, &path),
        _ => json_reply(
            StatusCode::MISDIRECTED_REQUEST,
            &json!({"message": format!("the demo stand-in does not play {host}")}),
        ),
    }
}

fn json_reply(status: StatusCode, body: &serde_json::Value) -> Response<Body> {
    reply(status, "application/json; charset=utf-8", body.to_string())
}

fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_str(content_type)
            .unwrap_or(http::HeaderValue::from_static("application/octet-stream")),
    );
    h.insert(
        "x-agentgate-demo",
        http::HeaderValue::from_static("stand-in"),
    );
    resp
}

fn not_found(api: &str) -> Response<Body> {
    json_reply(
        StatusCode::NOT_FOUND,
        &json!({"message": "Not Found", "documentation_url": api}),
    )
}

/// The GitHub REST calls of the demo, with GitHub's status codes and the fields agents read.
fn github_rest(method: &str, path: &str) -> Response<Body> {
    let route = path.split('?').next().unwrap_or(path);
    match (method, route) {
        ("GET", "/repos/acme/api/issues") => json_reply(
            StatusCode::OK,
            &json!([
                {"number": 42, "title": "Login page times out after 30 s", "state": "open",
                 "user": {"login": "dana"}, "comments": 3,
                 "html_url": "https://github.com/acme/api/issues/42"},
                {"number": 41, "title": "Document the rate limits", "state": "open",
                 "user": {"login": "lee"}, "comments": 0,
                 "html_url": "https://github.com/acme/api/issues/41"}
            ]),
        ),
        ("POST", "/repos/acme/api/issues/42/comments") => json_reply(
            StatusCode::CREATED,
            &json!({"id": 1_900_000_001u64, "user": {"login": "acme-agent"},
                    "html_url": "https://github.com/acme/api/issues/42#issuecomment-1900000001"}),
        ),
        ("DELETE", "/repos/acme/api") => reply(StatusCode::NO_CONTENT, "text/plain", ""),
        ("PUT", p) if p.starts_with("/repos/acme/api/collaborators/") => json_reply(
            StatusCode::CREATED,
            &json!({"id": 7, "permissions": "write",
                    "invitee": {"login": p.rsplit('/').next().unwrap_or("")}}),
        ),
        _ => not_found("https://docs.github.com/rest"),
    }
}

/// The Gmail v1 calls of the demo.
fn gmail(method: &str, path: &str) -> Response<Body> {
    let route = path.split('?').next().unwrap_or(path);
    match (method, route) {
        ("GET", "/gmail/v1/users/me/messages") => json_reply(
            StatusCode::OK,
            &json!({"messages": [
                        {"id": "18c1f0a2b3c4d5e6", "threadId": "18c1f0a2b3c4d5e6"},
                        {"id": "18c1ef9a8b7c6d5e", "threadId": "18c1ef9a8b7c6d5e"},
                        {"id": "18c1ee0f1e2d3c4b", "threadId": "18c1ee0f1e2d3c4b"}],
                    "resultSizeEstimate": 3}),
        ),
        ("POST", "/gmail/v1/users/me/messages/send") => json_reply(
            StatusCode::OK,
            &json!({"id": "18c2000000000001", "threadId": "18c2000000000001",
                    "labelIds": ["SENT"]}),
        ),
        ("POST", "/gmail/v1/users/me/settings/filters") => json_reply(
            StatusCode::OK,
            &json!({"id": "ANe1BmjDemoFilter", "criteria": {}, "action": {}}),
        ),
        _ => not_found("https://developers.google.com/gmail/api/reference/rest"),
    }
}

/// git smart HTTP for pushes to `acme/api.git`: the ref advertisement of `git-receive-pack`
/// and the push itself, answered with `report-status`.
fn git(method: &str, path: &str, body: &[u8]) -> Response<Body> {
    let route = path.split('?').next().unwrap_or(path);
    let query = path.split_once('?').map_or("", |(_, q)| q);
    match (method, route) {
        ("GET", "/acme/api.git/info/refs") if query == "service=git-receive-pack" => {
            let mut out = Vec::new();
            pkt(&mut out, b"# service=git-receive-pack\n");
            out.extend_from_slice(b"0000");
            pkt(
                &mut out,
                format!(
                    "{MAIN_COMMIT} refs/heads/main\0report-status delete-refs atomic ofs-delta agent=git/agentgate-demo-stand-in\n"
                )
                .as_bytes(),
            );
            out.extend_from_slice(b"0000");
            reply(
                StatusCode::OK,
                "application/x-git-receive-pack-advertisement",
                out,
            )
        }
        ("POST", "/acme/api.git/git-receive-pack") => {
            let mut out = Vec::new();
            pkt(&mut out, b"unpack ok\n");
            for name in pushed_refs(body) {
                pkt(&mut out, format!("ok {name}\n").as_bytes());
            }
            out.extend_from_slice(b"0000");
            reply(StatusCode::OK, "application/x-git-receive-pack-result", out)
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "Repository not found.\n",
        ),
    }
}

/// Appends one pkt-line.
pub fn pkt(out: &mut Vec<u8>, data: &[u8]) {
    out.extend_from_slice(format!("{:04x}", data.len() + 4).as_bytes());
    out.extend_from_slice(data);
}

/// The ref names of a receive-pack request's commands (`old new name[\0caps]` pkt-lines up to
/// the first flush).
fn pushed_refs(mut body: &[u8]) -> Vec<String> {
    let mut names = Vec::new();
    while body.len() >= 4 {
        let Some(len) = std::str::from_utf8(&body[..4])
            .ok()
            .and_then(|h| usize::from_str_radix(h, 16).ok())
        else {
            break;
        };
        if len < 4 || len > body.len() {
            break;
        }
        let line = &body[4..len];
        body = &body[len..];
        let line = line.split(|b| *b == 0).next().unwrap_or(line);
        let text = String::from_utf8_lossy(line);
        if let Some(name) = text.trim_end().split(' ').nth(2) {
            names.push(name.to_string());
        }
    }
    names
}
