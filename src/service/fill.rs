//! Single-flight cache fills for blobs. The first miss for a digest starts one upstream fetch in
//! its own task (a client that disconnects does not cancel it).
//!
//! Each batch of bytes from the upstream goes two ways without being copied: into a window of
//! recent bytes that waiting clients are served from, and to a [`Spool`] that hashes it and
//! appends it to a temporary file on a blocking thread. The network side and the hashing and disk
//! side so run on separate cores, and a client that keeps up never reads its bytes back from the
//! file. A client that falls more than `RECENT` bytes behind reads them from the file instead.
//!
//! A reader never gets the last byte before the digest has verified, so a response of unverified
//! bytes cannot complete normally: on a mismatch the file is deleted and every reader's body ends
//! in an error, which aborts the HTTP response.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tokio::fs;
use tokio::sync::watch;

use crate::metrics::{FillResult, Metrics, Tracked, UpstreamError};
use crate::oci::{Digest, Hasher, RepoName};
use crate::store::{Origin, Spool, Spooled, Store};
use crate::upstream::{self, Upstream};

/// Bytes kept in memory, beyond those not yet written, for readers that trail the fill.
const RECENT: usize = 4 << 20;

/// Largest read (a mapped window) a trailing client makes from the file.
const READ_CHUNK: usize = 1 << 20;

/// The progress of one fill, broadcast to its readers.
#[derive(Clone, Debug)]
pub enum Progress {
    Connecting,
    /// `received` bytes may be served from memory (`Fill::recent`) and the first `written` of
    /// them are in the temporary file.
    Streaming {
        size: Option<u64>,
        received: u64,
        written: u64,
    },
    /// All bytes are in and match the digest: readers may finish. The blob is being made durable
    /// and published; a response never waits for that.
    Verified {
        size: u64,
    },
    /// Published in the store.
    Done {
        size: u64,
    },
    Failed(FillError),
}

/// Why a fill failed, as waiters report it.
#[derive(Clone, Debug)]
pub enum FillError {
    Upstream(upstream::Error),
    /// The bytes did not match the digest; nothing was kept.
    Corrupt(String),
    Io(String),
}

pub struct Fill {
    pub digest: Digest,
    temp: PathBuf,
    progress: watch::Sender<Progress>,
    recent: Mutex<Recent>,
}

/// Fills in flight, by digest.
pub struct Fills {
    inflight: Mutex<HashMap<Digest, Arc<Fill>>>,
    metrics: Arc<Metrics>,
}

impl Fills {
    pub fn new(metrics: Arc<Metrics>) -> Fills {
        Fills {
            inflight: Mutex::default(),
            metrics,
        }
    }

    /// Count a client waiting for (or streaming from) a fill, for as long as the guard lives.
    pub fn waiter(&self) -> Tracked {
        Tracked::new(&self.metrics.fill_waiters)
    }

    /// Join the fill of `digest`, or start one from `upstream`.
    pub fn join_or_start(
        self: &Arc<Self>,
        store: &Store,
        upstream: &Arc<Upstream>,
        remote: &str,
        local: &RepoName,
        digest: &Digest,
    ) -> Arc<Fill> {
        let mut inflight = self.inflight.lock().expect("fills lock");
        if let Some(fill) = inflight.get(digest) {
            self.metrics.fill_joins.inc();
            return fill.clone();
        }
        let (progress, _) = watch::channel(Progress::Connecting);
        let fill = Arc::new(Fill {
            digest: digest.clone(),
            temp: store.blobs.temp_path(),
            progress,
            recent: Mutex::default(),
        });
        inflight.insert(digest.clone(), fill.clone());
        let job = Job {
            fills: self.clone(),
            fill: fill.clone(),
            store: store.clone(),
            upstream: upstream.clone(),
            remote: remote.to_owned(),
            local: local.clone(),
        };
        tokio::spawn(job.run());
        fill
    }
}

struct Job {
    fills: Arc<Fills>,
    fill: Arc<Fill>,
    store: Store,
    upstream: Arc<Upstream>,
    remote: String,
    local: RepoName,
}

impl Job {
    async fn run(self) {
        let _running = Tracked::new(&self.fills.metrics.fills_in_flight);
        let outcome = self.fetch().await;
        if outcome.is_err() {
            let _ = fs::remove_file(&self.fill.temp).await;
        }
        // Leave the in-flight map before announcing the end, so a request that arrives after the
        // announcement finds the blob in the store (or starts a fresh fill after a failure).
        self.fills
            .inflight
            .lock()
            .expect("fills lock")
            .remove(&self.fill.digest);
        self.fills.metrics.fill_done(match &outcome {
            Ok(_) => FillResult::Ok,
            Err(FillError::Corrupt(_)) => FillResult::Corrupt,
            Err(_) => FillResult::Failed,
        });
        let final_state = match outcome {
            Ok(size) => Progress::Done { size },
            Err(e) => {
                tracing::warn!(digest = %self.fill.digest, upstream = %self.upstream.name(), error = ?e, "cache fill failed");
                Progress::Failed(e)
            }
        };
        // Readers still behind now read the file (published, or the one they have open).
        self.fill.recent.lock().expect("recent lock").clear();
        self.fill.progress.send_replace(final_state);
    }

