//! The local root CA: created once (ECDSA P-256), stored as PEM, key kept 0600.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use sha2::{Digest, Sha256};
use time::{Duration, OffsetDateTime};

use super::TlsError;

/// File name of the CA certificate inside the certs directory.
pub const CERT_FILE: &str = "ca.pem";
/// File name of the CA private key inside the certs directory (git-ignored, 0600).
pub const KEY_FILE: &str = "ca-key.pem";
/// File name of the bundle (system roots + this CA) that agents are pointed at.
pub const BUNDLE_FILE: &str = "bundle.pem";

/// How long a new root is valid.
const CA_VALIDITY_DAYS: i64 = 5 * 365;

/// A loaded CA: its certificate and the issuer that signs leaf certificates.
pub struct Ca {
    pub cert_path: PathBuf,
    pub cert_pem: String,
    pub cert_der: CertificateDer<'static>,
    pub issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("cert_path", &self.cert_path)
            .finish_non_exhaustive()
    }
}

impl Ca {
    /// SHA-256 fingerprint of the certificate, as colon-separated upper-case hex.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.cert_der)
    }
}

/// SHA-256 fingerprint of a DER certificate, as colon-separated upper-case hex.
pub fn fingerprint(der: &[u8]) -> String {
    let digest = Sha256::digest(der);
    digest
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Paths of the CA files in `dir`.
pub fn paths(dir: &Path) -> (PathBuf, PathBuf) {
    (dir.join(CERT_FILE), dir.join(KEY_FILE))
}

/// Loads the CA in `dir`, creating it first when neither file exists.
/// Returns the CA and whether it was created now.
pub fn ensure(dir: &Path) -> Result<(Ca, bool), TlsError> {
    match load(dir) {
        Err(TlsError::NoCa { .. }) => Ok((create(dir)?, true)),
        other => other.map(|ca| (ca, false)),
    }
}

/// Loads the CA in `dir`, refusing a key that others can read.
pub fn load(dir: &Path) -> Result<Ca, TlsError> {
    let (cert_path, key_path) = paths(dir);
    match (cert_path.exists(), key_path.exists()) {
        (false, false) => return Err(TlsError::NoCa { dir: dir.into() }),
        (true, false) => return Err(incomplete(dir, key_path)),
        (false, true) => return Err(incomplete(dir, cert_path)),
        (true, true) => {}
    }
    check_private(&key_path)?;
    let cert_pem = read(&cert_path)?;
    let key_pem = read(&key_path)?;
    let key = KeyPair::from_pem(&key_pem).map_err(|e| bad(&key_path, e))?;
    let cert_der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
        .map_err(|e| bad(&cert_path, e))?
        .into_owned();
    let issuer = Issuer::from_ca_cert_der(&cert_der, key).map_err(|e| bad(&cert_path, e))?;
    Ok(Ca {
        cert_path,
        cert_pem,
        cert_der,
        issuer,
    })
}

/// Creates a new CA in `dir`; refuses to overwrite existing files.
pub fn create(dir: &Path) -> Result<Ca, TlsError> {
    fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let (cert_path, key_path) = paths(dir);
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| bad(&key_path, e))?;
    let params = root_params();
    let cert = params.self_signed(&key).map_err(|e| bad(&cert_path, e))?;
    write_new(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
    write_new(&cert_path, cert.pem().as_bytes(), 0o644)?;
    load(dir)
}

fn root_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "AgentGate");
    let now = OffsetDateTime::now_utc();
    dn.push(
        DnType::CommonName,
        format!(
            "AgentGate local CA {}",
            now.date().to_string().replace('-', "")
        ),
    );
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = now - Duration::days(1);
    params.not_after = now + Duration::days(CA_VALIDITY_DAYS);
    params.serial_number = Some(super::issuer::random_serial());
    params
}

/// Writes `bundle.pem` in `dir`: the system roots followed by this CA, so that clients pointed
/// at it trust both intercepted and tunnelled hosts. Returns its path.
pub fn write_bundle(dir: &Path, ca: &Ca) -> Result<PathBuf, TlsError> {
    let mut out = String::new();
    for der in super::upstream::system_roots() {
        out.push_str(&to_pem(&der));
    }
    out.push_str(&ca.cert_pem);
    let path = dir.join(BUNDLE_FILE);
    // A name of this process's own: `run` and `env` may write the bundle at the same time.
    let tmp = dir.join(format!(".{BUNDLE_FILE}.{}.tmp", std::process::id()));
    fs::write(&tmp, out).map_err(|e| io(&tmp, e))?;
    fs::rename(&tmp, &path).map_err(|e| io(&path, e))?;
    Ok(path)
}

fn to_pem(der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut s = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        s.push_str(&String::from_utf8_lossy(chunk));
        s.push('\n');
    }
    s.push_str("-----END CERTIFICATE-----\n");
    s
}

/// Refuses a file that group or others may read or write.
pub fn check_private(path: &Path) -> Result<(), TlsError> {
    let mode = fs::metadata(path)
        .map_err(|e| io(path, e))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(TlsError::KeyPermissions {
            path: path.into(),
            mode: mode & 0o777,
        });
    }
    Ok(())
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), TlsError> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| io(path, e))?;
    f.write_all(bytes).map_err(|e| io(path, e))?;
    f.sync_all().map_err(|e| io(path, e))
}

fn read(path: &Path) -> Result<String, TlsError> {
    fs::read_to_string(path).map_err(|e| io(path, e))
}

fn io(path: &Path, source: std::io::Error) -> TlsError {
    TlsError::Io {
        path: path.into(),
        source,
    }
}

fn bad(path: &Path, e: impl std::fmt::Display) -> TlsError {
    TlsError::BadCa {
        path: path.into(),
        message: e.to_string(),
    }
}

fn incomplete(dir: &Path, missing: PathBuf) -> TlsError {
    TlsError::Incomplete {
        dir: dir.into(),
        missing,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "agentgate-ca-{name}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn create_then_load_keeps_the_same_root_and_a_private_key() {
        let dir = tempdir("roundtrip");
        let (ca, created) = ensure(&dir).unwrap();
        assert!(created);
        let mode = fs::metadata(dir.join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let (again, created) = ensure(&dir).unwrap();
        assert!(!created);
        assert_eq!(ca.fingerprint(), again.fingerprint());
        assert!(create(&dir).is_err(), "create never overwrites");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_key_readable_by_others_is_refused() {
        let dir = tempdir("perms");
        create(&dir).unwrap();
        let key = dir.join(KEY_FILE);
        fs::set_permissions(&key, fs::Permissions::from_mode(0o640)).unwrap();
        let err = load(&dir).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn half_a_ca_is_an_error_not_a_new_ca() {
        let dir = tempdir("half");
        create(&dir).unwrap();
        fs::remove_file(dir.join(CERT_FILE)).unwrap();
        assert!(matches!(ensure(&dir), Err(TlsError::Incomplete { .. })));
        fs::remove_dir_all(&dir).unwrap();
    }
}
