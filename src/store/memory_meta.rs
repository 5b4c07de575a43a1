//! [`Meta`] in memory: the second implementation, for tests and as the reference the conformance
//! suite (`meta_conformance`) holds every backend to. One mutex makes each method one
//! transaction; a method that can fail checks everything before it changes anything.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::ops::Bound;
use std::sync::{Mutex, PoisonError};

use async_trait::async_trait;

use super::meta::{
    BlobRecord, ImageRecords, ManifestRecord, ManifestRow, Meta, Origin, OriginUsage, RepoInfo, UploadRecord, unix_now,
    unix_now_ms,
};
use super::{Error, Result};
use crate::oci::{Digest, RepoName, Tag};

/// Every table, keyed as in `redb_meta` (`repo\0…`), so ranges select one repository.
#[derive(Default)]
struct Tables {
    repos: BTreeMap<String, RepoInfo>,
    /// `repo\0tag` → digest
    tags: BTreeMap<String, Digest>,
    /// `repo\0digest`
    manifests: BTreeMap<String, ManifestRecord>,
    /// `repo\0digest`
    links: BTreeSet<String>,
    /// `repo\0subject\0digest`
    referrers: BTreeSet<String>,
    uploads: BTreeMap<String, UploadRecord>,
    /// `repo\0digest` → unix seconds
    pulls: BTreeMap<String, u64>,
    blobs: BTreeMap<String, BlobRecord>,
    /// `blob\0repo\0manifest` → whether the manifest holds it as a child
    refs: BTreeMap<String, bool>,
}

/// The metadata store in memory; gone with the process.
#[derive(Default)]
pub struct MemoryMeta {
    tables: Mutex<Tables>,
}

impl MemoryMeta {
    pub fn new() -> MemoryMeta {
        MemoryMeta::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tables> {
        self.tables.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn key(a: &str, b: &str) -> String {
    format!("{a}\0{b}")
}

/// The rows of `map` under `prefix\0`, with the prefix cut off.
fn under<'a, V>(map: &'a BTreeMap<String, V>, prefix: &str) -> impl Iterator<Item = (&'a str, &'a V)> + 'a {
    let (start, end) = (format!("{prefix}\0"), format!("{prefix}\x01"));
    let cut = start.len();
    map.range(start..end).map(move |(k, v)| (&k[cut..], v))
}

fn refs_of<'a>(digest: &'a Digest, record: &'a ManifestRecord) -> impl Iterator<Item = (&'a Digest, bool)> {
    std::iter::once((digest, false))
        .chain(record.blobs.iter().map(|d| (d, false)))
        .chain(record.children.iter().map(|d| (d, true)))
}

impl Tables {
    fn ensure_repo(&mut self, repo: &RepoName, origin: Origin) -> RepoInfo {
        self.repos
            .entry(repo.to_string())
            .or_insert_with(|| RepoInfo {
                origin,
                created: unix_now(),
            })
            .clone()
    }

    /// The GC invariant's check (see `Meta`): nothing changes.
    fn check(&self, digest: &Digest, unregistered_ok: bool) -> Result<()> {
        match self.blobs.get(&digest.to_string()) {
            Some(b) if b.marked => Err(Error::BlobDeleting(digest.clone())),
            Some(_) => Ok(()),
            None if unregistered_ok => Ok(()),
            None => Err(Error::BlobUnregistered(digest.clone())),
        }
    }

    fn renew(&mut self, digest: &Digest) {
        if let Some(b) = self.blobs.get_mut(&digest.to_string()) {
            b.last_referenced_ms = b.last_referenced_ms.max(unix_now_ms());
        }
    }

    fn check_manifest(&self, origin: &Origin, digest: &Digest, record: &ManifestRecord) -> Result<()> {
        let lazy = *origin != Origin::Private;
        refs_of(digest, record).try_for_each(|(d, child)| self.check(d, lazy || child))
    }

    /// Store a checked manifest with its references and referrer entry.
    fn put_manifest(&mut self, repo: &RepoName, digest: &Digest, record: &ManifestRecord) {
        for (d, child) in refs_of(digest, record) {
            self.renew(d);
            self.refs.insert(format!("{d}\0{repo}\0{digest}"), child);
        }
        if let Some(subject) = &record.subject {
            self.referrers.insert(format!("{repo}\0{subject}\0{digest}"));
        }
        self.manifests
            .insert(key(repo.as_str(), &digest.to_string()), record.clone());
    }

