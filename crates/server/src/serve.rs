//! The accept loop: TLS handshakes, HTTP/1.1 and HTTP/2 connections, and graceful shutdown that
//! stops accepting and lets in-flight requests finish within a bounded wait.

use crate::{App, PeerAddr};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

/// What `serve` returns once it has stopped.
#[derive(Debug)]
pub struct ServeHandle {
    /// Connections still open when the grace period ran out.
    pub abandoned_connections: usize,
}

/// Serves `app` on `listener` until `shutdown` resolves, then drains connections.
pub async fn serve(
    app: Arc<App>,
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    shutdown: impl std::future::Future<Output = ()>,
) -> ServeHandle {
    let acceptor = TlsAcceptor::from(tls);
    let router = crate::router(app.clone());
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let grace = Duration::from_secs(app.config.server.shutdown_grace_seconds);
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let router = router.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let tls =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => return,
                };
            let service = hyper::service::service_fn(
                move |mut req: hyper::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(PeerAddr(peer));
                    router.clone().oneshot(req.map(axum::body::Body::new))
                },
            );
            let builder = auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), service);
            if let Err(e) = watcher.watch(conn.into_owned()).await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    app.ready.store(false, Ordering::Relaxed);
    drop(listener);
    tracing::info!("shutting down: no new connections; finishing in-flight requests");
    let abandoned = tokio::select! {
        () = graceful.shutdown() => 0,
        () = tokio::time::sleep(grace) => 1,
    };
    ServeHandle {
        abandoned_connections: abandoned,
    }
}
