//! The reading side of a fill: the window of recent bytes in memory, and the stream each waiting
//! client gets, which takes its bytes from the window while it keeps up and reads them back
//! through the blob writer when it falls behind.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::Stream;
use tokio::sync::watch;

use super::{Fill, FillProgress};
use crate::metrics::Tracked;

/// Bytes kept in memory, beyond those not yet written, for readers that trail the fill.
const RECENT: usize = 4 << 20;

/// Largest read (on the filesystem, a mapped window) a trailing client makes.
const READ_CHUNK: usize = 1 << 20;

/// The bytes of a fill still in memory: a window that ends at the bytes received so far.
#[derive(Default)]
pub(super) struct Recent {
    /// Offset of the first byte of `chunks`.
    start: u64,
    chunks: VecDeque<Bytes>,
    len: usize,
}

impl Recent {
    /// Add a batch, then drop the oldest bytes beyond `RECENT`, but only those already in the file
    /// (the first `written`), so every byte received stays readable from one place or the other.
    pub(super) fn add(&mut self, batch: &[Bytes], written: u64) {
        for chunk in batch {
            self.len += chunk.len();
            self.chunks.push_back(chunk.clone());
        }
        while self.len > RECENT {
            let first = self.chunks.front().map_or(0, |c| c.len());
            if self.start + first as u64 > written {
                break;
            }
            self.chunks.pop_front();
            self.start += first as u64;
            self.len -= first;
        }
    }

    /// The bytes from `pos` up to (not past) `limit`, as one of the upstream's buffers.
    fn slice(&self, pos: u64, limit: u64) -> Option<Bytes> {
        if pos < self.start {
            return None;
        }
        let mut chunk_end = self.start + self.len as u64;
        for chunk in self.chunks.iter().rev() {
            let chunk_start = chunk_end - chunk.len() as u64;
            if pos >= chunk_start && pos < chunk_end {
                let (from, to) = (pos - chunk_start, limit.min(chunk_end) - chunk_start);
                return Some(chunk.slice(from as usize..to as usize));
            }
            chunk_end = chunk_start;
        }
        None
    }

    /// Forget the window (the fill has ended): readers still behind read the file.
    pub(super) fn clear(&mut self) {
        self.start += self.len as u64;
        self.chunks.clear();
        self.len = 0;
    }
}

impl Fill {
    /// The blob's bytes as they arrive; the final byte only after verification. `waiter` counts
    /// this client until the stream is dropped.
    pub fn stream(self: Arc<Self>, waiter: Tracked) -> impl Stream<Item = std::io::Result<Bytes>> + Send + 'static {
        self.read_from(0, u64::MAX, true, waiter)
    }

    /// The blob's bytes from `from` on as they arrive; the final byte only after verification
    /// (a replica resuming its copy of the blob, see `peer`).
    pub(super) fn stream_from(
        self: Arc<Self>,
        from: u64,
        waiter: Tracked,
    ) -> impl Stream<Item = std::io::Result<Bytes>> + Send + 'static {
        self.read_from(from, u64::MAX, true, waiter)
    }

    /// The bytes `start..end` of the blob as they arrive, the last one included without waiting
    /// for verification (see [`super::lazy`] for why a part may go out unverified). The body still
    /// ends in an error if the fill fails while any of the part is unsent.
    pub(super) fn part(
        self: Arc<Self>,
        start: u64,
        end: u64,
        waiter: Tracked,
    ) -> impl Stream<Item = std::io::Result<Bytes>> + Send + 'static {
        self.read_from(start, end, false, waiter)
    }

    fn read_from(
        self: Arc<Self>,
        pos: u64,
        end: u64,
        hold_back: bool,
        waiter: Tracked,
    ) -> impl Stream<Item = std::io::Result<Bytes>> + Send + 'static {
        let state = Reader {
            _waiter: waiter,
            fill: self.clone(),
            rx: self.progress.subscribe(),
            pos,
            end,
            hold_back,
            verified: None,
        };
        futures_util::stream::unfold(state, |mut r| async move { r.next().await.map(|item| (item, r)) })
    }

    /// Bytes received so far (all of them in the window or written).
    pub(super) fn received(&self) -> u64 {
        match *self.progress.borrow() {
            FillProgress::Streaming { received, .. } => received,
            FillProgress::Verified { size } | FillProgress::Done { size } => size,
            FillProgress::Connecting | FillProgress::Failed(_) => 0,
        }
    }
}

struct Reader {
    _waiter: Tracked,
    fill: Arc<Fill>,
    rx: watch::Receiver<FillProgress>,
    pos: u64,
    /// Where this reader stops (`u64::MAX`: at the end of the blob).
    end: u64,
    /// Whether the blob's last byte waits for verification (a whole-blob response).
    hold_back: bool,
    /// The size, once the bytes are known to match the digest.
    verified: Option<u64>,
}

