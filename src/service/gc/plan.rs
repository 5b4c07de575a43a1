//! What a run removes: the eviction plan (from pages of manifests and the blob registry) and the
//! blobs it leaves unreferenced, split by the grace period.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use super::{HeldBlob, Policy, older_than, pins};
use crate::cache::{self, Cached};
use crate::oci::{Digest, RepoName};
use crate::store::{self, BlobRecord, ManifestRow, Origin, Store};

/// Manifests and repositories are read this many at a time.
const PAGE: usize = 1024;

/// The eviction plan of one run.
pub(super) struct Plan {
    /// Manifests stored, and blobs registered with their bytes, before the run.
    pub manifests: usize,
    pub blobs: usize,
    pub store_bytes: u64,
    pub evict: Vec<(RepoName, Digest)>,
    pub untagged: Vec<(RepoName, Digest)>,
    /// `evict` and `untagged` together.
    pub removed: HashSet<(RepoName, Digest)>,
    /// Digests only removed manifests reference: unreferenced once they go.
    pub freed: HashSet<Digest>,
}

/// Plan what to evict. Eviction ranks every manifest against the others, so the manifests are
/// held in memory for the plan (a page at a time from the store, one small row each); the blob
/// sizes it needs are looked up only when the size cap is exceeded.
pub(super) async fn evictions(store: &Store, policy: &Policy) -> store::Result<Plan> {
    let usage = store.meta.usage().await?;
    let parts = [usage.private, usage.cached, usage.unreferenced];
    let store_bytes: u64 = parts.iter().map(|p| p.bytes).sum();
    let rows = all_manifests(store).await?;
    let manifests = cached_view(store, &rows, policy).await?;
    let mut evict = cache::expired(&manifests, older_than(policy.ttl));
    if let Some(max) = policy.max_size.filter(|&max| store_bytes > max) {
        let target = max / 100 * policy.low_water_percent;
        let sizes = sizes_of(store, manifests.iter().flat_map(|m| m.refs.iter())).await?;
        evict.extend(cache::over_size(&manifests, &sizes, store_bytes, target, &evict));
    }
    let untagged = if policy.delete_untagged {
        untagged(store, &rows).await?
    } else {
        Vec::new()
    };
    let removed: HashSet<(RepoName, Digest)> = evict.iter().chain(&untagged).cloned().collect();
    let is_removed = |m: &&Cached| removed.contains(&(m.repo.clone(), m.digest.clone()));
    let live: HashSet<&Digest> = manifests
        .iter()
        .filter(|m| !is_removed(m))
        .flat_map(|m| m.refs.iter())
        .collect();
    let freed = manifests
        .iter()
        .filter(is_removed)
        .flat_map(|m| m.refs.iter())
        .filter(|d| !live.contains(d))
        .cloned()
        .collect();
    Ok(Plan {
        manifests: manifests.len(),
        blobs: parts.iter().map(|p| p.blobs as usize).sum(),
        store_bytes,
        evict,
        untagged,
        removed,
        freed,
    })
}

/// The registered blobs unreferenced once the plan is applied: those due (last referenced
/// before `cutoff_ms`, or marked by an interrupted run) and those the grace period holds; and
/// how many registered blobs stay referenced.
pub(super) async fn candidates(
    store: &Store,
    plan: &Plan,
    cutoff_ms: u64,
    grace: Duration,
) -> store::Result<(Vec<BlobRecord>, Vec<HeldBlob>, usize)> {
    let mut unreferenced: HashMap<Digest, BlobRecord> = store
        .meta
        .unreferenced()
        .await?
        .into_iter()
        .map(|b| (b.digest.clone(), b))
        .collect();
    // A dry run removes nothing: what eviction would free is counted here.
    for d in &plan.freed {
        if !unreferenced.contains_key(d)
            && let Some(b) = store.meta.blob(d).await?
        {
            unreferenced.insert(d.clone(), b);
        }
    }
    let live = plan.blobs.saturating_sub(unreferenced.len());
    let (mut due, young): (Vec<_>, Vec<_>) = unreferenced
        .into_values()
        .partition(|b| b.marked || b.last_referenced_ms < cutoff_ms);
    due.sort_by_key(|b| b.digest.to_string());
    let grace_ms = grace.as_millis() as u64;
    let mut held: Vec<HeldBlob> = young
        .into_iter()
        .map(|b| HeldBlob {
            digest: b.digest.to_string(),
            size: b.size,
            eligible_at: (b.last_referenced_ms + grace_ms) / 1000,
        })
        .collect();
    held.sort_by_key(|h| h.eligible_at);
    Ok((due, held, live))
}

