//! Single-flight cache fills for blobs. The first miss for a digest starts one upstream fetch in
//! its own task (a client that disconnects does not cancel it).
//!
//! Each batch of bytes from the upstream goes two ways without being copied: into a window of
//! recent bytes that waiting clients are served from, and to the store's [`BlobWriter`] (on the
//! filesystem, a thread that hashes it and appends it to a temporary file). The network side and
//! the hashing and disk side so run on separate cores, and a client that keeps up never reads its
//! bytes back. A client that falls more than `RECENT` bytes behind reads them back through the
//! writer instead.
//!
//! Who leads a fill is the [`Coordinator`]'s decision (single-flight per digest); a request that
//! follows a fill led in this process joins its window and readers.
//!
//! A reader never gets the last byte before the digest has verified, so a response of unverified
//! bytes cannot complete normally: on a mismatch the writer is dropped (which discards its bytes)
//! and every reader's body ends in an error, which aborts the HTTP response.

use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;

use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};
use tokio::sync::watch;

use crate::coord::{Coordinator, FillClaim, FillLease};
use crate::metrics::{FillResult, Metrics, Tracked, UpstreamError};
use crate::oci::{Digest, RepoName};
use crate::store::{self, BlobWriter, Origin, ReadBack, Store, Written};
use crate::upstream::{self, Remote, RemoteBlob};

mod lazy;
mod reader;
pub use lazy::{Early, ranged};
use reader::Recent;

/// The progress of one fill, broadcast to its readers.
#[derive(Clone, Debug)]
pub enum FillProgress {
    Connecting,
    /// `received` bytes may be served from memory (`Fill::recent`) and the first `written` of
    /// them can be read back from the writer.
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
    /// The store is full: nothing was kept, and the client is told so (507), not a server fault.
    Full(String),
}

impl From<store::Error> for FillError {
    /// A full store is told apart, so its 507 survives the trip through the fill's progress.
    fn from(e: store::Error) -> FillError {
        match e {
            store::Error::Full(io) => FillError::Full(io.to_string()),
            other => FillError::Io(other.to_string()),
        }
    }
}

pub struct Fill {
    pub digest: Digest,
    /// The repository (and its upstream) the fill was started for; a request from another
    /// repository may join only once its own upstream confirms that repository has the blob.
    pub repo: RepoName,
    pub upstream: String,
    /// The bytes written so far; set before the first byte is announced.
    written: OnceLock<Arc<dyn ReadBack>>,
    progress: watch::Sender<FillProgress>,
    recent: Mutex<Recent>,
}

/// Starts and joins fills; which fills are in flight is the coordinator's to know.
pub struct Fills {
    metrics: Arc<Metrics>,
    notifier: Arc<crate::notify::Notifier>,
}

impl Fills {
    pub fn new(metrics: Arc<Metrics>, notifier: Arc<crate::notify::Notifier>) -> Fills {
        Fills { metrics, notifier }
    }

    /// Count a client waiting for (or streaming from) a fill, for as long as the guard lives.
    pub fn waiter(&self) -> Tracked {
        Tracked::new(&self.metrics.fill_waiters)
    }

