//! `agentgate env`: the shell lines that point an agent at the gate.

use std::fmt::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;

/// Variables that make common clients trust the bundle (system roots + the gate's CA).
const CA_VARS: [&str; 5] = [
    "SSL_CERT_FILE",       // OpenSSL, Go, Rust (rustls-native-certs)
    "CURL_CA_BUNDLE",      // curl
    "GIT_SSL_CAINFO",      // git
    "REQUESTS_CA_BUNDLE",  // Python requests
    "NODE_EXTRA_CA_CERTS", // Node.js
];

/// The `export` lines for an agent, given where the gate listens and the bundle path.
pub fn export_lines(proxy: SocketAddr, dashboard: SocketAddr, bundle: &Path) -> String {
    let proxy_url = format!("http://{}", reachable(proxy));
    let mut out = String::new();
    for var in ["HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"] {
        let _ = writeln!(out, "export {var}={}", quote(&proxy_url));
    }
    let dash = reachable(dashboard);
    let no_proxy = dash.ip().to_string();
    for var in ["NO_PROXY", "no_proxy"] {
        let _ = writeln!(out, "export {var}={}", quote(&no_proxy));
    }
    let bundle = bundle.to_string_lossy();
    for var in CA_VARS {
        let _ = writeln!(out, "export {var}={}", quote(&bundle));
    }
    out
}

/// A listening address turned into one a local client can connect to.
fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), addr.port())
        }
        _ => addr,
    }
}

/// Single-quotes a value for POSIX shells.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_cover_every_client() {
        let out = export_lines(
            "0.0.0.0:8080".parse().unwrap(),
            "127.0.0.1:8081".parse().unwrap(),
            Path::new("/x/it's/bundle.pem"),
        );
        assert!(out.contains("export HTTPS_PROXY='http://127.0.0.1:8080'\n"));
        assert!(out.contains("export http_proxy='http://127.0.0.1:8080'\n"));
        assert!(out.contains("export NO_PROXY='127.0.0.1'\n"));
        for var in CA_VARS {
            assert!(
                out.contains(&format!("export {var}='/x/it'\\''s/bundle.pem'\n")),
                "{var}"
            );
        }
    }
}
