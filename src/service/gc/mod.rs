//! Online garbage collection and eviction. One run:
//!
//! 1. flushes the pull times noted in memory ([`flush_pulls`]), then plans evictions
//!    ([`plan::evictions`]): cached (proxied) manifests nobody pulled within `[cache] ttl`, then,
//!    above `[cache] max_size`, the least recently pulled cached manifests until usage falls to
//!    the low-water mark, skipping the images of `[[prefetch]]` lists exempt from the cap
//!    (`pins.rs`). Private manifests are never evicted; untagged private manifests go only with
//!    `[gc] delete_untagged`;
//! 2. removes the evicted manifest records (with their tags and references);
//! 3. sweeps the registered blobs no manifest references and nothing registered, linked or
//!    referenced within `[gc] grace` ([`sweep`]);
//! 4. purges upload sessions older than `[gc] upload_ttl` ([`purge_uploads`]).
//!
//! **Why it never races a push: the GC fence is a metadata invariant, not a lock.**
//! - Every blob is *registered* in the metadata store (`Meta::register_blob`, which renews its
//!   grace period) before it is published: an upload's finish, a cache fill's commit, a
//!   manifest's own bytes, an import. GC works from that registry, never from a directory walk,
//!   so a blob being published is either unknown to it or young.
//! - A manifest put, a link (a mount, a finished upload or fill) and an import *check and
//!   reference* their blobs in the one transaction that stores them. The sweep *marks* its
//!   candidates in one transaction (unreferenced and older than the grace), deletes their
//!   objects, then *forgets* them. A put that names a marked blob fails cleanly
//!   (`MANIFEST_BLOB_UNKNOWN`, or a retry for an upload), so a referenced blob is never deleted,
//!   and no blob delete runs under a store-wide lock.
//! - *The grace period.* Between uploading a layer and PUTting the manifest that references it,
//!   a push holds nothing, and the layer is referenced by nothing yet. A blob registered, linked
//!   or referenced within the grace period is never swept. A push that spends longer than
//!   `grace` between its layers and its manifest can therefore lose an unreferenced layer; keep
//!   `grace` above your slowest push (default 1 h).
//!
//! A crash at any step is safe: manifests are removed in one transaction, a marked blob stays
//! marked (the next run deletes and forgets it), and forgetting a blob whose object is already
//! gone only makes it unknown (a mirror fetches it again).

use std::time::Duration;

use serde::Serialize;

mod pins;
mod plan;
mod usage;
pub use crate::cache::Policy;
pub use usage::{DiskUsage, RepoUsage, disk_usage};

use crate::cache::Pulls;
use crate::clock::unix_now;
use crate::clock::unix_now_ms;
use crate::coord::Task;
use crate::oci::{Digest, RepoName};
use crate::store::{self, BlobRecord, Store};

/// Blobs marked, deleted and forgotten per step of a sweep: a publish waiting for one of them
/// waits at most one batch.
const SWEEP_BATCH: usize = 256;

/// A removed (or, in a dry run, removable) blob.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct RemovedBlob {
    pub digest: String,
    pub size: u64,
}

/// An unreferenced blob the grace period keeps for now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct HeldBlob {
    pub digest: String,
    pub size: u64,
    /// When it becomes eligible for deletion (unix seconds), unless something references it
    /// by then.
    pub eligible_at: u64,
}

/// What a run removed, or with `dry_run` would remove.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Report {
    pub dry_run: bool,
    /// The grace period this run used, in seconds.
    #[serde(default)]
    pub grace_secs: u64,
    /// Registered blobs a remaining manifest references (registry:2's "blobs marked").
    #[serde(default)]
    pub marked: usize,
    /// Unreferenced blobs younger than the grace period, kept by this run.
    #[serde(default)]
    pub held: Vec<HeldBlob>,
    /// Cached manifests evicted, as `repo@digest`.
    pub evicted: Vec<String>,
    /// Untagged private manifests deleted, as `repo@digest`.
    pub untagged: Vec<String>,
    pub blobs: Vec<RemovedBlob>,
    /// Stale upload sessions purged.
    pub uploads: Vec<String>,
    pub reclaimed_bytes: u64,
    pub store_bytes_before: u64,
}

/// How far a collection run is, for a display (the admin socket streams it as NDJSON, tagged
/// by `phase`).
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum GcProgress {
    Plan {
        manifests: usize,
        blobs: usize,
        store_bytes: u64,
    },
    Evict {
        manifests: usize,
    },
    Sweep {
        done: usize,
        total: usize,
    },
    Uploads {
        stale: usize,
    },
}

fn older_than(age: Duration) -> u64 {
    unix_now().saturating_sub(age.as_secs())
}