    fn remove_manifest(&mut self, repo: &RepoName, digest: &Digest) -> bool {
        let k = key(repo.as_str(), &digest.to_string());
        let Some(record) = self.manifests.remove(&k) else {
            return false;
        };
        for (d, _) in refs_of(digest, &record) {
            self.refs.remove(&format!("{d}\0{repo}\0{digest}"));
        }
        if let Some(subject) = &record.subject {
            self.referrers.remove(&format!("{repo}\0{subject}\0{digest}"));
        }
        self.pulls.remove(&k);
        let prefix = format!("{repo}\0");
        self.tags.retain(|k, d| !(k.starts_with(&prefix) && d == digest));
        true
    }

    fn referenced(&self, digest: &str) -> bool {
        under(&self.refs, digest).next().is_some()
    }
}

#[async_trait]
impl Meta for MemoryMeta {
    async fn repo(&self, repo: &RepoName) -> Result<Option<RepoInfo>> {
        Ok(self.lock().repos.get(repo.as_str()).cloned())
    }

    async fn repos(&self, last: Option<&str>, n: usize) -> Result<Vec<(RepoName, RepoInfo)>> {
        let t = self.lock();
        let start = last.map_or(Bound::Unbounded, |l| Bound::Excluded(l.to_owned()));
        Ok(t.repos
            .range((start, Bound::Unbounded))
            .filter_map(|(k, v)| Some((k.parse().ok()?, v.clone())))
            .take(n)
            .collect())
    }

    async fn remove_repo(&self, repo: &RepoName) -> Result<bool> {
        let mut t = self.lock();
        let existed = t.repos.remove(repo.as_str()).is_some();
        let digests: Vec<Digest> = under(&t.manifests, repo.as_str())
            .filter_map(|(d, _)| d.parse().ok())
            .collect();
        for d in &digests {
            t.remove_manifest(repo, d);
        }
        let prefix = format!("{repo}\0");
        t.tags.retain(|k, _| !k.starts_with(&prefix));
        t.links.retain(|k| !k.starts_with(&prefix));
        t.referrers.retain(|k| !k.starts_with(&prefix));
        t.pulls.retain(|k, _| !k.starts_with(&prefix));
        Ok(existed)
    }

    async fn link_blob(&self, repo: &RepoName, digest: &Digest, origin: Origin) -> Result<()> {
        let mut t = self.lock();
        t.check(digest, false)?;
        t.ensure_repo(repo, origin);
        t.renew(digest);
        t.links.insert(key(repo.as_str(), &digest.to_string()));
        Ok(())
    }

    async fn blob_linked(&self, repo: &RepoName, digest: &Digest) -> Result<bool> {
        Ok(self.lock().links.contains(&key(repo.as_str(), &digest.to_string())))
    }

    async fn unlink_blob(&self, repo: &RepoName, digest: &Digest) -> Result<bool> {
        Ok(self.lock().links.remove(&key(repo.as_str(), &digest.to_string())))
    }

    async fn put_manifest(
        &self,
        repo: &RepoName,
        digest: &Digest,
        record: &ManifestRecord,
        tag: Option<&Tag>,
        origin: Origin,
    ) -> Result<()> {
        let mut t = self.lock();
        let effective = t.repos.get(repo.as_str()).map_or(origin.clone(), |i| i.origin.clone());
        t.check_manifest(&effective, digest, record)?;
        t.ensure_repo(repo, origin);
        t.put_manifest(repo, digest, record);
        if let Some(tag) = tag {
            t.tags.insert(key(repo.as_str(), tag.as_str()), digest.clone());
        }
        Ok(())
    }

    async fn manifest(&self, repo: &RepoName, digest: &Digest) -> Result<Option<ManifestRecord>> {
        Ok(self
            .lock()
            .manifests
            .get(&key(repo.as_str(), &digest.to_string()))
            .cloned())
    }

    async fn delete_manifest(&self, repo: &RepoName, digest: &Digest) -> Result<bool> {
        Ok(self.lock().remove_manifest(repo, digest))
    }

