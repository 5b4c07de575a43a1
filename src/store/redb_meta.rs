//! [`Meta`] on redb, an embedded, transactional, pure-Rust key-value store.
//!
//! Composite keys join validated names with `\0`, which the name grammar never allows, so a prefix
//! range `"repo\0".."repo\x01"` selects exactly one repository's rows, in lexical order.

use std::path::Path;

use redb::{Durability, ReadableTable, TableDefinition};

use super::meta::{ImageRecords, ManifestRecord, Meta, Origin, RepoInfo, UploadRecord, unix_now};
use super::redb_handle::{Handle, db_err};
use super::{Error, Result};
use crate::oci::{Digest, RepoName, Tag};

const REPOS: TableDefinition<&str, &[u8]> = TableDefinition::new("repos");
/// `repo\0tag` → digest
const TAGS: TableDefinition<&str, &str> = TableDefinition::new("tags");
/// `repo\0digest` → JSON [`ManifestRecord`]
const MANIFESTS: TableDefinition<&str, &[u8]> = TableDefinition::new("manifests");
/// `repo\0digest` → unit: the repository may serve that blob
const BLOB_LINKS: TableDefinition<&str, ()> = TableDefinition::new("blob_links");
/// `repo\0subject\0digest` → unit
const REFERRERS: TableDefinition<&str, ()> = TableDefinition::new("referrers");
/// upload id → JSON [`UploadRecord`]
const UPLOADS: TableDefinition<&str, &[u8]> = TableDefinition::new("uploads");
/// `repo\0digest` → unix seconds of the last pull
const PULLS: TableDefinition<&str, u64> = TableDefinition::new("pulls");
/// `"probe"` → unix seconds: written by the readiness check
const PROBE: TableDefinition<&str, u64> = TableDefinition::new("probe");

fn json_err(e: serde_json::Error) -> Error {
    Error::Meta(format!("corrupt record: {e}"))
}

fn key(parts: &[&str]) -> String {
    parts.join("\0")
}

/// The half-open key range of every row under `prefix\0`.
fn prefix_range(prefix: &str) -> (String, String) {
    (format!("{prefix}\0"), format!("{prefix}\x01"))
}

/// The metadata store in one redb file; reopened by its [`Handle`] after an I/O error.
pub struct RedbMeta {
    db: Handle,
}

impl RedbMeta {
    pub fn open(path: &Path) -> Result<RedbMeta> {
        let meta = RedbMeta {
            db: Handle::open(path)?,
        };
        meta.write(|txn| {
            txn.open_table(REPOS).map_err(db_err)?;
            txn.open_table(TAGS).map_err(db_err)?;
            txn.open_table(MANIFESTS).map_err(db_err)?;
            txn.open_table(BLOB_LINKS).map_err(db_err)?;
            txn.open_table(REFERRERS).map_err(db_err)?;
            txn.open_table(UPLOADS).map_err(db_err)?;
            txn.open_table(PULLS).map_err(db_err)?;
            txn.open_table(PROBE).map_err(db_err)?;
            Ok(())
        })?;
        Ok(meta)
    }

    /// Run `f` in a write transaction and commit it (durably: redb fsyncs on commit).
    fn write<T>(&self, f: impl FnOnce(&redb::WriteTransaction) -> Result<T>) -> Result<T> {
        self.db.write_with(Durability::Immediate, f)
    }

    fn write_with<T>(&self, durability: Durability, f: impl FnOnce(&redb::WriteTransaction) -> Result<T>) -> Result<T> {
        self.db.write_with(durability, f)
    }

    /// Run `f` in a read transaction.
    fn read<T>(&self, f: impl FnOnce(&redb::ReadTransaction) -> Result<T>) -> Result<T> {
        self.db.read(f)
    }
}

