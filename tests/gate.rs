//! The gate through real sockets: the gate on 127.0.0.1:0, recording fake upstreams, and real
//! clients (reqwest, curl, raw TLS for what real clients will not send).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use support::*;

const H1: &[&[u8]] = &[b"http/1.1"];
const H2_H1: &[&[u8]] = &[b"h2", b"http/1.1"];

async fn github_setup(alpn: &[&[u8]]) -> (TestCa, FakeUpstream, TestGate) {
    let ca = TestCa::new("upstream");
    let up = FakeUpstream::tls(&ca, &["api.github.com"], alpn).await;
    let gate = TestGate::start(&ca, &[("api.github.com", up.addr)], |_| {}).await;
    (ca, up, gate)
}

fn binary_body() -> Vec<u8> {
    (0..70_000u32).map(|i| (i * 7 % 256) as u8).collect()
}

#[tokio::test]
async fn every_method_arrives_byte_exact_over_http1_and_http2() {
    let (_ca, up, gate) = github_setup(H2_H1).await;
    for http1_only in [true, false] {
        let client = gate.reqwest(http1_only);
        for method in ["GET", "POST", "PUT", "PATCH", "DELETE"] {
            let body = binary_body();
            let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
            let resp = client
                .request(
                    method.clone(),
                    "https://api.github.com/x-test/issues?state=open&x=%20y",
                )
                .header("x-agent-header", "yes")
                .body(body.clone())
                .send()
                .await
                .unwrap();
            let want = if http1_only {
                reqwest::Version::HTTP_11
            } else {
                reqwest::Version::HTTP_2
            };
            assert_eq!(resp.version(), want, "agent-side protocol");
            assert_eq!(resp.status(), 200);
            assert_eq!(resp.headers()["x-upstream"], "fake");
            assert!(resp.headers().contains_key("agentgate-request-id"));
            let text = resp.text().await.unwrap();
            assert_eq!(
                text,
                format!("ok {method} /x-test/issues?state=open&x=%20y")
            );
            let rec = up.requests().pop().unwrap();
            assert_eq!(rec.method, method.as_str());
            assert_eq!(rec.path, "/x-test/issues?state=open&x=%20y");
            assert_eq!(rec.body, body, "{method} body byte-exact");
            assert_eq!(rec.headers["x-agent-header"], "yes");
            assert_eq!(rec.headers["content-length"], body.len().to_string());
        }
    }
    // The upstream offered h2, so the gate spoke h2 to it.
    assert!(
        up.requests()
            .iter()
            .all(|r| r.version == http::Version::HTTP_2)
    );
}

#[tokio::test]
async fn an_http1_only_upstream_gets_http1_from_an_http2_agent() {
    let (_ca, up, gate) = github_setup(H1).await;
    let resp = gate
        .reqwest(false)
        .get("https://api.github.com/user")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.text().await.unwrap(), "ok GET /user");
    let rec = up.requests().pop().unwrap();
    assert_eq!(rec.version, http::Version::HTTP_11);
    assert_eq!(rec.headers["host"], "api.github.com");
}

#[tokio::test]
async fn curl_reaches_the_upstream_and_posts_a_file() {
    let (_ca, up, gate) = github_setup(H2_H1).await;
    let file = gate.dir.path().join("payload.bin");
    std::fs::write(&file, binary_body()).unwrap();
    let data = format!("@{}", file.display());
    let (code, body, err) = gate
        .curl(&[
            "--data-binary",
            &data,
            "https://api.github.com/x-test/issues",
        ])
        .await;
    assert_eq!(
        (code, body.as_str()),
        (200, "ok POST /x-test/issues"),
        "{err}"
    );
    let rec = up.requests().pop().unwrap();
    assert_eq!(rec.body, binary_body());
}

#[tokio::test]
async fn curl_uploads_with_expect_100_continue() {
    let (_ca, up, gate) = github_setup(H2_H1).await;
    let file = gate.dir.path().join("two-megs.bin");
    let body: Vec<u8> = (0..2_000_000u32).map(|i| (i % 253) as u8).collect();
    std::fs::write(&file, &body).unwrap();
    let file = file.to_string_lossy();
    let (code, _, err) = gate
        .curl(&[
            "--http1.1",
            "-H",
            "Expect: 100-continue",
            "-T",
            &file,
            "https://api.github.com/x-test/contents/blob",
        ])
        .await;
    assert_eq!(code, 200, "{err}");
    let rec = up.requests().pop().unwrap();
    assert_eq!(rec.method, "PUT");
    assert_eq!(rec.body, body);
    assert!(!rec.headers.contains_key("expect"));
}

#[tokio::test]
async fn a_large_response_streams_through_intact() {
    let (_ca, _up, gate) = github_setup(H2_H1).await;
    for http1_only in [true, false] {
        let n = 24 * 1024 * 1024 + 7;
        let mut resp = gate
            .reqwest(http1_only)
            .get(format!("https://api.github.com/stream/{n}"))
            .send()
            .await
            .unwrap();
        let mut got = 0usize;
        while let Some(chunk) = resp.chunk().await.unwrap() {
            for (i, b) in chunk.iter().enumerate() {
                assert_eq!(*b, pattern_byte(got + i));
            }
            got += chunk.len();
        }
        assert_eq!(got, n);
    }
}

