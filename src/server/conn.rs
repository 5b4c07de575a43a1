//! Per-connection limits: a cap on the connections served at once, and closing connections on
//! which nothing moves.
//!
//! Both live in one acceptor ([`Limited`]) because it is the one place that sees every connection
//! (plain, or beneath rustls for TLS) and hands hyper both its byte stream and its service. The
//! service also wraps request bodies so that they fail once stalled ([`StallTimeout`]).
//! "Idle" needs both halves: the service knows whether a request is in flight (from its call until
//! its response body is dropped), and the stream knows whether bytes move. hyper closes neither
//! an idle HTTP/2 connection nor one whose client stopped reading, so this wrapper is what bounds
//! them; its timers are only polled when a read or write is already waiting, so a busy connection
//! pays one clock read per I/O call and no timer updates.
//!
//! Over the cap, a new connection waits for a slot rather than being refused: nginx and HAProxy
//! stop accepting at their limit and let the kernel queue connections, so a burst is served late
//! rather than failed. axum-server accepts before the acceptor runs, so the wait happens here,
//! bounded by the header timeout (a connection that waited that long would be cut off anyway);
//! then it is closed, and so a flood of stalled connections delays new clients but cannot lock
//! them out.

use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::http::{Request, Response};
use axum_server::accept::Accept;
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep, sleep};
use tower_service::Service;

use super::body::StallTimeout;
use crate::config::ConnectionLimits;

/// Wraps an inner acceptor: waits for a connection slot, then tracks the connection's activity.
#[derive(Clone)]
pub struct Limited<A> {
    inner: A,
    slots: Arc<Semaphore>,
    slot_wait: Duration,
    idle: Duration,
    body_timeout: Duration,
}

impl<A> Limited<A> {
    pub fn new(inner: A, limits: &ConnectionLimits) -> Self {
        Limited {
            inner,
            slots: Arc::new(Semaphore::new(limits.max_connections)),
            slot_wait: limits.header_timeout,
            idle: limits.idle_timeout,
            body_timeout: limits.body_timeout,
        }
    }

    /// The same limits (the same connection slots) around another acceptor.
    pub fn wrap<B>(&self, inner: B) -> Limited<B> {
        Limited {
            inner,
            slots: self.slots.clone(),
            slot_wait: self.slot_wait,
            idle: self.idle,
            body_timeout: self.body_timeout,
        }
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<A, I, S> Accept<I, S> for Limited<A>
where
    A: Accept<I, Tracked<S>> + Clone + Send + Sync + 'static,
    A::Future: Send,
    A::Stream: Send,
    A::Service: Send,
    I: Send + 'static,
    S: Send + 'static,
{
    type Stream = Conn<A::Stream>;
    type Service = A::Service;
    type Future = BoxFuture<io::Result<(Self::Stream, Self::Service)>>;

    fn accept(&self, stream: I, service: S) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let slot = tokio::time::timeout(this.slot_wait, this.slots.acquire_owned())
                .await
                .map_err(|_| {
                    io::Error::new(
                        io::ErrorKind::TimedOut,
                        "connection limit reached; closed after waiting",
                    )
                })?
                .expect("the semaphore is never closed");
            let requests = Arc::new(AtomicUsize::new(0));
            let service = Tracked {
                inner: service,
                requests: requests.clone(),
                body_timeout: this.body_timeout,
            };
            let (io, service) = this.inner.accept(stream, service).await?;
            Ok((Conn::new(io, requests, this.idle, slot), service))
        })
    }
}

/// A connection's byte stream: closed once idle, failed once the client stops reading.
pub struct Conn<I> {
    io: I,
    /// Requests in flight on this connection.
    requests: Arc<AtomicUsize>,
    idle: Duration,
    /// When bytes last moved in either direction.
    last: Instant,
    /// Since when a write has been waiting for the client to read.
    write_waiting: Option<Instant>,
    read_timer: Pin<Box<Sleep>>,
    write_timer: Pin<Box<Sleep>>,
    _slot: OwnedSemaphorePermit,
}

impl<I> Conn<I> {
    fn new(io: I, requests: Arc<AtomicUsize>, idle: Duration, slot: OwnedSemaphorePermit) -> Self {
        let now = Instant::now();
        Conn {
            io,
            requests,
            idle,
            last: now,
            write_waiting: None,
            read_timer: Box::pin(sleep(idle)),
            write_timer: Box::pin(sleep(idle)),
            _slot: slot,
        }
    }

