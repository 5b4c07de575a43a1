//! Which cached manifests `[[prefetch]]` lists keep above the size cap: each listed image as the
//! store has it now (a tag resolved to its current manifest), the child manifests it holds, and
//! its tag-schema referrers (`sha256-<hex>` index and the artifacts it lists).

use std::collections::{HashMap, HashSet};

use crate::oci::{Digest, Reference, RepoName, Tag};
use crate::store::{self, ManifestRecord, ManifestRow, Store};

/// `(repository, manifest)` pairs that `pins` (local names, as the store keeps them) reach.
pub async fn pinned(
    store: &Store,
    pins: &[(RepoName, Reference)],
    manifests: &[ManifestRow],
) -> store::Result<HashSet<(RepoName, Digest)>> {
    let records: HashMap<(&RepoName, &Digest), &ManifestRecord> =
        manifests.iter().map(|m| ((&m.repo, &m.digest), &m.record)).collect();
    let mut out = HashSet::new();
    for (repo, reference) in pins {
        let root = match reference {
            Reference::Digest(d) => Some(d.clone()),
            Reference::Tag(t) => store.meta.tag(repo, t).await?,
        };
        let mut todo: Vec<Digest> = root.into_iter().collect();
        while let Some(digest) = todo.pop() {
            let Some(record) = records.get(&(repo, &digest)) else {
                continue;
            };
            if !out.insert((repo.clone(), digest.clone())) {
                continue;
            }
            todo.extend(record.children.iter().cloned());
            let referrers = format!("{}-{}", digest.algorithm().as_str(), digest.hex());
            if let Ok(tag) = referrers.parse::<Tag>()
                && let Some(index) = store.meta.tag(repo, &tag).await?
            {
                todo.push(index);
            }
        }
    }
    Ok(out)
}
