//! Disk use per repository, cached vs private, for `berth du` and the admin socket: from the
//! blob registry and the manifests, never from a walk of the blobs.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use super::plan::all_manifests;
use crate::oci::Digest;
use crate::service::all_repos;
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

/// Disk use per repository and by origin, as `berth du` prints it (not [`crate::service::Usage`],
/// the store by content that the gauges and the web UI show).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct DiskUsage {
    pub repositories: Vec<RepoUsage>,
    /// Bytes referenced by private content (counted once).
    pub private_bytes: u64,
    /// Bytes referenced only by cached content.
    pub cached_bytes: u64,
    /// Bytes nothing references (garbage collection reclaims them after the grace period).
    pub unreferenced_bytes: u64,
    pub total_bytes: u64,
}

/// Usage by origin from the registry, and per repository from its manifests.
pub async fn disk_usage(store: &Store) -> store::Result<DiskUsage> {
    let by_origin = store.meta.usage().await?;
    let mut by_repo: HashMap<String, (usize, HashSet<Digest>)> = HashMap::new();
    for row in all_manifests(store).await? {
        let entry = by_repo.entry(row.repo.to_string()).or_default();
        entry.0 += 1;
        entry.1.insert(row.digest);
        entry.1.extend(row.record.blobs);
        entry.1.extend(row.record.children);
    }
    let mut sizes: HashMap<Digest, u64> = HashMap::new();
    let mut usage = DiskUsage {
        private_bytes: by_origin.private.bytes,
        cached_bytes: by_origin.cached.bytes,
        unreferenced_bytes: by_origin.unreferenced.bytes,
        total_bytes: by_origin.private.bytes + by_origin.cached.bytes + by_origin.unreferenced.bytes,
        ..DiskUsage::default()
    };
    for (repo, info) in all_repos(store).await? {
        let (manifests, refs) = by_repo.remove(repo.as_str()).unwrap_or_default();
        let origin = match &info.origin {
            Origin::Private => "private".to_owned(),
            Origin::Proxied { upstream } => format!("cached from {upstream}"),
        };
        let mut bytes = 0;
        for d in refs {
            let size = match sizes.get(&d) {
                Some(size) => *size,
                None => {
                    let size = store.meta.blob(&d).await?.map_or(0, |b| b.size);
                    sizes.insert(d, size);
                    size
                }
            };
            bytes += size;
        }
        let tags = store.meta.tag_targets(&repo).await?.len();
        usage.repositories.push(RepoUsage {
            repository: repo.to_string(),
            origin,
            manifests,
            tags,
            bytes,
        });
    }
    Ok(usage)
}
