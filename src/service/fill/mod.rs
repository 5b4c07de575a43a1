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

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::Mutex;

use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};
use tokio::fs;
use tokio::sync::watch;

use crate::metrics::{FillResult, Metrics, Tracked, UpstreamError};
use crate::oci::{Digest, Hasher, RepoName};
use crate::store::{Origin, Spool, Spooled, Store};
use crate::upstream::{self, Upstream};

mod reader;
use reader::Recent;

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
    /// The repository (and its upstream) the fill was started for; a request from another
    /// repository may join only once its own upstream confirms that repository has the blob.
    pub repo: RepoName,
    pub upstream: String,
    temp: PathBuf,
    progress: watch::Sender<Progress>,
    recent: Mutex<Recent>,
}

/// Fills in flight, by digest.
pub struct Fills {
    inflight: Mutex<HashMap<Digest, Arc<Fill>>>,
    metrics: Arc<Metrics>,
    notifier: Arc<crate::notify::Notifier>,
}

impl Fills {
    pub fn new(metrics: Arc<Metrics>, notifier: Arc<crate::notify::Notifier>) -> Fills {
        Fills {
            inflight: Mutex::default(),
            metrics,
            notifier,
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
        let mut inflight = self.inflight.lock();
        if let Some(fill) = inflight.get(digest) {
            self.metrics.fill_joins.inc();
            return fill.clone();
        }
        let (progress, _) = watch::channel(Progress::Connecting);
        let fill = Arc::new(Fill {
            digest: digest.clone(),
            repo: local.clone(),
            upstream: upstream.name().to_owned(),
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
        self.fills.inflight.lock().remove(&self.fill.digest);
        self.fills.metrics.fill_done(match &outcome {
            Ok(_) => FillResult::Ok,
            Err(FillError::Corrupt(_)) => FillResult::Corrupt,
            Err(_) => FillResult::Failed,
        });
        let final_state = match outcome {
            Ok(size) => {
                super::notify_fill(&self.fills.notifier, &self.local, &self.fill.digest, None, size);
                Progress::Done { size }
            }
            Err(e) => {
                tracing::warn!(digest = %self.fill.digest, upstream = %self.upstream.name(), error = ?e, "cache fill failed");
                Progress::Failed(e)
            }
        };
        // Readers still behind now read the file (published, or the one they have open).
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
        // Registered before it is published, so its grace period covers it until the link.
        super::register(self.store.meta.as_ref(), digest, written)
            .await
            .map_err(|e| FillError::Io(e.to_string()))?;
        self.store
            .blobs
            .publish(&self.fill.temp, digest)
            .await
            .map_err(|e| FillError::Io(e.to_string()))?;
        let origin = Origin::Proxied {
            upstream: self.upstream.name().to_owned(),
        };
        self.store
            .meta
            .link_blob(&self.local, digest, origin)
            .await
            .map_err(|e| FillError::Io(e.to_string()))?;
        tracing::info!(%digest, bytes = written, upstream = %self.upstream.name(), "cached blob");
        Ok(written)
    }

    /// Read the upstream body, handing what arrives to the readers (through `recent`) and to the
    /// spool. Readers are handed bytes whenever the upstream has nothing more ready, so a slow
    /// upstream's bytes reach them as they arrive, and in batches when it is fast. A fill that
    /// stays below the upstream's minimum rate for a whole window is aborted. Returns how many
    /// bytes arrived.
    async fn receive(
        &self,
        response: reqwest::Response,
        size: Option<u64>,
        spool: &mut Spool,
    ) -> Result<u64, FillError> {
        let io = |e: std::io::Error| FillError::Io(e.to_string());
        let mut body = response.bytes_stream();
        let mut received = 0u64;
        let mut pace = Pace::new(&self.upstream.settings);
        let mut unoffered: Vec<Bytes> = Vec::new();
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
            let Some(chunk) = next.transpose().map_err(|e| FillError::Upstream(self.unavailable(e)))? else {
                spool.flush().await.map_err(io)?;
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
            unoffered.push(chunk.clone());
            if spool.push(chunk).await.map_err(io)?.is_some() {
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

    fn unavailable(&self, e: reqwest::Error) -> upstream::Error {
        self.upstream.metrics().error(UpstreamError::Body);
        upstream::Error::Unavailable {
            upstream: self.upstream.name().to_owned(),
            reason: format!("reading blob: {e}"),
        }
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

    /// Add a batch that brings the bytes received to `received` to the window readers are served
    /// from, and announce it.
    fn offer(&self, batch: &[Bytes], received: u64) {
        let written = match *self.progress.borrow() {
            Progress::Streaming { written, .. } => written,
            _ => 0,
        };
        self.recent.lock().add(batch, written);
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