#[tokio::test]
async fn responses_stream_before_the_upstream_has_finished() {
    let (_ca, up, gate) = github_setup(H2_H1).await;
    let mut resp = gate
        .reqwest(true)
        .get("https://api.github.com/pause")
        .send()
        .await
        .unwrap();
    // The upstream holds back the rest until released: the first chunk must arrive anyway.
    let first = tokio::time::timeout(Duration::from_secs(5), resp.chunk())
        .await
        .expect("first chunk was held back: the gate buffers responses")
        .unwrap()
        .unwrap();
    assert_eq!(&first[..], b"first");
    up.release();
    let rest = resp.chunk().await.unwrap().unwrap();
    assert_eq!(&rest[..], b"rest");
}

#[tokio::test]
async fn a_body_over_the_limit_gets_413_and_nothing_is_forwarded() {
    let ca = TestCa::new("upstream");
    let up = FakeUpstream::tls(&ca, &["api.github.com"], H2_H1).await;
    let gate = TestGate::start(&ca, &[("api.github.com", up.addr)], |c| {
        c.limits.max_body_bytes = 1024 * 1024;
    })
    .await;
    let big = vec![b'x'; 1024 * 1024 + 1];
    for http1_only in [true, false] {
        // Declared length.
        let resp = gate
            .reqwest(http1_only)
            .post("https://api.github.com/x-test/issues")
            .body(big.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 413);
        assert_eq!(resp.headers()["agentgate-decision"], "error");
        let v: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(v["error"], "body_too_large");
        assert!(v["reason"].as_str().unwrap().contains("1048576"));
        // Streamed (chunked / no length): refused once the limit is crossed.
        let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
            (0..20).map(|_| Ok(vec![b'y'; 64 * 1024])).collect();
        let resp = gate
            .reqwest(http1_only)
            .put("https://api.github.com/x-test/contents/f")
            .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
                chunks,
            )))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 413);
    }
    // Exactly at the limit is fine.
    let resp = gate
        .reqwest(true)
        .post("https://api.github.com/x-test/issues")
        .body(vec![b'z'; 1024 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let seen = up.requests();
    assert_eq!(
        seen.len(),
        1,
        "only the request within the limit was forwarded"
    );
    assert_eq!(seen[0].body.len(), 1024 * 1024);
}

#[tokio::test]
async fn curl_sees_413_for_a_large_upload() {
    let ca = TestCa::new("upstream");
    let up = FakeUpstream::tls(&ca, &["api.github.com"], H2_H1).await;
    let gate = TestGate::start(&ca, &[("api.github.com", up.addr)], |c| {
        c.limits.max_body_bytes = 100_000;
    })
    .await;
    let file = gate.dir.path().join("big.bin");
    std::fs::write(&file, vec![0u8; 3_000_000]).unwrap();
    let data = format!("@{}", file.display());
    let (code, body, err) = gate
        .curl(&[
            "--data-binary",
            &data,
            "https://api.github.com/x-test/issues",
        ])
        .await;
    assert_eq!(code, 413, "{body} {err}");
    assert!(body.contains("\"body_too_large\""));
    assert!(up.requests().is_empty());
}

#[tokio::test]
async fn an_upstream_with_an_untrusted_certificate_gets_502() {
    let trusted = TestCa::new("trusted");
    let rogue = TestCa::new("rogue");
    let up = FakeUpstream::tls(&rogue, &["api.github.com"], H2_H1).await;
    let gate = TestGate::start(&trusted, &[("api.github.com", up.addr)], |_| {}).await;
    let resp = gate
        .reqwest(true)
        .post("https://api.github.com/x-test/issues")
        .body("secret body")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 502);
    assert_eq!(resp.headers()["agentgate-decision"], "error");
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["error"], "upstream_failed");
    assert!(v["reason"].as_str().unwrap().contains("certificate"), "{v}");
    assert!(
        up.requests().is_empty(),
        "the handshake failed, no request was sent"
    );
}

#[tokio::test]
async fn an_upstream_certificate_for_another_name_gets_502() {
    let ca = TestCa::new("upstream");
    let up = FakeUpstream::tls(&ca, &["not-github.example"], H2_H1).await;
    let gate = TestGate::start(&ca, &[("api.github.com", up.addr)], |_| {}).await;
    let resp = gate
        .reqwest(true)
        .get("https://api.github.com/")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 502);
    assert!(up.requests().is_empty());
}

#[tokio::test]
async fn an_unreachable_upstream_gets_502() {
    let ca = TestCa::new("upstream");
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let gate = TestGate::start(&ca, &[("api.github.com", closed)], |_| {}).await;
    let resp = gate
        .reqwest(true)
        .get("https://api.github.com/")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 502);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert!(
        v["reason"].as_str().unwrap().contains("api.github.com"),
        "{v}"
    );
}

