//! Leaf certificate issuance on a cache miss (target 4 of the gate-core issue: <= 100 us), plus
//! reference points: the cache hit, and the two halves of an issuance (rcgen signing, building
//! the rustls `ServerConfig`) timed separately with the same parameters `LeafIssuer::issue` uses.
//!
//! Run: `cargo bench --bench issuer`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/support/mod.rs"]
mod support;

mod common;

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use agentgate::tls::{self, ca, issuer::LeafIssuer};
use criterion::Criterion;
use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType,
};
use rustls::ServerConfig;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;
use support::TempDir;

fn issuer_benches(c: &mut Criterion) {
    let dir = TempDir::new("bench-ca");
    let (ca, _) = ca::ensure(dir.path()).unwrap();
    let issuer = LeafIssuer::new(ca, tls::provider()).unwrap();

    let mut g = c.benchmark_group("leaf");
    g.bench_function("issue_cache_miss", |b| {
        b.iter(|| issuer.issue(black_box("api.github.com")).unwrap())
    });
    issuer.server_config("api.github.com").unwrap();
    g.bench_function("server_config_cache_hit", |b| {
        b.iter(|| issuer.server_config(black_box("api.github.com")).unwrap())
    });

    // The halves of an issuance, rebuilt outside the issuer with the same parameters.
    let ca = issuer.ca();
    let leaf_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let provider = tls::provider();
    g.bench_function("part_rcgen_sign", |b| {
        b.iter(|| {
            let now = time::OffsetDateTime::now_utc();
            let mut params = CertificateParams::default();
            let mut dn = DistinguishedName::new();
            dn.push(DnType::CommonName, "api.github.com");
            params.distinguished_name = dn;
            params.subject_alt_names = vec![SanType::DnsName("api.github.com".try_into().unwrap())];
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            params.serial_number = Some(agentgate::tls::issuer::random_serial());
            params.not_before = now;
            params.not_after = now + time::Duration::days(29);
            params.use_authority_key_identifier_extension = true;
            params.signed_by(&leaf_key, &ca.issuer).unwrap()
        })
    });
    let cert = CertificateParams::new(vec!["api.github.com".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca.issuer)
        .unwrap();
    let signing_key = provider
        .key_provider
        .load_private_key(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            leaf_key.serialize_der(),
        )))
        .unwrap();
    let chain = vec![cert.der().clone(), ca.cert_der.clone()];
    g.bench_function("part_server_config_build", |b| {
        b.iter(|| {
            let certified = CertifiedKey::new(chain.clone(), signing_key.clone());
            let mut cfg = ServerConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_cert_resolver(Arc::new(Fixed(Arc::new(certified))));
            cfg.alpn_protocols = tls::ALPN.iter().map(|p| p.to_vec()).collect();
            Arc::new(cfg)
        })
    });
    g.finish();
}

#[derive(Debug)]
struct Fixed(Arc<CertifiedKey>);

impl rustls::server::ResolvesServerCert for Fixed {
    fn resolve(&self, _: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

fn main() {
    let out = common::output_dir();
    let mut c = Criterion::default()
        .output_directory(&out)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .sample_size(60)
        .configure_from_args();
    issuer_benches(&mut c);
    c.final_summary();

    println!();
    println!("== medians (criterion median estimate per iteration) ==");
    for (func, target_us) in [
        ("issue_cache_miss", Some(100.0)),
        ("server_config_cache_hit", None),
        ("part_rcgen_sign", None),
        ("part_server_config_build", None),
    ] {
        let Some(m) = common::median_us(&out, "leaf", func) else {
            continue;
        };
        let verdict = match target_us {
            Some(t) if m <= t => format!("target <= {t:.0} us: met"),
            Some(t) => format!("target <= {t:.0} us: MISSED"),
            None => String::new(),
        };
        println!(
            "{}",
            format!("leaf/{func:<26} {m:>10.3} us  {verdict}").trim_end()
        );
    }
}
