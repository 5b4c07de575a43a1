//! The blob registry and the manifest → blob references of [`super::RedbMeta`], written inside the
//! transactions of `redb_meta`: how a manifest put or a link checks and references its blobs in
//! the transaction that stores it (the GC invariant), and the one-time back-fill of stores made
//! before the registry existed.

use std::collections::HashMap;

use redb::{ReadableTable, TableDefinition};

use super::meta::{BlobRecord, ManifestRecord, Origin, unix_now_ms};
use super::redb_handle::db_err;
use super::{Error, Result};
use crate::oci::{Digest, RepoName};

/// digest → (size, created ms, last referenced ms, marked for deletion)
pub(super) const BLOBS: TableDefinition<&str, (u64, u64, u64, bool)> = TableDefinition::new("blob_registry");
/// `blob\0repo\0manifest` → [`RefKind`] as u8: `manifest` in `repo` references `blob`. Keyed by
/// the blob first, so "is it referenced" and "which manifests contain it" are prefix ranges.
pub(super) const REFS: TableDefinition<&str, u8> = TableDefinition::new("blob_refs");
/// migration name → unix seconds it ran
pub(super) const MIGRATIONS: TableDefinition<&str, u64> = TableDefinition::new("migrations");

const BLOB_REGISTRY_MIGRATION: &str = "blob_registry";

/// How a manifest references a digest.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum RefKind {
    /// The manifest's own bytes.
    Own = 0,
    Blob = 1,
    /// A child manifest of an index.
    Child = 2,
}

fn ref_key(blob: &str, repo: &str, manifest: &str) -> String {
    format!("{blob}\0{repo}\0{manifest}")
}

/// The digests `record` (stored as `digest`) references, with how.
pub(super) fn refs_of<'a>(
    digest: &'a Digest,
    record: &'a ManifestRecord,
) -> impl Iterator<Item = (&'a Digest, RefKind)> {
    std::iter::once((digest, RefKind::Own))
        .chain(record.blobs.iter().map(|d| (d, RefKind::Blob)))
        .chain(record.children.iter().map(|d| (d, RefKind::Child)))
}

pub(super) fn record_of(digest: &str, row: (u64, u64, u64, bool)) -> Result<BlobRecord> {
    let (size, created_ms, last_referenced_ms, marked) = row;
    Ok(BlobRecord {
        digest: digest
            .parse()
            .map_err(|e| Error::Meta(format!("corrupt blob row: {e}")))?,
        size,
        created_ms,
        last_referenced_ms,
        marked,
    })
}

/// Check that `digest` may be referenced and renew its grace period (the GC invariant): a marked
/// blob is refused, and so is an unregistered one unless `unregistered_ok`.
pub(super) fn check_and_renew(txn: &redb::WriteTransaction, digest: &Digest, unregistered_ok: bool) -> Result<()> {
    let mut blobs = txn.open_table(BLOBS).map_err(db_err)?;
    let key = digest.to_string();
    let row = blobs.get(key.as_str()).map_err(db_err)?.map(|v| v.value());
    match row {
        Some((_, _, _, true)) => Err(Error::BlobDeleting(digest.clone())),
        Some((size, created, last, false)) => {
            let now = unix_now_ms().max(last);
            blobs
                .insert(key.as_str(), (size, created, now, false))
                .map_err(db_err)?;
            Ok(())
        }
        None if unregistered_ok => Ok(()),
        None => Err(Error::BlobUnregistered(digest.clone())),
    }
}

/// Check and reference everything `record` names (see [`check_and_renew`]). Only a proxied
/// repository may name blobs not registered yet (its layers are fetched when first pulled), and
/// any index may name child manifests not stored (a partial import keeps the platforms it has).
pub(super) fn reference_in(
    txn: &redb::WriteTransaction,
    repo: &RepoName,
    origin: &Origin,
    digest: &Digest,
    record: &ManifestRecord,
) -> Result<()> {
    let lazy = *origin != Origin::Private;
    let manifest = digest.to_string();
    for (d, kind) in refs_of(digest, record) {
        check_and_renew(txn, d, lazy || kind == RefKind::Child)?;
        txn.open_table(REFS)
            .map_err(db_err)?
            .insert(ref_key(&d.to_string(), repo.as_str(), &manifest).as_str(), kind as u8)
            .map_err(db_err)?;
    }
    Ok(())
}

/// Drop the references of one removed manifest.
pub(super) fn unreference_in(
    txn: &redb::WriteTransaction,
    repo: &RepoName,
    digest: &Digest,
    record: &ManifestRecord,
) -> Result<()> {
    let mut refs = txn.open_table(REFS).map_err(db_err)?;
    let manifest = digest.to_string();
    for (d, _) in refs_of(digest, record) {
        refs.remove(ref_key(&d.to_string(), repo.as_str(), &manifest).as_str())
            .map_err(db_err)?;
    }
    Ok(())
}

