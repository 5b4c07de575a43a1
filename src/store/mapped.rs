//! Serving a blob without copying it through user space: each window of the file is
//! memory-mapped and handed on as `Bytes` that own the mapping. A profile of warm blob GETs showed
//! two copies before this (page cache to tokio's buffer, then to the body's buffer) costing a third
//! of the CPU. Each window is also registered with [`crate::sendfile`], so a plain HTTP
//! connection sends it with `sendfile` and never touches the mapping; over TLS the encryption
//! reads the mapped pages.

use std::io;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::Either;
use futures_util::{Stream, StreamExt};
use memmap2::{Advice, Mmap, MmapOptions};

/// A published blob on local disk, opened. Opaque above the store: the server layer gets its
/// bytes as mapped windows ([`LocalBlob::chunks`]) and never sees the file.
pub struct LocalBlob {
    source: Source,
    size: u64,
}

enum Source {
    File(Arc<std::fs::File>),
    /// A small blob (an image config, say), read whole when it was opened: serving it then takes
    /// no further trip to the blocking pool, where mapping it would take one per GET, and a few
    /// KiB copied cost less than a mapping and its `sendfile` registration.
    Memory(Bytes),
}

/// Blobs up to this size are read whole when opened ([`Source::Memory`]); larger ones are
/// mapped window by window. One mapped window's worth at most, so an open never holds more in
/// memory than a stream of a large blob does.
pub(super) const READ_WHOLE: u64 = 64 << 10;

/// Bytes mapped per step. A stream holds the window being sent (and hyper may hold the next one),
/// which is what it costs in resident memory.
const WINDOW: u64 = 1 << 20;

impl LocalBlob {
    pub(super) fn new(file: std::fs::File, size: u64) -> LocalBlob {
        LocalBlob {
            source: Source::File(Arc::new(file)),
            size,
        }
    }

    /// A blob of at most [`READ_WHOLE`] bytes, read (here, or earlier and kept in memory).
    pub fn read(bytes: Bytes) -> LocalBlob {
        LocalBlob {
            size: bytes.len() as u64,
            source: Source::Memory(bytes),
        }
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// The whole blob, when it was read into memory rather than mapped.
    pub fn in_memory(&self) -> Option<&Bytes> {
        match &self.source {
            Source::Memory(bytes) => Some(bytes),
            Source::File(_) => None,
        }
    }

    /// The bytes `start..start + len` of the blob, one mapped window at a time (a small blob's,
    /// from memory at once).
    pub fn chunks(self, start: u64, len: u64) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
        let file = match self.source {
            Source::File(file) => file,
            Source::Memory(bytes) => {
                let part = bytes.slice(start as usize..(start + len) as usize);
                return Either::Left(futures_util::stream::iter((len > 0).then_some(Ok(part))));
            }
        };
        let end = start + len;
        let windows = (start..end)
            .step_by(WINDOW as usize)
            .map(move |pos| (pos, (end - pos).min(WINDOW)));
        // Mapped on the thread that sends, not on the blocking pool: a hand-off per window woke a
        // pool thread 256 times per 256 MiB GET, on the core the client was reading on (with
        // `TCP_NODELAY`, medians of 71-97 ms per GET on new connections against 79-100 ms with
        // it alone, BENCHMARKS.md, W1). Mapping takes microseconds; `madvise(WILLNEED)` only
        // starts the readahead. The disk is waited for where it always was: in `sendfile` (or,
        // over TLS, when the pages are read).
        let mapped = futures_util::stream::iter(windows).map(move |(pos, n)| map(&file, pos, n as usize));
        Either::Right(mapped)
    }
}

/// `len` bytes of `file` from `offset`, mapped. The caller promises that nobody truncates or
/// rewrites those bytes while the `Bytes` live: a published blob never changes (it is written
/// under tmp/, verified, fsynced and renamed into place, and never opened for writing again), and
/// a cache fill only appends to its temporary file. Deleting a file (garbage collection, a failed
/// fill) unlinks it, which leaves an existing mapping intact.
pub(super) fn map(file: &Arc<std::fs::File>, offset: u64, len: usize) -> io::Result<Bytes> {
    // Touching a mapped page past the end of the file raises SIGBUS, which would end the process:
    // check first, so a file shorter than expected is an error instead.
    if file.metadata()?.len() < offset + len as u64 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "blob file shorter than expected",
        ));
    }
    // SAFETY: see above; the bytes mapped are immutable for as long as the mapping lives.
    let map = unsafe { MmapOptions::new().offset(offset).len(len).map(&**file)? };
    // Start reading the window into the page cache now, so sending it rarely waits for the disk.
    // Advice only: without it the bytes are read when sent.
    let _ = map.advise(Advice::WillNeed);
    crate::sendfile::register(map.as_ptr(), len, file.clone(), offset);
    Ok(Bytes::from_owner(Window(map)))
}

/// A mapped window, registered for `sendfile` for as long as it is mapped.
struct Window(Mmap);

impl AsRef<[u8]> for Window {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Window {
    fn drop(&mut self) {
        // Before the mapping goes (the field drops after this), so an address is never
        // registered for two windows.
        crate::sendfile::unregister(self.0.as_ptr());
    }
}
