//! Appending a stream of received buffers to a file on a blocking thread, so the receiving side
//! and the page-cache copy run on separate cores. Profiles of a push and of a cold fill showed
//! hashing and that copy as the biggest costs, each a quarter to a third of berth's CPU; done one
//! after the other they added up. The buffers are handed over as they arrived, in batches, and
//! written with `writev`: no copy on the way.
//!
//! Hashing runs on a [`Hashing`] thread of its own, beside the writer, so receiving, hashing and
//! writing run at once: a push hands each batch to one itself (the spool returns the batch), and
//! a cache fill's spool does it for the fill. On the current-thread runtimes that serve requests,
//! hashing inline stopped the connection's thread for the whole hash; and a fill's writer that
//! hashed, then wrote, took as long as both together: with an upstream that sends 256 MiB in
//! 40 ms, the writer's 0.13 s of SHA-256 plus 0.04 s of page-cache copy was the cold GET's
//! whole time (BENCHMARKS.md, W6).

use std::io::{self, IoSlice, Write};

use bytes::Bytes;

use crate::oci::{Digest, Hasher};
use tokio::sync::{OwnedMutexGuard, mpsc};
use tokio::task::JoinHandle;

/// Bytes gathered before a hand-off to the writer; callers that batch themselves (a cache fill
/// through a [`super::BlobWriter`]) use it too.
pub const BATCH: usize = 256 << 10;

/// Batches waiting for the writer. When the disk is slower than the network, `push` waits here,
/// which bounds the memory a spool holds to about `BATCH * (QUEUE + 1)`.
const QUEUE: usize = 16;

/// An upload's batches are larger and fewer, in about the same memory: each batch wakes the
/// writer and the hashing thread, and with 256 KiB batches those switches were a tenth of a
/// push's CPU. 1 MiB batches, 4 queued, pushed 6% faster (W5, BENCHMARKS.md); 2 MiB with 2
/// queued was 15% slower (the threads waited for each other).
pub(super) const UPLOAD_BATCH: usize = 1 << 20;
const UPLOAD_QUEUE: usize = 4;

/// Start writing back to disk after every this many bytes, so the fsync that publishes the file
/// finds little left to do instead of a whole large layer (8 MiB pushed a little faster than
/// 32 MiB; `sync_file_range` in place of the fdatasync was no faster).
const WRITEBACK_EVERY: u64 = 8 << 20;

pub struct Spool {
    queue: mpsc::Sender<Vec<Bytes>>,
    writer: JoinHandle<io::Result<u64>>,
    /// A fill's hashing thread, fed the same batches as the writer.
    hashing: Option<Hashing>,
    batch: Vec<Bytes>,
    batch_len: usize,
    /// Bytes gathered before a hand-off.
    batch_size: usize,
}

/// What a closed spool wrote.
pub struct Spooled {
    pub len: u64,
    /// The digest of the bytes written, when the spool was given a hasher.
    pub digest: Option<Digest>,
}

impl Spool {
    /// For an upload: the caller hashes; the writer starts writeback every `WRITEBACK_EVERY`
    /// bytes, because the response waits for the fsync that publishes the blob. The writer thread
    /// holds `busy` until it exits, which may be after this spool was dropped with batches still
    /// queued: whoever touches the file next waits for that lock.
    pub fn for_upload(file: std::fs::File, busy: OwnedMutexGuard<()>) -> Spool {
        Spool::start(file, None, Some(busy), |_| {})
    }

    /// For a cache fill: the spool hashes (on its own thread), and the writer tells `on_written`
    /// how far the file goes after each batch. No early writeback: no response waits for the fsync, and on this VM's disk
    /// writeback during the transfer slowed cold GETs.
    pub(super) fn for_fill(file: std::fs::File, hasher: Hasher, on_written: impl FnMut(u64) + Send + 'static) -> Spool {
        Spool::start(file, Some(hasher), None, on_written)
    }

    /// An upload's spool (it has `busy`) writes back early and batches as uploads do.
    fn start(
        file: std::fs::File,
        hasher: Option<Hasher>,
        busy: Option<OwnedMutexGuard<()>>,
        on_written: impl FnMut(u64) + Send + 'static,
    ) -> Spool {
        let writeback = busy.is_some();
        let (batch_size, queue_len) = if writeback {
            (UPLOAD_BATCH, UPLOAD_QUEUE)
        } else {
            (BATCH, QUEUE)
        };
        let (queue, batches) = mpsc::channel(queue_len);
        let writer = Writer {
            file,
            writeback,
            _busy: busy,
        };
        Spool {
            queue,
            writer: tokio::task::spawn_blocking(move || writer.run(batches, on_written)),
            // As many batches may wait for it as for the writer: the same memory bound.
            hashing: hasher.map(|h| Hashing::with_queue(h, queue_len)),
            batch: Vec::new(),
            batch_len: 0,
            batch_size,
        }
    }