/// Remove one manifest with its tags and referrer entry inside `txn`.
fn remove_manifest_in(txn: &redb::WriteTransaction, repo: &RepoName, digest: &str) -> Result<bool> {
    let mut manifests = txn.open_table(MANIFESTS).map_err(db_err)?;
    let Some(old) = manifests
        .remove(key(&[repo.as_str(), digest]).as_str())
        .map_err(db_err)?
    else {
        return Ok(false);
    };
    let record: ManifestRecord = serde_json::from_slice(old.value()).map_err(json_err)?;
    drop(old);
    if let Some(subject) = &record.subject {
        let mut referrers = txn.open_table(REFERRERS).map_err(db_err)?;
        referrers
            .remove(key(&[repo.as_str(), &subject.to_string(), digest]).as_str())
            .map_err(db_err)?;
    }
    txn.open_table(PULLS)
        .map_err(db_err)?
        .remove(key(&[repo.as_str(), digest]).as_str())
        .map_err(db_err)?;
    let mut tags = txn.open_table(TAGS).map_err(db_err)?;
    let (start, end) = prefix_range(repo.as_str());
    let doomed: Vec<String> = tags
        .range::<&str>(start.as_str()..end.as_str())
        .map_err(db_err)?
        .filter_map(|row| row.ok())
        .filter(|(_, v)| v.value() == digest)
        .map(|(k, _)| k.value().to_owned())
        .collect();
    for k in doomed {
        tags.remove(k.as_str()).map_err(db_err)?;
    }
    Ok(true)
}

/// Store one manifest record (and its referrer entry) inside `txn`.
fn put_manifest_in(
    txn: &redb::WriteTransaction,
    repo: &RepoName,
    digest: &Digest,
    record: &ManifestRecord,
) -> Result<()> {
    let bytes = serde_json::to_vec(record).map_err(json_err)?;
    let digest = digest.to_string();
    let mut manifests = txn.open_table(MANIFESTS).map_err(db_err)?;
    manifests
        .insert(key(&[repo.as_str(), &digest]).as_str(), bytes.as_slice())
        .map_err(db_err)?;
    if let Some(subject) = &record.subject {
        let mut referrers = txn.open_table(REFERRERS).map_err(db_err)?;
        referrers
            .insert(key(&[repo.as_str(), &subject.to_string(), &digest]).as_str(), ())
            .map_err(db_err)?;
    }
    Ok(())
}

/// Point `tag` at `digest` inside `txn`.
fn put_tag_in(txn: &redb::WriteTransaction, repo: &RepoName, tag: &Tag, digest: &Digest) -> Result<()> {
    let mut tags = txn.open_table(TAGS).map_err(db_err)?;
    tags.insert(
        key(&[repo.as_str(), tag.as_str()]).as_str(),
        digest.to_string().as_str(),
    )
    .map_err(db_err)?;
    Ok(())
}

/// Split a `repo\0digest` key.
fn split_key(k: &str) -> Option<(RepoName, Digest)> {
    let (repo, digest) = k.split_once('\0')?;
    Some((repo.parse().ok()?, digest.parse().ok()?))
}

fn ensure_repo_in(txn: &redb::WriteTransaction, repo: &RepoName, origin: Origin) -> Result<RepoInfo> {
    let mut repos = txn.open_table(REPOS).map_err(db_err)?;
    if let Some(v) = repos.get(repo.as_str()).map_err(db_err)? {
        return serde_json::from_slice(v.value()).map_err(json_err);
    }
    let info = RepoInfo {
        origin,
        created: unix_now(),
    };
    let bytes = serde_json::to_vec(&info).map_err(json_err)?;
    repos.insert(repo.as_str(), bytes.as_slice()).map_err(db_err)?;
    Ok(info)
}

/// Collect the keys of one prefix range, after `last` if given, at most `n`, with the prefix cut off.
fn keys_after<V: redb::Value + 'static>(
    table: &impl ReadableTable<&'static str, V>,
    prefix: &str,
    last: Option<&str>,
    n: usize,
) -> Result<Vec<String>> {
    let (start, end) = prefix_range(prefix);
    let start = match last {
        Some(last) => format!("{prefix}\0{last}\0"), // '\0' sorts right after `last` itself
        None => start,
    };
    let mut out = Vec::new();
    for row in table.range::<&str>(start.as_str()..end.as_str()).map_err(db_err)? {
        if out.len() >= n {
            break;
        }
        let (k, _) = row.map_err(db_err)?;
        out.push(k.value()[prefix.len() + 1..].to_owned());
    }
    Ok(out)
}

