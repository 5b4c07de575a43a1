//! [`Meta`] on redb, an embedded, transactional, pure-Rust key-value store.
//!
//! Composite keys join validated names with `\0`, which the name grammar never allows, so a prefix
//! range `"repo\0".."repo\x01"` selects exactly one repository's rows, in lexical order.
//!
//! redb blocks (reads go through the page cache, commits fsync), so every method runs its
//! transaction in [`blocking`]: `block_in_place` on a multi-threaded runtime. That costs no task
//! spawn and no copies of the arguments, which keeps the warm manifest-by-tag path (served mostly
//! by `service::memo` anyway) as fast as the inline call it replaced, while the runtime hands the
//! worker's other tasks to another thread. `spawn_blocking` would add a thread hop and an owned
//! copy of every argument to each call. The hand-off starts worker threads under load; with
//! glibc's default of up to eight malloc arenas per core, each such thread took an arena of its
//! own and berth's peak RSS on the cold path rose by about 11 MiB. The binary caps the arenas at
//! one per core before the runtime starts (`bound_malloc_arenas` in main.rs), which brought it
//! back to the pre-seam figure (BENCHMARKS.md, "Round 2, after the storage seam").
//!
//! Requests are served on current-thread runtimes (`server::serve`), where there is no other
//! worker to hand tasks to: there a transaction runs inline and holds up that thread's other
//! connections for its duration, microseconds for a read and one fsync for a commit. The warm
//! read paths (manifests by tag, small blobs) are answered by the memo without a transaction.

use std::path::Path;

use async_trait::async_trait;
use redb::{Durability, ReadableTable, TableDefinition};

use super::meta::{
    BlobRecord, ImageRecords, ManifestRecord, ManifestRow, Meta, Origin, OriginUsage, RepoInfo, UploadRecord, unix_now,
    unix_now_ms,
};
use super::redb_handle::{Handle, db_err};
use super::redb_registry::{self as registry, BLOBS, MIGRATIONS, REFS, RefKind};
use super::{Error, Result};
use crate::oci::{Digest, RepoName, Tag};

pub(super) const REPOS: TableDefinition<&str, &[u8]> = TableDefinition::new("repos");
/// `repo\0tag` → digest
const TAGS: TableDefinition<&str, &str> = TableDefinition::new("tags");
/// `repo\0digest` → JSON [`ManifestRecord`]
pub(super) const MANIFESTS: TableDefinition<&str, &[u8]> = TableDefinition::new("manifests");
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
            txn.open_table(BLOBS).map_err(db_err)?;
            txn.open_table(REFS).map_err(db_err)?;
            txn.open_table(MIGRATIONS).map_err(db_err)?;
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

    /// Back-fill the blob registry of a store made before it existed, once: `files` walks the
    /// blob directory (`(digest, size, modified ms)`) and runs only if the migration has not.
    pub fn migrate_blob_registry(&self, files: impl FnOnce() -> Result<Vec<(Digest, u64, u64)>>) -> Result<()> {
        if self.read(registry::migrated)? {
            return Ok(());
        }
        let files = files()?;
        self.write(|txn| registry::backfill(txn, &files))?;
        tracing::info!(
            blobs = files.len(),
            "the blob registry was back-filled from the blob directory"
        );
        Ok(())
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
    drop(manifests);
    let parsed: Digest = digest
        .parse()
        .map_err(|e| Error::Meta(format!("corrupt digest: {e}")))?;
    registry::unreference_in(txn, repo, &parsed, &record)?;
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
    let mut doomed = Vec::new();
    for row in tags.range::<&str>(start.as_str()..end.as_str()).map_err(db_err)? {
        let (k, v) = row.map_err(db_err)?;
        if v.value() == digest {
            doomed.push(k.value().to_owned());
        }
    }
    for k in doomed {
        tags.remove(k.as_str()).map_err(db_err)?;
    }
    Ok(true)
}

/// Store one manifest record (and its referrer entry) inside `txn`, checking and referencing
/// what it names (the GC invariant).
fn put_manifest_in(
    txn: &redb::WriteTransaction,
    repo: &RepoName,
    origin: &Origin,
    digest: &Digest,
    record: &ManifestRecord,
) -> Result<()> {
    registry::reference_in(txn, repo, origin, digest, record)?;
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

/// Run a blocking database call without stalling an async worker (see the module doc).
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        // A current-thread runtime (unit tests) cannot hand its tasks elsewhere; no runtime
        // at all (a plain thread) may block.
        _ => f(),
    }
}