/// Whether any manifest references `digest`.
pub(super) fn referenced(refs: &impl ReadableTable<&'static str, u8>, digest: &str) -> Result<bool> {
    let (start, end) = (format!("{digest}\0"), format!("{digest}\x01"));
    Ok(refs
        .range::<&str>(start.as_str()..end.as_str())
        .map_err(db_err)?
        .next()
        .is_some())
}

/// The repositories whose manifests reference `digest`, and the manifests that hold it as
/// `kind` in `repo` when given.
pub(super) fn referencing(
    refs: &impl ReadableTable<&'static str, u8>,
    digest: &str,
) -> Result<Vec<(String, String, u8)>> {
    let (start, end) = (format!("{digest}\0"), format!("{digest}\x01"));
    let mut out = Vec::new();
    for row in refs.range::<&str>(start.as_str()..end.as_str()).map_err(db_err)? {
        let (k, v) = row.map_err(db_err)?;
        let rest = &k.value()[digest.len() + 1..];
        if let Some((repo, manifest)) = rest.split_once('\0') {
            out.push((repo.to_owned(), manifest.to_owned(), v.value()));
        }
    }
    Ok(out)
}

/// Whether the back-fill ran.
pub(super) fn migrated(txn: &redb::ReadTransaction) -> Result<bool> {
    Ok(txn
        .open_table(MIGRATIONS)
        .map_err(db_err)?
        .get(BLOB_REGISTRY_MIGRATION)
        .map_err(db_err)?
        .is_some())
}

/// The one-time migration of a store made before the blob registry: register every blob file
/// (`(digest, size, modified ms)`, from a walk of the blob directory the caller did), and
/// index the references of every stored manifest. Existing rows stay.
pub(super) fn backfill(txn: &redb::WriteTransaction, files: &[(Digest, u64, u64)]) -> Result<()> {
    let mut blobs = txn.open_table(BLOBS).map_err(db_err)?;
    for (digest, size, modified_ms) in files {
        let key = digest.to_string();
        if blobs.get(key.as_str()).map_err(db_err)?.is_none() {
            blobs
                .insert(key.as_str(), (*size, *modified_ms, *modified_ms, false))
                .map_err(db_err)?;
        }
    }
    drop(blobs);
    let manifests = txn.open_table(super::redb_meta::MANIFESTS).map_err(db_err)?;
    let mut refs = txn.open_table(REFS).map_err(db_err)?;
    for row in manifests.range::<&str>(..).map_err(db_err)? {
        let (k, v) = row.map_err(db_err)?;
        let Some((repo, digest)) = k.value().split_once('\0') else {
            continue;
        };
        let record: ManifestRecord =
            serde_json::from_slice(v.value()).map_err(|e| Error::Meta(format!("corrupt record: {e}")))?;
        let Ok(d) = digest.parse::<Digest>() else { continue };
        for (r, kind) in refs_of(&d, &record) {
            refs.insert(ref_key(&r.to_string(), repo, digest).as_str(), kind as u8)
                .map_err(db_err)?;
        }
    }
    txn.open_table(MIGRATIONS)
        .map_err(db_err)?
        .insert(BLOB_REGISTRY_MIGRATION, super::meta::unix_now())
        .map_err(db_err)?;
    Ok(())
}

/// Classify every registered blob by the origins of the repositories that reference it.
pub(super) fn usage(txn: &redb::ReadTransaction) -> Result<super::meta::OriginUsage> {
    let blobs = txn.open_table(BLOBS).map_err(db_err)?;
    let refs = txn.open_table(REFS).map_err(db_err)?;
    let repos = txn.open_table(super::redb_meta::REPOS).map_err(db_err)?;
    let mut private: HashMap<String, bool> = HashMap::new();
    let mut out = super::meta::OriginUsage::default();
    for row in blobs.range::<&str>(..).map_err(db_err)? {
        let (k, v) = row.map_err(db_err)?;
        let size = v.value().0;
        let holders = referencing(&refs, k.value())?;
        if holders.is_empty() {
            out.unreferenced.add(size);
            continue;
        }
        let mut is_private = false;
        for (repo, _, _) in &holders {
            let p = match private.get(repo) {
                Some(p) => *p,
                None => {
                    let p = match repos.get(repo.as_str()).map_err(db_err)? {
                        Some(v) => serde_json::from_slice::<super::meta::RepoInfo>(v.value())
                            .map(|i| i.origin == Origin::Private)
                            .unwrap_or(false),
                        None => false,
                    };
                    private.insert(repo.clone(), p);
                    p
                }
            };
            is_private |= p;
        }
        if is_private {
            out.private.add(size);
        } else {
            out.cached.add(size);
        }
    }
    Ok(out)
}
