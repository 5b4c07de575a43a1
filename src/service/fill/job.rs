//! The task that runs one fill: it reads the blob from its source (the upstream, or in cluster
//! mode the replica leading the fill), hands every batch to the fill's readers and to the store's
//! writer, verifies the digest, and publishes the blob.
//!
//! A fill that streams from another replica survives that replica's death: when the stream
//! breaks, it claims the fill again (see `source`) and resumes from the bytes it has, from the
//! upstream with a `Range` if it now leads, or from the new leader. Its readers see a pause.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{FutureExt, StreamExt};

use super::source::Source;
use super::{ClusterPeers, Fill, FillError, FillProgress, Fills};
use crate::coord::{Coordinator, FillLease};
use crate::metrics::{FillResult, Tracked, UpstreamError};
use crate::oci::RepoName;
use crate::store::{self, BlobWriter, Origin, Store, Written};
use crate::upstream::{self, Remote};

pub(super) struct Job {
    /// Held until the fill ends; `None` while following another replica, or when no claim could
    /// be had (see `join_or_start`).
    pub(super) lease: Option<FillLease>,
    pub(super) fills: Arc<Fills>,
    pub(super) fill: Arc<Fill>,
    pub(super) store: Store,
    pub(super) upstream: Arc<dyn Remote>,
    pub(super) remote: String,
    pub(super) local: RepoName,
    /// Where the bytes come from now; a follower's source changes when its leader dies.
    pub(super) source: Source,
    /// Who to claim the fill from again when a leading replica's stream breaks.
    pub(super) coord: Arc<dyn Coordinator>,
    pub(super) cluster: Option<ClusterPeers>,
    /// When a follower whose leader stopped gives up waiting for a takeover; renewed whenever
    /// bytes came in since (see `source`).
    pub(super) give_up_at: Option<tokio::time::Instant>,
}