/// One collection run. With `dry_run`, nothing is changed and the report lists what a real run
/// would remove now.
pub async fn run(
    store: &Store,
    pulls: &Pulls,
    metrics: Option<&crate::metrics::Metrics>,
    policy: &Policy,
    dry_run: bool,
    progress: &(dyn Fn(GcProgress) + Send + Sync),
    coord: &dyn crate::coord::Coordinator,
) -> store::Result<Report> {
    flush_pulls(store, pulls).await?;
    let plan = plan::evictions(store, policy).await?;
    progress(GcProgress::Plan {
        manifests: plan.manifests,
        blobs: plan.blobs,
        store_bytes: plan.store_bytes,
    });
    progress(GcProgress::Evict {
        manifests: plan.removed.len(),
    });
    if !dry_run && !plan.removed.is_empty() {
        let list: Vec<_> = plan.removed.iter().cloned().collect();
        store.meta.remove_manifests(&list).await?;
        // Memos learn of evictions through the coordinator, before the sweep below can delete
        // the blobs a memoized manifest names.
        coord.publish(crate::coord::Notice::ManifestsChanged);
        tracing::info!(
            evicted = plan.evict.len(),
            untagged = plan.untagged.len(),
            "gc removed manifests"
        );
    }
    let cutoff_ms = unix_now_ms().saturating_sub(policy.grace.as_millis() as u64);
    let (candidates, held, live) = plan::candidates(store, &plan, cutoff_ms, policy.grace).await?;
    let swept = if dry_run {
        candidates
    } else {
        sweep(store, cutoff_ms, progress, coord).await?
    };
    let uploads = purge_uploads(store, policy.upload_ttl, dry_run, progress).await?;

    let fmt = |list: &[(RepoName, Digest)]| list.iter().map(|(r, d)| format!("{r}@{d}")).collect::<Vec<_>>();
    let report = Report {
        dry_run,
        grace_secs: policy.grace.as_secs(),
        marked: live,
        held,
        evicted: fmt(&plan.evict),
        untagged: fmt(&plan.untagged),
        reclaimed_bytes: swept.iter().map(|b| b.size).sum(),
        blobs: swept
            .into_iter()
            .map(|b| RemovedBlob {
                digest: b.digest.to_string(),
                size: b.size,
            })
            .collect(),
        uploads,
        store_bytes_before: plan.store_bytes,
    };
    if !dry_run {
        count(&report, metrics);
    }
    Ok(report)
}

/// Hand the pull times noted in memory to the metadata store, so eviction sees them.
async fn flush_pulls(store: &Store, pulls: &Pulls) -> store::Result<()> {
    store.meta.record_pulls(&pulls.drain()).await
}

/// Mark, delete and forget the unreferenced blobs last referenced before `cutoff_ms`, a batch
/// at a time; returns the blobs whose objects this run deleted.
async fn sweep(
    store: &Store,
    cutoff_ms: u64,
    progress: &(dyn Fn(GcProgress) + Send + Sync),
    coord: &dyn crate::coord::Coordinator,
) -> store::Result<Vec<BlobRecord>> {
    let mut removed = Vec::new();
    let mut done = 0;
    // Each batch is marked in one transaction, so nothing can reference it while its objects go.
    loop {
        let marked = store.meta.mark_unreferenced(cutoff_ms, SWEEP_BATCH).await?;
        if marked.is_empty() {
            return Ok(removed);
        }
        let mut gone = Vec::with_capacity(marked.len());
        for blob in marked {
            // The blob store's delete; no lock is held while it runs.
            let deleted = store.blobs.delete(&blob.digest).await?;
            gone.push(blob.digest.clone());
            if deleted {
                removed.push(blob);
            }
        }
        done += gone.len();
        store.meta.forget_blobs(&gone).await?;
        // Memos keep small blobs with their links; these are gone.
        coord.publish(crate::coord::Notice::BlobsChanged);
        progress(GcProgress::Sweep { done, total: done });
    }
}

/// Purge upload sessions older than `ttl`, and upload files no session owns.
async fn purge_uploads(
    store: &Store,
    ttl: Duration,
    dry_run: bool,
    progress: &(dyn Fn(GcProgress) + Send + Sync),
) -> store::Result<Vec<String>> {
    let stale = store.meta.uploads_started_before(older_than(ttl)).await?;
    let orphans = store.uploads.orphans(ttl).await?;
    progress(GcProgress::Uploads {
        stale: stale.len() + orphans.len(),
    });
    if !dry_run {
        for id in &stale {
            store.uploads.cancel(id).await?;
        }
        for orphan in &orphans {
            let _ = store.uploads.remove_orphan(orphan).await;
        }
    }
    Ok(stale.into_iter().chain(orphans).collect())
}

/// Count a finished run in the metrics and the log.
fn count(report: &Report, metrics: Option<&crate::metrics::Metrics>) {
    if let Some(metrics) = metrics {
        metrics
            .evictions
            .inc_by(report.evicted.len() as u64 + report.untagged.len() as u64);
        metrics.gc_runs.inc();
        metrics.gc_reclaimed_bytes.inc_by(report.reclaimed_bytes);
    }
    tracing::info!(
        blobs = report.blobs.len(),
        reclaimed_bytes = report.reclaimed_bytes,
        uploads = report.uploads.len(),
        "gc run finished"
    );
}

impl super::Admin {
    /// One collection run with this registry's pull times and metrics (see [`run`]), if it can
    /// lead: `None` when another collection is running.
    pub async fn collect_garbage(
        &self,
        policy: &Policy,
        dry_run: bool,
        progress: &(dyn Fn(GcProgress) + Send + Sync),
    ) -> store::Result<Option<Report>> {
        // One collection at a time across every process on the store: a run still going (the
        // periodic one, a manual one, another replica's) makes this one step aside.
        let Some(_leader) = self
            .core
            .coordinator()
            .lead(&Task::Gc)
            .await
            .map_err(|e| store::Error::Meta(format!("garbage collection needs the coordinator: {e}")))?
        else {
            return Ok(None);
        };
        let mut policy = policy.clone();
        policy.offline_upstreams = self.core.offline_upstreams();
        let report = run(
            self.core.store(),
            self.core.pulls(),
            Some(self.core.metrics()),
            &policy,
            dry_run,
            progress,
            self.core.coordinator().as_ref(),
        )
        .await?;
        Ok(Some(report))
    }

    /// Disk use per repository and by origin (`berth du`).
    pub async fn disk_usage(&self) -> store::Result<DiskUsage> {
        disk_usage(self.core.store()).await
    }
}

#[cfg(test)]
mod tests;