    /// Queue `chunk`. When that completes a batch, the batch goes to the writer and is returned
    /// (the buffers are shared, not copied) so the caller can pass it on.
    pub async fn push(&mut self, chunk: Bytes) -> io::Result<Option<Vec<Bytes>>> {
        self.batch_len += chunk.len();
        self.batch.push(chunk);
        if self.batch_len < self.batch_size {
            return Ok(None);
        }
        self.flush().await
    }

    /// Hand a whole batch to the writer (after anything queued).
    pub async fn send(&mut self, batch: Vec<Bytes>) -> io::Result<()> {
        self.flush().await?;
        self.hand_over(batch).await
    }

    /// To the writer, and to the hashing thread if the spool hashes (the buffers are shared).
    async fn hand_over(&mut self, batch: Vec<Bytes>) -> io::Result<()> {
        if let Some(hashing) = &self.hashing {
            hashing.send(batch.clone()).await?;
        }
        self.queue
            .send(batch)
            .await
            .map_err(|_| io::Error::other("the file writer stopped"))
    }

    /// Hand what is queued to the writer now; returns it, as `push` does.
    pub async fn flush(&mut self) -> io::Result<Option<Vec<Bytes>>> {
        if self.batch.is_empty() {
            return Ok(None);
        }
        let batch = std::mem::take(&mut self.batch);
        self.batch_len = 0;
        self.hand_over(batch.clone()).await?;
        Ok(Some(batch))
    }

    /// Wait until everything handed over is written (what was not flushed is dropped). Returns
    /// what was written, or the writer's error, which explains a failed `push`.
    pub async fn close(self) -> io::Result<Spooled> {
        drop(self.queue);
        // The writer's error first: it explains a failed hand-off (a full disk, say).
        let len = self.writer.await.map_err(io::Error::other)??;
        let digest = match self.hashing {
            Some(hashing) => Some(hashing.finish().await?.finish()),
            None => None,
        };
        Ok(Spooled { len, digest })
    }

    /// Close a fill's spool (made with a hasher): its length and digest, for `BlobWriter::close`.
    pub(super) async fn written(self) -> io::Result<super::Written> {
        let spooled = self.close().await?;
        Ok(super::Written {
            len: spooled.len,
            digest: spooled.digest.expect("a fill's spool is given a hasher"),
        })
    }
}

/// Hashing a stream of batches on a blocking thread, beside whoever receives and writes them.
pub struct Hashing {
    queue: mpsc::Sender<Vec<Bytes>>,
    thread: JoinHandle<Hasher>,
}

impl Hashing {
    /// Continue `hasher` with an upload's batches. At most [`UPLOAD_QUEUE`] wait for it, so it
    /// holds as much memory as the upload's spool.
    pub fn start(hasher: Hasher) -> Hashing {
        Hashing::with_queue(hasher, UPLOAD_QUEUE)
    }

    fn with_queue(mut hasher: Hasher, queue: usize) -> Hashing {
        let (queue, mut batches) = mpsc::channel::<Vec<Bytes>>(queue);
        let thread = tokio::task::spawn_blocking(move || {
            while let Some(batch) = batches.blocking_recv() {
                batch.iter().for_each(|b| hasher.update(b));
            }
            hasher
        });
        Hashing { queue, thread }
    }

    pub async fn send(&self, batch: Vec<Bytes>) -> io::Result<()> {
        self.queue
            .send(batch)
            .await
            .map_err(|_| io::Error::other("the hashing thread stopped"))
    }

    /// The hasher, once every batch sent is in it.
    pub async fn finish(self) -> io::Result<Hasher> {
        drop(self.queue);
        self.thread.await.map_err(io::Error::other)
    }
}

struct Writer {
    file: std::fs::File,
    writeback: bool,
    /// Released when the writer thread is done with the file (see `for_upload`).
    _busy: Option<OwnedMutexGuard<()>>,
}

impl Writer {
    /// Append every batch; returns the bytes written.
    fn run(mut self, mut batches: mpsc::Receiver<Vec<Bytes>>, mut on_written: impl FnMut(u64)) -> io::Result<u64> {
        let mut written = 0u64;
        while let Some(batch) = batches.blocking_recv() {
            let mut slices: Vec<IoSlice> = batch.iter().map(|b| IoSlice::new(b)).collect();
            // `Write::write_all_vectored` is not stable yet; this is its loop.
            let mut rest = &mut slices[..];
            let before = written;
            while !rest.is_empty() {
                let n = self.file.write_vectored(rest)?;
                if n == 0 {
                    return Err(io::ErrorKind::WriteZero.into());
                }
                written += n as u64;
                IoSlice::advance_slices(&mut rest, n);
            }
            if self.writeback && before / WRITEBACK_EVERY != written / WRITEBACK_EVERY {
                // An fdatasync on another thread starts the writeback without making this one wait.
                let clone = self.file.try_clone()?;
                tokio::task::spawn_blocking(move || clone.sync_data());
            }
            on_written(written);
        }
        Ok(written)
    }
}
