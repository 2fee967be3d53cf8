//! Test support: a test CA, recording fake upstreams that speak real HTTP/1.1 and HTTP/2 over
//! TLS, the gate on 127.0.0.1:0, and raw clients for what real clients will not send.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod auth0;
pub mod git_http;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentgate::app::{self, Gate};
use agentgate::config::Config;
use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_rustls::{TlsAcceptor, TlsConnector, client::TlsStream};

/// A unique scratch directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("agentgate-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A CA made in the test, standing in for the public CAs real upstreams chain to.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    pub cert_der: CertificateDer<'static>,
    pub pem: String,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            format!("Test upstream CA {name}"),
        );
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).unwrap();
        TestCa {
            cert_der: cert.der().clone(),
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// Writes the CA certificate as PEM into `dir` and returns the path.
    pub fn write_pem(&self, dir: &Path, name: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, &self.pem).unwrap();
        p
    }

    /// A server config for `names`, offering `alpn`.
    pub fn server_config(&self, names: &[&str], alpn: &[&[u8]]) -> rustls::ServerConfig {
        let key = KeyPair::generate().unwrap();
        let params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .unwrap();
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        cfg
    }
}

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// What a fake upstream received: exactly what arrived on its socket, decoded by hyper.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

/// A recording fake upstream on 127.0.0.1:0. Routes:
/// - `/stream/N`: N bytes of a repeating pattern, in 64 KiB chunks;
/// - `/pause`: the chunk `first`, then waits for [`FakeUpstream::release`], then `rest`;
/// - `/hop`: a response carrying hop-by-hop headers;
/// - `/status/N`: an empty response with status N;
/// - anything else: 200 with `ok <METHOD> <PATH>` and `x-upstream: fake`.
///
/// After [`FakeUpstream::challenge`], the next requests are answered 401 instead (and recorded).
pub struct FakeUpstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Recorded>>>,
    release: Arc<Notify>,
    challenges: Arc<std::sync::atomic::AtomicUsize>,
}

impl FakeUpstream {
    /// An HTTPS upstream with a certificate for `names` from `ca`, offering `alpn`.
    pub async fn tls(ca: &TestCa, names: &[&str], alpn: &[&[u8]]) -> FakeUpstream {
        let cfg = Arc::new(ca.server_config(names, alpn));
        Self::start(Some(TlsAcceptor::from(cfg))).await
    }

    /// A plain-HTTP upstream.
    pub async fn plain() -> FakeUpstream {
        Self::start(None).await
    }

    async fn start(tls: Option<TlsAcceptor>) -> FakeUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let release = Arc::new(Notify::new());
        let challenges = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (s, r, c) = (seen.clone(), release.clone(), challenges.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let _ = stream.set_nodelay(true);
                let (tls, s, r, c) = (tls.clone(), s.clone(), r.clone(), c.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let (s, r, c) = (s.clone(), r.clone(), c.clone());
                        async move {
                            let resp = if challenged(&c) {
                                challenge(req, &s).await
                            } else {
                                respond(req, s, r).await
                            };
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let builder = auto::Builder::new(TokioExecutor::new());
                    match tls {
                        Some(acceptor) => {
                            let Ok(tls) = acceptor.accept(stream).await else {
                                return;
                            };
                            let _ = builder.serve_connection(TokioIo::new(tls), svc).await;
                        }
                        None => {
                            let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                        }
                    }
                });
            }
        });
        FakeUpstream {
            addr,
            seen,
            release,
            challenges,
        }
    }

    /// Answers the next `n` requests 401 with `WWW-Authenticate: Basic realm="GitHub"`, as
    /// GitHub does when it does not accept a request's credentials (the requests are recorded).
    pub fn challenge(&self, n: usize) {
        self.challenges
            .store(n, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.seen.lock().unwrap().clone()
    }

    pub fn release(&self) {
        self.release.notify_one();
    }
}

type FakeBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// Takes one pending challenge, if any.
fn challenged(pending: &std::sync::atomic::AtomicUsize) -> bool {
    use std::sync::atomic::Ordering::SeqCst;
    pending
        .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

/// Records `req` and answers it 401 with a Basic challenge.
async fn challenge(req: Request<Incoming>, seen: &Mutex<Vec<Recorded>>) -> Response<FakeBody> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    seen.lock().unwrap().push(Recorded {
        method: parts.method.to_string(),
        path: parts
            .uri
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        version: parts.version,
        headers: parts.headers,
        body: body.to_vec(),
    });
    Response::builder()
        .status(StatusCode::UNAUTHORIZED)
        .header("www-authenticate", "Basic realm=\"GitHub\"")
        .body(full("Bad credentials"))
        .unwrap()
}

async fn respond(
    req: Request<Incoming>,
    seen: Arc<Mutex<Vec<Recorded>>>,
    release: Arc<Notify>,
) -> Response<FakeBody> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    seen.lock().unwrap().push(Recorded {
        method: parts.method.to_string(),
        path: path.clone(),
        version: parts.version,
        headers: parts.headers.clone(),
        body: body.to_vec(),
    });
    if let Some(n) = path.strip_prefix("/stream/") {
        let n: usize = n.parse().unwrap();
        return Response::new(pattern_stream(n));
    }
    if path == "/pause" {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(2);
        tokio::spawn(async move {
            let _ = tx.send(Ok(Frame::data(Bytes::from_static(b"first")))).await;
            release.notified().await;
            let _ = tx.send(Ok(Frame::data(Bytes::from_static(b"rest")))).await;
        });
        let stream = tokio_stream_from(rx);
        return Response::new(BodyExt::boxed(StreamBody::new(stream)));
    }
    if let Some(resp) = google_resumable(&path, &parts.headers) {
        return resp;
    }
    let pushed = pushed_refs(&seen.lock().unwrap());
    if let Some(resp) = git_smart_http(&parts.method, &path, &body, &pushed) {
        return resp;
    }
    if path == "/hop" {
        return Response::builder()
            .header("connection", "x-up-hop")
            .header("x-up-hop", "1")
            .header("keep-alive", "timeout=5")
            .header("proxy-authenticate", "Basic realm=\"upstream\"")
            .header("x-end-to-end", "kept")
            .body(full("hop"))
            .unwrap();
    }
    if let Some(code) = path.strip_prefix("/status/") {
        let code: u16 = code.parse().unwrap();
        let mut r = Response::new(full(""));
        *r.status_mut() = StatusCode::from_u16(code).unwrap();
        if (300..400).contains(&code) {
            r.headers_mut()
                .insert("location", "https://elsewhere.example/".parse().unwrap());
        }
        return r;
    }
    Response::builder()
        .header("x-upstream", "fake")
        .body(full(format!("ok {} {}", parts.method, path)))
        .unwrap()
}

fn full(s: impl Into<Bytes>) -> FakeBody {
    BodyExt::boxed(Full::new(s.into()))
}

/// The byte at offset `i` of every `/stream/N` response.
pub fn pattern_byte(i: usize) -> u8 {
    (i % 251) as u8
}

fn pattern_stream(n: usize) -> FakeBody {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
    tokio::spawn(async move {
        let mut off = 0;
        while off < n {
            let len = (n - off).min(64 * 1024);
            let chunk: Vec<u8> = (off..off + len).map(pattern_byte).collect();
            if tx.send(Ok(Frame::data(Bytes::from(chunk)))).await.is_err() {
                return;
            }
            off += len;
        }
    });
    BodyExt::boxed(StreamBody::new(tokio_stream_from(rx)))
}

/// An mpsc receiver as a `Stream` (no extra crate needed).
fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_core::Stream<Item = T> + Send + 'static {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// The policy of most tests: every action on an intercepted host is allowed, tunnels are
/// blocked unless a test adds a rule (`TestGate::tunnel_allow`).
pub const BASE_POLICY: &str = "default block reason \"no test rule allows {action} ({host}:{params.port})\";\n\
allow \"test-intercepted\" on ** unless action == \"net.connect\";\n";

