//! Online garbage collection and eviction. One run:
//!
//! 1. flushes the pull times noted in memory, then plans evictions: cached (proxied) manifests
//!    nobody pulled within `[cache] ttl`, then, above `[cache] max_size`, the least recently
//!    pulled cached manifests until usage falls to the low-water mark, skipping the images of
//!    `[[prefetch]]` lists exempt from the cap (`pins.rs`). Private manifests are never
//!    evicted; untagged private manifests go only with `[gc] delete_untagged`;
//! 2. removes the evicted manifest records (with their tags);
//! 3. marks every digest a remaining manifest references (its own bytes, blobs, child manifests);
//! 4. sweeps blob files that are unmarked and older than `[gc] grace`;
//! 5. purges upload sessions older than `[gc] upload_ttl`.
//!
//! **Why it never races a push.** Two guards, both needed:
//! - *The fence* (`Store::fence`, a read-write lock). Everything that makes a blob referenced
//!   holds it shared from its check to its commit: a manifest PUT (validate its blobs → store →
//!   commit), caching an upstream manifest, a cross-repo mount (link + touch), and publishing an
//!   upload or a cache fill. The sweep takes it exclusively, re-reads every manifest and re-stats
//!   each candidate *under the lock*, and deletes only what is still unreferenced and old. So a
//!   manifest PUT either committed before the sweep (its blobs are marked) or starts after it
//!   (and then fails cleanly with `MANIFEST_BLOB_UNKNOWN` for a blob that was already garbage).
//! - *The grace period.* Between uploading a layer and PUTting the manifest that references it,
//!   a push holds no lock, and the layer is referenced by nothing yet. A blob younger than the
//!   grace period is never swept, and publishing an upload, finishing a cache fill, or mounting a
//!   blob all give it a fresh modification time. A push that spends longer than `grace` between
//!   its layers and its manifest can therefore lose an unreferenced layer; keep `grace` above
//!   your slowest push (default 1 h).
//!
//! A crash at any step is safe: manifests are removed in one transaction, a blob file is deleted
//! only while unreferenced, and a link left behind by a crash between deleting a file and
//! unlinking it only makes that blob unknown (a mirror fetches it again).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime};

use serde::Serialize;

mod pins;
mod usage;
pub use usage::{RepoUsage, Usage, disk_usage, referenced};

use crate::cache::{self, Cached, Pulls};
use crate::clock::unix_now;
use crate::oci::{Digest, Reference, RepoName};
use crate::store::{self, Origin, Store};

/// What a run may remove, from `[cache]` and `[gc]`.
#[derive(Clone, Debug)]
pub struct Policy {
    pub ttl: Duration,
    pub max_size: Option<u64>,
    /// Evict down to this percentage of `max_size`.
    pub low_water_percent: u64,
    pub grace: Duration,
    pub upload_ttl: Duration,
    pub delete_untagged: bool,
    /// Images of `[[prefetch]]` lists exempt from `max_size` (local repository names), with
    /// their child manifests and tag-schema referrers. Default none.
    pub pinned: Vec<(RepoName, Reference)>,
    /// Upstreams in offline mode: what is cached from them is not evicted by `ttl`, since it
    /// cannot be fetched again (`max_size` still applies). Read at each run.
    pub offline_upstreams: Vec<String>,
}

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
    /// Blob files a remaining manifest references (registry:2's "blobs marked").
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

/// Progress, for a display.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum Progress {
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

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> store::Result<T> + Send + 'static) -> store::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| store::Error::Meta(format!("gc task failed: {e}")))?
}