    /// Join the fill of `digest`, or start one from `upstream`: `coord` decides which.
    pub async fn join_or_start(
        self: &Arc<Self>,
        coord: &dyn Coordinator,
        store: &Store,
        upstream: &Arc<dyn Remote>,
        remote: &str,
        local: &RepoName,
        digest: &Digest,
    ) -> Arc<Fill> {
        let (progress, _) = watch::channel(FillProgress::Connecting);
        let fill = Arc::new(Fill {
            digest: digest.clone(),
            repo: local.clone(),
            upstream: upstream.name().to_owned(),
            written: OnceLock::new(),
            progress,
            recent: Mutex::default(),
        });
        let lease = match coord.claim_fill(digest, fill.clone()).await {
            Ok(FillClaim::Lead(lease)) => Some(lease),
            Ok(FillClaim::Follow(leader)) => match leader.local.and_then(|f| f.downcast::<Fill>().ok()) {
                Some(leader) => {
                    self.metrics.fill_joins.inc();
                    return leader;
                }
                // Led by another replica. Streaming from it comes with cluster mode; until then
                // fetching again is correct, only not single-flight.
                None => None,
            },
            // Coordination is down: serving the client matters more than single-flight.
            Err(e) => {
                tracing::warn!(%digest, error = %e, "fill claim failed; fetching without one");
                None
            }
        };
        let job = Job {
            lease,
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
    /// Held until the fill ends; `None` when no claim could be had (see `join_or_start`).
    lease: Option<FillLease>,
    fills: Arc<Fills>,
    fill: Arc<Fill>,
    store: Store,
    upstream: Arc<dyn Remote>,
    remote: String,
    local: RepoName,
}

impl Job {
    async fn run(mut self) {
        let _running = Tracked::new(&self.fills.metrics.fills_in_flight);
        // On failure the writer was dropped inside, which discarded its bytes.
        let outcome = self.fetch().await;
        // Release the claim before announcing the end, so a request that arrives after the
        // announcement finds the blob in the store (or starts a fresh fill after a failure).
        drop(self.lease.take());
        self.fills.metrics.fill_done(match &outcome {
            Ok(_) => FillResult::Ok,
            Err(FillError::Corrupt(_)) => FillResult::Corrupt,
            Err(_) => FillResult::Failed,
        });
        let final_state = match outcome {
            Ok(size) => {
                super::notify_fill(&self.fills.notifier, &self.local, &self.fill.digest, None, size);
                FillProgress::Done { size }
            }
            Err(e) => {
                tracing::warn!(digest = %self.fill.digest, upstream = %self.upstream.name(), error = ?e, "cache fill failed");
                FillProgress::Failed(e)
            }
        };
        // Readers still behind now read back through the writer (published, or discarded but
        // still readable by them).
        self.fill.recent.lock().clear();
        self.fill.progress.send_replace(final_state);
    }

    async fn fetch(&self) -> Result<u64, FillError> {
        let digest = &self.fill.digest;
        let response = self
            .upstream
            .get_blob(&self.remote, digest)
            .await
            .map_err(FillError::Upstream)?;
        let size = response.size;
        let io = FillError::from;
        let fill = self.fill.clone();
        let mut writer = self
            .store
            .blobs
            .writer(digest, Box::new(move |written| fill.written(written)))
            .await
            .map_err(io)?;
        let _ = self.fill.written.set(writer.read_back());
        self.fill.progress.send_replace(FillProgress::Streaming {
            size,
            received: 0,
            written: 0,
        });
        let received = self.receive(response, size, writer.as_mut()).await;
        // The writer's error (a full disk, say) explains a failed hand-off better than it does.
        let Written {
            len: written,
            digest: actual,
        } = writer.close().await.map_err(io)?;
        let received = received?;
        if actual != *digest || size.is_some_and(|s| s != written) || received != written {
            self.upstream.metrics().error(UpstreamError::Invalid);
            return Err(FillError::Corrupt(format!(
                "upstream bytes hash to {actual} ({written} bytes), not {digest}"
            )));
        }
        // Readers may finish now; making the blob durable is the cache's business, not theirs.
        self.fill
            .progress
            .send_replace(FillProgress::Verified { size: written });
        // Registered before it is published, so its grace period covers it until the link.
        super::register(self.store.meta.as_ref(), digest, written)
            .await
            .map_err(FillError::from)?;
        writer.commit(digest).await.map_err(io)?;
        let origin = Origin::Proxied {
            upstream: self.upstream.name().to_owned(),
        };
        self.store
            .meta
            .link_blob(&self.local, digest, origin)
            .await
            .map_err(FillError::from)?;
        tracing::info!(%digest, bytes = written, upstream = %self.upstream.name(), "cached blob");
        Ok(written)
    }

    /// Read the upstream body, handing what arrives to the readers (through `recent`) and to the
    /// writer, in batches of [`store::WRITE_BATCH`] bytes. Readers are handed bytes whenever the upstream has nothing more ready, so a slow
    /// upstream's bytes reach them as they arrive, and in batches when it is fast. A fill that
    /// stays below the upstream's minimum rate for a whole window is aborted. Returns how many
    /// bytes arrived.
    async fn receive(
        &self,
        response: RemoteBlob,
        size: Option<u64>,
        writer: &mut dyn BlobWriter,
    ) -> Result<u64, FillError> {
        let io = FillError::from;
        let mut body = response.body;
        let mut received = 0u64;
        let mut pace = Pace::new(self.upstream.settings());
        let mut unoffered: Vec<Bytes> = Vec::new();
        // Buffers received but not yet handed to the writer, and their length.
        let (mut unwritten, mut unwritten_len): (Vec<Bytes>, usize) = (Vec::new(), 0);
        loop {
            let next = match body.next().now_or_never() {
                Some(next) => next,
                None => {
                    self.offer(&mut unoffered, received);
                    match tokio::time::timeout_at(pace.window_end, body.next()).await {
                        Ok(next) => next,
                        Err(_) => {
                            pace.check(0).map_err(|e| self.stalled(e))?;
                            continue;
                        }
                    }
                }
            };
            let Some(chunk) = next.transpose().map_err(FillError::Upstream)? else {
                if !unwritten.is_empty() {
                    writer.append(unwritten).await.map_err(io)?;
                }
                self.offer(&mut unoffered, received);
                return Ok(received);
            };
            self.upstream.metrics().received(chunk.len() as u64);
            received += chunk.len() as u64;
            if size.is_some_and(|s| received > s) {
                self.upstream.metrics().error(UpstreamError::Invalid);
                return Err(FillError::Corrupt(format!(
                    "upstream sent more than its Content-Length {size:?}"
                )));
            }
            pace.check(chunk.len() as u64).map_err(|e| self.stalled(e))?;
            // The buffers are shared, not copied.
            unoffered.push(chunk.clone());
            unwritten_len += chunk.len();
            unwritten.push(chunk);
            if unwritten_len >= store::WRITE_BATCH {
                writer.append(std::mem::take(&mut unwritten)).await.map_err(io)?;
                unwritten_len = 0;
                self.offer(&mut unoffered, received);
            }
        }
    }

    fn offer(&self, unoffered: &mut Vec<Bytes>, received: u64) {
        if !unoffered.is_empty() {
            self.fill.offer(unoffered, received);
            unoffered.clear();
        }
    }

    fn stalled(&self, reason: String) -> FillError {
        self.upstream.metrics().error(UpstreamError::Body);
        FillError::Upstream(upstream::Error::Unavailable {
            upstream: self.upstream.name().to_owned(),
            reason,
        })
    }
}

impl Fill {
    /// The spool has written the first `written` bytes to the file.
    fn written(&self, written: u64) {
        self.progress.send_modify(|p| {
            if let FillProgress::Streaming { written: w, .. } = p {
                *w = written;
            }
        });
    }

    /// Add a batch that brings the bytes received to `received` to the window readers are served
    /// from, and announce it.
    fn offer(&self, batch: &[Bytes], received: u64) {
        let written = match *self.progress.borrow() {
            FillProgress::Streaming { written, .. } => written,
            _ => 0,
        };
        self.recent.lock().add(batch, written);
        self.progress.send_modify(|p| {
            if let FillProgress::Streaming { received: r, .. } = p {
                *r = received;
            }
        });
    }

    /// Wait until the upstream answered: the blob's size if known, or why the fill failed.
    pub async fn started(&self) -> Result<Option<u64>, FillError> {
        let mut rx = self.progress.subscribe();
        loop {
            match &*rx.borrow_and_update() {
                FillProgress::Connecting => {}
                FillProgress::Streaming { size, .. } => return Ok(*size),
                FillProgress::Verified { size } | FillProgress::Done { size } => return Ok(Some(*size)),
                FillProgress::Failed(e) => return Err(e.clone()),
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
            FillProgress::Verified { .. } | FillProgress::Done { .. }
        )
    }

    /// Wait until the blob is verified and published (or the fill failed).
    pub async fn finished(&self) -> Result<u64, FillError> {
        let mut rx = self.progress.subscribe();
        loop {
            match &*rx.borrow_and_update() {
                FillProgress::Done { size } => return Ok(*size),
                FillProgress::Failed(e) => return Err(e.clone()),
                _ => {}
            }
            if rx.changed().await.is_err() {
                return Err(FillError::Io("fill ended without a result".into()));
            }
        }
    }
}

/// The minimum-progress rule of a fill: at least `fill_min_rate` bytes per second, averaged over
/// each `fill_rate_window`. A read timeout alone cannot catch an upstream that drips one byte at
/// a time.
struct Pace {
    window: std::time::Duration,
    needed: u64,
    window_end: tokio::time::Instant,
    in_window: u64,
}

impl Pace {
    fn new(settings: &crate::config::UpstreamSettings) -> Pace {
        let window = settings.fill_rate_window;
        Pace {
            window,
            needed: (settings.fill_min_rate as f64 * window.as_secs_f64()) as u64,
            window_end: tokio::time::Instant::now() + window,
            in_window: 0,
        }
    }

    /// Count `bytes` that just arrived; at the end of a window, fail if too few came in it.
    fn check(&mut self, bytes: u64) -> Result<(), String> {
        self.in_window += bytes;
        if tokio::time::Instant::now() < self.window_end {
            return Ok(());
        }
        if self.in_window < self.needed {
            return Err(format!(
                "blob fetch stalled: {} bytes in {:?}, below the minimum of {} per window",
                self.in_window, self.window, self.needed
            ));
        }
        self.in_window = 0;
        self.window_end = tokio::time::Instant::now() + self.window;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