impl Meta for RedbMeta {
    fn repo(&self, repo: &RepoName) -> Result<Option<RepoInfo>> {
        self.read(|txn| {
            let table = txn.open_table(REPOS).map_err(db_err)?;
            let value = table.get(repo.as_str()).map_err(db_err)?;
            value
                .map(|v| serde_json::from_slice(v.value()).map_err(json_err))
                .transpose()
        })
    }

    fn ensure_repo(&self, repo: &RepoName, origin: Origin) -> Result<RepoInfo> {
        if let Some(info) = self.repo(repo)? {
            return Ok(info);
        }
        self.write(|txn| ensure_repo_in(txn, repo, origin))
    }

    fn repos(&self, last: Option<&str>, n: usize) -> Result<Vec<String>> {
        self.read(|txn| {
            let table = txn.open_table(REPOS).map_err(db_err)?;
            let mut out = Vec::new();
            let rows = match last {
                Some(last) => table.range::<&str>((std::ops::Bound::Excluded(last), std::ops::Bound::Unbounded)),
                None => table.range::<&str>(..),
            };
            for row in rows.map_err(db_err)?.take(n) {
                out.push(row.map_err(db_err)?.0.value().to_owned());
            }
            Ok(out)
        })
    }

    fn remove_repo(&self, repo: &RepoName) -> Result<bool> {
        self.write(|txn| {
            let existed = txn
                .open_table(REPOS)
                .map_err(db_err)?
                .remove(repo.as_str())
                .map_err(db_err)?
                .is_some();
            let (start, end) = prefix_range(repo.as_str());
            let range = start.as_str()..end.as_str();
            // The same `repo\0…` prefix selects this repository's rows in every table; a
            // nested name (`repo/sub`) sorts outside it because '/' is not '\0'.
            txn.open_table(TAGS)
                .map_err(db_err)?
                .retain_in(range.clone(), |_, _| false)
                .map_err(db_err)?;
            txn.open_table(MANIFESTS)
                .map_err(db_err)?
                .retain_in(range.clone(), |_, _| false)
                .map_err(db_err)?;
            txn.open_table(BLOB_LINKS)
                .map_err(db_err)?
                .retain_in(range.clone(), |_, _| false)
                .map_err(db_err)?;
            txn.open_table(REFERRERS)
                .map_err(db_err)?
                .retain_in(range.clone(), |_, _| false)
                .map_err(db_err)?;
            txn.open_table(PULLS)
                .map_err(db_err)?
                .retain_in(range, |_, _| false)
                .map_err(db_err)?;
            Ok(existed)
        })
    }

    fn link_blob(&self, repo: &RepoName, digest: &Digest, origin: Origin) -> Result<()> {
        self.write(|txn| {
            ensure_repo_in(txn, repo, origin)?;
            let mut links = txn.open_table(BLOB_LINKS).map_err(db_err)?;
            links
                .insert(key(&[repo.as_str(), &digest.to_string()]).as_str(), ())
                .map_err(db_err)?;
            Ok(())
        })
    }

    fn blob_linked(&self, repo: &RepoName, digest: &Digest) -> Result<bool> {
        self.read(|txn| {
            let table = txn.open_table(BLOB_LINKS).map_err(db_err)?;
            Ok(table
                .get(key(&[repo.as_str(), &digest.to_string()]).as_str())
                .map_err(db_err)?
                .is_some())
        })
    }

    fn unlink_blob(&self, repo: &RepoName, digest: &Digest) -> Result<bool> {
        self.write(|txn| {
            let mut links = txn.open_table(BLOB_LINKS).map_err(db_err)?;
            let removed = links
                .remove(key(&[repo.as_str(), &digest.to_string()]).as_str())
                .map_err(db_err)?;
            Ok(removed.is_some())
        })
    }