    async fn referrers(&self, repo: &RepoName, subject: &Digest) -> Result<Vec<(Digest, ManifestRecord)>> {
        let t = self.lock();
        let prefix = format!("{repo}\0{subject}\0");
        Ok(t.referrers
            .range(prefix.clone()..)
            .take_while(|k| k.starts_with(&prefix))
            .filter_map(|k| {
                let d = &k[prefix.len()..];
                let record = t.manifests.get(&key(repo.as_str(), d))?;
                Some((d.parse().ok()?, record.clone()))
            })
            .collect())
    }

    async fn parents(&self, repo: &RepoName, digest: &Digest) -> Result<Vec<Digest>> {
        let t = self.lock();
        Ok(under(&t.refs, &key(&digest.to_string(), repo.as_str()))
            .filter(|(_, child)| **child)
            .filter_map(|(m, _)| m.parse().ok())
            .collect())
    }

    async fn tag(&self, repo: &RepoName, tag: &Tag) -> Result<Option<Digest>> {
        Ok(self.lock().tags.get(&key(repo.as_str(), tag.as_str())).cloned())
    }

    async fn delete_tag(&self, repo: &RepoName, tag: &Tag) -> Result<bool> {
        Ok(self.lock().tags.remove(&key(repo.as_str(), tag.as_str())).is_some())
    }

    async fn tags(&self, repo: &RepoName, last: Option<&str>, n: usize) -> Result<Option<Vec<String>>> {
        let t = self.lock();
        if !t.repos.contains_key(repo.as_str()) {
            return Ok(None);
        }
        Ok(Some(
            under(&t.tags, repo.as_str())
                .map(|(tag, _)| tag)
                .filter(|tag| last.is_none_or(|l| *tag > l))
                .take(n)
                .map(str::to_owned)
                .collect(),
        ))
    }

    async fn tag_targets(&self, repo: &RepoName) -> Result<Vec<(String, Digest)>> {
        let t = self.lock();
        Ok(under(&t.tags, repo.as_str())
            .map(|(tag, d)| (tag.to_owned(), d.clone()))
            .collect())
    }

    async fn put_upload(&self, id: &str, record: &UploadRecord) -> Result<()> {
        self.lock().uploads.insert(id.to_owned(), record.clone());
        Ok(())
    }

    async fn upload(&self, id: &str) -> Result<Option<UploadRecord>> {
        Ok(self.lock().uploads.get(id).cloned())
    }

    async fn delete_upload(&self, id: &str) -> Result<()> {
        self.lock().uploads.remove(id);
        Ok(())
    }

    async fn uploads_started_before(&self, before: u64) -> Result<Vec<String>> {
        Ok(self
            .lock()
            .uploads
            .iter()
            .filter(|(_, u)| u.started < before)
            .map(|(id, _)| id.clone())
            .collect())
    }

    async fn upload_count(&self, owner: &str) -> Result<usize> {
        Ok(self.lock().uploads.values().filter(|u| u.owner == owner).count())
    }

    async fn manifest_page(&self, after: Option<(&RepoName, &Digest)>, n: usize) -> Result<Vec<ManifestRow>> {
        let t = self.lock();
        let start = after.map_or(Bound::Unbounded, |(r, d)| {
            Bound::Excluded(key(r.as_str(), &d.to_string()))
        });
        Ok(t.manifests
            .range((start, Bound::Unbounded))
            .filter_map(|(k, record)| {
                let (repo, digest) = k.split_once('\0')?;
                Some(ManifestRow {
                    repo: repo.parse().ok()?,
                    digest: digest.parse().ok()?,
                    record: record.clone(),
                    last_pull: t.pulls.get(k).copied(),
                })
            })
            .take(n)
            .collect())
    }

    async fn record_pulls(&self, pulls: &[(RepoName, Digest, u64)]) -> Result<()> {
        let mut t = self.lock();
        for (repo, digest, at) in pulls {
            let known = t.pulls.entry(key(repo.as_str(), &digest.to_string())).or_insert(*at);
            *known = (*known).max(*at);
        }
        Ok(())
    }

    async fn last_pull(&self, repo: &RepoName, digest: &Digest) -> Result<Option<u64>> {
        Ok(self.lock().pulls.get(&key(repo.as_str(), &digest.to_string())).copied())
    }

