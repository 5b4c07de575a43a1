//! Zero-copy blob bodies on plain HTTP connections.
//!
//! hyper owns the socket and writes a body from memory, so a body cannot ask for `sendfile(2)`.
//! Instead, blob bodies are windows of the file mapped into memory ([`crate::store::LocalBlob`]), and
//! each window is registered here with the file and offset it maps. Plain TCP connections are
//! wrapped in [`Stream`], whose vectored write, when handed bytes that lie in a registered window,
//! sends them from the file with `sendfile` instead: the same bytes, without copying them through
//! user space or touching the mapping. The profile of 8 concurrent warm blob GETs showed that copy
//! as 36% of berth's CPU. TLS connections are not wrapped (their bytes must be encrypted).
//!
//! This is sound because a window stays registered for as long as the `Bytes` that own its
//! mapping live (hyper can only hand over bytes it still holds), and mapped bytes never change
//! (published blobs and the written part of a fill are immutable), so the file holds exactly the
//! bytes hyper meant to write.

use std::collections::BTreeMap;
use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::sync::Arc;

use parking_lot::Mutex;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

/// A registered window: `len` bytes mapped from `file` at `offset`.
struct Window {
    len: usize,
    file: Arc<std::fs::File>,
    offset: u64,
}

/// Registered windows by the address of their first byte.
static WINDOWS: Mutex<BTreeMap<usize, Window>> = Mutex::new(BTreeMap::new());

/// Note that the `len` bytes at `at` are `file`'s bytes from `offset`, until [`unregister`].
pub(crate) fn register(at: *const u8, len: usize, file: Arc<std::fs::File>, offset: u64) {
    let window = Window { len, file, offset };
    WINDOWS.lock().insert(at as usize, window);
}

/// Forget the window at `at`; called before it is unmapped.
pub(crate) fn unregister(at: *const u8) {
    WINDOWS.lock().remove(&(at as usize));
}

/// The file, the offset in it and the bytes left in the window, if `at` lies in a window.
fn lookup(windows: &BTreeMap<usize, Window>, at: *const u8) -> Option<(RawFd, u64, usize)> {
    let at = at as usize;
    let (&start, w) = windows.range(..=at).next_back()?;
    (at < start + w.len).then(|| (w.file.as_raw_fd(), w.offset + (at - start) as u64, start + w.len - at))
}

/// What a vectored write of `bufs` should do next.
enum Next {
    /// `len` bytes from the file at `offset`: the first buffer lies in a mapped window.
    Sendfile { file: RawFd, offset: u64, len: usize },
    /// An ordinary write of `bufs[first..end]`, which stops before the next mapped window.
    Write { first: usize, end: usize },
}

/// Plan the next write under one lock of the registry.
fn next(bufs: &[IoSlice<'_>]) -> Option<Next> {
    let first = bufs.iter().position(|b| !b.is_empty())?;
    let windows = WINDOWS.lock();
    if let Some((file, offset, left)) = lookup(&windows, bufs[first].as_ptr()) {
        let len = bufs[first].len().min(left);
        return Some(Next::Sendfile { file, offset, len });
    }
    let end = bufs[first..]
        .iter()
        .position(|b| !b.is_empty() && lookup(&windows, b.as_ptr()).is_some())
        .map_or(bufs.len(), |n| first + n);
    Some(Next::Write { first, end })
}

/// Accepts plain TCP connections as [`Stream`]s.
#[derive(Clone, Copy, Debug, Default)]
pub struct Acceptor;

impl<S> axum_server::accept::Accept<TcpStream, S> for Acceptor {
    type Stream = Stream;
    type Service = S;
    type Future = std::future::Ready<io::Result<(Stream, S)>>;

    fn accept(&self, tcp: TcpStream, service: S) -> Self::Future {
        std::future::ready(Ok((Stream { tcp, nodelay: false }, service)))
    }
}

/// A plain TCP connection that sends mapped blob bytes with `sendfile`.
pub struct Stream {
    tcp: TcpStream,
    /// `TCP_NODELAY` is set: from the connection's first `sendfile` on.
    nodelay: bool,
}

impl Stream {
    fn poll_sendfile(&mut self, cx: &mut Context<'_>, file: RawFd, offset: u64, len: usize) -> Poll<io::Result<usize>> {
        // A blob's windows go out one `sendfile` at a time, and each ends in a segment shorter
        // than the MSS, which Nagle's rule held back until the receiver's (often delayed) ACK:
        // 256 MiB GETs on new connections took a median 97-123 ms without `TCP_NODELAY`, 79-100 ms
        // with it (BENCHMARKS.md, W1). Only for blobs: set on every accepted connection, the p99
        // of 1,000 connections' small GETs (W10) was 2.7-3.0x nginx's against 1.2-2.4x.
        if !self.nodelay {
            self.nodelay = true;
            self.tcp.set_nodelay(true)?;
        }
        loop {
            ready!(self.tcp.poll_write_ready(cx))?;
            match self
                .tcp
                .try_io(Interest::WRITABLE, || sendfile(self.tcp.as_raw_fd(), file, offset, len))
            {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                done => return Poll::Ready(done),
            }
        }
    }
}

fn sendfile(socket: RawFd, file: RawFd, offset: u64, len: usize) -> io::Result<usize> {
    let mut offset = offset as libc::off_t;
    // SAFETY: both descriptors are open: the socket is ours, and the file is held by a window
    // that the bytes being written keep registered; `offset` is a local the call may update.
    let sent = unsafe { libc::sendfile(socket, file, &mut offset, len) };
    usize::try_from(sent).map_err(|_| io::Error::last_os_error())
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match next(bufs) {
            None => Poll::Ready(Ok(0)),
            Some(Next::Sendfile { file, offset, len }) => self.poll_sendfile(cx, file, offset, len),
            // Ordinary bytes (headers, manifests): write them up to the next mapped window.
            Some(Next::Write { first, end }) => Pin::new(&mut self.tcp).poll_write_vectored(cx, &bufs[first..end]),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

impl AsyncRead for Stream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_inside_a_registered_window_map_to_their_file_offset_and_no_others_do() {
        let file = Arc::new(tempfile::tempfile().unwrap());
        // Addresses of a window that is never dereferenced: only the registry is under test.
        let at = 0x7000_0000_1000usize as *const u8;
        register(at, 0x100, file.clone(), 5000);
        let fd = file.as_raw_fd();
        let find = |at: *const u8| lookup(&WINDOWS.lock(), at);
        assert_eq!(find(at), Some((fd, 5000, 0x100)));
        assert_eq!(find(at.wrapping_add(0xff)), Some((fd, 5000 + 0xff, 1)));
        assert_eq!(find(at.wrapping_add(0x100)), None, "one past the end");
        assert_eq!(find(at.wrapping_sub(1)), None, "one before the start");
        unregister(at);
        assert_eq!(find(at), None, "gone once unregistered");
    }

    /// A panic while the process-wide registry is locked must not fail every later request
    /// (a poisoned `std::sync::Mutex` would).
    #[test]
    fn a_panic_while_the_registry_is_locked_does_not_break_it() {
        let panicked = std::thread::spawn(|| {
            let _held = WINDOWS.lock();
            panic!("a request panics while it holds the registry");
        })
        .join();
        assert!(panicked.is_err());
        let file = Arc::new(tempfile::tempfile().unwrap());
        let at = 0x7000_0000_9000usize as *const u8;
        register(at, 0x10, file.clone(), 0);
        assert!(lookup(&WINDOWS.lock(), at).is_some());
        unregister(at);
    }
}
