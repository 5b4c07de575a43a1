//! Disk use per repository, cached vs private, for `berth du` and the admin API.

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

/// Walk the metadata and the blob files (blocking).
pub fn disk_usage(store: &Store) -> store::Result<Usage> {
    let sizes: HashMap<Digest, u64> = store.blobs.list()?.into_iter().map(|b| (b.digest, b.size)).collect();
    let repos = store.meta.all_repos()?;
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
    let (mut private, mut cached) = (HashSet::new(), HashSet::new());
    for (repo, info) in repos {
        let (manifests, refs) = by_repo.remove(repo.as_str()).unwrap_or_default();
        let origin = match &info.origin {
            Origin::Private => {
                private.extend(refs.iter().cloned());
                "private".to_owned()
            }
            Origin::Proxied { upstream } => {
                cached.extend(refs.iter().cloned());
                format!("cached from {upstream}")
            }
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
    let size = |set: &HashSet<Digest>| set.iter().filter_map(|d| sizes.get(d)).sum::<u64>();
    usage.private_bytes = size(&private);
    usage.cached_bytes = size(&cached.difference(&private).cloned().collect());
    usage.unreferenced_bytes = usage.total_bytes - usage.private_bytes - usage.cached_bytes;
    Ok(usage)
}