fn repo_info(v: &[u8]) -> Result<RepoInfo> {
    serde_json::from_slice(v).map_err(json_err)
}

fn link_key(repo: &RepoName, digest: &Digest) -> String {
    key(&[repo.as_str(), &digest.to_string()])
}

#[async_trait]
impl Meta for RedbMeta {
    async fn repo(&self, repo: &RepoName) -> Result<Option<RepoInfo>> {
        blocking(|| {
            self.read(|txn| {
                let table = txn.open_table(REPOS).map_err(db_err)?;
                let value = table.get(repo.as_str()).map_err(db_err)?;
                value.map(|v| repo_info(v.value())).transpose()
            })
        })
    }

    async fn repos(&self, last: Option<&str>, n: usize) -> Result<Vec<(RepoName, RepoInfo)>> {
        blocking(|| {
            self.read(|txn| {
                let table = txn.open_table(REPOS).map_err(db_err)?;
                let mut out = Vec::new();
                let rows = match last {
                    Some(last) => table.range::<&str>((std::ops::Bound::Excluded(last), std::ops::Bound::Unbounded)),
                    None => table.range::<&str>(..),
                };
                for row in rows.map_err(db_err)? {
                    if out.len() >= n {
                        break;
                    }
                    let (k, v) = row.map_err(db_err)?;
                    let Ok(repo) = k.value().parse() else { continue };
                    out.push((repo, repo_info(v.value())?));
                }
                Ok(out)
            })
        })
    }