    async fn fetch(&self) -> Result<u64, FillError> {
        let digest = &self.fill.digest;
        let response = self
            .upstream
            .get_blob(&self.remote, digest)
            .await
            .map_err(FillError::Upstream)?;
        let size = response.content_length();
        let io = |e: std::io::Error| FillError::Io(e.to_string());
        let joined = |e: tokio::task::JoinError| FillError::Io(e.to_string());
        let file = std::fs::File::create(&self.fill.temp).map_err(io)?;
        self.fill.progress.send_replace(Progress::Streaming {
            size,
            received: 0,
            written: 0,
        });
        let fill = self.fill.clone();
        let hasher = Hasher::new(digest.algorithm());
        let mut spool = Spool::for_fill(file, hasher, move |written| fill.written(written));
        let received = self.receive(response, size, &mut spool).await;
        // The writer's error (a full disk, say) explains a failed hand-off better than it does.
        let Spooled {
            file,
            len: written,
            digest: actual,
        } = spool.close().await.map_err(io)?;
        let received = received?;
        let actual = actual.expect("the spool was given a hasher");
        if actual != *digest || size.is_some_and(|s| s != written) || received != written {
            self.upstream.metrics().error(UpstreamError::Invalid);
            return Err(FillError::Corrupt(format!(
                "upstream bytes hash to {actual} ({written} bytes), not {digest}"
            )));
        }
        // Readers may finish now; making the blob durable is the cache's business, not theirs.
        self.fill.progress.send_replace(Progress::Verified { size: written });
        tokio::task::spawn_blocking(move || file.sync_all())
            .await
            .map_err(joined)?
            .map_err(io)?;
        let _fence = self.store.fence.read().await; // publish and link as one step for GC (see `gc`)
        self.store
            .blobs
            .publish(&self.fill.temp, digest)
            .await
            .map_err(|e| FillError::Io(e.to_string()))?;
        let (meta, repo, d, origin) = (
            self.store.meta.clone(),
            self.local.clone(),
            digest.clone(),
            Origin::Proxied {
                upstream: self.upstream.name().to_owned(),
            },
        );
        tokio::task::spawn_blocking(move || meta.link_blob(&repo, &d, origin))
            .await
            .map_err(joined)?
            .map_err(|e| FillError::Io(e.to_string()))?;
        tracing::info!(%digest, bytes = written, upstream = %self.upstream.name(), "cached blob");
        Ok(written)
    }

    /// Read the upstream body, handing each batch to the readers (through `recent`) and to the
    /// spool. Returns how many bytes arrived.
    async fn receive(
        &self,
        response: reqwest::Response,
        size: Option<u64>,
        spool: &mut Spool,
    ) -> Result<u64, FillError> {
        let io = |e: std::io::Error| FillError::Io(e.to_string());
        let mut body = response.bytes_stream();
        let (mut received, mut offered) = (0u64, 0u64);
        loop {
            let chunk = body
                .next()
                .await
                .transpose()
                .map_err(|e| FillError::Upstream(self.unavailable(e)))?;
            let end = chunk.is_none();
            let batch = match chunk {
                Some(chunk) => {
                    self.upstream.metrics().received(chunk.len() as u64);
                    received += chunk.len() as u64;
                    if size.is_some_and(|s| received > s) {
                        self.upstream.metrics().error(UpstreamError::Invalid);
                        return Err(FillError::Corrupt(format!(
                            "upstream sent more than its Content-Length {size:?}"
                        )));
                    }
                    spool.push(chunk).await.map_err(io)?
                }
                None => spool.flush().await.map_err(io)?,
            };
            if let Some(batch) = batch {
                offered += batch.iter().map(|b| b.len() as u64).sum::<u64>();
                self.fill.offer(&batch, offered);
            }
            if end {
                return Ok(received);
            }
        }
    }

    fn unavailable(&self, e: reqwest::Error) -> upstream::Error {
        self.upstream.metrics().error(UpstreamError::Body);
        upstream::Error::Unavailable {
            upstream: self.upstream.name().to_owned(),
            reason: format!("reading blob: {e}"),
        }
    }
}