/// Every manifest with what it keeps alive, when it was last pulled, and whether a prefetch
/// list pins it above the size cap.
fn cached_view(store: &Store, pins: &[(RepoName, Reference)], offline: &[String]) -> store::Result<Vec<Cached>> {
    let repos = store.meta.all_repos()?;
    let proxied: HashSet<RepoName> = repos
        .iter()
        .filter(|(_, info)| info.origin != Origin::Private)
        .map(|(r, _)| r.clone())
        .collect();
    let frozen: HashSet<RepoName> = repos
        .into_iter()
        .filter(|(_, info)| matches!(&info.origin, Origin::Proxied { upstream } if offline.contains(upstream)))
        .map(|(r, _)| r)
        .collect();
    let pulls: HashMap<(RepoName, Digest), u64> = store
        .meta
        .last_pulls()?
        .into_iter()
        .map(|(r, d, t)| ((r, d), t))
        .collect();
    let all = store.meta.all_manifests()?;
    let pinned = pins::pinned(store, pins, &all)?;
    Ok(all
        .into_iter()
        .map(|(repo, digest, record)| {
            let last_pulled = pulls
                .get(&(repo.clone(), digest.clone()))
                .copied()
                .unwrap_or(record.stored_at);
            let mut refs = vec![digest.clone()];
            refs.extend(record.blobs);
            refs.extend(record.children);
            Cached {
                pinned: pinned.contains(&(repo.clone(), digest.clone())),
                offline: frozen.contains(&repo),
                proxied: proxied.contains(&repo),
                repo,
                digest,
                last_pulled,
                refs,
            }
        })
        .collect())
}

/// The repositories that take pushes (as opposed to caching an upstream).
fn private_repos(store: &Store) -> store::Result<HashSet<RepoName>> {
    Ok(store
        .meta
        .all_repos()?
        .into_iter()
        .filter(|(_, info)| info.origin == Origin::Private)
        .map(|(r, _)| r)
        .collect())
}

/// Untagged private manifests that nothing else in their repository points to (not an index's
/// child, not a referrer of a subject).
fn untagged(store: &Store) -> store::Result<Vec<(RepoName, Digest)>> {
    let mut out = Vec::new();
    let manifests = store.meta.all_manifests()?;
    let private = private_repos(store)?;
    for repo in &private {
        let tagged: HashSet<Digest> = store.meta.tag_targets(repo)?.into_iter().map(|(_, d)| d).collect();
        let mine: Vec<_> = manifests.iter().filter(|(r, _, _)| r == repo).collect();
        let children: HashSet<&Digest> = mine.iter().flat_map(|(_, _, rec)| rec.children.iter()).collect();
        for (r, d, rec) in &mine {
            if !tagged.contains(d) && !children.contains(d) && rec.subject.is_none() {
                out.push((r.clone(), d.clone()));
            }
        }
    }
    Ok(out)
}