    async fn remove_manifests(&self, manifests: &[(RepoName, Digest)]) -> Result<()> {
        let mut t = self.lock();
        for (repo, digest) in manifests {
            t.remove_manifest(repo, digest);
        }
        Ok(())
    }

    async fn register_blob(&self, digest: &Digest, size: u64) -> Result<()> {
        let mut t = self.lock();
        let now = unix_now_ms();
        match t.blobs.get_mut(&digest.to_string()) {
            Some(b) if b.marked => return Err(Error::BlobDeleting(digest.clone())),
            // A digest names its bytes: the size known stays (a claim that fails its digest
            // check later must not change it).
            Some(b) => {
                b.last_referenced_ms = b.last_referenced_ms.max(now);
            }
            None => {
                let record = BlobRecord {
                    digest: digest.clone(),
                    size,
                    created_ms: now,
                    last_referenced_ms: now,
                    marked: false,
                };
                t.blobs.insert(digest.to_string(), record);
            }
        }
        Ok(())
    }

    async fn blob(&self, digest: &Digest) -> Result<Option<BlobRecord>> {
        Ok(self.lock().blobs.get(&digest.to_string()).cloned())
    }

    async fn unreferenced(&self) -> Result<Vec<BlobRecord>> {
        let t = self.lock();
        Ok(t.blobs
            .iter()
            .filter(|(k, _)| !t.referenced(k))
            .map(|(_, b)| b.clone())
            .collect())
    }

    async fn mark_unreferenced(&self, before_ms: u64, n: usize) -> Result<Vec<BlobRecord>> {
        let mut t = self.lock();
        let due: Vec<String> = t
            .blobs
            .iter()
            .filter(|(k, b)| (b.marked || b.last_referenced_ms < before_ms) && !t.referenced(k))
            .map(|(k, _)| k.clone())
            .take(n)
            .collect();
        Ok(due
            .iter()
            .filter_map(|k| {
                let b = t.blobs.get_mut(k)?;
                b.marked = true;
                Some(b.clone())
            })
            .collect())
    }

    async fn forget_blobs(&self, digests: &[Digest]) -> Result<()> {
        let mut t = self.lock();
        let doomed: HashSet<String> = digests.iter().map(|d| d.to_string()).collect();
        t.blobs.retain(|k, b| !(b.marked && doomed.contains(k)));
        t.links
            .retain(|k| !k.split_once('\0').is_some_and(|(_, d)| doomed.contains(d)));
        Ok(())
    }

    async fn usage(&self) -> Result<OriginUsage> {
        let t = self.lock();
        let mut out = OriginUsage::default();
        for (k, b) in &t.blobs {
            let mut holders = under(&t.refs, k).filter_map(|(rest, _)| rest.split_once('\0').map(|(r, _)| r));
            let Some(first) = holders.next() else {
                out.unreferenced.add(b.size);
                continue;
            };
            let private = |r: &str| t.repos.get(r).is_some_and(|i| i.origin == Origin::Private);
            if private(first) || holders.any(private) {
                out.private.add(b.size);
            } else {
                out.cached.add(b.size);
            }
        }
        Ok(out)
    }

    async fn probe(&self) -> Result<()> {
        Ok(())
    }

    async fn put_image(&self, repo: &RepoName, origin: Origin, image: &ImageRecords) -> Result<()> {
        let mut t = self.lock();
        let effective = t.repos.get(repo.as_str()).map_or(origin.clone(), |i| i.origin.clone());
        for blob in &image.blobs {
            t.check(blob, false)?;
        }
        for (digest, record) in &image.manifests {
            t.check_manifest(&effective, digest, record)?;
        }
        t.ensure_repo(repo, origin);
        for blob in &image.blobs {
            t.renew(blob);
            t.links.insert(key(repo.as_str(), &blob.to_string()));
        }
        for (digest, record) in &image.manifests {
            t.put_manifest(repo, digest, record);
        }
        if let Some((tag, digest)) = &image.tag {
            t.tags.insert(key(repo.as_str(), tag.as_str()), digest.clone());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    crate::meta_conformance_tests!(async {
        (
            std::sync::Arc::new(super::MemoryMeta::new()) as std::sync::Arc<dyn crate::store::Meta>,
            (),
        )
    });
}