/// Every manifest with its pull time, a page at a time.
pub(super) async fn all_manifests(store: &Store) -> store::Result<Vec<ManifestRow>> {
    let mut out: Vec<ManifestRow> = Vec::new();
    loop {
        let after = out.last().map(|m| (&m.repo, &m.digest));
        let page = store.meta.manifest_page(after, PAGE).await?;
        let done = page.len() < PAGE;
        out.extend(page);
        if done {
            return Ok(out);
        }
    }
}

/// The registered size of each digest (those not registered are left out).
async fn sizes_of(store: &Store, digests: impl Iterator<Item = &Digest>) -> store::Result<HashMap<Digest, u64>> {
    let mut sizes = HashMap::new();
    for d in digests {
        if !sizes.contains_key(d)
            && let Some(b) = store.meta.blob(d).await?
        {
            sizes.insert(d.clone(), b.size);
        }
    }
    Ok(sizes)
}

/// Every manifest with what it keeps alive, when it was last pulled, and whether a prefetch
/// list pins it above the size cap.
async fn cached_view(store: &Store, rows: &[ManifestRow], policy: &Policy) -> store::Result<Vec<Cached>> {
    let repos = super::super::all_repos(store).await?;
    let proxied: HashSet<&RepoName> = repos
        .iter()
        .filter(|(_, info)| info.origin != Origin::Private)
        .map(|(r, _)| r)
        .collect();
    let frozen: HashSet<&RepoName> = repos
        .iter()
        .filter(
            |(_, info)| matches!(&info.origin, Origin::Proxied { upstream } if policy.offline_upstreams.contains(upstream)),
        )
        .map(|(r, _)| r)
        .collect();
    let pinned = pins::pinned(store, &policy.pinned, rows).await?;
    Ok(rows
        .iter()
        .map(|row| {
            let mut refs = vec![row.digest.clone()];
            refs.extend(row.record.blobs.iter().cloned());
            refs.extend(row.record.children.iter().cloned());
            Cached {
                pinned: pinned.contains(&(row.repo.clone(), row.digest.clone())),
                offline: frozen.contains(&row.repo),
                proxied: proxied.contains(&row.repo),
                repo: row.repo.clone(),
                digest: row.digest.clone(),
                last_pulled: row.last_pull.unwrap_or(row.record.stored_at),
                refs,
            }
        })
        .collect())
}

/// Untagged private manifests that nothing else in their repository points to (not an index's
/// child, not a referrer of a subject).
async fn untagged(store: &Store, rows: &[ManifestRow]) -> store::Result<Vec<(RepoName, Digest)>> {
    let mut out = Vec::new();
    let mut by_repo: HashMap<&RepoName, Vec<&ManifestRow>> = HashMap::new();
    for row in rows {
        by_repo.entry(&row.repo).or_default().push(row);
    }
    for (repo, info) in super::super::all_repos(store).await? {
        if info.origin != Origin::Private {
            continue;
        }
        let mine = by_repo.remove(&repo).unwrap_or_default();
        let tagged: HashSet<Digest> = store
            .meta
            .tag_targets(&repo)
            .await?
            .into_iter()
            .map(|(_, d)| d)
            .collect();
        let children: HashSet<&Digest> = mine.iter().flat_map(|m| m.record.children.iter()).collect();
        for m in mine {
            if !tagged.contains(&m.digest) && !children.contains(&m.digest) && m.record.subject.is_none() {
                out.push((m.repo.clone(), m.digest.clone()));
            }
        }
    }
    Ok(out)
}