impl Job {
    pub(super) async fn run(mut self) {
        let _running = Tracked::new(&self.fills.metrics.fills_in_flight);
        // On failure the writer was dropped inside, which discarded its bytes.
        let outcome = self.fetch().await;
        // Release the claim before announcing the end, so a request that arrives after the
        // announcement finds the blob in the store (or starts a fresh fill after a failure).
        drop(self.lease.take());
        self.fills.unfollow(&self.fill);
        self.fills.metrics.fill_done(match &outcome {
            Ok(_) => FillResult::Ok,
            Err(FillError::Corrupt(_)) => FillResult::Corrupt,
            Err(_) => FillResult::Failed,
        });
        let final_state = match outcome {
            Ok(size) => {
                super::super::notify_fill(&self.fills.notifier, &self.local, &self.fill.digest, None, size);
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

    async fn fetch(&mut self) -> Result<u64, FillError> {
        let digest = self.fill.digest.clone();
        let followed = self.source.is_peer();
        if !followed {
            self.fill.let_a_part_go_first().await;
        }
        let response = self.open(0, None).await?;
        let size = response.size;
        let io = FillError::from;
        let fill = self.fill.clone();
        let mut writer = self
            .store
            .blobs
            .writer(&digest, Box::new(move |written| fill.written(written)))
            .await
            .map_err(io)?;
        let _ = self.fill.written.set(writer.read_back());
        self.fill.progress.send_replace(FillProgress::Streaming {
            size,
            received: 0,
            written: 0,
        });
        let mut received = 0u64;
        let mut body = response.body;
        let outcome = loop {
            let (peer, from) = (self.source.is_peer(), received);
            match self.receive(body, size, writer.as_mut(), &mut received).await {
                // A leading replica's stream broke (it died, or stalled): resume from the bytes
                // already here, from wherever the fill is led now.
                Err(FillError::Upstream(e)) if peer => {
                    tracing::info!(%digest, at = received, error = %e, "the leading replica's stream broke; claiming the fill again");
                    match self.resume(received, size, received > from).await {
                        Ok(next) => body = next,
                        Err(e) => break Err(e),
                    }
                }
                other => break other,
            }
        };
        // The writer's error (a full disk, say) explains a failed hand-off better than it does.
        let Written {
            len: written,
            digest: actual,
        } = writer.close().await.map_err(io)?;
        outcome?;
        if actual != digest || size.is_some_and(|s| s != written) || received != written {
            if !self.source.is_peer() {
                self.upstream.metrics().error(UpstreamError::Invalid);
            }
            return Err(FillError::Corrupt(format!(
                "{} bytes hash to {actual} ({written} bytes), not {digest}",
                self.source
            )));
        }
        // Readers may finish now; making the blob durable is the cache's business, not theirs.
        self.fill
            .progress
            .send_replace(FillProgress::Verified { size: written });
        // Registered before it is published, so its grace period covers it until the link.
        super::super::register(self.store.meta.as_ref(), &digest, written)
            .await
            .map_err(FillError::from)?;
        // A follower shares the leader's blob store: once the leader has published the blob,
        // a second copy of the same bytes under the same name would cost a write for nothing.
        let published = followed && matches!(self.store.blobs.stat(&digest).await, Ok(Some(_)));
        if !published {
            writer.commit(&digest).await.map_err(io)?;
        }
        let origin = Origin::Proxied {
            upstream: self.upstream.name().to_owned(),
        };
        self.store
            .meta
            .link_blob(&self.local, &digest, origin)
            .await
            .map_err(FillError::from)?;
        tracing::info!(%digest, bytes = written, source = %self.source, "cached blob");
        Ok(written)
    }

    /// Read one body, handing what arrives to the readers (through `recent`) and to the writer,
    /// in batches of [`store::WRITE_BATCH`] bytes, and counting it in `received`. Readers are
    /// handed bytes whenever the source has nothing more ready, so a slow source's bytes reach
    /// them as they arrive, and in batches when it is fast. A body that stays below the
    /// upstream's minimum rate for a whole window is aborted. On any end every byte received
    /// has been handed on, so a fill that resumes continues at `received`.
    async fn receive(
        &self,
        mut body: BoxStream<'static, upstream::Result<Bytes>>,
        size: Option<u64>,
        writer: &mut dyn BlobWriter,
        received: &mut u64,
    ) -> Result<(), FillError> {
        let io = FillError::from;
        let upstream = !self.source.is_peer();
        let mut pace = Pace::new(self.upstream.settings());
        let mut unoffered: Vec<Bytes> = Vec::new();
        // Buffers received but not yet handed to the writer, and their length.
        let (mut unwritten, mut unwritten_len): (Vec<Bytes>, usize) = (Vec::new(), 0);
        let ended = loop {
            let next = match body.next().now_or_never() {
                Some(next) => next,
                None => {
                    self.offer(&mut unoffered, *received);
                    match tokio::time::timeout_at(pace.window_end, body.next()).await {
                        Ok(next) => next,
                        Err(_) => match pace.check(0) {
                            Ok(()) => continue,
                            Err(e) => break Err(self.stalled(e)),
                        },
                    }
                }
            };
            let chunk = match next {
                None => break Ok(()),
                Some(Err(e)) => break Err(FillError::Upstream(e)),
                Some(Ok(chunk)) => chunk,
            };
            if upstream {
                self.upstream.metrics().received(chunk.len() as u64);
            }
            *received += chunk.len() as u64;
            if size.is_some_and(|s| *received > s) {
                if upstream {
                    self.upstream.metrics().error(UpstreamError::Invalid);
                }
                return Err(FillError::Corrupt(format!(
                    "{} sent more than its Content-Length {size:?}",
                    self.source
                )));
            }
            if let Err(e) = pace.check(chunk.len() as u64) {
                // This chunk is counted in `received`: hand it on with the rest below.
                unoffered.push(chunk.clone());
                unwritten.push(chunk);
                break Err(self.stalled(e));
            }
            // The buffers are shared, not copied.
            unoffered.push(chunk.clone());
            unwritten_len += chunk.len();
            unwritten.push(chunk);
            if unwritten_len >= store::WRITE_BATCH {
                writer.append(std::mem::take(&mut unwritten)).await.map_err(io)?;
                unwritten_len = 0;
                self.offer(&mut unoffered, *received);
            }
        };
        if !unwritten.is_empty() {
            writer.append(unwritten).await.map_err(io)?;
        }
        self.offer(&mut unoffered, *received);
        ended?;
        // A replica's body that ends short broke (its process died between two writes); an
        // upstream's is left to the digest check, as before.
        match size {
            Some(size) if !upstream && *received < size => Err(FillError::Upstream(upstream::Error::Unavailable {
                upstream: self.source.to_string(),
                reason: format!("the stream ended at byte {received} of {size}"),
            })),
            _ => Ok(()),
        }
    }

    fn offer(&self, unoffered: &mut Vec<Bytes>, received: u64) {
        if !unoffered.is_empty() {
            self.fill.offer(unoffered, received);
            unoffered.clear();
        }
    }

    fn stalled(&self, reason: String) -> FillError {
        if !self.source.is_peer() {
            self.upstream.metrics().error(UpstreamError::Body);
        }
        FillError::Upstream(upstream::Error::Unavailable {
            upstream: self.source.to_string(),
            reason,
        })
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