#[tokio::test]
async fn redirects_are_passed_back_not_followed() {
    let (_ca, up, gate) = github_setup(H2_H1).await;
    let resp = gate
        .reqwest(true)
        .get("https://api.github.com/status/302")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 302);
    assert_eq!(resp.headers()["location"], "https://elsewhere.example/");
    assert_eq!(up.requests().len(), 1);
}

#[tokio::test]
async fn a_host_header_for_another_host_is_refused() {
    let (_ca, up, gate) = github_setup(H2_H1).await;
    // curl with a forged Host header inside the tunnel to api.github.com.
    let (code, body, _) = gate
        .curl(&[
            "-H",
            "Host: uploads.github.com",
            "https://api.github.com/user",
        ])
        .await;
    assert_eq!(code, 421, "{body}");
    assert!(body.contains("misdirected_request"));
    // Raw HTTP/1.1: absolute-form URI naming another host, and duplicate Host headers.
    let cfg = client_tls(gate.ca_der(), H1);
    let mut tls = tls_through(
        gate.addr(),
        "api.github.com:443",
        "api.github.com",
        cfg.clone(),
    )
    .await
    .unwrap();
    let raw = exchange(
        &mut tls,
        b"GET https://github.com/x HTTP/1.1\r\nHost: github.com\r\n\r\n",
        Duration::from_millis(500),
    )
    .await;
    assert!(raw.starts_with("HTTP/1.1 421"), "{raw}");
    let mut tls = tls_through(gate.addr(), "api.github.com:443", "api.github.com", cfg)
        .await
        .unwrap();
    let raw = exchange(
        &mut tls,
        b"GET /x HTTP/1.1\r\nHost: api.github.com\r\nHost: github.com\r\n\r\n",
        Duration::from_millis(500),
    )
    .await;
    assert!(raw.starts_with("HTTP/1.1 400"), "{raw}");
    assert!(up.requests().is_empty());
}

#[tokio::test]
async fn an_http2_authority_for_another_host_is_refused() {
    let (_ca, up, gate) = github_setup(H2_H1).await;
    let cfg = client_tls(gate.ca_der(), &[b"h2"]);
    let tls = tls_through(gate.addr(), "api.github.com:443", "api.github.com", cfg)
        .await
        .unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    for uri in ["https://github.com/x", "https://api.github.com:8443/x"] {
        let req = http::Request::get(uri)
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 421, "{uri}");
    }
    let ok = http::Request::get("https://api.github.com/x")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    assert_eq!(send.send_request(ok).await.unwrap().status(), 200);
    assert_eq!(up.requests().len(), 1);
}

#[tokio::test]
async fn an_sni_for_another_host_is_refused() {
    let (_ca, up, gate) = github_setup(H2_H1).await;
    // A client that ignores certificate names, to get past the handshake with a foreign SNI.
    let cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(std::sync::Arc::new(AnyCert))
        .with_no_client_auth();
    let mut tls = tls_through(gate.addr(), "api.github.com:443", "evil.example", cfg)
        .await
        .unwrap();
    let raw = exchange(
        &mut tls,
        b"GET /user HTTP/1.1\r\nHost: api.github.com\r\n\r\n",
        Duration::from_millis(500),
    )
    .await;
    assert!(raw.starts_with("HTTP/1.1 421"), "{raw}");
    assert!(
        json_body(&raw)["reason"]
            .as_str()
            .unwrap()
            .contains("evil.example")
    );
    assert!(up.requests().is_empty());
}

#[derive(Debug)]
struct AnyCert;

impl rustls::client::danger::ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[tokio::test]
async fn the_leaf_the_gate_presents_is_short_lived_and_names_the_host() {
    let (_ca, _up, gate) = github_setup(H2_H1).await;
    let cfg = client_tls(gate.ca_der(), H1);
    let tls = tls_through(gate.addr(), "api.github.com:443", "api.github.com", cfg)
        .await
        .unwrap();
    let (_, conn) = tls.get_ref();
    let leaf = conn.peer_certificates().unwrap()[0].clone();
    let (_, cert) = x509_parser::parse_x509_certificate(&leaf).unwrap();
    let validity = cert.validity();
    let days = (validity.not_after.timestamp() - validity.not_before.timestamp()) / 86_400;
    assert!(days <= 30, "leaf valid for {days} days");
    let san = cert.subject_alternative_name().unwrap().unwrap();
    assert_eq!(
        format!("{:?}", san.value.general_names),
        "[DNSName(\"api.github.com\")]"
    );
    let eku = cert.extended_key_usage().unwrap().unwrap();
    assert!(eku.value.server_auth);
    assert!(!cert.is_ca());
    // Serials are random: a second gate issues a different one.
    let (_c2, _u2, gate2) = github_setup(H2_H1).await;
    let tls2 = tls_through(
        gate2.addr(),
        "api.github.com:443",
        "api.github.com",
        client_tls(gate2.ca_der(), H1),
    )
    .await
    .unwrap();
    let leaf2 = tls2.get_ref().1.peer_certificates().unwrap()[0].clone();
    let (_, cert2) = x509_parser::parse_x509_certificate(&leaf2).unwrap();
    assert_ne!(cert.raw_serial(), cert2.raw_serial());
    assert!(cert.raw_serial().len() >= 16);
}

