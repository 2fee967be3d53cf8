//! TLS: the local CA, per-host leaf certificates, and the roots upstreams are verified against.

pub mod ca;
pub mod issuer;
pub mod upstream;

use std::path::PathBuf;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;

/// Why a TLS component could not be built or used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the CA key {path} is readable by group or others (mode {mode:o}); run `chmod 600 {path}`"
    )]
    KeyPermissions { path: PathBuf, mode: u32 },
    #[error(
        "the CA in {dir} is incomplete: {missing} is missing; move the directory away and run `agentgate ca init`"
    )]
    Incomplete { dir: PathBuf, missing: PathBuf },
    #[error("no CA in {dir}; run `agentgate ca init` (or `agentgate run`, which creates one)")]
    NoCa { dir: PathBuf },
    #[error("{path}: not a usable CA certificate or key: {message}")]
    BadCa { path: PathBuf, message: String },
    #[error("cannot issue a certificate for {host:?}: {message}")]
    Issue { host: String, message: String },
    #[error("{path}: no PEM certificate found")]
    NoCertificates { path: PathBuf },
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// The one crypto provider used on both sides (ring).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// ALPN ids offered to agents and upstreams, most preferred first.
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];