/// The bytes of a fill still in memory: a window that ends at the bytes received so far.
#[derive(Default)]
struct Recent {
    /// Offset of the first byte of `chunks`.
    start: u64,
    chunks: VecDeque<Bytes>,
    len: usize,
}

impl Recent {
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

    fn clear(&mut self) {
        self.start += self.len as u64;
        self.chunks.clear();
        self.len = 0;
    }
}

impl Fill {
    /// The spool has written the first `written` bytes to the file.
    fn written(&self, written: u64) {
        self.progress.send_modify(|p| {
            if let Progress::Streaming { written: w, .. } = p {
                *w = written;
            }
        });
    }

    /// Add a batch that brings the bytes received to `received`. The window then drops its oldest
    /// bytes beyond `RECENT`, but only those already in the file, so every byte received stays
    /// readable from one place or the other.
    fn offer(&self, batch: &[Bytes], received: u64) {
        let written = match *self.progress.borrow() {
            Progress::Streaming { written, .. } => written,
            _ => 0,
        };
        let mut recent = self.recent.lock().expect("recent lock");
        for chunk in batch {
            recent.len += chunk.len();
            recent.chunks.push_back(chunk.clone());
        }
        while recent.len > RECENT {
            let first = recent.chunks.front().map_or(0, |c| c.len());
            if recent.start + first as u64 > written {
                break;
            }
            recent.chunks.pop_front();
            recent.start += first as u64;
            recent.len -= first;
        }
        drop(recent);
        self.progress.send_modify(|p| {
            if let Progress::Streaming { received: r, .. } = p {
                *r = received;
            }
        });
    }

    /// Wait until the upstream answered: the blob's size if known, or why the fill failed.
    pub async fn started(&self) -> Result<Option<u64>, FillError> {
        let mut rx = self.progress.subscribe();
        loop {
            match &*rx.borrow_and_update() {
                Progress::Connecting => {}
                Progress::Streaming { size, .. } => return Ok(*size),
                Progress::Verified { size } | Progress::Done { size } => return Ok(Some(*size)),
                Progress::Failed(e) => return Err(e.clone()),
            }
            if rx.changed().await.is_err() {
                return Err(FillError::Io("fill ended without a result".into()));
            }
        }
    }

    /// Whether every byte is in and verified (the fill is only publishing): a request that
    /// joins now is served like a cache hit.
    pub fn verified(&self) -> bool {
        matches!(
            *self.progress.borrow(),
            Progress::Verified { .. } | Progress::Done { .. }
        )
    }

    /// Wait until the blob is verified and published (or the fill failed).
    pub async fn finished(&self) -> Result<u64, FillError> {
        let mut rx = self.progress.subscribe();
        loop {
            match &*rx.borrow_and_update() {
                Progress::Done { size } => return Ok(*size),
                Progress::Failed(e) => return Err(e.clone()),
                _ => {}
            }
            if rx.changed().await.is_err() {
                return Err(FillError::Io("fill ended without a result".into()));
            }
        }
    }

    /// The blob's bytes as they arrive; the final byte only after verification. `published` is
    /// where the blob lives once the fill is done (for readers that join late). `waiter` counts
    /// this client until the stream is dropped.
    pub fn stream(
        self: Arc<Self>,
        published: PathBuf,
        waiter: Tracked,
    ) -> impl Stream<Item = std::io::Result<Bytes>> + Send + 'static {
        let state = Reader {
            _waiter: waiter,
            fill: self.clone(),
            rx: self.progress.subscribe(),
            file: None,
            pos: 0,
            published,
            verified: None,
        };
        futures_util::stream::unfold(state, |mut r| async move { r.next().await.map(|item| (item, r)) })
    }
}

struct Reader {
    _waiter: Tracked,
    fill: Arc<Fill>,
    rx: watch::Receiver<Progress>,
    file: Option<Arc<std::fs::File>>,
    pos: u64,
    published: PathBuf,
    /// The size, once the bytes are known to match the digest.
    verified: Option<u64>,
}

