//! Serving: plain HTTP (blob bodies sent with `sendfile`, see [`crate::sendfile`]) or TLS (rustls,
//! HTTP/2 and HTTP/1.1 by ALPN), certificate reload when the files change or on SIGHUP, and
//! graceful shutdown on SIGTERM.
//!
//! Shutdown: on SIGTERM or Ctrl-C (or when the caller cancels `stop`), `stop` is cancelled so
//! background tasks can end, the listener closes, and connections in flight get the drain timeout
//! to finish. [`serve`] returns once they are done (or cut off); whatever must be flushed at exit
//! (in-memory access times, say) goes after it returns, when no request runs any more.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use axum::Router;
use axum_server::Handle;
use axum_server::tls_rustls::RustlsConfig;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// How often the certificate files are checked for changes.
const CERT_POLL: Duration = Duration::from_secs(10);

pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// How to serve.
pub struct Options {
    pub addr: SocketAddr,
    pub tls: Option<TlsFiles>,
    /// How long transfers in flight may take to finish after shutdown begins.
    pub drain_timeout: Duration,
}

/// Serve `app` until SIGTERM, Ctrl-C or `stop`, then drain connections and return.
pub async fn serve(app: Router, options: Options, stop: CancellationToken) -> std::io::Result<()> {
    let handle = Handle::new();
    tokio::spawn(shutdown_on_signal(handle.clone(), stop, options.drain_timeout));
    let service = app.into_make_service_with_connect_info::<SocketAddr>();
    match options.tls {
        None => {
            axum_server::bind(options.addr)
                .acceptor(crate::sendfile::Acceptor)
                .handle(handle)
                .serve(service)
                .await
        }
        Some(files) => {
            let config = RustlsConfig::from_pem_file(&files.cert, &files.key).await?;
            tokio::spawn(reload_certificates(config.clone(), files));
            axum_server::bind_rustls(options.addr, config)
                .handle(handle)
                .serve(service)
                .await
        }
    }
}

async fn shutdown_on_signal(handle: Handle<SocketAddr>, stop: CancellationToken, drain: Duration) {
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let why = tokio::select! {
        _ = tokio::signal::ctrl_c() => "SIGINT",
        _ = term.recv() => "SIGTERM",
        _ = stop.cancelled() => "stop requested",
    };
    stop.cancel();
    tracing::info!(
        signal = why,
        drain_timeout = ?drain,
        connections = handle.connection_count(),
        "shutting down: no new connections, draining transfers"
    );
    handle.graceful_shutdown(Some(drain));
}

fn modified(files: &TlsFiles) -> Option<(SystemTime, SystemTime)> {
    let m = |p: &PathBuf| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    Some((m(&files.cert)?, m(&files.key)?))
}

/// Reload the certificate when its files change (a Let's Encrypt renewal) or on SIGHUP. A bad
/// pair is logged and the current certificate stays in use.
async fn reload_certificates(config: RustlsConfig, files: TlsFiles) {
    let mut hup = signal(SignalKind::hangup()).expect("SIGHUP handler");
    let mut seen = modified(&files);
    let mut poll = tokio::time::interval(CERT_POLL);
    loop {
        let by_signal = tokio::select! {
            _ = hup.recv() => true,
            _ = poll.tick() => false,
        };
        let now = modified(&files);
        if !by_signal && now == seen {
            continue;
        }
        seen = now;
        match config.reload_from_pem_file(&files.cert, &files.key).await {
            Ok(()) => tracing::info!(cert = %files.cert.display(), by_signal, "TLS certificate reloaded"),
            Err(e) => {
                tracing::error!(cert = %files.cert.display(), error = %e, "TLS certificate reload failed; keeping the current one")
            }
        }
    }
}
