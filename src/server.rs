//! Serving: plain HTTP (blob bodies sent with `sendfile`, see [`crate::sendfile`]) or TLS (rustls,
//! HTTP/2 and HTTP/1.1 by ALPN), certificate reload when the files change or on SIGHUP, and
//! graceful shutdown on SIGTERM.
//!
//! Shutdown: on SIGTERM or Ctrl-C (or when the caller cancels `stop`), `stop` is cancelled so
//! background tasks can end, the listener closes, and connections in flight get the drain timeout
//! to finish. [`serve`] returns once they are done (or cut off); whatever must be flushed at exit
//! (in-memory access times, say) goes after it returns, when no request runs any more.
//!
//! Limits: every connection waits for one of `max_connections` slots and is closed once idle
//! ([`conn`]); hyper bounds the time to send request headers and the HTTP/2 streams per
//! connection; a request body that stalls is cut off ([`body::StallTimeout`]); failed accepts are
//! logged at most every few seconds. [`raise_descriptor_limit`] runs at startup.

pub mod admin_socket;
mod body;
mod conn;

use parking_lot::Mutex;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use axum_server::accept::DefaultAcceptor;
use axum_server::tls_rustls::{RustlsAcceptor, RustlsConfig};
use axum_server::{Handle, Server};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use crate::config::ConnectionLimits;

/// How often the certificate files are checked for changes.
const CERT_POLL: Duration = Duration::from_secs(10);
/// Failed accepts (descriptors exhausted, TLS handshakes, connections over the cap) are logged
/// at most this often, with a count of those not logged: out of descriptors, every accept fails.
const ACCEPT_LOG_EVERY: Duration = Duration::from_secs(5);

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
    /// `[server]` connection limits and timeouts.
    pub limits: ConnectionLimits,
}

/// Serve `app` until SIGTERM, Ctrl-C or `stop`, then drain connections and return.
///
/// Connections are served on [`connection_threads`] threads, each running a current-thread
/// runtime with its own accept loop and listening socket ([`listeners`]); everything else
/// (background tasks, the admin socket) stays on the caller's multi-threaded runtime. Why: with 1,000
/// keep-alive connections on the work-stealing runtime, a few connections waited far behind
/// the rest (benchmark W10: p99 75-240 ms against nginx's 17-49 ms, with a median below
/// nginx's), and neither `event_interval`, `global_queue_interval` nor disabling the LIFO slot
/// fixed it; one current-thread runtime gave a p99 of 1.0-1.2x nginx's. A thread's connections
/// take turns in the order they became ready, as in nginx's workers.
///
/// A metadata transaction that blocks (redb) runs on the connection's thread, which a
/// current-thread runtime cannot hand off: reads take microseconds, a commit one fsync.
pub async fn serve(app: Router, options: Options, stop: CancellationToken) -> std::io::Result<()> {
    let handle = Handle::new();
    tokio::spawn(shutdown_on_signal(handle.clone(), stop, options.drain_timeout));
    let listeners = listeners(options.addr, connection_threads())?;
    let tls = match options.tls {
        None => None,
        Some(files) => {
            let config = RustlsConfig::from_pem_file(&files.cert, &files.key).await?;
            tokio::spawn(reload_certificates(config.clone(), files));
            Some(config)
        }
    };
    let limited = conn::Limited::new((), &options.limits);
    let mut threads = Vec::new();
    for (i, listener) in listeners.into_iter().enumerate() {
        let (app, handle, tls, limited, limits) = (
            app.clone(),
            handle.clone(),
            tls.clone(),
            limited.clone(),
            options.limits,
        );
        let thread =
            std::thread::Builder::new()
                .name(format!("berth-http-{i}"))
                .spawn(move || -> std::io::Result<()> {
                    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                    runtime.block_on(serve_on(listener, app, handle, tls, limited, limits))
                })?;
        threads.push(thread);
    }
    let mut result = Ok(());
    for thread in threads {
        let ended = tokio::task::spawn_blocking(move || thread.join())
            .await
            .map_err(std::io::Error::other)?;
        let ended = ended.unwrap_or_else(|_| Err(std::io::Error::other("a connection thread panicked")));
        if let Err(e) = ended {
            // Stop the other threads too, then report the first failure.
            handle.shutdown();
            result = result.and(Err(e));
        }
    }
    result
}