#[tokio::test]
async fn a_hundred_racing_first_connections_get_one_certificate() {
    let (_ca, _up, gate) = github_setup(H2_H1).await;
    let cfg = client_tls(gate.ca_der(), H1);
    let addr = gate.addr();
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let cfg = cfg.clone();
            tokio::spawn(async move {
                let mut tls = tls_through(addr, "api.github.com:443", "api.github.com", cfg)
                    .await
                    .unwrap();
                exchange(
                    &mut tls,
                    b"GET /race HTTP/1.1\r\nHost: api.github.com\r\nConnection: close\r\n\r\n",
                    Duration::from_secs(10),
                )
                .await
            })
        })
        .collect();
    for t in tasks {
        let raw = t.await.unwrap();
        assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    }
    assert_eq!(gate.gate.certificates_issued(), 1);
}

#[tokio::test]
async fn hop_by_hop_headers_are_removed_both_ways() {
    let (_ca, up, gate) = github_setup(H1).await;
    let cfg = client_tls(gate.ca_der(), H1);
    let mut tls = tls_through(gate.addr(), "api.github.com:443", "api.github.com", cfg)
        .await
        .unwrap();
    let raw = exchange(
        &mut tls,
        b"GET /hop HTTP/1.1\r\nHost: api.github.com\r\nConnection: close, X-Agent-Hop\r\n\
          X-Agent-Hop: 1\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nProxy-Connection: keep-alive\r\n\
          Proxy-Authorization: Basic YTpi\r\nUpgrade: websocket\r\nX-End-To-End: kept\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    let head = raw.split("\r\n\r\n").next().unwrap().to_ascii_lowercase();
    assert!(!head.contains("x-up-hop"), "{head}");
    assert!(!head.contains("keep-alive: timeout"), "{head}");
    assert!(!head.contains("proxy-authenticate"), "{head}");
    assert!(head.contains("x-end-to-end: kept"));
    let rec = up.requests().pop().unwrap();
    for h in [
        "x-agent-hop",
        "keep-alive",
        "te",
        "proxy-connection",
        "proxy-authorization",
        "upgrade",
    ] {
        assert!(!rec.headers.contains_key(h), "{h} was forwarded");
    }
    assert_eq!(rec.headers["x-end-to-end"], "kept");
}

#[tokio::test]
async fn tunnels_open_only_to_allowed_hosts() {
    let ca = TestCa::new("upstream");
    let up = FakeUpstream::tls(&ca, &["pypi.org", "evil.example"], H2_H1).await;
    let gate = TestGate::start(
        &ca,
        &[("pypi.org", up.addr), ("evil.example", up.addr)],
        |c| TestGate::tunnel_allow(c, "pypi.org", Some(443)),
    )
    .await;
    // Allowed: a blind tunnel; the client verifies the upstream's own certificate end to end.
    let client = reqwest::Client::builder()
        .proxy(reqwest::Proxy::all(gate.proxy_url()).unwrap())
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca.pem.as_bytes()).unwrap())
        .build()
        .unwrap();
    let resp = client
        .post("https://pypi.org/simple/")
        .body("abc")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        !resp.headers().contains_key("agentgate-request-id"),
        "not intercepted"
    );
    assert_eq!(resp.text().await.unwrap(), "ok POST /simple/");
    assert_eq!(up.requests().pop().unwrap().body, b"abc");
    // Denied: 403 with the JSON reason on the CONNECT itself.
    let (mut s, head) = connect(gate.addr(), "evil.example:443").await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("agentgate-decision: block")
    );
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length: ")
                .map(|v| v.trim().parse().unwrap())
        })
        .unwrap();
    let mut body = vec![0u8; len];
    tokio::io::AsyncReadExt::read_exact(&mut s, &mut body)
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["decision"], "block");
    assert_eq!(v["action"], "net.connect");
    assert!(v["reason"].as_str().unwrap().contains("evil.example:443"));
    assert!(v["request_id"].as_str().unwrap().starts_with("req_"));
    // Another port of an allowed host is not allowed.
    let (_, head) = connect(gate.addr(), "pypi.org:8443").await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    assert_eq!(up.requests().len(), 1);
}

#[tokio::test]
async fn the_gate_refuses_to_proxy_to_itself() {
    let (_ca, _up, gate) = github_setup(H1).await;
    for target in [
        gate.addr().to_string(),
        format!("localhost:{}", gate.addr().port()),
        "127.0.0.1:1".to_string(), // the dashboard's configured address
    ] {
        let (_, head) = connect(gate.addr(), &target).await;
        assert!(head.starts_with("HTTP/1.1 403"), "{target}: {head}");
    }
    let mut s = tokio::net::TcpStream::connect(gate.addr()).await.unwrap();
    let raw = exchange(
        &mut s,
        &authed(format!("GET http://{0}/ HTTP/1.1\r\nHost: {0}\r\n\r\n", gate.addr()).as_bytes()),
        Duration::from_millis(500),
    )
    .await;
    assert!(raw.starts_with("HTTP/1.1 403"), "{raw}");
    assert_eq!(json_body(&raw)["rules"][0], "builtin:gate-address");
}

