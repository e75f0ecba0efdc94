//! TLS: the self-signed leaf made at first start, and the rustls configuration (TLS 1.3 and 1.2,
//! AEAD forward-secret suites only, through the one crypto provider, aws-lc-rs).

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::Arc;

/// TLS set-up failures, each naming the file involved.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {message}")]
    Read { path: String, message: String },
    #[error("cannot create the TLS certificate: {0}")]
    Generate(String),
    #[error("the TLS certificate or key is not usable: {0}")]
    Config(String),
}

/// Writes a self-signed ECDSA P-256 leaf for `localhost`, `127.0.0.1` and `::1`, valid one year,
/// with its key (mode 0600) beside it.
pub fn write_self_signed(cert_path: &Path, key_path: &Path) -> Result<(), TlsError> {
    use rcgen::{
        CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
    };
    let gen_err = |e: rcgen::Error| TlsError::Generate(e.to_string());
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(gen_err)?;
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![
        SanType::DnsName("localhost".try_into().map_err(gen_err)?),
        SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()),
        SanType::IpAddress(std::net::Ipv6Addr::LOCALHOST.into()),
    ];
    params
        .distinguished_name
        .push(DnType::CommonName, "carevault (self-signed)");
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + time::Duration::days(365);
    let cert = params.self_signed(&key).map_err(gen_err)?;
    let write = |path: &Path, data: &str, mode: u32| -> Result<(), TlsError> {
        crate::datadir::write_private(path, data.as_bytes(), mode).map_err(|e| TlsError::Read {
            path: path.display().to_string(),
            message: e.to_string(),
        })
    };
    write(key_path, &key.serialize_pem(), 0o600)?;
    write(cert_path, &cert.pem(), 0o644)?;
    Ok(())
}

/// Loaded certificate chain and key.
pub struct Identity {
    pub certs: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Identity {
    /// Reads a PEM chain and key.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Self, TlsError> {
        let read = |p: &Path| {
            std::fs::read(p).map_err(|e| TlsError::Read {
                path: p.display().to_string(),
                message: e.to_string(),
            })
        };
        let cert_pem = read(cert_path)?;
        let key_pem = read(key_path)?;
        let certs = rustls_pemfile::certs(&mut &cert_pem[..])
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError::Read {
                path: cert_path.display().to_string(),
                message: e.to_string(),
            })?;
        if certs.is_empty() {
            return Err(TlsError::Config(format!(
                "{} holds no certificate",
                cert_path.display()
            )));
        }
        let key = rustls_pemfile::private_key(&mut &key_pem[..])
            .map_err(|e| TlsError::Read {
                path: key_path.display().to_string(),
                message: e.to_string(),
            })?
            .ok_or_else(|| {
                TlsError::Config(format!("{} holds no private key", key_path.display()))
            })?;
        Ok(Self { certs, key })
    }

    /// SHA-256 fingerprint of the leaf certificate, as colon-separated upper-case hex.
    pub fn fingerprint(&self) -> String {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, self.certs[0].as_ref());
        digest
            .as_ref()
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join(":")
    }

    /// The rustls server configuration: TLS 1.3 and 1.2, AEAD + ECDHE suites only, h2 and http/1.1.
    pub fn server_config(self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let mut provider = rustls::crypto::aws_lc_rs::default_provider();
        // Every suite rustls offers is AEAD with ECDHE; keep the filter explicit so a future
        // default cannot widen what carevault accepts.
        provider.cipher_suites.retain(|s| {
            use rustls::CipherSuite::*;
            matches!(
                s.suite(),
                TLS13_AES_256_GCM_SHA384
                    | TLS13_AES_128_GCM_SHA256
                    | TLS13_CHACHA20_POLY1305_SHA256
                    | TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
                    | TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
                    | TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
                    | TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384
                    | TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
                    | TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256
            )
        });
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(self.certs, self.key)
            .map_err(|e| TlsError::Config(e.to_string()))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}