impl Reader {
    async fn next(&mut self) -> Option<std::io::Result<Bytes>> {
        loop {
            let progress = self.rx.borrow_and_update().clone();
            let (allowed, in_file, done) = match progress {
                Progress::Connecting => (0, 0, false),
                // Hold back the last byte until the digest has verified.
                Progress::Streaming {
                    size: Some(size),
                    received,
                    written,
                } => (received.min(size.saturating_sub(1)), written, false),
                Progress::Streaming {
                    size: None,
                    received,
                    written,
                } => (received, written, false),
                Progress::Verified { size } | Progress::Done { size } => {
                    self.verified = Some(size);
                    (size, size, true)
                }
                // Caching failed after the bytes verified (say, a full disk): this response is
                // still correct and may finish from the file it has open.
                Progress::Failed(_) if self.verified.is_some() => {
                    let size = self.verified.unwrap_or(0);
                    (size, size, true)
                }
                Progress::Failed(e) => {
                    return Some(Err(std::io::Error::other(format!(
                        "upstream fill of {} failed: {e:?}",
                        self.fill.digest
                    ))));
                }
            };
            if self.pos < allowed {
                let recent = self.fill.recent.lock().expect("recent lock").slice(self.pos, allowed);
                if let Some(bytes) = recent {
                    self.pos += bytes.len() as u64;
                    return Some(Ok(bytes));
                }
                // Fallen behind the window: the bytes are in the file (`offer` keeps them in
                // memory until they are).
                if self.pos < in_file {
                    return Some(self.read(allowed.min(in_file), done).await);
                }
            } else if done {
                return None;
            }
            if self.rx.changed().await.is_err() {
                return Some(Err(std::io::Error::other("cache fill vanished")));
            }
        }
    }

    async fn read(&mut self, allowed: u64, done: bool) -> std::io::Result<Bytes> {
        let (temp, published, pos) = (self.fill.temp.clone(), self.published.clone(), self.pos);
        let file = self.file.clone();
        let want = (allowed - self.pos).min(READ_CHUNK as u64) as usize;
        // Open (first time) and read at `pos` in one blocking call.
        let (file, buf) = tokio::task::spawn_blocking(move || -> std::io::Result<_> {
            let file = match file {
                Some(f) => f,
                None => Arc::new(match std::fs::File::open(&temp) {
                    Ok(f) => f,
                    // Renamed into the store already: read the published blob.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound && done => std::fs::File::open(&published)?,
                    Err(e) => return Err(e),
                }),
            };
            // Bytes below `written` are never rewritten (the writer only appends): mappable.
            let bytes = crate::store::map(&file, pos, want)?;
            Ok((file, bytes))
        })
        .await
        .map_err(std::io::Error::other)??;
        self.file = Some(file);
        self.pos += buf.len() as u64;
        Ok(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::gauge::Gauge;
    use std::time::Duration;

    const CHUNK: usize = 64 << 10;

    fn fill_in(dir: &std::path::Path, size: u64) -> Arc<Fill> {
        let (progress, _) = watch::channel(Progress::Streaming {
            size: Some(size),
            received: 0,
            written: 0,
        });
        Arc::new(Fill {
            digest: Digest::sha256_of(b""),
            temp: dir.join("fill"),
            progress,
            recent: Mutex::default(),
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
        let dir = tempfile::tempdir().unwrap();
        let fill = fill_in(dir.path(), (RECENT * 3) as u64);
        let chunk = Bytes::from(vec![7u8; CHUNK]);
        for i in 1..=(RECENT * 3 / CHUNK) {
            fill.offer(std::slice::from_ref(&chunk), (i * CHUNK) as u64);
        }
        let recent = fill.recent.lock().unwrap();
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
        let fill = fill_in(dir.path(), data.len() as u64);
        std::fs::write(&fill.temp, &data).unwrap();
        fill.written(data.len() as u64);
        let mut received = 0;
        for chunk in data.chunks(CHUNK) {
            received += chunk.len() as u64;
            fill.offer(&[Bytes::copy_from_slice(chunk)], received);
        }
        let window = fill.recent.lock().unwrap().start;
        assert!(window > 0, "the window dropped the written bytes beyond RECENT");

        let gauge = Gauge::default();
        let mut reader = Box::pin(fill.clone().stream(dir.path().join("published"), Tracked::new(&gauge)));
        let mut got = Vec::new();
        assert!(!drain(&mut reader, &mut got).await, "the body waits for verification");
        assert_eq!(got.len(), data.len() - 1, "all but the last byte before verification");
        fill.progress.send_replace(Progress::Verified {
            size: data.len() as u64,
        });
        assert!(drain(&mut reader, &mut got).await, "the body ends once verified");
        assert!(got == data, "the bytes, from the file and then the window, in order");
    }

    #[tokio::test]
    async fn readers_of_a_corrupt_fill_end_in_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let fill = fill_in(dir.path(), 10);
        fill.offer(&[Bytes::from_static(b"0123456789")], 10);
        let gauge = Gauge::default();
        let mut reader = Box::pin(fill.clone().stream(dir.path().join("published"), Tracked::new(&gauge)));
        assert_eq!(reader.next().await.unwrap().unwrap(), Bytes::from_static(b"012345678"));
        fill.progress
            .send_replace(Progress::Failed(FillError::Corrupt("hash mismatch".into())));
        assert!(
            reader.next().await.unwrap().is_err(),
            "an error, so the response aborts"
        );
    }
}
