//! HTTPS client for the benchmark: trusts exactly the server's certificate (pinned by its DER
//! bytes) and speaks HTTP/1.1 with keep-alive over one connection per worker.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, bail};
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// Accepts exactly one certificate (the server's self-signed one) and checks handshake signatures
/// with aws-lc-rs.
#[derive(Debug)]
struct PinnedCert {
    der: Vec<u8>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCert {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.der.as_slice() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Reads the first certificate of a PEM file as DER.
pub fn read_cert_der(path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    let pem = std::fs::read(path)
        .with_context(|| format!("cannot read the certificate {}", path.display()))?;
    let mut reader = std::io::BufReader::new(&pem[..]);
    match rustls_pemfile::certs(&mut reader).next() {
        Some(Ok(der)) => Ok(der.as_ref().to_vec()),
        _ => bail!("{} holds no PEM certificate", path.display()),
    }
}

/// SHA-256 of `der`, as colon-separated upper-case hex (the form servers usually print).
pub fn fingerprint(der: &[u8]) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
    d.as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Where and how to connect.
#[derive(Clone)]
pub struct Target {
    addr: SocketAddr,
    tls: tokio_rustls::TlsConnector,
    authority: String,
}

impl Target {
    /// A target at `addr` trusting only the certificate `cert_der`.
    pub fn new(addr: SocketAddr, cert_der: Vec<u8>) -> anyhow::Result<Self> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let verifier = Arc::new(PinnedCert {
            der: cert_der,
            provider: provider.clone(),
        });
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("cannot configure TLS")?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            addr,
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
            authority: addr.to_string(),
        })
    }

    /// Opens one keep-alive HTTPS connection.
    pub async fn connect(&self) -> anyhow::Result<Conn> {
        let tcp = tokio::net::TcpStream::connect(self.addr)
            .await
            .context("TCP connect failed")?;
        tcp.set_nodelay(true).context("cannot set TCP_NODELAY")?;
        let name = ServerName::IpAddress(self.addr.ip().into());
        let tls = self
            .tls
            .connect(name, tcp)
            .await
            .context("TLS handshake failed")?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .context("HTTP handshake failed")?;
        tokio::spawn(async move {
            // The connection ends when the sender is dropped or the server closes it.
            let _ = conn.await;
        });
        Ok(Conn {
            sender,
            authority: self.authority.clone(),
        })
    }
}

/// One open connection.
pub struct Conn {
    sender: SendRequest<Full<Bytes>>,
    authority: String,
}

/// A response: status and whole body.
pub struct Reply {
    /// Status code.
    pub status: StatusCode,
    /// Body bytes.
    pub body: Bytes,
}

impl Reply {
    /// The body as JSON.
    pub fn json(&self) -> anyhow::Result<serde_json::Value> {
        serde_json::from_slice(&self.body).context("the response is not JSON")
    }
}

impl Conn {
    /// Sends one request and reads the whole response.
    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> anyhow::Result<Reply> {
        self.sender.ready().await.context("the connection closed")?;
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, &self.authority);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req
            .body(Full::new(body))
            .context("cannot build the request")?;
        let resp = self
            .sender
            .send_request(req)
            .await
            .context("the request failed")?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .context("reading the response failed")?
            .to_bytes();
        Ok(Reply { status, body })
    }

    /// Whether the connection can take another request.
    pub fn is_open(&self) -> bool {
        !self.sender.is_closed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_format() {
        let f = fingerprint(b"abc");
        assert_eq!(f.len(), 32 * 3 - 1);
        assert!(f.starts_with("BA:78:16:BF"));
    }

    #[test]
    fn pinned_verifier_accepts_only_its_certificate() {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let v = PinnedCert {
            der: vec![1, 2, 3],
            provider,
        };
        let name = ServerName::try_from("localhost").unwrap();
        let now = UnixTime::now();
        assert!(
            v.verify_server_cert(&CertificateDer::from(vec![1, 2, 3]), &[], &name, &[], now)
                .is_ok()
        );
        assert!(
            v.verify_server_cert(&CertificateDer::from(vec![1, 2, 4]), &[], &name, &[], now)
                .is_err()
        );
        assert!(!v.supported_verify_schemes().is_empty());
    }

    #[test]
    fn reads_pem() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.pem");
        std::fs::write(
            &p,
            "-----BEGIN CERTIFICATE-----\nAQID\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        assert_eq!(read_cert_der(&p).unwrap(), vec![1, 2, 3]);
        std::fs::write(&p, "nothing").unwrap();
        assert!(read_cert_der(&p).is_err());
    }
}
