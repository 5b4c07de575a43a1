//! Serving a published blob without copying it through user space: each window of the file is
//! memory-mapped and handed on as `Bytes` that own the mapping, so the only copy left is the
//! kernel's, from the page cache into the socket. A profile of warm blob GETs showed two copies
//! before this (page cache to tokio's buffer, then to the body's buffer) costing a third of the
//! CPU. True zero-copy (`sendfile`) is out of reach because hyper owns the socket.

use std::io;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use memmap2::{Advice, MmapOptions};

use super::BlobFile;

/// Bytes mapped per step. Each stream holds about `1 + AHEAD` windows at a time, which is what it
/// costs in resident memory.
const WINDOW: u64 = 1 << 20;

/// Windows mapped ahead of the one being sent, so mapping overlaps sending.
const AHEAD: usize = 1;

impl BlobFile {
    /// The bytes `start..start + len` of the blob, one mapped window at a time.
    pub fn chunks(self, start: u64, len: u64) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
        let file = Arc::new(self.file);
        let end = start + len;
        let windows = (start..end)
            .step_by(WINDOW as usize)
            .map(move |pos| (pos, (end - pos).min(WINDOW)));
        futures_util::stream::iter(windows)
            .map(move |(pos, n)| {
                let file = file.clone();
                // Mapping with populate reads pages that are not cached yet: a blocking call.
                async move {
                    tokio::task::spawn_blocking(move || map(&file, pos, n as usize))
                        .await
                        .map_err(io::Error::other)?
                }
            })
            .buffered(1 + AHEAD)
    }
}

/// `len` bytes of `file` from `offset`, mapped. The caller promises that nobody truncates or
/// rewrites those bytes while the `Bytes` live: a published blob never changes (it is written
/// under tmp/, verified, fsynced and renamed into place, and never opened for writing again), and
/// a cache fill only appends to its temporary file. Deleting a file (garbage collection, a failed
/// fill) unlinks it, which leaves an existing mapping intact.
pub fn map(file: &std::fs::File, offset: u64, len: usize) -> io::Result<Bytes> {
    // Touching a mapped page past the end of the file raises SIGBUS, which would end the process:
    // check first, so a file shorter than expected is an error instead.
    if file.metadata()?.len() < offset + len as u64 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "blob file shorter than expected",
        ));
    }
    // SAFETY: see above; the bytes mapped are immutable for as long as the mapping lives.
    let map = unsafe { MmapOptions::new().offset(offset).len(len).populate().map(file)? };
    // Advice only; the window is read once, front to back.
    let _ = map.advise(Advice::Sequential);
    Ok(Bytes::from_owner(map))
}
