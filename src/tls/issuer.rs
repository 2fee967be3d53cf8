//! Per-host leaf certificates signed by the local CA: issued on first use, cached, and issued
//! exactly once per host however many connections race for it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType, SerialNumber,
};
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use time::{Duration, OffsetDateTime};

use super::TlsError;
use super::ca::Ca;
use crate::actions::host::canonical_host;

/// Total validity of a leaf certificate (the issue's ceiling is 30 days).
const LEAF_VALIDITY: Duration = Duration::days(29);
/// Leaves are back-dated this much to tolerate clients with a slow clock.
const BACKDATE: Duration = Duration::hours(1);
/// A cached leaf is replaced once it has less than this left.
const RENEW_BEFORE: Duration = Duration::days(2);
/// Hosts whose leaves are kept; the intercept list bounds this in practice.
const MAX_CACHED: usize = 10_000;

/// A 128-bit random serial number with the top bit clear (serials are positive).
pub fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    // getrandom only fails when the OS has no entropy source at all; a zero serial is still
    // unique enough for a local CA that never issues twice for one host.
    let _ = getrandom::fill(&mut bytes);
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    SerialNumber::from_slice(&bytes)
}

/// A signed leaf and the server configuration that presents it.
pub struct Leaf {
    pub config: Arc<ServerConfig>,
    pub not_after: OffsetDateTime,
}

type Slot = Arc<Mutex<Option<Leaf>>>;

/// Issues and caches the TLS server configuration the gate presents for each intercepted host.
pub struct LeafIssuer {
    ca: Ca,
    provider: Arc<CryptoProvider>,
    /// One key for every leaf of this process: generated at start, never written anywhere.
    leaf_key: KeyPair,
    signing_key: Arc<dyn rustls::sign::SigningKey>,
    cache: Mutex<HashMap<String, Slot>>,
    issued: AtomicU64,
}

impl std::fmt::Debug for LeafIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeafIssuer")
            .field("issued", &self.issued.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl LeafIssuer {
    /// Builds an issuer over `ca` with a fresh leaf key.
    pub fn new(ca: Ca, provider: Arc<CryptoProvider>) -> Result<LeafIssuer, TlsError> {
        let leaf_key =
            KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| TlsError::Issue {
                host: String::new(),
                message: e.to_string(),
            })?;
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
        let signing_key = provider.key_provider.load_private_key(der)?;
        Ok(LeafIssuer {
            ca,
            provider,
            leaf_key,
            signing_key,
            cache: Mutex::new(HashMap::new()),
            issued: AtomicU64::new(0),
        })
    }

    /// The CA this issuer signs with.
    pub fn ca(&self) -> &Ca {
        &self.ca
    }

    /// How many leaf certificates this issuer has signed.
    pub fn issued(&self) -> u64 {
        self.issued.load(Ordering::Relaxed)
    }

    /// The server configuration for `host`, issuing its certificate on first use.
    pub fn server_config(&self, host: &str) -> Result<Arc<ServerConfig>, TlsError> {
        let slot = self.slot(host)?;
        let mut guard = slot.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(leaf) = guard.as_ref() {
            if OffsetDateTime::now_utc() + RENEW_BEFORE < leaf.not_after {
                return Ok(leaf.config.clone());
            }
        }
        let leaf = self.issue(host)?;
        let config = leaf.config.clone();
        *guard = Some(leaf);
        Ok(config)
    }

    fn slot(&self, host: &str) -> Result<Slot, TlsError> {
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(slot) = cache.get(host) {
            return Ok(slot.clone());
        }
        if cache.len() >= MAX_CACHED {
            cache.clear();
        }
        let slot = Slot::default();
        cache.insert(host.to_string(), slot.clone());
        Ok(slot)
    }

    /// Signs a new leaf for `host` (a canonical name or IP literal) and builds its config.
    pub fn issue(&self, host: &str) -> Result<Leaf, TlsError> {
        let err = |message: String| TlsError::Issue {
            host: host.to_string(),
            message,
        };
        let san = match host.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => {
                let canonical = canonical_host(host).map_err(|e| err(e.to_string()))?;
                if canonical != host {
                    return Err(err("not a canonical host name".into()));
                }
                SanType::DnsName(
                    host.try_into()
                        .map_err(|e: rcgen::Error| err(e.to_string()))?,
                )
            }
        };
        let now = OffsetDateTime::now_utc();
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, host);
        params.distinguished_name = dn;
        params.subject_alt_names = vec![san];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.serial_number = Some(random_serial());
        params.not_before = now - BACKDATE;
        params.not_after = now - BACKDATE + LEAF_VALIDITY;
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&self.leaf_key, &self.ca.issuer)
            .map_err(|e| err(e.to_string()))?;
        let chain = vec![cert.der().clone(), self.ca.cert_der.clone()];
        let config = self.config_for(chain)?;
        self.issued.fetch_add(1, Ordering::Relaxed);
        Ok(Leaf {
            config,
            not_after: params.not_after,
        })
    }

    fn config_for(
        &self,
        chain: Vec<CertificateDer<'static>>,
    ) -> Result<Arc<ServerConfig>, TlsError> {
        let certified = Arc::new(CertifiedKey::new(chain, self.signing_key.clone()));
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(OneCert(certified)));
        config.alpn_protocols = super::ALPN.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(config))
    }
}

#[derive(Debug)]
struct OneCert(Arc<CertifiedKey>);

impl ResolvesServerCert for OneCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issuer() -> LeafIssuer {
        let dir = std::env::temp_dir().join(format!(
            "agentgate-issuer-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let (ca, _) = super::super::ca::ensure(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        LeafIssuer::new(ca, super::super::provider()).unwrap()
    }

    #[test]
    fn odd_host_names_are_errors_not_panics() {
        let i = issuer();
        for bad in [
            "",
            "a b",
            "UPPER.example",
            "x..y",
            "bad\0host",
            "é.com",
            "trailing.",
        ] {
            assert!(i.server_config(bad).is_err(), "{bad:?}");
        }
        assert!(i.server_config("127.0.0.1").is_ok());
        assert!(i.server_config("::1").is_ok());
    }

    #[test]
    fn cached_per_host() {
        let i = issuer();
        let a = i.server_config("api.github.com").unwrap();
        let b = i.server_config("api.github.com").unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        i.server_config("github.com").unwrap();
        assert_eq!(i.issued(), 2);
    }
}