impl Reader {
    async fn next(&mut self) -> Option<std::io::Result<Bytes>> {
        loop {
            if self.pos >= self.end {
                return None;
            }
            let progress = self.rx.borrow_and_update().clone();
            let (allowed, in_file, done) = match progress {
                FillProgress::Connecting => (0, 0, false),
                // Hold back the last byte until the digest has verified.
                FillProgress::Streaming {
                    size: Some(size),
                    received,
                    written,
                } if self.hold_back => (received.min(size.saturating_sub(1)), written, false),
                // No size to hold back before, or a part, whose last byte may go.
                FillProgress::Streaming { received, written, .. } => (received, written, false),
                FillProgress::Verified { size } | FillProgress::Done { size } => {
                    self.verified = Some(size);
                    (size, size, true)
                }
                // Caching failed after the bytes verified (say, a full disk): this response is
                // still correct and may finish reading them back.
                FillProgress::Failed(_) if self.verified.is_some() => {
                    let size = self.verified.unwrap_or(0);
                    (size, size, true)
                }
                FillProgress::Failed(e) => {
                    return Some(Err(std::io::Error::other(format!(
                        "upstream fill of {} failed: {e:?}",
                        self.fill.digest
                    ))));
                }
            };
            let allowed = allowed.min(self.end);
            if self.pos < allowed {
                let recent = self.fill.recent.lock().slice(self.pos, allowed);
                if let Some(bytes) = recent {
                    self.pos += bytes.len() as u64;
                    return Some(Ok(bytes));
                }
                // Fallen behind the window: the bytes are written (`offer` keeps them in memory
                // until they are).
                if self.pos < in_file {
                    return Some(self.read(allowed.min(in_file)).await);
                }
            } else if done {
                return None;
            }
            if self.rx.changed().await.is_err() {
                return Some(Err(std::io::Error::other("cache fill vanished")));
            }
        }
    }

    async fn read(&mut self, allowed: u64) -> std::io::Result<Bytes> {
        let want = (allowed - self.pos).min(READ_CHUNK as u64) as usize;
        let written = self
            .fill
            .written
            .get()
            .ok_or_else(|| std::io::Error::other("cache fill has no writer"))?;
        let buf = written.read_at(self.pos, want).await.map_err(std::io::Error::other)?;
        self.pos += buf.len() as u64;
        Ok(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::Digest;
    use crate::service::fill::FillError;
    use futures_util::StreamExt;
    use parking_lot::Mutex;
    use prometheus_client::metrics::gauge::Gauge;
    use std::time::Duration;

    const CHUNK: usize = 64 << 10;

    fn fill_of(size: u64) -> Arc<Fill> {
        let (progress, _) = watch::channel(FillProgress::Streaming {
            size: Some(size),
            received: 0,
            written: 0,
        });
        Arc::new(Fill {
            digest: Digest::sha256_of(b""),
            repo: "library/test".parse().unwrap(),
            upstream: "docker.io".into(),
            written: std::sync::OnceLock::new(),
            progress,
            recent: Mutex::default(),
            part_first: Mutex::default(),
        })
    }

    /// Everything the stream yields until it has nothing more for a while; whether it ended.
    async fn drain(stream: &mut (impl Stream<Item = std::io::Result<Bytes>> + Unpin), out: &mut Vec<u8>) -> bool {
        loop {
            match tokio::time::timeout(Duration::from_millis(200), stream.next()).await {
                Ok(Some(item)) => out.extend_from_slice(&item.expect("a chunk")),
                Ok(None) => return true,
                Err(_) => return false,
            }
        }
    }

    #[test]
    fn the_window_never_drops_bytes_that_are_not_in_the_file_yet() {
        let fill = fill_of((RECENT * 3) as u64);
        let chunk = Bytes::from(vec![7u8; CHUNK]);
        for i in 1..=(RECENT * 3 / CHUNK) {
            fill.offer(std::slice::from_ref(&chunk), (i * CHUNK) as u64);
        }
        let recent = fill.recent.lock();
        assert_eq!(
            (recent.start, recent.len),
            (0, RECENT * 3),
            "nothing is written, so all stays"
        );
    }

    #[tokio::test]
    async fn a_reader_behind_the_window_gets_every_byte_from_the_file_and_the_last_only_once_verified() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..RECENT * 3 + 12345).map(|i| (i % 251) as u8).collect();
        let fill = fill_of(data.len() as u64);
        // Written through the filesystem backend's writer, so trailing reads map its file.
        let store = crate::store::fs::open(dir.path()).unwrap();
        let mut writer = store
            .blobs
            .writer(&Digest::sha256_of(&data), Box::new(|_| {}))
            .await
            .unwrap();
        writer.append(vec![Bytes::from(data.clone())]).await.unwrap();
        writer.close().await.unwrap();
        let _ = fill.written.set(writer.read_back());
        fill.written(data.len() as u64);
        let mut received = 0;
        for chunk in data.chunks(CHUNK) {
            received += chunk.len() as u64;
            fill.offer(&[Bytes::copy_from_slice(chunk)], received);
        }
        let window = fill.recent.lock().start;
        assert!(window > 0, "the window dropped the written bytes beyond RECENT");

        let gauge = Gauge::default();
        let mut reader = Box::pin(fill.clone().stream(Tracked::new(&gauge)));
        let mut got = Vec::new();
        assert!(!drain(&mut reader, &mut got).await, "the body waits for verification");
        assert_eq!(got.len(), data.len() - 1, "all but the last byte before verification");
        fill.progress.send_replace(FillProgress::Verified {
            size: data.len() as u64,
        });
        assert!(drain(&mut reader, &mut got).await, "the body ends once verified");
        assert!(got == data, "the bytes, from the file and then the window, in order");
    }

    #[tokio::test]
    async fn readers_of_a_corrupt_fill_end_in_an_error() {
        let fill = fill_of(10);
        fill.offer(&[Bytes::from_static(b"0123456789")], 10);
        let gauge = Gauge::default();
        let mut reader = Box::pin(fill.clone().stream(Tracked::new(&gauge)));
        assert_eq!(reader.next().await.unwrap().unwrap(), Bytes::from_static(b"012345678"));
        fill.progress
            .send_replace(FillProgress::Failed(FillError::Corrupt("hash mismatch".into())));
        assert!(
            reader.next().await.unwrap().is_err(),
            "an error, so the response aborts"
        );
    }
}