    fn put_manifest(
        &self,
        repo: &RepoName,
        digest: &Digest,
        record: &ManifestRecord,
        tag: Option<&Tag>,
        origin: Origin,
    ) -> Result<()> {
        self.write(|txn| {
            ensure_repo_in(txn, repo, origin)?;
            put_manifest_in(txn, repo, digest, record)?;
            if let Some(tag) = tag {
                put_tag_in(txn, repo, tag, digest)?;
            }
            Ok(())
        })
    }

    fn manifest(&self, repo: &RepoName, digest: &Digest) -> Result<Option<ManifestRecord>> {
        self.read(|txn| {
            let table = txn.open_table(MANIFESTS).map_err(db_err)?;
            let value = table
                .get(key(&[repo.as_str(), &digest.to_string()]).as_str())
                .map_err(db_err)?;
            value
                .map(|v| serde_json::from_slice(v.value()).map_err(json_err))
                .transpose()
        })
    }

    fn delete_manifest(&self, repo: &RepoName, digest: &Digest) -> Result<bool> {
        let digest = digest.to_string();
        self.write(|txn| remove_manifest_in(txn, repo, &digest))
    }

    fn referrers(&self, repo: &RepoName, subject: &Digest) -> Result<Vec<(Digest, ManifestRecord)>> {
        self.read(|txn| {
            let referrers = txn.open_table(REFERRERS).map_err(db_err)?;
            let manifests = txn.open_table(MANIFESTS).map_err(db_err)?;
            let prefix = key(&[repo.as_str(), &subject.to_string()]);
            let mut out = Vec::new();
            for d in keys_after(&referrers, &prefix, None, usize::MAX)? {
                let Ok(digest) = d.parse::<Digest>() else {
                    continue;
                };
                if let Some(v) = manifests.get(key(&[repo.as_str(), &d]).as_str()).map_err(db_err)? {
                    out.push((digest, serde_json::from_slice(v.value()).map_err(json_err)?));
                }
            }
            Ok(out)
        })
    }

    fn tag(&self, repo: &RepoName, tag: &Tag) -> Result<Option<Digest>> {
        self.read(|txn| {
            let table = txn.open_table(TAGS).map_err(db_err)?;
            let value = table
                .get(key(&[repo.as_str(), tag.as_str()]).as_str())
                .map_err(db_err)?;
            value
                .map(|v| v.value().parse().map_err(|e| Error::Meta(format!("corrupt tag: {e}"))))
                .transpose()
        })
    }

    fn delete_tag(&self, repo: &RepoName, tag: &Tag) -> Result<bool> {
        self.write(|txn| {
            let mut tags = txn.open_table(TAGS).map_err(db_err)?;
            Ok(tags
                .remove(key(&[repo.as_str(), tag.as_str()]).as_str())
                .map_err(db_err)?
                .is_some())
        })
    }

    fn tags(&self, repo: &RepoName, last: Option<&str>, n: usize) -> Result<Option<Vec<String>>> {
        self.read(|txn| {
            if txn
                .open_table(REPOS)
                .map_err(db_err)?
                .get(repo.as_str())
                .map_err(db_err)?
                .is_none()
            {
                return Ok(None);
            }
            let tags = txn.open_table(TAGS).map_err(db_err)?;
            keys_after(&tags, repo.as_str(), last, n).map(Some)
        })
    }

    fn put_upload(&self, id: &str, record: &UploadRecord) -> Result<()> {
        let bytes = serde_json::to_vec(record).map_err(json_err)?;
        self.write(|txn| {
            txn.open_table(UPLOADS)
                .map_err(db_err)?
                .insert(id, bytes.as_slice())
                .map_err(db_err)?;
            Ok(())
        })
    }

    fn upload(&self, id: &str) -> Result<Option<UploadRecord>> {
        self.read(|txn| {
            let table = txn.open_table(UPLOADS).map_err(db_err)?;
            let value = table.get(id).map_err(db_err)?;
            value
                .map(|v| serde_json::from_slice(v.value()).map_err(json_err))
                .transpose()
        })
    }