/// One collection run. With `dry_run`, nothing is changed and the report lists what a real run
/// would remove now.
pub async fn run(
    store: &Store,
    pulls: &Pulls,
    metrics: Option<&crate::metrics::Metrics>,
    policy: &Policy,
    dry_run: bool,
    progress: &(dyn Fn(Progress) + Send + Sync),
    coord: &dyn crate::coord::Coordinator,
) -> store::Result<Report> {
    let batch = pulls.drain();
    let meta = store.meta.clone();
    blocking(move || meta.record_pulls(&batch)).await?;

    let (s, pins, offline) = (store.clone(), policy.pinned.clone(), policy.offline_upstreams.clone());
    let manifests = blocking(move || cached_view(&s, &pins, &offline)).await?;
    let files = store.blobs.list().await?;
    let sizes: HashMap<Digest, u64> = files.iter().map(|f| (f.digest.clone(), f.size)).collect();
    let usage: u64 = sizes.values().sum();
    progress(Progress::Plan {
        manifests: manifests.len(),
        blobs: files.len(),
        store_bytes: usage,
    });

    let mut evict = cache::expired(&manifests, older_than(policy.ttl));
    if let Some(max) = policy.max_size.filter(|&max| usage > max) {
        let target = max / 100 * policy.low_water_percent;
        evict.extend(cache::over_size(&manifests, &sizes, usage, target, &evict));
    }
    let untagged = if policy.delete_untagged {
        untagged(store)?
    } else {
        Vec::new()
    };
    let removed: HashSet<(RepoName, Digest)> = evict.iter().chain(&untagged).cloned().collect();
    progress(Progress::Evict {
        manifests: removed.len(),
    });
    if !dry_run && !removed.is_empty() {
        let (meta, list) = (store.meta.clone(), removed.iter().cloned().collect::<Vec<_>>());
        blocking(move || meta.remove_manifests(&list)).await?;
        // Memos learn of evictions through the coordinator, before the sweep below can delete
        // the blobs a memoized manifest names.
        coord.publish(crate::coord::Notice::ManifestsChanged);
        tracing::info!(evicted = evict.len(), untagged = untagged.len(), "gc removed manifests");
    }

    let live: HashSet<&Digest> = manifests
        .iter()
        .filter(|m| !removed.contains(&(m.repo.clone(), m.digest.clone())))
        .flat_map(|m| m.refs.iter())
        .collect();
    let cutoff = SystemTime::now() - policy.grace;
    let (candidates, young): (Vec<_>, Vec<_>) = files
        .iter()
        .filter(|f| !live.contains(&f.digest))
        .cloned()
        .partition(|f| f.modified < cutoff);
    let marked = files.iter().filter(|f| live.contains(&f.digest)).count();
    let mut held: Vec<HeldBlob> = young
        .iter()
        .map(|f| HeldBlob {
            digest: f.digest.to_string(),
            size: f.size,
            eligible_at: (f.modified + policy.grace)
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        })
        .collect();
    held.sort_by_key(|h| h.eligible_at);
    let swept = if dry_run {
        candidates
    } else {
        sweep(store, candidates, policy.grace, progress).await?
    };

    let stale: Vec<String> = store
        .meta
        .uploads()?
        .into_iter()
        .filter(|(_, u)| u.started < older_than(policy.upload_ttl))
        .map(|(id, _)| id)
        .collect();
    let orphans = store.uploads.orphans(policy.upload_ttl).await?;
    progress(Progress::Uploads {
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
    let stale: Vec<String> = stale.into_iter().chain(orphans).collect();

    let fmt = |list: &[(RepoName, Digest)]| list.iter().map(|(r, d)| format!("{r}@{d}")).collect::<Vec<_>>();
    let report = Report {
        dry_run,
        grace_secs: policy.grace.as_secs(),
        marked,
        held,
        evicted: fmt(&evict),
        untagged: fmt(&untagged),
        reclaimed_bytes: swept.iter().map(|f| f.size).sum(),
        blobs: swept
            .into_iter()
            .map(|f| RemovedBlob {
                digest: f.digest.to_string(),
                size: f.size,
            })
            .collect(),
        uploads: stale,
        store_bytes_before: usage,
    };
    if let (false, Some(metrics)) = (dry_run, metrics) {
        metrics
            .evictions
            .inc_by(report.evicted.len() as u64 + report.untagged.len() as u64);
        metrics.gc_runs.inc();
        metrics.gc_reclaimed_bytes.inc_by(report.reclaimed_bytes);
    }
    if !dry_run {
        tracing::info!(
            blobs = report.blobs.len(),
            reclaimed_bytes = report.reclaimed_bytes,
            uploads = report.uploads.len(),
            "gc run finished"
        );
    }
    Ok(report)
}

/// Delete the candidates that are, under the exclusive fence, still unreferenced and old.
async fn sweep(
    store: &Store,
    candidates: Vec<store::BlobEntry>,
    grace: Duration,
    progress: &(dyn Fn(Progress) + Send + Sync),
) -> store::Result<Vec<store::BlobEntry>> {
    if candidates.is_empty() {
        return Ok(candidates);
    }
    let _exclusive = store.fence.write().await;
    let meta = store.meta.clone();
    let live: HashSet<Digest> = blocking(move || {
        Ok(meta
            .all_manifests()?
            .into_iter()
            .flat_map(|(_, d, r)| std::iter::once(d).chain(r.blobs).chain(r.children))
            .collect())
    })
    .await?;
    let cutoff = SystemTime::now() - grace;
    let total = candidates.len();
    let mut removed = Vec::new();
    for (done, entry) in candidates.into_iter().enumerate() {
        let still_old = store
            .blobs
            .stat(&entry.digest)
            .await?
            .is_some_and(|s| s.modified < cutoff);
        if !live.contains(&entry.digest) && still_old && store.blobs.delete(&entry.digest).await? {
            removed.push(entry);
        }
        if done % 256 == 0 || done + 1 == total {
            progress(Progress::Sweep { done: done + 1, total });
        }
    }
    let (meta, gone) = (
        store.meta.clone(),
        removed.iter().map(|e| e.digest.clone()).collect::<Vec<_>>(),
    );
    blocking(move || meta.unlink_everywhere(&gone)).await?;
    Ok(removed)
}
