//! What the store holds and whether it works: disk use by content (private, cached, unreferenced),
//! a query of the blob registry shared by `/metrics` and the web UI; and the readiness check.

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::{Admin, Result};
use crate::metrics::Content;

/// How long the readiness check may take before the store counts as not answering.
const READY_TIMEOUT: Duration = Duration::from_secs(5);

/// Bytes and blobs of one part of the blob store.
pub use crate::store::Part;

/// The blob store by content, for the `store_*` gauges and the web UI (`berth du`'s view per
/// repository is [`super::gc::DiskUsage`]). A blob that a private repository references counts
/// as private even when a cached repository references it too.
#[derive(Clone, Debug, Default)]
pub struct Usage {
    pub private: Part,
    pub cached: Part,
    /// Referenced by nothing: garbage collection reclaims it.
    pub unreferenced: Part,
    /// Unix time of the measurement.
    pub measured_at: u64,
}

impl Usage {
    pub fn total(&self) -> Part {
        Part {
            bytes: self.private.bytes + self.cached.bytes + self.unreferenced.bytes,
            blobs: self.private.blobs + self.cached.blobs + self.unreferenced.blobs,
        }
    }
}

/// The last measurement, when it was taken and how long it took; the lock also makes concurrent
/// callers share one measurement.
#[derive(Default)]
pub(super) struct LastMeasurement {
    last: tokio::sync::Mutex<Option<(Instant, Duration, Usage)>>,
}

impl Admin {
    /// The store's usage, measured now unless a measurement younger than `max_age` exists (or
    /// younger than 20 times what the last one took, so a huge store is not queried over and over).
    /// Updates the `store_*` gauges.
    pub async fn usage(&self, max_age: Duration) -> Result<Usage> {
        let mut last = self.core.usage.last.lock().await;
        if let Some((at, took, usage)) = &*last
            && !max_age.is_zero()
            && at.elapsed() < max_age.max(*took * 20)
        {
            return Ok(usage.clone());
        }
        let started = Instant::now();
        let by_origin = self.core.store.meta.usage().await?;
        let usage = Usage {
            private: by_origin.private,
            cached: by_origin.cached,
            unreferenced: by_origin.unreferenced,
            measured_at: crate::clock::unix_now(),
        };
        for (content, part) in [
            (Content::Private, usage.private),
            (Content::Cached, usage.cached),
            (Content::Unreferenced, usage.unreferenced),
        ] {
            self.core.metrics.set_store(content, part.bytes, part.blobs);
        }
        *last = Some((Instant::now(), started.elapsed(), usage.clone()));
        Ok(usage)
    }

    /// Measure the store every `period` until `stop` is cancelled.
    pub async fn measure_usage_every(&self, period: Duration, stop: CancellationToken) {
        loop {
            if let Err(e) = self.usage(Duration::ZERO).await {
                tracing::warn!(error = %e, "measuring the store's disk use failed");
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(period) => {}
            }
        }
    }

    /// Whether the registry can serve: the store's filesystem has `min_free` left, the store
    /// takes a synced write, and so does the metadata store, within a few seconds. The error says
    /// what failed. A metadata store that failed is reopened by this check if not before.
    pub async fn ready(&self) -> Result<(), String> {
        let (blobs, meta, min_free) = (
            self.core.store.blobs.clone(),
            self.core.store.meta.clone(),
            self.core.min_free,
        );
        let files = tokio::spawn(async move {
            let space = blobs
                .space()
                .await
                .map_err(|e| format!("the store's free space is unknown: {e}"))?;
            // A backend without a fixed capacity (S3, memory) cannot run out this way.
            if let Some(space) = space {
                let wanted = min_free.of(space.total);
                if space.free < wanted {
                    return Err(format!(
                        "the store is nearly full: {} free, below [storage] min_free ({})",
                        bytesize::ByteSize(space.free).display().iec(),
                        bytesize::ByteSize(wanted).display().iec(),
                    ));
                }
            }
            blobs
                .probe()
                .await
                .map_err(|e| format!("the store is not writable: {e}"))?;
            Ok(())
        });
        // Spawned, as the file checks are, so that a metadata store stuck in a commit cannot
        // hold this answer past the timeout.
        let check = async move {
            match files.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e),
                Err(e) => return Err(format!("the readiness check failed: {e}")),
            }
            match tokio::spawn(async move { meta.probe().await }).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(format!("the metadata store does not take writes: {e}")),
                Err(e) => Err(format!("the readiness check failed: {e}")),
            }
        };
        match tokio::time::timeout(READY_TIMEOUT, check).await {
            Ok(result) => result,
            Err(_) => Err(format!("the store did not answer within {READY_TIMEOUT:?}")),
        }
    }
}
