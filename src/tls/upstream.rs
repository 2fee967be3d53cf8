//! The roots upstream certificates are verified against: the system's plus configured extras.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls::{ClientConfig, RootCertStore};

use super::TlsError;

/// The system's trusted roots (honours `SSL_CERT_FILE` / `SSL_CERT_DIR`). Unreadable entries are
/// skipped with a warning: a machine without a CA store still trusts the configured extras.
pub fn system_roots() -> Vec<CertificateDer<'static>> {
    let found = rustls_native_certs::load_native_certs();
    for e in &found.errors {
        tracing::warn!("skipping part of the system trust store: {e}");
    }
    found.certs
}

/// A client configuration that trusts the system roots plus every certificate in `extra_roots`.
pub fn client_config(
    extra_roots: &[PathBuf],
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> Result<ClientConfig, TlsError> {
    let mut roots = RootCertStore::empty();
    let (_, ignored) = roots.add_parsable_certificates(system_roots());
    if ignored > 0 {
        tracing::warn!(
            "{ignored} system root certificates could not be parsed and are not trusted"
        );
    }
    for path in extra_roots {
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| TlsError::Io {
                path: path.clone(),
                source: std::io::Error::other(e.to_string()),
            })?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError::Io {
                path: path.clone(),
                source: std::io::Error::other(e.to_string()),
            })?;
        if certs.is_empty() {
            return Err(TlsError::NoCertificates { path: path.clone() });
        }
        for cert in certs {
            roots.add(cert)?;
        }
    }
    Ok(ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}