#[tokio::test]
async fn a_name_that_resolves_to_the_gate_is_refused() {
    let ca = TestCa::new("upstream");
    // `loop.example` is allowed for tunnels, but it leads to the gate's dashboard address.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dashboard = free.local_addr().unwrap();
    drop(free);
    let gate = TestGate::start(&ca, &[("loop.example", dashboard)], |c| {
        c.dashboard_listen = dashboard;
        TestGate::tunnel_allow(c, "loop.example", None)
    })
    .await;
    assert_eq!(gate.gate.dashboard_addr, dashboard);
    let (mut s, head) = connect(gate.addr(), "loop.example:443").await;
    assert!(head.starts_with("HTTP/1.1 502"), "{head}");
    let body = exchange(&mut s, b"", Duration::from_millis(300)).await;
    assert!(body.contains("the gate's own address"), "{body}");
}

#[tokio::test]
async fn a_header_block_over_the_size_limit_is_refused() {
    let (_ca, up, gate) = github_setup(H1).await;
    let big = "v".repeat(100 * 1024);
    let mut s = tokio::net::TcpStream::connect(gate.addr()).await.unwrap();
    let raw = format!(
        "GET http://api.github.com/ HTTP/1.1\r\nHost: api.github.com\r\nx-big: {big}\r\n\r\n"
    );
    let resp = exchange(&mut s, &authed(raw.as_bytes()), Duration::from_secs(2)).await;
    assert!(resp.starts_with("HTTP/1.1 431"), "{resp}");
    let cfg = client_tls(gate.ca_der(), H1);
    let mut tls = tls_through(gate.addr(), "api.github.com:443", "api.github.com", cfg)
        .await
        .unwrap();
    let raw = format!("GET / HTTP/1.1\r\nHost: api.github.com\r\nx-big: {big}\r\n\r\n");
    let resp = exchange(&mut tls, raw.as_bytes(), Duration::from_secs(2)).await;
    assert!(resp.starts_with("HTTP/1.1 431"), "{resp}");
    assert!(up.requests().is_empty());
}

#[tokio::test]
async fn plain_http_requests_go_through_the_same_pipeline() {
    let ca = TestCa::new("upstream");
    let plain = FakeUpstream::plain().await;
    let gate = TestGate::start(&ca, &[("api.github.com:80", plain.addr)], |_| {}).await;
    let client = reqwest::Client::builder()
        .proxy(reqwest::Proxy::http(gate.proxy_url()).unwrap())
        .build()
        .unwrap();
    let resp = client
        .put("http://api.github.com/repos/o/r?x=1")
        .header("connection", "x-drop")
        .header("x-drop", "1")
        .body("plain body")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().contains_key("agentgate-request-id"));
    let rec = plain.requests().pop().unwrap();
    assert_eq!(
        (rec.method.as_str(), rec.path.as_str()),
        ("PUT", "/repos/o/r?x=1")
    );
    assert_eq!(rec.body, b"plain body");
    assert!(!rec.headers.contains_key("x-drop"));
    // A plain request to a host that is neither intercepted nor allowed is blocked.
    let resp = client.get("http://example.com/").send().await.unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(resp.headers()["agentgate-decision"], "block");
}