    async fn remove_repo(&self, repo: &RepoName) -> Result<bool> {
        blocking(|| {
            self.write(|txn| {
                let existed = txn
                    .open_table(REPOS)
                    .map_err(db_err)?
                    .remove(repo.as_str())
                    .map_err(db_err)?
                    .is_some();
                let (start, end) = prefix_range(repo.as_str());
                let range = start.as_str()..end.as_str();
                // The references are keyed by blob: drop them manifest by manifest first.
                let mut held = Vec::new();
                for row in txn
                    .open_table(MANIFESTS)
                    .map_err(db_err)?
                    .range(range.clone())
                    .map_err(db_err)?
                {
                    let (k, v) = row.map_err(db_err)?;
                    let digest: Digest = k.value()[repo.as_str().len() + 1..]
                        .parse()
                        .map_err(|e| Error::Meta(format!("corrupt digest: {e}")))?;
                    held.push((
                        digest,
                        serde_json::from_slice::<ManifestRecord>(v.value()).map_err(json_err)?,
                    ));
                }
                for (digest, record) in &held {
                    registry::unreference_in(txn, repo, digest, record)?;
                }
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
        })
    }

    async fn link_blob(&self, repo: &RepoName, digest: &Digest, origin: Origin) -> Result<()> {
        blocking(|| {
            self.write(|txn| {
                ensure_repo_in(txn, repo, origin)?;
                registry::check_and_renew(txn, digest, false)?;
                let mut links = txn.open_table(BLOB_LINKS).map_err(db_err)?;
                links.insert(link_key(repo, digest).as_str(), ()).map_err(db_err)?;
                Ok(())
            })
        })
    }

    async fn blob_linked(&self, repo: &RepoName, digest: &Digest) -> Result<bool> {
        blocking(|| {
            self.read(|txn| {
                let table = txn.open_table(BLOB_LINKS).map_err(db_err)?;
                Ok(table.get(link_key(repo, digest).as_str()).map_err(db_err)?.is_some())
            })
        })
    }

    async fn unlink_blob(&self, repo: &RepoName, digest: &Digest) -> Result<bool> {
        blocking(|| {
            self.write(|txn| {
                let mut links = txn.open_table(BLOB_LINKS).map_err(db_err)?;
                let removed = links.remove(link_key(repo, digest).as_str()).map_err(db_err)?;
                Ok(removed.is_some())
            })
        })
    }

    async fn put_manifest(
        &self,
        repo: &RepoName,
        digest: &Digest,
        record: &ManifestRecord,
        tag: Option<&Tag>,
        origin: Origin,
    ) -> Result<()> {
        blocking(|| {
            self.write(|txn| {
                let info = ensure_repo_in(txn, repo, origin)?;
                put_manifest_in(txn, repo, &info.origin, digest, record)?;
                if let Some(tag) = tag {
                    put_tag_in(txn, repo, tag, digest)?;
                }
                Ok(())
            })
        })
    }

    async fn manifest(&self, repo: &RepoName, digest: &Digest) -> Result<Option<ManifestRecord>> {
        blocking(|| {
            self.read(|txn| {
                let table = txn.open_table(MANIFESTS).map_err(db_err)?;
                let value = table.get(link_key(repo, digest).as_str()).map_err(db_err)?;
                value
                    .map(|v| serde_json::from_slice(v.value()).map_err(json_err))
                    .transpose()
            })
        })
    }

    async fn delete_manifest(&self, repo: &RepoName, digest: &Digest) -> Result<bool> {
        let digest = digest.to_string();
        blocking(|| self.write(|txn| remove_manifest_in(txn, repo, &digest)))
    }

    async fn referrers(&self, repo: &RepoName, subject: &Digest) -> Result<Vec<(Digest, ManifestRecord)>> {
        blocking(|| {
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
        })
    }

    async fn parents(&self, repo: &RepoName, digest: &Digest) -> Result<Vec<Digest>> {
        blocking(|| {
            self.read(|txn| {
                let refs = txn.open_table(REFS).map_err(db_err)?;
                let mut out = Vec::new();
                for (r, manifest, kind) in registry::referencing(&refs, &digest.to_string())? {
                    if r == repo.as_str()
                        && kind == RefKind::Child as u8
                        && let Ok(d) = manifest.parse()
                    {
                        out.push(d);
                    }
                }
                Ok(out)
            })
        })
    }

    async fn tag(&self, repo: &RepoName, tag: &Tag) -> Result<Option<Digest>> {
        blocking(|| {
            self.read(|txn| {
                let table = txn.open_table(TAGS).map_err(db_err)?;
                let value = table
                    .get(key(&[repo.as_str(), tag.as_str()]).as_str())
                    .map_err(db_err)?;
                value
                    .map(|v| v.value().parse().map_err(|e| Error::Meta(format!("corrupt tag: {e}"))))
                    .transpose()
            })
        })
    }

    async fn delete_tag(&self, repo: &RepoName, tag: &Tag) -> Result<bool> {
        blocking(|| {
            self.write(|txn| {
                let mut tags = txn.open_table(TAGS).map_err(db_err)?;
                Ok(tags
                    .remove(key(&[repo.as_str(), tag.as_str()]).as_str())
                    .map_err(db_err)?
                    .is_some())
            })
        })
    }

    async fn tags(&self, repo: &RepoName, last: Option<&str>, n: usize) -> Result<Option<Vec<String>>> {
        blocking(|| {
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
        })
    }

    async fn tag_targets(&self, repo: &RepoName) -> Result<Vec<(String, Digest)>> {
        blocking(|| {
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
        })
    }

    async fn put_upload(&self, id: &str, record: &UploadRecord) -> Result<()> {
        let bytes = serde_json::to_vec(record).map_err(json_err)?;
        blocking(|| {
            self.write(|txn| {
                txn.open_table(UPLOADS)
                    .map_err(db_err)?
                    .insert(id, bytes.as_slice())
                    .map_err(db_err)?;
                Ok(())
            })
        })
    }

    async fn upload(&self, id: &str) -> Result<Option<UploadRecord>> {
        blocking(|| {
            self.read(|txn| {
                let table = txn.open_table(UPLOADS).map_err(db_err)?;
                let value = table.get(id).map_err(db_err)?;
                value
                    .map(|v| serde_json::from_slice(v.value()).map_err(json_err))
                    .transpose()
            })
        })
    }

    async fn delete_upload(&self, id: &str) -> Result<()> {
        // Not fsynced: if a crash loses this deletion, the record points at a removed file, reads
        // as unknown, and GC purges it by age.
        blocking(|| {
            self.write_with(Durability::None, |txn| {
                txn.open_table(UPLOADS).map_err(db_err)?.remove(id).map_err(db_err)?;
                Ok(())
            })
        })
    }

    async fn uploads_started_before(&self, before: u64) -> Result<Vec<String>> {
        self.uploads_where(|_, u| u.started < before).await
    }

    async fn upload_count(&self, owner: &str) -> Result<usize> {
        Ok(self.uploads_where(|_, u| u.owner == owner).await?.len())
    }

    async fn manifest_page(&self, after: Option<(&RepoName, &Digest)>, n: usize) -> Result<Vec<ManifestRow>> {
        blocking(|| {
            self.read(|txn| {
                let table = txn.open_table(MANIFESTS).map_err(db_err)?;
                let pulls = txn.open_table(PULLS).map_err(db_err)?;
                let after = after.map(|(r, d)| link_key(r, d));
                let rows = match &after {
                    Some(k) => table.range::<&str>((std::ops::Bound::Excluded(k.as_str()), std::ops::Bound::Unbounded)),
                    None => table.range::<&str>(..),
                };
                let mut out = Vec::new();
                for row in rows.map_err(db_err)? {
                    if out.len() >= n {
                        break;
                    }
                    let (k, v) = row.map_err(db_err)?;
                    let Some((repo, digest)) = k.value().split_once('\0') else {
                        continue;
                    };
                    let (Ok(repo), Ok(digest)) = (repo.parse(), digest.parse()) else {
                        continue;
                    };
                    let last_pull = pulls.get(k.value()).map_err(db_err)?.map(|v| v.value());
                    out.push(ManifestRow {
                        repo,
                        digest,
                        record: serde_json::from_slice(v.value()).map_err(json_err)?,
                        last_pull,
                    });
                }
                Ok(out)
            })
        })
    }

    async fn record_pulls(&self, pulls: &[(RepoName, Digest, u64)]) -> Result<()> {
        if pulls.is_empty() {
            return Ok(());
        }
        blocking(|| {
            self.write(|txn| {
                let mut table = txn.open_table(PULLS).map_err(db_err)?;
                for (repo, digest, at) in pulls {
                    let k = link_key(repo, digest);
                    let known = table.get(k.as_str()).map_err(db_err)?.map(|v| v.value());
                    // A batch flushed late must not move a newer pull time back.
                    if known.is_none_or(|known| known < *at) {
                        table.insert(k.as_str(), *at).map_err(db_err)?;
                    }
                }
                Ok(())
            })
        })
    }

    async fn last_pull(&self, repo: &RepoName, digest: &Digest) -> Result<Option<u64>> {
        blocking(|| {
            self.read(|txn| {
                let table = txn.open_table(PULLS).map_err(db_err)?;
                let value = table.get(link_key(repo, digest).as_str()).map_err(db_err)?;
                Ok(value.map(|v| v.value()))
            })
        })
    }

    async fn remove_manifests(&self, manifests: &[(RepoName, Digest)]) -> Result<()> {
        blocking(|| {
            self.write(|txn| {
                for (repo, digest) in manifests {
                    remove_manifest_in(txn, repo, &digest.to_string())?;
                }
                Ok(())
            })
        })
    }

    async fn register_blob(&self, digest: &Digest, size: u64) -> Result<()> {
        blocking(|| {
            self.write(|txn| {
                let mut blobs = txn.open_table(BLOBS).map_err(db_err)?;
                let k = digest.to_string();
                let row = blobs.get(k.as_str()).map_err(db_err)?.map(|v| v.value());
                let now = unix_now_ms();
                let row = match row {
                    Some((_, _, _, true)) => return Err(Error::BlobDeleting(digest.clone())),
                    // A digest names its bytes: the size known stays (a claim that fails its
                    // digest check later must not change it).
                    Some((known, created, last, false)) => (known, created, now.max(last), false),
                    None => (size, now, now, false),
                };
                blobs.insert(k.as_str(), row).map_err(db_err)?;
                Ok(())
            })
        })
    }

    async fn blob(&self, digest: &Digest) -> Result<Option<BlobRecord>> {
        blocking(|| {
            self.read(|txn| {
                let blobs = txn.open_table(BLOBS).map_err(db_err)?;
                let k = digest.to_string();
                let row = blobs.get(k.as_str()).map_err(db_err)?.map(|v| v.value());
                row.map(|row| registry::record_of(&k, row)).transpose()
            })
        })
    }

    async fn unreferenced(&self) -> Result<Vec<BlobRecord>> {
        blocking(|| {
            self.read(|txn| {
                let blobs = txn.open_table(BLOBS).map_err(db_err)?;
                let refs = txn.open_table(REFS).map_err(db_err)?;
                let mut out = Vec::new();
                for row in blobs.range::<&str>(..).map_err(db_err)? {
                    let (k, v) = row.map_err(db_err)?;
                    if !registry::referenced(&refs, k.value())? {
                        out.push(registry::record_of(k.value(), v.value())?);
                    }
                }
                Ok(out)
            })
        })
    }

    async fn mark_unreferenced(&self, before_ms: u64, n: usize) -> Result<Vec<BlobRecord>> {
        blocking(|| {
            self.write(|txn| {
                let mut blobs = txn.open_table(BLOBS).map_err(db_err)?;
                let refs = txn.open_table(REFS).map_err(db_err)?;
                let mut out = Vec::new();
                for row in blobs.range::<&str>(..).map_err(db_err)? {
                    if out.len() >= n {
                        break;
                    }
                    let (k, v) = row.map_err(db_err)?;
                    let record = registry::record_of(k.value(), v.value())?;
                    let due = record.marked || record.last_referenced_ms < before_ms;
                    if due && !registry::referenced(&refs, k.value())? {
                        out.push(record);
                    }
                }
                for record in &mut out {
                    record.marked = true;
                    let row = (record.size, record.created_ms, record.last_referenced_ms, true);
                    blobs.insert(record.digest.to_string().as_str(), row).map_err(db_err)?;
                }
                Ok(out)
            })
        })
    }

    async fn forget_blobs(&self, digests: &[Digest]) -> Result<()> {
        if digests.is_empty() {
            return Ok(());
        }
        let doomed: std::collections::HashSet<String> = digests.iter().map(|d| d.to_string()).collect();
        blocking(|| {
            self.write(|txn| {
                let mut blobs = txn.open_table(BLOBS).map_err(db_err)?;
                for d in &doomed {
                    let marked = blobs.get(d.as_str()).map_err(db_err)?.is_some_and(|v| v.value().3);
                    if marked {
                        blobs.remove(d.as_str()).map_err(db_err)?;
                    }
                }
                let mut links = txn.open_table(BLOB_LINKS).map_err(db_err)?;
                let mut keys = Vec::new();
                for row in links.range::<&str>(..).map_err(db_err)? {
                    let (k, _) = row.map_err(db_err)?;
                    if k.value().split_once('\0').is_some_and(|(_, d)| doomed.contains(d)) {
                        keys.push(k.value().to_owned());
                    }
                }
                for k in keys {
                    links.remove(k.as_str()).map_err(db_err)?;
                }
                Ok(())
            })
        })
    }

    async fn usage(&self) -> Result<OriginUsage> {
        blocking(|| self.read(registry::usage))
    }

    async fn probe(&self) -> Result<()> {
        blocking(|| {
            self.write(|txn| {
                txn.open_table(PROBE)
                    .map_err(db_err)?
                    .insert("probe", unix_now())
                    .map_err(db_err)?;
                Ok(())
            })
        })
    }

    async fn put_image(&self, repo: &RepoName, origin: Origin, image: &ImageRecords) -> Result<()> {
        blocking(|| {
            self.write(|txn| {
                let info = ensure_repo_in(txn, repo, origin)?;
                for blob in &image.blobs {
                    registry::check_and_renew(txn, blob, false)?;
                    let mut links = txn.open_table(BLOB_LINKS).map_err(db_err)?;
                    links.insert(link_key(repo, blob).as_str(), ()).map_err(db_err)?;
                }
                for (digest, record) in &image.manifests {
                    put_manifest_in(txn, repo, &info.origin, digest, record)?;
                }
                if let Some((tag, digest)) = &image.tag {
                    put_tag_in(txn, repo, tag, digest)?;
                }
                Ok(())
            })
        })
    }
}

impl RedbMeta {
    /// The ids of the upload sessions that `keep` selects (the table is small: open sessions).
    async fn uploads_where(&self, keep: impl Fn(&str, &UploadRecord) -> bool) -> Result<Vec<String>> {
        blocking(|| {
            self.read(|txn| {
                let table = txn.open_table(UPLOADS).map_err(db_err)?;
                let mut out = Vec::new();
                for row in table.range::<&str>(..).map_err(db_err)? {
                    let (k, v) = row.map_err(db_err)?;
                    let record: UploadRecord = serde_json::from_slice(v.value()).map_err(json_err)?;
                    if keep(k.value(), &record) {
                        out.push(k.value().to_owned());
                    }
                }
                Ok(out)
            })
        })
    }
}

#[cfg(test)]
#[path = "redb_meta_tests.rs"]
mod tests;