    /// A read is waiting: end the connection (EOF, which hyper takes as the client closing) once
    /// no request is in flight and nothing moved for the idle timeout.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            ready!(self.read_timer.as_mut().poll(cx));
            let now = Instant::now();
            if self.requests.load(Ordering::Acquire) > 0 {
                // A handler may compute for a while without bytes moving; it is not idle.
                self.last = now;
            }
            let due = self.last + self.idle;
            if now >= due {
                tracing::debug!(idle = ?self.idle, "closing an idle connection");
                return Poll::Ready(());
            }
            self.read_timer.as_mut().reset(due);
        }
    }

    /// A write is waiting for the client to read: fail it once nothing moved for the idle
    /// timeout, so a client that stops reading a response does not hold it (and its blob file)
    /// forever.
    fn poll_stalled(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let since = *self.write_waiting.get_or_insert_with(|| {
            let now = Instant::now();
            self.write_timer.as_mut().reset(now + self.idle);
            now
        });
        loop {
            ready!(self.write_timer.as_mut().poll(cx));
            let due = since + self.idle;
            if Instant::now() >= due {
                return Poll::Ready(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the client read nothing for the idle timeout",
                ));
            }
            self.write_timer.as_mut().reset(due);
        }
    }

    fn wrote(&mut self, cx: &mut Context<'_>, result: Poll<io::Result<usize>>) -> Poll<io::Result<usize>> {
        match result {
            Poll::Pending => self.poll_stalled(cx).map(Err),
            done => {
                self.last = Instant::now();
                self.write_waiting = None;
                done
            }
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Conn<I> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Pending => this.poll_idle(cx).map(Ok),
            done => {
                this.last = Instant::now();
                done
            }
        }
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Conn<I> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.io).poll_write(cx, buf);
        self.wrote(cx, result)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        // Passed through unchanged: the sendfile stream beneath recognises mapped blob bytes by
        // their addresses.
        let result = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.wrote(cx, result)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Counts a request as in flight from its call until its response body is dropped.
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn new(requests: &Arc<AtomicUsize>) -> Self {
        requests.fetch_add(1, Ordering::AcqRel);
        InFlight(requests.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The connection's service: counts its requests in flight and cuts off their stalled bodies.
#[derive(Clone)]
pub struct Tracked<S> {
    inner: S,
    requests: Arc<AtomicUsize>,
    body_timeout: Duration,
}

impl<S, Req, B> Service<Request<Req>> for Tracked<S>
where
    S: Service<Request<StallTimeout<Req>>, Response = Response<B>>,
    S::Future: Send + 'static,
{
    type Response = Response<TrackedBody<B>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Req>) -> Self::Future {
        let guard = InFlight::new(&self.requests);
        let timeout = self.body_timeout;
        let response = self.inner.call(request.map(|body| StallTimeout::new(body, timeout)));
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|body| TrackedBody { body, _guard: guard }))
        })
    }
}

/// A response body that keeps its request counted as in flight until it is dropped.
pub struct TrackedBody<B> {
    body: B,
    _guard: InFlight,
}

impl<B: Body + Unpin> Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const T: Duration = Duration::from_millis(150);

    fn conn(io: tokio::io::DuplexStream, requests: &Arc<AtomicUsize>) -> Conn<tokio::io::DuplexStream> {
        let slot = Arc::new(Semaphore::new(1)).try_acquire_owned().unwrap();
        Conn::new(io, requests.clone(), T, slot)
    }

    #[tokio::test]
    async fn a_connection_reads_eof_once_idle_but_not_while_a_request_is_in_flight() {
        let requests = Arc::new(AtomicUsize::new(1));
        let (_client, server) = tokio::io::duplex(1024);
        let mut c = conn(server, &requests);
        let mut buf = [0u8; 16];
        let busy = tokio::time::timeout(4 * T, c.read(&mut buf)).await;
        assert!(busy.is_err(), "closed while a request was in flight: {busy:?}");
        requests.store(0, Ordering::Release);
        let start = Instant::now();
        assert_eq!(c.read(&mut buf).await.unwrap(), 0, "EOF once idle");
        assert!(start.elapsed() < 10 * T);
    }

    #[tokio::test]
    async fn a_write_the_client_does_not_read_fails_after_the_idle_timeout() {
        let requests = Arc::new(AtomicUsize::new(1));
        let (_client, server) = tokio::io::duplex(64);
        let mut c = conn(server, &requests);
        let err = c.write_all(&[0u8; 4096]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }
}