#[tokio::test]
async fn malformed_requests_get_400_and_the_gate_keeps_serving() {
    let (_ca, up, gate) = github_setup(H1).await;
    let cases: &[&[u8]] = &[
        b"BLAH\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"CONNECT a..b:443 HTTP/1.1\r\nHost: a..b:443\r\n\r\n",
        b"CONNECT api.github.com HTTP/1.1\r\nHost: api.github.com\r\n\r\n",
        b"CONNECT 127.1:443 HTTP/1.1\r\nHost: 127.1:443\r\n\r\n",
        b"CONNECT [::1:443 HTTP/1.1\r\n\r\n",
        b"GET http://api.github.com/ HTTP/1.1\r\nHost: api.github.com\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nx",
        b"GET http://api.github.com/ HTTP/1.1\r\nHost: api.github.com\r\n folded: header\r\n\r\n",
        b"GET ftp://api.github.com/ HTTP/1.1\r\nHost: api.github.com\r\n\r\n",
        b"GET http://user:pw@api.github.com/ HTTP/1.1\r\nHost: api.github.com\r\n\r\n",
        b"\x16\x03\x01\x00\x05hello",
    ];
    for raw in cases {
        let mut s = tokio::net::TcpStream::connect(gate.addr()).await.unwrap();
        let resp = exchange(&mut s, &authed(raw), Duration::from_millis(300)).await;
        assert!(
            resp.starts_with("HTTP/1.1 400"),
            "{:?} -> {resp:?}",
            String::from_utf8_lossy(raw)
        );
    }
    // Inside an intercepted tunnel.
    let cfg = client_tls(gate.ca_der(), H1);
    let inner: &[&[u8]] = &[
        b"GET nopath HTTP/1.1\r\nHost: api.github.com\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: bad host\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",
        b"OPTIONS * HTTP/1.1\r\nHost: api.github.com\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: api.github.com\r\nContent-Length: nope\r\n\r\n",
        b"DELETE /repos/acme/api/../other HTTP/1.1\r\nHost: api.github.com\r\n\r\n",
        b"DELETE /repos//acme/api HTTP/1.1\r\nHost: api.github.com\r\n\r\n",
    ];
    for raw in inner {
        let mut tls = tls_through(
            gate.addr(),
            "api.github.com:443",
            "api.github.com",
            cfg.clone(),
        )
        .await
        .unwrap();
        let resp = exchange(&mut tls, raw, Duration::from_millis(300)).await;
        assert!(
            resp.starts_with("HTTP/1.1 400"),
            "{:?} -> {resp:?}",
            String::from_utf8_lossy(raw)
        );
    }
    assert!(up.requests().is_empty());
    let resp = gate
        .reqwest(true)
        .get("https://api.github.com/still-up")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn content_length_with_transfer_encoding_cannot_smuggle_a_request() {
    // hyper resolves CL + TE as RFC 9112 section 6.3 says: chunked wins, the length is dropped,
    // and the connection closes after the response, so the bytes behind are never a request.
    // The gate forwards the body it decoded with a length of its own.
    let (_ca, up, gate) = github_setup(H1).await;
    let cfg = client_tls(gate.ca_der(), H1);
    let mut tls = tls_through(gate.addr(), "api.github.com:443", "api.github.com", cfg)
        .await
        .unwrap();
    let raw = exchange(
        &mut tls,
        b"POST /a HTTP/1.1\r\nHost: api.github.com\r\nContent-Length: 30\r\nTransfer-Encoding: chunked\r\n\r\n\
          3\r\nabc\r\n0\r\n\r\nGET /b HTTP/1.1\r\nHost: api.github.com\r\nConnection: close\r\n\r\n",
        Duration::from_secs(3),
    )
    .await;
    assert_eq!(raw.matches("HTTP/1.1 200").count(), 1, "{raw}");
    assert!(raw.contains("connection: close"), "{raw}");
    let seen = up.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        (seen[0].path.as_str(), &seen[0].body[..]),
        ("/a", &b"abc"[..])
    );
    assert_eq!(seen[0].headers["content-length"], "3");
    assert!(!seen[0].headers.contains_key("transfer-encoding"));
}