/// The gate under test, with its own CA and config in a scratch directory.
pub struct TestGate {
    pub gate: Gate,
    pub dir: TempDir,
    pub config: Config,
}

impl TestGate {
    /// Starts a gate on 127.0.0.1:0 that trusts `upstream_ca` and sends each listed host's
    /// traffic to the given address. `edit` can change anything else in the config.
    pub async fn start(
        upstream_ca: &TestCa,
        overrides: &[(&str, SocketAddr)],
        edit: impl FnOnce(&mut Config),
    ) -> TestGate {
        let dir = TempDir::new("gate");
        let mut config = Config::defaults_in(dir.path());
        config.proxy_listen = "127.0.0.1:0".parse().unwrap();
        config.dashboard_listen = "127.0.0.1:0".parse().unwrap();
        config.upstream.extra_roots = vec![upstream_ca.write_pem(dir.path(), "upstream-ca.pem")];
        config.upstream.overrides = overrides
            .iter()
            .map(|(h, a)| (h.to_string(), a.to_string()))
            .collect::<BTreeMap<_, _>>();
        config.agents = vec![agentgate::config::Principal {
            name: TEST_AGENT.into(),
            token_sha256: agentgate::agents::sha256(TEST_TOKEN),
            user: Some(TEST_USER.into()),
        }];
        config.vault.source = agentgate::config::VaultSource::File {
            path: write_vault_file(dir.path()),
        };
        std::fs::create_dir_all(&config.policies_dir).unwrap();
        TestGate::policy(&mut config, "base", BASE_POLICY);
        edit(&mut config);
        let gate = app::start(&config).await.unwrap();
        TestGate { gate, dir, config }
    }

    pub fn addr(&self) -> SocketAddr {
        self.gate.proxy_addr
    }

    /// Stops the gate and starts it again on the same directory (CA, policies, data).
    pub async fn restart(self) -> TestGate {
        let TestGate { gate, dir, config } = self;
        gate.shutdown().await;
        let gate = app::start(&config).await.unwrap();
        TestGate { gate, dir, config }
    }

    /// The proxy URL with the test agent's credentials.
    pub fn proxy_url(&self) -> String {
        format!("http://{TEST_AGENT}:{TEST_TOKEN}@{}", self.gate.proxy_addr)
    }

    pub fn ca_pem(&self) -> Vec<u8> {
        std::fs::read(&self.gate.ca_cert).unwrap()
    }

    pub fn ca_der(&self) -> CertificateDer<'static> {
        use rustls::pki_types::pem::PemObject;
        CertificateDer::from_pem_slice(&self.ca_pem()).unwrap()
    }

    /// A reqwest client that uses the gate as its proxy and trusts the gate's CA only.
    pub fn reqwest(&self, http1_only: bool) -> reqwest::Client {
        let mut b = reqwest::Client::builder()
            .proxy(reqwest::Proxy::all(self.proxy_url()).unwrap())
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(&self.ca_pem()).unwrap())
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(20));
        if http1_only {
            b = b.http1_only();
        }
        b.build().unwrap()
    }

    /// Runs the real `curl` through the gate, trusting the gate's CA, with `args` appended.
    /// Returns the HTTP status (0 when there was none), the body and curl's stderr.
    pub async fn curl(&self, args: &[&str]) -> (u16, String, String) {
        let out = tokio::process::Command::new("curl")
            .args([
                "-sS",
                "-o",
                "-",
                "-w",
                "\n%{http_code}",
                "--proxy",
                &self.proxy_url(),
            ])
            .arg("--cacert")
            .arg(self.ca_file())
            .args(args)
            .output()
            .await
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        (code.trim().parse().unwrap_or(0), body.to_string(), stderr)
    }

    /// Writes the gate's CA to a file for external clients (curl --cacert).
    pub fn ca_file(&self) -> PathBuf {
        self.gate.ca_cert.clone()
    }

    /// Adds a rule allowing tunnels to `host` (any port, or `port`), as a policy file.
    pub fn tunnel_allow(config: &mut Config, host: &str, port: Option<u16>) {
        let port = port.map_or(String::new(), |p| format!(" and params.port == {p}"));
        TestGate::policy(
            config,
            &format!("tunnel-{host}"),
            &format!("allow \"tunnel-{host}\" on net.connect when host == \"{host}\"{port};\n"),
        );
    }

    /// Writes `text` as `policies/NAME.policy` (use from `edit`, before the gate starts).
    pub fn policy(config: &mut Config, name: &str, text: &str) {
        std::fs::write(config.policies_dir.join(format!("{name}.policy")), text).unwrap();
    }

    /// Replaces the whole policy set (use from `edit`): only `text` remains.
    pub fn only_policy(config: &mut Config, text: &str) {
        for e in std::fs::read_dir(&config.policies_dir).unwrap() {
            std::fs::remove_file(e.unwrap().path()).unwrap();
        }
        TestGate::policy(config, "only", text);
    }
}