/// One listening socket per connection thread, all on `addr` with `SO_REUSEPORT`, so the kernel
/// spreads connections evenly. (One shared socket was tried first: whichever thread woke first
/// accepted a whole burst, and W3's 64 connections ran on one core.) A server already on `addr`
/// still stops this one: the address is first bound plainly, which fails if anyone holds it.
fn listeners(addr: SocketAddr, n: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    let addr = std::net::TcpListener::bind(addr)?.local_addr()?;
    (0..n)
        .map(|_| {
            let socket = match addr {
                SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
                SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
            };
            socket.set_reuseaddr(true)?;
            socket.set_reuseport(true)?;
            socket.bind(addr)?;
            socket.listen(LISTEN_BACKLOG)?.into_std()
        })
        .collect()
}

/// Threads serving connections: one per core.
fn connection_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Connections waiting to be accepted; tokio's and nginx's (511) order of magnitude, so a
/// burst of 1,000 clients connecting at once is not dropped.
const LISTEN_BACKLOG: u32 = 1024;

/// One connection thread's server, on its current-thread runtime.
async fn serve_on(
    listener: std::net::TcpListener,
    app: Router,
    handle: Handle<SocketAddr>,
    tls: Option<RustlsConfig>,
    limited: conn::Limited<()>,
    limits: ConnectionLimits,
) -> std::io::Result<()> {
    let service = app.into_make_service_with_connect_info::<SocketAddr>();
    let server = axum_server::from_tcp(listener)?;
    match tls {
        None => {
            let server = server.acceptor(limited.wrap(crate::sendfile::Acceptor));
            with_limits(server, &limits).handle(handle).serve(service).await
        }
        Some(config) => {
            let acceptor = RustlsAcceptor::new(config)
                .handshake_timeout(limits.header_timeout)
                .acceptor(limited.wrap(DefaultAcceptor));
            with_limits(server.acceptor(acceptor), &limits)
                .handle(handle)
                .serve(service)
                .await
        }
    }
}

/// hyper's limits, and rate-limited logging of failed accepts.
fn with_limits<A>(mut server: Server<SocketAddr, A>, limits: &ConnectionLimits) -> Server<SocketAddr, A> {
    let builder = server.http_builder();
    // axum-server installs hyper's timer. For HTTP/1.1 the header timer also runs while a
    // kept-alive connection waits for its next request.
    builder.http1().header_read_timeout(limits.header_timeout);
    builder.http2().max_concurrent_streams(limits.max_streams);
    let failures = Mutex::new((None::<Instant>, 0u64));
    server
        // Also bounds protocol detection and an HTTP/2 connection's first request, which hyper's
        // HTTP/1 header timer does not cover.
        .first_request_timeout(limits.header_timeout)
        .accept_error_handler(move |peer, error| {
            let mut failures = failures.lock();
            let (last, unlogged) = &mut *failures;
            if last.is_some_and(|t| t.elapsed() < ACCEPT_LOG_EVERY) {
                *unlogged += 1;
                return;
            }
            tracing::warn!(peer = ?peer, %error, not_logged_since_last = *unlogged, "accepting a connection failed");
            (*last, *unlogged) = (Some(Instant::now()), 0);
        })
}

/// Raise the soft `RLIMIT_NOFILE` to the hard limit (systemd's soft default of 1024 runs out
/// with about 500 clients, each holding a socket and a blob file). Returns (soft before, soft now,
/// hard).
pub fn raise_descriptor_limit() -> std::io::Result<(u64, u64, u64)> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write only the struct passed.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let before = limit.rlim_cur;
    if limit.rlim_cur != limit.rlim_max {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok((before, limit.rlim_cur, limit.rlim_max))
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
