//! Single-flight cache fills for blobs. The first miss for a digest starts one upstream fetch in
//! its own task (a client that disconnects does not cancel it). The bytes go to a temporary file
//! while they are hashed, and every client waiting for that digest streams from that file as it
//! grows.
//!
//! A reader never gets the last byte before the digest has verified, so a response of unverified
//! bytes cannot complete normally: on a mismatch the file is deleted and every reader's body ends
//! in an error, which aborts the HTTP response.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use tokio::fs;
use tokio::sync::watch;

use crate::metrics::{FillResult, Metrics, Tracked, UpstreamError};
use crate::oci::{Digest, Hasher, RepoName};
use crate::store::{Origin, Store};
use crate::upstream::{self, Upstream};

/// Bytes gathered before each write to the temporary file and progress update.
const WRITE_CHUNK: usize = 1 << 20;

/// Largest read a waiting client makes from the growing file; one buffer per waiting client.
const READ_CHUNK: usize = 256 << 10;

/// The progress of one fill, broadcast to its readers.
#[derive(Clone, Debug)]
pub enum Progress {
    Connecting,
    Streaming {
        size: Option<u64>,
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
        let file = Arc::new(std::fs::File::create(&self.fill.temp).map_err(io)?);
        self.fill
            .progress
            .send_replace(Progress::Streaming { size, written: 0 });
        let mut hasher = Hasher::new(digest.algorithm());
        let mut body = response.bytes_stream();
        let mut buffer = BytesMut::with_capacity(WRITE_CHUNK);
        let mut written = 0u64;
        loop {
            let chunk = body
                .next()
                .await
                .transpose()
                .map_err(|e| FillError::Upstream(self.unavailable(e)))?;
            if let Some(chunk) = &chunk {
                self.upstream.metrics().received(chunk.len() as u64);
                hasher.update(chunk);
                buffer.extend_from_slice(chunk);
                if size.is_some_and(|s| written + buffer.len() as u64 > s) {
                    self.upstream.metrics().error(UpstreamError::Invalid);
                    return Err(FillError::Corrupt(format!(
                        "upstream sent more than its Content-Length {size:?}"
                    )));
                }
            }
            if buffer.len() >= WRITE_CHUNK || (chunk.is_none() && !buffer.is_empty()) {
                // One blocking call per chunk, complete when it returns: readers may be told
                // about these bytes only once they are in the file.
                let (f, bytes) = (file.clone(), buffer.split().freeze());
                let len = bytes.len() as u64;
                tokio::task::spawn_blocking(move || (&*f).write_all(&bytes))
                    .await
                    .map_err(|e| FillError::Io(e.to_string()))?
                    .map_err(io)?;
                written += len;
                self.fill.progress.send_replace(Progress::Streaming { size, written });
            }
            if chunk.is_none() {
                break;
            }
        }
        let actual = hasher.finish();
        if actual != *digest || size.is_some_and(|s| s != written) {
            self.upstream.metrics().error(UpstreamError::Invalid);
            return Err(FillError::Corrupt(format!(
                "upstream bytes hash to {actual} ({written} bytes), not {digest}"
            )));
        }
        // Readers may finish now; making the blob durable is the cache's business, not theirs.
        self.fill.progress.send_replace(Progress::Verified { size: written });
        let f = file.clone();
        tokio::task::spawn_blocking(move || f.sync_all())
            .await
            .map_err(|e| FillError::Io(e.to_string()))?
            .map_err(io)?;
        drop(file);
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
            .map_err(|e| FillError::Io(e.to_string()))?
            .map_err(|e| FillError::Io(e.to_string()))?;
        tracing::info!(%digest, bytes = written, upstream = %self.upstream.name(), "cached blob");
        Ok(written)
    }

    fn unavailable(&self, e: reqwest::Error) -> upstream::Error {
        self.upstream.metrics().error(UpstreamError::Body);
        upstream::Error::Unavailable {
            upstream: self.upstream.name().to_owned(),
            reason: format!("reading blob: {e}"),
        }
    }
}

impl Fill {
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
            let (allowed, done) = match progress {
                Progress::Connecting => (0, false),
                // Hold back the last byte until the digest has verified.
                Progress::Streaming {
                    size: Some(size),
                    written,
                } => (written.min(size.saturating_sub(1)), false),
                Progress::Streaming { size: None, written } => (written, false),
                Progress::Verified { size } | Progress::Done { size } => {
                    self.verified = Some(size);
                    (size, true)
                }
                // Caching failed after the bytes verified (say, a full disk): this response is
                // still correct and may finish from the file it has open.
                Progress::Failed(_) if self.verified.is_some() => (self.verified.unwrap_or(0), true),
                Progress::Failed(e) => {
                    return Some(Err(std::io::Error::other(format!(
                        "upstream fill of {} failed: {e:?}",
                        self.fill.digest
                    ))));
                }
            };
            if self.pos < allowed {
                return Some(self.read(allowed, done).await);
            }
            if done {
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
            let mut buf = vec![0u8; want];
            let n = file.read_at(&mut buf, pos)?;
            buf.truncate(n);
            Ok((file, buf))
        })
        .await
        .map_err(std::io::Error::other)??;
        self.file = Some(file);
        if buf.is_empty() {
            return Err(std::io::Error::other("cache file shorter than announced"));
        }
        self.pos += buf.len() as u64;
        Ok(Bytes::from(buf))
    }
}