/// The vault identity of the test agent, and the real tokens the test vault holds for it.
pub const TEST_USER: &str = "auth0|test-user";
pub const REAL_GITHUB_TOKEN: &str = "ghs_REALtokenFROMtheVAULT0123456789abcd";
pub const REAL_GOOGLE_TOKEN: &str = "ya29.REAL-google-token-from-the-vault";
pub const GITHUB_PLACEHOLDER: &str = "agentgate-placeholder-github";
pub const GOOGLE_PLACEHOLDER: &str = "agentgate-placeholder-google";

/// A file-backend vault (mode 0600) holding the real tokens for `TEST_USER`.
pub fn write_vault_file(dir: &Path) -> PathBuf {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join("vault.toml");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .unwrap();
    std::io::Write::write_all(
        &mut f,
        format!(
            "[users.\"{TEST_USER}\"]\ngithub = \"{REAL_GITHUB_TOKEN}\"\ngoogle = \"{REAL_GOOGLE_TOKEN}\"\n"
        )
        .as_bytes(),
    )
    .unwrap();
    path
}

/// The agent every test gate knows, and its proxy token.
pub const TEST_AGENT: &str = "test-agent";
pub const TEST_TOKEN: &str = "agt_test-agent-token";

/// The `Proxy-Authorization` value for `name:token`.
pub fn proxy_auth(name: &str, token: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{name}:{token}"))
    )
}

/// A raw request to the proxy port with the test agent's credentials added after its
/// request line.
pub fn authed(raw: &[u8]) -> Vec<u8> {
    let Some(i) = raw.windows(2).position(|w| w == b"\r\n") else {
        return raw.to_vec();
    };
    let mut out = raw[..i + 2].to_vec();
    out.extend_from_slice(
        format!(
            "Proxy-Authorization: {}\r\n",
            proxy_auth(TEST_AGENT, TEST_TOKEN)
        )
        .as_bytes(),
    );
    out.extend_from_slice(&raw[i + 2..]);
    out
}

/// Sends `CONNECT target` (as the test agent) on a fresh connection and returns the stream and
/// the response head.
pub async fn connect(proxy: SocketAddr, target: &str) -> (TcpStream, String) {
    connect_with(proxy, target, Some(&proxy_auth(TEST_AGENT, TEST_TOKEN))).await
}

/// Sends `CONNECT target` with the given `Proxy-Authorization` (or none).
pub async fn connect_with(
    proxy: SocketAddr,
    target: &str,
    auth: Option<&str>,
) -> (TcpStream, String) {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.set_nodelay(true).unwrap();
    let auth = auth.map_or(String::new(), |a| format!("Proxy-Authorization: {a}\r\n"));
    s.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{auth}\r\n").as_bytes())
        .await
        .unwrap();
    let head = read_head(&mut s).await;
    (s, head)
}