    fn delete_upload(&self, id: &str) -> Result<()> {
        // Not fsynced: if a crash loses this deletion, the record points at a removed file, reads
        // as unknown, and GC purges it by age.
        self.write_with(Durability::None, |txn| {
            txn.open_table(UPLOADS).map_err(db_err)?.remove(id).map_err(db_err)?;
            Ok(())
        })
    }

    fn uploads(&self) -> Result<Vec<(String, UploadRecord)>> {
        self.read(|txn| {
            let table = txn.open_table(UPLOADS).map_err(db_err)?;
            let mut out = Vec::new();
            for row in table.range::<&str>(..).map_err(db_err)? {
                let (k, v) = row.map_err(db_err)?;
                out.push((
                    k.value().to_owned(),
                    serde_json::from_slice(v.value()).map_err(json_err)?,
                ));
            }
            Ok(out)
        })
    }

    fn all_repos(&self) -> Result<Vec<(RepoName, RepoInfo)>> {
        self.read(|txn| {
            let table = txn.open_table(REPOS).map_err(db_err)?;
            let mut out = Vec::new();
            for row in table.range::<&str>(..).map_err(db_err)? {
                let (k, v) = row.map_err(db_err)?;
                let Ok(repo) = k.value().parse() else { continue };
                out.push((repo, serde_json::from_slice(v.value()).map_err(json_err)?));
            }
            Ok(out)
        })
    }

    fn all_manifests(&self) -> Result<Vec<(RepoName, Digest, ManifestRecord)>> {
        self.read(|txn| {
            let table = txn.open_table(MANIFESTS).map_err(db_err)?;
            let mut out = Vec::new();
            for row in table.range::<&str>(..).map_err(db_err)? {
                let (k, v) = row.map_err(db_err)?;
                let Some((repo, digest)) = split_key(k.value()) else {
                    continue;
                };
                out.push((repo, digest, serde_json::from_slice(v.value()).map_err(json_err)?));
            }
            Ok(out)
        })
    }

    fn tag_targets(&self, repo: &RepoName) -> Result<Vec<(String, Digest)>> {
        self.read(|txn| {
            let table = txn.open_table(TAGS).map_err(db_err)?;
            let (start, end) = prefix_range(repo.as_str());
            let mut out = Vec::new();
            for row in table.range::<&str>(start.as_str()..end.as_str()).map_err(db_err)? {
                let (k, v) = row.map_err(db_err)?;
                let Ok(digest) = v.value().parse() else { continue };
                out.push((k.value()[repo.as_str().len() + 1..].to_owned(), digest));
            }
            Ok(out)
        })
    }

    fn record_pulls(&self, pulls: &[(RepoName, Digest, u64)]) -> Result<()> {
        self.write(|txn| {
            let mut table = txn.open_table(PULLS).map_err(db_err)?;
            for (repo, digest, at) in pulls {
                table
                    .insert(key(&[repo.as_str(), &digest.to_string()]).as_str(), *at)
                    .map_err(db_err)?;
            }
            Ok(())
        })
    }

    fn last_pull(&self, repo: &RepoName, digest: &Digest) -> Result<Option<u64>> {
        self.read(|txn| {
            let table = txn.open_table(PULLS).map_err(db_err)?;
            let value = table
                .get(key(&[repo.as_str(), &digest.to_string()]).as_str())
                .map_err(db_err)?;
            Ok(value.map(|v| v.value()))
        })
    }

    fn last_pulls(&self) -> Result<Vec<(RepoName, Digest, u64)>> {
        self.read(|txn| {
            let table = txn.open_table(PULLS).map_err(db_err)?;
            let mut out = Vec::new();
            for row in table.range::<&str>(..).map_err(db_err)? {
                let (k, v) = row.map_err(db_err)?;
                if let Some((repo, digest)) = split_key(k.value()) {
                    out.push((repo, digest, v.value()));
                }
            }
            Ok(out)
        })
    }

