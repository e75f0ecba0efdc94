//! Load phases: N workers, one keep-alive connection each, bounded in requests and in time.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Method;

use crate::client::Target;
use crate::stats::{PhaseSummary, WorkerStats};

/// One request of a phase.
#[derive(Debug, Clone)]
pub struct RequestSpec {
    /// Method.
    pub method: Method,
    /// Path and query.
    pub path: String,
    /// Body (empty for GET).
    pub body: Bytes,
}

impl RequestSpec {
    /// A GET of `path`.
    pub fn get(path: impl Into<String>) -> Self {
        Self {
            method: Method::GET,
            path: path.into(),
            body: Bytes::new(),
        }
    }
}

/// Makes the n-th request of a phase.
pub type RequestMaker = Arc<dyn Fn(u64) -> RequestSpec + Send + Sync>;

/// Limits of a phase.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// Longest the phase runs.
    pub duration: Duration,
    /// Most requests it sends.
    pub max_requests: u64,
}

/// Runs one phase with `connections` workers; `bearer` is the `Authorization` value, if any.
pub async fn run_phase(
    target: &Target,
    connections: usize,
    bounds: Bounds,
    bearer: Option<String>,
    make: RequestMaker,
) -> PhaseSummary {
    // Connect first, so handshakes are not counted in the phase's time.
    let mut conns = Vec::with_capacity(connections);
    let mut connect_errors = WorkerStats::default();
    for _ in 0..connections {
        match target.connect().await {
            Ok(c) => conns.push(Some(c)),
            Err(_) => {
                connect_errors.record(0, Duration::ZERO);
                conns.push(None);
            }
        }
    }
    let counter = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + bounds.duration;
    let mut handles = Vec::with_capacity(connections);
    for conn in conns {
        let (target, counter, make, bearer) = (
            target.clone(),
            counter.clone(),
            make.clone(),
            bearer.clone(),
        );
        handles.push(tokio::spawn(async move {
            let mut stats = WorkerStats::default();
            let mut conn = conn;
            let mut failures_in_a_row = 0u32;
            loop {
                if Instant::now() >= deadline {
                    break;
                }
                let n = counter.fetch_add(1, Ordering::Relaxed);
                if n >= bounds.max_requests {
                    break;
                }
                if conn.as_ref().is_none_or(|c| !c.is_open()) {
                    conn = target.connect().await.ok();
                }
                let Some(c) = conn.as_mut() else {
                    stats.record(0, Duration::ZERO);
                    failures_in_a_row += 1;
                    if failures_in_a_row > 20 {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let spec = make(n);
                let mut headers: Vec<(&str, &str)> = vec![("accept", "application/fhir+json")];
                if let Some(b) = &bearer {
                    headers.push(("authorization", b));
                }
                if !spec.body.is_empty() {
                    headers.push(("content-type", "application/fhir+json"));
                }
                let t0 = Instant::now();
                match c.send(spec.method, &spec.path, &headers, spec.body).await {
                    Ok(reply) => {
                        failures_in_a_row = 0;
                        stats.record(reply.status.as_u16(), t0.elapsed());
                    }
                    Err(_) => {
                        stats.record(0, t0.elapsed());
                        conn = None;
                    }
                }
            }
            stats
        }));
    }
    let mut workers = vec![connect_errors];
    for h in handles {
        if let Ok(s) = h.await {
            workers.push(s);
        }
    }
    PhaseSummary::from_workers(connections, workers, start.elapsed())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;

    use http_body_util::Full;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

    /// A tiny HTTPS server: 200 "ok" for `/ok`, 401 for anything else; returns its address and
    /// certificate.
    async fn tiny_server() -> (std::net::SocketAddr, Vec<u8>) {
        let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
        let cert_der = ck.cert.der().to_vec();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()));
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![CertificateDer::from(cert_der.clone())], key)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                        let status = if req.uri().path() == "/ok" { 200 } else { 401 };
                        Ok::<_, Infallible>(
                            http::Response::builder()
                                .status(status)
                                .body(Full::new(Bytes::from_static(b"ok")))
                                .unwrap(),
                        )
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        (addr, cert_der)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn phases_are_bounded_and_counted_over_real_tls() {
        let (addr, cert) = tiny_server().await;
        let target = Target::new(addr, cert).unwrap();
        let bounds = Bounds {
            duration: Duration::from_secs(5),
            max_requests: 300,
        };
        let ok = run_phase(
            &target,
            4,
            bounds,
            Some("Bearer x".into()),
            Arc::new(|_| RequestSpec::get("/ok")),
        )
        .await;
        assert_eq!(ok.ok, 300, "stops at the request bound");
        assert_eq!(ok.errors, 0);
        assert!(ok.p50_ms.is_some() && ok.per_second > 0.0);
        let short = Bounds {
            duration: Duration::from_millis(300),
            max_requests: u64::MAX,
        };
        let t0 = Instant::now();
        let denied = run_phase(
            &target,
            2,
            short,
            None,
            Arc::new(|_| RequestSpec::get("/nope")),
        )
        .await;
        assert!(
            t0.elapsed() < Duration::from_secs(3),
            "stops at the time bound"
        );
        assert_eq!(denied.ok, 0);
        assert!(denied.errors > 0 && denied.statuses.contains_key(&401));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn another_certificate_is_refused() {
        let (addr, _) = tiny_server().await;
        let other = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
        let target = Target::new(addr, other.cert.der().to_vec()).unwrap();
        assert!(target.connect().await.is_err());
    }
}