/// Reads up to the end of an HTTP head (`\r\n\r\n`) one byte at a time.
pub async fn read_head<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> String {
    let mut buf = Vec::new();
    let mut b = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match tokio::time::timeout(Duration::from_secs(10), s.read(&mut b)).await {
            Ok(Ok(1)) => buf.push(b[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// A TLS client config trusting only `root`, offering `alpn`.
pub fn client_tls(root: CertificateDer<'static>, alpn: &[&[u8]]) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root).unwrap();
    let mut c = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    c
}

/// CONNECT through the gate to `target`, then TLS with SNI `sni`, trusting `root`.
pub async fn tls_through(
    proxy: SocketAddr,
    target: &str,
    sni: &str,
    cfg: rustls::ClientConfig,
) -> std::io::Result<TlsStream<TcpStream>> {
    let (s, head) = connect(proxy, target).await;
    assert!(head.starts_with("HTTP/1.1 200"), "CONNECT refused: {head}");
    let name = ServerName::try_from(sni.to_string()).unwrap();
    TlsConnector::from(Arc::new(cfg)).connect(name, s).await
}

/// Writes raw bytes and reads the whole response until the server closes or `wait` passes.
pub async fn exchange<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    s: &mut S,
    raw: &[u8],
    wait: Duration,
) -> String {
    s.write_all(raw).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The JSON body of a raw HTTP/1.1 response with a Content-Length.
pub fn json_body(raw: &str) -> serde_json::Value {
    let (_, body) = raw.split_once("\r\n\r\n").expect("no head/body split");
    serde_json::from_str(body.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {body:?}"))
}

/// A pkt-line: four hex digits of length (itself included), then the payload.
pub fn pkt(payload: &[u8]) -> Vec<u8> {
    let mut out = format!("{:04x}", payload.len() + 4).into_bytes();
    out.extend_from_slice(payload);
    out
}

/// Just enough of a git smart-HTTP server (an empty repository) for real `git push`,
/// `git ls-remote` and `git clone` to complete: ref advertisements for both services, and a
/// report-status accepting every ref of a push.
fn git_smart_http(
    method: &http::Method,
    path: &str,
    body: &[u8],
    refs: &BTreeMap<String, String>,
) -> Option<Response<FakeBody>> {
    let zero = "0".repeat(40);
    for service in ["git-receive-pack", "git-upload-pack"] {
        if method == http::Method::GET && path.ends_with(&format!("/info/refs?service={service}")) {
            let mut out = pkt(format!("# service={service}\n").as_bytes());
            out.extend_from_slice(b"0000");
            let caps = if service == "git-receive-pack" {
                "report-status delete-refs ofs-delta push-options object-format=sha1"
            } else {
                "ofs-delta object-format=sha1"
            };
            if refs.is_empty() {
                out.extend(pkt(format!("{zero} capabilities^{{}}\0{caps}\n").as_bytes()));
            }
            for (i, (name, id)) in refs.iter().enumerate() {
                let line = if i == 0 {
                    format!("{id} {name}\0{caps}\n")
                } else {
                    format!("{id} {name}\n")
                };
                out.extend(pkt(line.as_bytes()));
            }
            out.extend_from_slice(b"0000");
            let resp = Response::builder()
                .header(
                    "content-type",
                    format!("application/x-{service}-advertisement"),
                )
                .header("cache-control", "no-cache")
                .body(full(out))
                .unwrap();
            return Some(resp);
        }
    }
    if method == http::Method::POST && path.ends_with("/git-receive-pack") {
        let mut out = pkt(b"unpack ok\n");
        for (_, _, name) in push_commands(body) {
            out.extend(pkt(format!("ok {name}\n").as_bytes()));
        }
        out.extend_from_slice(b"0000");
        let resp = Response::builder()
            .header("content-type", "application/x-git-receive-pack-result")
            .body(full(out))
            .unwrap();
        return Some(resp);
    }
    None
}

/// The commands of a receive-pack body: (old, new, ref name).
fn push_commands(body: &[u8]) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    let mut rest = body;
    while rest.len() >= 4 {
        let Some(len) = std::str::from_utf8(&rest[..4])
            .ok()
            .and_then(|h| usize::from_str_radix(h, 16).ok())
        else {
            break;
        };
        if len < 4 || len > rest.len() {
            break;
        }
        let line = &rest[4..len];
        let line = line.split(|b| *b == 0).next().unwrap_or(line);
        let text = String::from_utf8_lossy(line);
        let f: Vec<&str> = text.trim_end().split(' ').collect();
        if f.len() == 3 {
            out.push((f[0].to_string(), f[1].to_string(), f[2].to_string()));
        }
        rest = &rest[len..];
    }
    out
}

/// The refs of the fake repository: every recorded push applied in order.
fn pushed_refs(seen: &[Recorded]) -> BTreeMap<String, String> {
    let mut refs = BTreeMap::new();
    for r in seen
        .iter()
        .filter(|r| r.path.ends_with("/git-receive-pack"))
    {
        for (_, new, name) in push_commands(&r.body) {
            if new.bytes().all(|b| b == b'0') {
                refs.remove(&name);
            } else {
                refs.insert(name, new);
            }
        }
    }
    refs
}

/// Google's resumable upload protocol: a start answered with the session URL, data chunks
/// answered 308 until the last one, which answers 200.
fn google_resumable(path: &str, headers: &HeaderMap) -> Option<Response<FakeBody>> {
    if !path.starts_with("/resumable/upload/") {
        return None;
    }
    if !path.contains("upload_id=") {
        let location = format!("https://gmail.googleapis.com{path}&upload_id=SESSION-1");
        let resp = Response::builder()
            .header("location", location)
            .body(full(""))
            .unwrap();
        return Some(resp);
    }
    let range = headers
        .get("content-range")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    // `bytes a-b/total`: the last chunk ends at total - 1.
    let last = range
        .strip_prefix("bytes ")
        .and_then(|r| r.split_once('/'))
        .and_then(|(span, total)| {
            let end: u64 = span.split_once('-')?.1.parse().ok()?;
            let total: u64 = total.parse().ok()?;
            Some(end + 1 == total)
        })
        .unwrap_or(true);
    let resp = if last {
        Response::builder().body(full(r#"{"id":"msg-1"}"#)).unwrap()
    } else {
        Response::builder().status(308).body(full("")).unwrap()
    };
    Some(resp)
}

// ---- End to end: a gate started from a config file, and what `agentgate env` prints for it.

impl TestGate {
    /// Starts a gate from an `agentgate.toml` written as a user would (free ports on
    /// 127.0.0.1, `upstream_ca` trusted, `overrides`, the test agent with its token's SHA-256,
    /// the file vault of [`TestGate::start`]) with the shipped `default.policy` plus `policies`
    /// (name, text). `agentgate env --config` on the same file ([`TestGate::agent_env`]) then
    /// names this gate's proxy, the test agent's token and this gate's CA bundle.
    pub async fn from_file(
        upstream_ca: &TestCa,
        overrides: &[(&str, SocketAddr)],
        policies: &[(&str, &str)],
    ) -> TestGate {
        let free = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
        };
        for _ in 0..5 {
            let dir = TempDir::new("e2e");
            upstream_ca.write_pem(dir.path(), "upstream-ca.pem");
            write_vault_file(dir.path());
            let pdir = dir.path().join("policies");
            std::fs::create_dir_all(&pdir).unwrap();
            std::fs::write(pdir.join("default.policy"), app::DEFAULT_POLICY).unwrap();
            for (name, text) in policies {
                std::fs::write(pdir.join(format!("{name}.policy")), text).unwrap();
            }
            let overrides: String = overrides
                .iter()
                .map(|(h, a)| format!("\"{h}\" = \"{a}\"\n"))
                .collect();
            let text = format!(
                "[proxy]\nlisten = \"{}\"\n[dashboard]\nlisten = \"{}\"\n\
                 [upstream]\nextra_roots = [\"upstream-ca.pem\"]\n[upstream.overrides]\n{overrides}\
                 [vault]\nbackend = \"file\"\nfile = \"vault.toml\"\n\
                 [[agents]]\nname = \"{TEST_AGENT}\"\ntoken_sha256 = \"{}\"\nuser = \"{TEST_USER}\"\n",
                free(),
                free(),
                hex::encode(agentgate::agents::sha256(TEST_TOKEN)),
            );
            let file = dir.path().join("agentgate.toml");
            std::fs::write(&file, text).unwrap();
            let config = Config::load(&file).unwrap();
            match app::start(&config).await {
                Ok(gate) => {
                    assert!(
                        gate.policy.current().is_some(),
                        "the policies in {} did not load (see the gate's log above)",
                        config.policies_dir.display()
                    );
                    return TestGate { gate, dir, config };
                }
                // Another process took a free port in between: try other ports.
                Err(app::AppError::Bind { .. }) => continue,
                Err(e) => panic!("the gate did not start: {e}"),
            }
        }
        panic!("no free ports for the gate");
    }

    /// The variables `agentgate env --config agentgate.toml` prints for the test agent (run in
    /// a clean environment holding only the agent's token), as name/value pairs.
    pub async fn agent_env(&self) -> Vec<(String, String)> {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_agentgate"))
            .arg("env")
            .arg("--config")
            .arg(self.dir.path().join("agentgate.toml"))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env(agentgate::agent_env::TOKEN_VAR, TEST_TOKEN)
            .output()
            .await
            .unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(
            out.status.success(),
            "agentgate env: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let vars: Vec<(String, String)> = text
            .lines()
            .map(|l| {
                let (name, value) = l
                    .strip_prefix("export ")
                    .and_then(|l| l.split_once('='))
                    .unwrap();
                (name.to_string(), unquote(value))
            })
            .collect();
        // It names this gate: its proxy address with the agent's token, and its CA bundle.
        let var = |n: &str| &vars.iter().find(|(k, _)| k == n).unwrap().1;
        assert_eq!(var("HTTPS_PROXY"), &self.proxy_url());
        assert_eq!(Path::new(var("SSL_CERT_FILE")), self.gate.bundle);
        vars
    }

    /// The reviewer token the gate created in its data directory.
    pub fn reviewer_token(&self) -> String {
        std::fs::read_to_string(self.config.data_dir.join("reviewer.token"))
            .unwrap()
            .trim()
            .to_string()
    }

    /// A reviewer's call to the dashboard API: the status and the body.
    pub async fn reviewer(
        &self,
        method: http::Method,
        path: &str,
        json: Option<serde_json::Value>,
    ) -> (u16, String) {
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let mut req = client
            .request(method, format!("http://{}{path}", self.gate.dashboard_addr))
            .bearer_auth(self.reviewer_token());
        if let Some(v) = json {
            req = req.json(&v);
        }
        let resp = req.send().await.unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    }

    /// Waits (up to 20 s) for a pending challenge and returns the oldest.
    pub async fn pending_challenge(&self) -> serde_json::Value {
        for _ in 0..400 {
            let (_, body) = self
                .reviewer(http::Method::GET, "/api/challenges?state=pending", None)
                .await;
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            if let Some(c) = v["challenges"].as_array().and_then(|a| a.first()) {
                return c.clone();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no challenge became pending");
    }

    /// The audit log as `GET /api/audit/export` gives it, once `ready` says so (outcomes are
    /// appended after the response) or after 10 s.
    pub async fn audit_until(
        &self,
        ready: impl Fn(&[serde_json::Value]) -> bool,
    ) -> Vec<serde_json::Value> {
        let mut records = Vec::new();
        for _ in 0..200 {
            let (status, body) = self
                .reviewer(http::Method::GET, "/api/audit/export", None)
                .await;
            assert_eq!(status, 200, "{body}");
            records = body
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
            if ready(&records) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        records
    }
}

/// A value as `agentgate env` single-quotes it for POSIX shells.
fn unquote(s: &str) -> String {
    s.strip_prefix('\'')
        .and_then(|s| s.strip_suffix('\''))
        .unwrap_or_else(|| panic!("not single-quoted: {s}"))
        .replace(r"'\''", "'")
}

/// A loopback port that was free a moment ago (for a process that must be told its port before
/// it starts; the port is released before it returns, so another process could take it first).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