    fn remove_manifests(&self, manifests: &[(RepoName, Digest)]) -> Result<()> {
        self.write(|txn| {
            for (repo, digest) in manifests {
                remove_manifest_in(txn, repo, &digest.to_string())?;
            }
            Ok(())
        })
    }

    fn unlink_everywhere(&self, blobs: &[Digest]) -> Result<()> {
        let doomed: std::collections::HashSet<String> = blobs.iter().map(|d| d.to_string()).collect();
        self.write(|txn| {
            let mut links = txn.open_table(BLOB_LINKS).map_err(db_err)?;
            let keys: Vec<String> = links
                .range::<&str>(..)
                .map_err(db_err)?
                .filter_map(|row| row.ok())
                .map(|(k, _)| k.value().to_owned())
                .filter(|k| k.split_once('\0').is_some_and(|(_, d)| doomed.contains(d)))
                .collect();
            for k in keys {
                links.remove(k.as_str()).map_err(db_err)?;
            }
            Ok(())
        })
    }

    fn probe(&self) -> Result<()> {
        self.write(|txn| {
            txn.open_table(PROBE)
                .map_err(db_err)?
                .insert("probe", unix_now())
                .map_err(db_err)?;
            Ok(())
        })
    }

    // --- issue 15: export and import ---
    fn put_image(&self, repo: &RepoName, origin: Origin, image: &ImageRecords) -> Result<()> {
        self.write(|txn| {
            ensure_repo_in(txn, repo, origin)?;
            let mut links = txn.open_table(BLOB_LINKS).map_err(db_err)?;
            for blob in &image.blobs {
                links
                    .insert(key(&[repo.as_str(), &blob.to_string()]).as_str(), ())
                    .map_err(db_err)?;
            }
            drop(links);
            for (digest, record) in &image.manifests {
                put_manifest_in(txn, repo, digest, record)?;
            }
            if let Some((tag, digest)) = &image.tag {
                put_tag_in(txn, repo, tag, digest)?;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> ManifestRecord {
        ManifestRecord {
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            size: 2,
            blobs: Vec::new(),
            children: Vec::new(),
            subject: None,
            artifact_type: None,
            annotations: Default::default(),
            stored_at: 0,
        }
    }

    #[test]
    fn removing_a_repository_leaves_its_nested_and_neighbouring_names_alone() {
        let dir = tempfile::tempdir().unwrap();
        let meta = RedbMeta::open(&dir.path().join("meta.redb")).unwrap();
        let d = Digest::sha256_of(b"{}");
        let tag: Tag = "1".parse().unwrap();
        let names = ["team", "team/app", "team-x"].map(|n| n.parse::<RepoName>().unwrap());
        for repo in &names {
            meta.put_manifest(repo, &d, &record(), Some(&tag), Origin::Private)
                .unwrap();
            meta.link_blob(repo, &d, Origin::Private).unwrap();
            meta.record_pulls(&[(repo.clone(), d.clone(), 1)]).unwrap();
        }
        assert!(meta.remove_repo(&names[0]).unwrap());
        assert!(!meta.remove_repo(&names[0]).unwrap(), "already gone");
        assert_eq!(meta.repo(&names[0]).unwrap(), None);
        assert_eq!(meta.tags(&names[0], None, 10).unwrap(), None);
        assert!(meta.manifest(&names[0], &d).unwrap().is_none());
        assert!(!meta.blob_linked(&names[0], &d).unwrap());
        assert_eq!(meta.last_pull(&names[0], &d).unwrap(), None);
        for other in &names[1..] {
            assert_eq!(meta.tag(other, &tag).unwrap(), Some(d.clone()), "{other}");
            assert!(meta.blob_linked(other, &d).unwrap());
            assert_eq!(meta.last_pull(other, &d).unwrap(), Some(1));
        }
        assert_eq!(meta.repos(None, 10).unwrap(), ["team-x", "team/app"]);
    }
}