#[tokio::test]
async fn the_pipeline_forwards_the_decoded_body_it_classified_and_refuses_tricks() {
    let (_ca, up, gate) = github_setup(H2_H1).await;
    let client = gate.reqwest(true);
    let json = br#"{"title":"hello","body":"from gzip"}"#;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, json).unwrap();
    let resp = client
        .post("https://api.github.com/repos/acme/api/issues")
        .header("content-type", "application/json")
        .header("content-encoding", "gzip")
        .body(gz.finish().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let rec = up.requests().pop().unwrap();
    assert_eq!(
        rec.body, json,
        "the upstream gets the bytes the gate inspected"
    );
    assert!(!rec.headers.contains_key("content-encoding"));
    assert_eq!(rec.headers["content-length"], json.len().to_string());

    let refused = [
        client.delete("https://api.github.com/repos/acme%2Fapi"),
        client
            .post("https://api.github.com/repos/acme/api")
            .header("x-http-method-override", "DELETE"),
        client
            .put("https://api.github.com/repos/acme/api/collaborators/eve")
            .header("content-type", "application/json")
            .body(r#"{"permission":"pull","permission":"admin"}"#),
    ];
    for req in refused {
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 400);
        let v: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(v["error"], "bad_request", "{v}");
    }
    assert_eq!(up.requests().len(), 1, "nothing refused was forwarded");
}

#[tokio::test]
async fn too_many_headers_are_refused_with_431() {
    let (_ca, up, gate) = github_setup(H2_H1).await;
    let mut req = gate.reqwest(false).get("https://api.github.com/many");
    for i in 0..150 {
        req = req.header(format!("x-h-{i}"), "v");
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status(), 431);
    let mut s = tokio::net::TcpStream::connect(gate.addr()).await.unwrap();
    let mut raw = String::from("GET http://api.github.com/ HTTP/1.1\r\nHost: api.github.com\r\n");
    for i in 0..150 {
        raw.push_str(&format!("x-h-{i}: v\r\n"));
    }
    raw.push_str("\r\n");
    let resp = exchange(&mut s, raw.as_bytes(), Duration::from_millis(500)).await;
    assert!(resp.starts_with("HTTP/1.1 431"), "{resp}");
    assert!(up.requests().is_empty());
}

/// Reads until the peer closes; returns how long that took (None: still open after `within`).
async fn closed_after<S: tokio::io::AsyncRead + Unpin>(
    s: &mut S,
    within: Duration,
) -> Option<Duration> {
    let start = std::time::Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(
            tokio::time::Instant::now() + within,
            tokio::io::AsyncReadExt::read(s, &mut buf),
        )
        .await
        {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(start.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

/// A gate with the given header and idle timeouts, api.github.com behind it over TLS (443)
/// and plain HTTP (80).
async fn timeout_setup(
    header: Duration,
    idle: Duration,
) -> (TestCa, FakeUpstream, FakeUpstream, TestGate) {
    let ca = TestCa::new("upstream");
    let up = FakeUpstream::tls(&ca, &["api.github.com"], H1).await;
    let plain = FakeUpstream::plain().await;
    let gate = TestGate::start(
        &ca,
        &[
            ("api.github.com", up.addr),
            ("api.github.com:80", plain.addr),
        ],
        |c| {
            c.limits.header_read_timeout = header;
            c.limits.idle_timeout = idle;
        },
    )
    .await;
    (ca, up, plain, gate)
}

#[tokio::test]
async fn slow_headers_and_idle_connections_are_closed() {
    let (_ca, _up, _plain, gate) =
        timeout_setup(Duration::from_millis(300), Duration::from_millis(600)).await;
    let limit = Duration::from_secs(4);
    // Slowloris on the proxy port: half a request line, then nothing.
    let mut s = tokio::net::TcpStream::connect(gate.addr()).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut s, b"GET http://api.git")
        .await
        .unwrap();
    assert!(
        closed_after(&mut s, limit).await.is_some(),
        "slow headers kept open"
    );

    // A tunnel whose TLS handshake never starts.
    let (mut raw, head) = connect(gate.addr(), "api.github.com:443").await;
    assert!(head.starts_with("HTTP/1.1 200"));
    assert!(
        closed_after(&mut raw, limit).await.is_some(),
        "silent tunnel kept open"
    );

    // Slow headers inside an intercepted tunnel.
    let cfg = client_tls(gate.ca_der(), H1);
    let mut tls = tls_through(
        gate.addr(),
        "api.github.com:443",
        "api.github.com",
        cfg.clone(),
    )
    .await
    .unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut tls, b"GET /one HTTP/1.1\r\nHo")
        .await
        .unwrap();
    assert!(
        closed_after(&mut tls, limit).await.is_some(),
        "slow headers in tunnel kept open"
    );

    // Keep-alive connections that go quiet after a request: intercepted and plain.
    let mut tls = tls_through(gate.addr(), "api.github.com:443", "api.github.com", cfg)
        .await
        .unwrap();
    tokio::io::AsyncWriteExt::write_all(
        &mut tls,
        b"GET /one HTTP/1.1\r\nHost: api.github.com\r\n\r\n",
    )
    .await
    .unwrap();
    assert!(read_head(&mut tls).await.starts_with("HTTP/1.1 200"));
    assert!(
        closed_after(&mut tls, limit).await.is_some(),
        "idle tunnel kept open"
    );
    let mut s = tokio::net::TcpStream::connect(gate.addr()).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(
        &mut s,
        &authed(b"GET http://api.github.com/two HTTP/1.1\r\nHost: api.github.com\r\n\r\n"),
    )
    .await
    .unwrap();
    assert!(read_head(&mut s).await.starts_with("HTTP/1.1 200"));
    assert!(
        closed_after(&mut s, limit).await.is_some(),
        "idle proxy connection kept open"
    );
}

/// Sends one raw request on a kept-alive connection and reads its 200 response and `body`.
async fn get_ok<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    s: &mut S,
    req: &str,
    body: &str,
) {
    tokio::io::AsyncWriteExt::write_all(s, req.as_bytes())
        .await
        .unwrap();
    let head = read_head(s).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{req:?}: {head}");
    let mut got = vec![0u8; body.len()];
    tokio::io::AsyncReadExt::read_exact(s, &mut got)
        .await
        .unwrap();
    assert_eq!(got, body.as_bytes());
}

#[tokio::test]
async fn a_quiet_keep_alive_connection_outlives_the_header_timeout() {
    // The header timeout times request heads; a connection waiting for its next request is
    // governed by the idle timeout alone.
    let (_ca, up, plain, gate) =
        timeout_setup(Duration::from_millis(200), Duration::from_secs(5)).await;
    let cfg = client_tls(gate.ca_der(), H1);
    let mut tls = tls_through(gate.addr(), "api.github.com:443", "api.github.com", cfg)
        .await
        .unwrap();
    let mut s = tokio::net::TcpStream::connect(gate.addr()).await.unwrap();
    for i in 0..3 {
        let req = format!("GET /k{i} HTTP/1.1\r\nHost: api.github.com\r\n\r\n");
        get_ok(&mut tls, &req, &format!("ok GET /k{i}")).await;
        let req = String::from_utf8(authed(
            format!("GET http://api.github.com/p{i} HTTP/1.1\r\nHost: api.github.com\r\n\r\n")
                .as_bytes(),
        ))
        .unwrap();
        get_ok(&mut s, &req, &format!("ok GET /p{i}")).await;
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    assert_eq!(up.requests().len(), 3);
    assert_eq!(plain.requests().len(), 3);
}

#[tokio::test]
async fn a_slow_upstream_is_not_cut_by_the_idle_timeout() {
    let ca = TestCa::new("upstream");
    let up = FakeUpstream::tls(&ca, &["api.github.com"], H1).await;
    let gate = TestGate::start(&ca, &[("api.github.com", up.addr)], |c| {
        c.limits.idle_timeout = Duration::from_millis(300);
    })
    .await;
    let client = gate.reqwest(true);
    let mut resp = client
        .get("https://api.github.com/pause")
        .send()
        .await
        .unwrap();
    assert_eq!(&resp.chunk().await.unwrap().unwrap()[..], b"first");
    // Nothing moves for three idle periods, but a response is in flight.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    up.release();
    assert_eq!(&resp.chunk().await.unwrap().unwrap()[..], b"rest");
}

#[tokio::test]
async fn the_connection_limit_answers_503_and_frees_up() {
    let (ca, up, _) = github_setup(H1).await;
    let gate = TestGate::start(&ca, &[("api.github.com", up.addr)], |c| {
        c.limits.max_connections = 2;
    })
    .await;
    let a = tokio::net::TcpStream::connect(gate.addr()).await.unwrap();
    let b = tokio::net::TcpStream::connect(gate.addr()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut c = tokio::net::TcpStream::connect(gate.addr()).await.unwrap();
    let raw = exchange(&mut c, b"", Duration::from_secs(2)).await;
    assert!(raw.starts_with("HTTP/1.1 503"), "{raw}");
    assert_eq!(json_body(&raw)["error"], "overloaded");
    drop((a, b));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let resp = gate
        .reqwest(true)
        .get("https://api.github.com/after")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

const RESUMABLE_SEND: &str =
    "https://gmail.googleapis.com/resumable/upload/gmail/v1/users/me/messages/send";
const RESUMABLE_MESSAGE: &[u8] =
    b"From: a@acme.com\r\nTo: bob@example.com\r\nSubject: s\r\n\r\nbody\r\n";

/// Starts a resumable `messages.send` of `RESUMABLE_MESSAGE` through the gate; returns the
/// session URL the (fake) upstream handed out.
async fn start_resumable(client: &reqwest::Client) -> String {
    let resp = client
        .post(format!("{RESUMABLE_SEND}?uploadType=resumable"))
        .header("content-type", "application/json")
        .header("x-upload-content-type", "message/rfc822")
        .header(
            "x-upload-content-length",
            RESUMABLE_MESSAGE.len().to_string(),
        )
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.headers()["location"].to_str().unwrap().to_string()
}

/// PUTs `message[from..to]` to a session with its Content-Range; returns the status.
async fn put_chunk(client: &reqwest::Client, session: &str, from: usize, to: usize) -> u16 {
    let n = RESUMABLE_MESSAGE.len();
    client
        .put(session)
        .header("content-range", format!("bytes {from}-{}/{n}", to - 1))
        .body(RESUMABLE_MESSAGE[from..to].to_vec())
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn gmail_resumable_uploads_are_tracked_chunk_by_chunk() {
    let ca = TestCa::new("upstream");
    let up = FakeUpstream::tls(&ca, &["gmail.googleapis.com"], H2_H1).await;
    let gate = TestGate::start(&ca, &[("gmail.googleapis.com", up.addr)], |_| {}).await;
    let client = gate.reqwest(true);
    // A chunk for a session the gate never saw start is refused.
    let forged = format!("{RESUMABLE_SEND}?uploadType=resumable&upload_id=FORGED");
    assert_eq!(
        put_chunk(&client, &forged, 0, RESUMABLE_MESSAGE.len()).await,
        400
    );
    assert!(up.requests().is_empty());

    let session = start_resumable(&client).await;
    assert!(session.ends_with("upload_id=SESSION-1"));
    assert_eq!(put_chunk(&client, &session, 0, 10).await, 308);
    // Out of order: refused, nothing forwarded.
    assert_eq!(
        put_chunk(&client, &session, 20, RESUMABLE_MESSAGE.len()).await,
        400
    );
    assert_eq!(up.requests().len(), 2, "start and the first chunk only");
}

#[tokio::test]
async fn gmail_resumable_upload_completes_through_the_gate() {
    let ca = TestCa::new("upstream");
    let up = FakeUpstream::tls(&ca, &["gmail.googleapis.com"], H2_H1).await;
    let gate = TestGate::start(&ca, &[("gmail.googleapis.com", up.addr)], |_| {}).await;
    let client = gate.reqwest(false);
    let n = RESUMABLE_MESSAGE.len();
    let session = start_resumable(&client).await;
    assert_eq!(put_chunk(&client, &session, 0, 10).await, 308);
    assert_eq!(put_chunk(&client, &session, 10, n).await, 200);
    let bodies: Vec<u8> = up.requests()[1..]
        .iter()
        .flat_map(|r| r.body.clone())
        .collect();
    assert_eq!(
        bodies, RESUMABLE_MESSAGE,
        "the upstream got exactly the message the gate assembled"
    );
    // The session is complete: a replayed last chunk is refused.
    assert_eq!(put_chunk(&client, &session, 10, n).await, 400);
}
