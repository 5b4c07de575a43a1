//! Disk use per repository, cached vs private, for `berth du` and the admin socket.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::oci::Digest;
use crate::store::{self, Origin, Store};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RepoUsage {
    pub repository: String,
    /// `private`, or `cached from <upstream>`.
    pub origin: String,
    pub manifests: usize,
    pub tags: usize,
    /// Bytes of the distinct blobs and manifests this repository's manifests reference. Layers
    /// shared between repositories count in each.
    pub bytes: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Usage {
    pub repositories: Vec<RepoUsage>,
    /// Bytes referenced by private content (counted once).
    pub private_bytes: u64,
    /// Bytes referenced only by cached content.
    pub cached_bytes: u64,
    /// Bytes nothing references (garbage collection reclaims them after the grace period).
    pub unreferenced_bytes: u64,
    pub total_bytes: u64,
}

/// Every digest some manifest references (its own bytes, its blobs, its child manifests), mapped
/// to whether a private repository's manifest is among them. This is the rule garbage collection
/// sweeps by, so "unreferenced" means the same everywhere it is reported.
pub fn referenced(store: &Store) -> store::Result<HashMap<Digest, bool>> {
    let private = super::private_repos(store)?;
    let mut out: HashMap<Digest, bool> = HashMap::new();
    for (repo, digest, record) in store.meta.all_manifests()? {
        let is_private = private.contains(&repo);
        for d in std::iter::once(digest).chain(record.blobs).chain(record.children) {
            *out.entry(d).or_default() |= is_private;
        }
    }
    Ok(out)
}

/// Walk the metadata and the blob files (blocking: run it off the async workers).
pub fn disk_usage(store: &Store) -> store::Result<Usage> {
    let blobs = tokio::runtime::Handle::current().block_on(store.blobs.list())?;
    let sizes: HashMap<Digest, u64> = blobs.into_iter().map(|b| (b.digest, b.size)).collect();
    let mut by_repo: HashMap<String, (usize, HashSet<Digest>)> = HashMap::new();
    for (repo, digest, record) in store.meta.all_manifests()? {
        let entry = by_repo.entry(repo.to_string()).or_default();
        entry.0 += 1;
        entry.1.insert(digest);
        entry.1.extend(record.blobs);
        entry.1.extend(record.children);
    }
    let mut usage = Usage {
        total_bytes: sizes.values().sum(),
        ..Usage::default()
    };
    for (repo, info) in store.meta.all_repos()? {
        let (manifests, refs) = by_repo.remove(repo.as_str()).unwrap_or_default();
        let origin = match &info.origin {
            Origin::Private => "private".to_owned(),
            Origin::Proxied { upstream } => format!("cached from {upstream}"),
        };
        let bytes = refs.iter().filter_map(|d| sizes.get(d)).sum();
        let tags = store.meta.tag_targets(&repo)?.len();
        usage.repositories.push(RepoUsage {
            repository: repo.to_string(),
            origin,
            manifests,
            tags,
            bytes,
        });
    }
    for (digest, is_private) in referenced(store)? {
        let size = sizes.get(&digest).copied().unwrap_or(0);
        if is_private {
            usage.private_bytes += size;
        } else {
            usage.cached_bytes += size;
        }
    }
    usage.unreferenced_bytes = usage.total_bytes - usage.private_bytes - usage.cached_bytes;
    Ok(usage)
}
