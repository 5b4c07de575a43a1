//! The blob registry in PostgreSQL, and the GC invariant between replicas.
//!
//! READ COMMITTED alone would let a push on one replica and a sweep on another both commit: the
//! push reads the blob unmarked, the sweep sees no reference yet, and a manifest ends up naming a
//! deleted blob. So both sides lock the blob rows, in digest order (no deadlock between them):
//! - a push or link locks the rows of every blob it references (`FOR UPDATE`), refuses a marked
//!   or missing one, and inserts its references before it commits;
//! - a sweep locks its candidates first, then (a new statement, so a new snapshot) marks only
//!   those that are still unreferenced. A push that held a lock has committed by then and its
//!   references are visible; a push that comes after waits for the sweep and then sees the mark.

use std::collections::BTreeMap;

use deadpool_postgres::GenericClient;

use super::{Failure, int, parse_digest, uint};
use crate::oci::{Digest, RepoName};
use crate::store::meta::{BlobRecord, ManifestRecord, OriginUsage, Part, unix_now_ms};
use crate::store::{Error, Result};

/// How a manifest references a digest (the redb store's numbers).
const OWN: i16 = 0;
const BLOB: i16 = 1;
const CHILD: i16 = 2;

const RECORD_COLUMNS: &str = "digest, size, created_ms, last_referenced_ms, marked";

pub(super) fn record_of(row: &tokio_postgres::Row) -> Result<BlobRecord> {
    Ok(BlobRecord {
        digest: parse_digest(row.get(0))?,
        size: uint(row.get(1)),
        created_ms: uint(row.get(2)),
        last_referenced_ms: uint(row.get(3)),
        marked: row.get(4),
    })
}

/// Lock the rows of `wanted` blobs, refuse a marked one ([`Error::BlobDeleting`]) and a missing
/// one unless it may be missing ([`Error::BlobUnregistered`]), in the order given, and renew the
/// grace period of the rest (the GC invariant; see the module doc).
pub(super) async fn check_and_renew(tx: &impl GenericClient, wanted: &[(&Digest, bool)]) -> Result<(), Failure> {
    if wanted.is_empty() {
        return Ok(());
    }
    let mut keys: Vec<String> = wanted.iter().map(|(d, _)| d.to_string()).collect();
    keys.sort();
    keys.dedup();
    let rows = tx
        .query(
            "SELECT digest, marked FROM blobs WHERE digest = ANY($1) ORDER BY digest FOR UPDATE",
            &[&keys],
        )
        .await?;
    let found: BTreeMap<String, bool> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    for (digest, unregistered_ok) in wanted {
        match found.get(&digest.to_string()) {
            Some(true) => return Err(Error::BlobDeleting((*digest).clone()).into()),
            Some(false) => {}
            None if *unregistered_ok => {}
            None => return Err(Error::BlobUnregistered((*digest).clone()).into()),
        }
    }
    tx.execute(
        "UPDATE blobs SET last_referenced_ms = GREATEST(last_referenced_ms, $2) WHERE digest = ANY($1)",
        &[&keys, &int(unix_now_ms())],
    )
    .await?;
    Ok(())
}

/// What `record` (stored as `digest`) references and whether each may be unregistered: only in a
/// proxied repository (`lazy`; its layers are fetched when first pulled), and an index's child
/// manifests anywhere (a partial import keeps the platforms it has).
pub(super) fn refs_of<'a>(
    digest: &'a Digest,
    record: &'a ManifestRecord,
    lazy: bool,
) -> impl Iterator<Item = (&'a Digest, i16, bool)> {
    std::iter::once((digest, OWN, lazy))
        .chain(record.blobs.iter().map(move |d| (d, BLOB, lazy)))
        .chain(record.children.iter().map(|d| (d, CHILD, true)))
}

/// Insert the references of a manifest whose blobs [`check_and_renew`] passed.
pub(super) async fn reference(
    tx: &impl GenericClient,
    repo: &RepoName,
    digest: &Digest,
    record: &ManifestRecord,
) -> Result<(), Failure> {
    // One row per referenced digest; a digest named twice keeps its last kind, as in redb.
    let kinds: BTreeMap<String, i16> = refs_of(digest, record, false)
        .map(|(d, kind, _)| (d.to_string(), kind))
        .collect();
    let (blobs, kinds): (Vec<String>, Vec<i16>) = kinds.into_iter().unzip();
    tx.execute(
        "INSERT INTO blob_refs (blob, repo, manifest, kind)
         SELECT b, $2, $3, k FROM unnest($1::text[], $4::smallint[]) AS r(b, k)
         ON CONFLICT (blob, repo, manifest) DO UPDATE SET kind = EXCLUDED.kind",
        &[&blobs, &repo.as_str(), &digest.to_string(), &kinds],
    )
    .await?;
    Ok(())
}

/// Register (or renew) a blob; refused while it is marked.
pub(super) async fn register(tx: &impl GenericClient, digest: &Digest, size: u64) -> Result<(), Failure> {
    let now = int(unix_now_ms());
    // The conflict's update is skipped for a marked row, so no row comes back for one. A digest
    // names its bytes: the size known stays.
    let renewed = tx
        .query_opt(
            "INSERT INTO blobs (digest, size, created_ms, last_referenced_ms) VALUES ($1, $2, $3, $3)
             ON CONFLICT (digest) DO UPDATE
                SET last_referenced_ms = GREATEST(blobs.last_referenced_ms, EXCLUDED.last_referenced_ms)
                WHERE NOT blobs.marked
             RETURNING digest",
            &[&digest.to_string(), &int(size), &now],
        )
        .await?;
    match renewed {
        Some(_) => Ok(()),
        None => Err(Error::BlobDeleting(digest.clone()).into()),
    }
}

pub(super) async fn blob(db: &impl GenericClient, digest: &Digest) -> Result<Option<BlobRecord>, Failure> {
    let row = db
        .query_opt(
            &format!("SELECT {RECORD_COLUMNS} FROM blobs WHERE digest = $1"),
            &[&digest.to_string()],
        )
        .await?;
    Ok(row.as_ref().map(record_of).transpose()?)
}

pub(super) async fn unreferenced(db: &impl GenericClient) -> Result<Vec<BlobRecord>, Failure> {
    let rows = db
        .query(
            &format!(
                "SELECT {RECORD_COLUMNS} FROM blobs b
                 WHERE NOT EXISTS (SELECT 1 FROM blob_refs r WHERE r.blob = b.digest) ORDER BY digest"
            ),
            &[],
        )
        .await?;
    Ok(rows.iter().map(record_of).collect::<Result<_>>()?)
}

/// Mark up to `n` unreferenced blobs last referenced before `before_ms` (or left marked), with
/// the two-statement locking the module doc explains.
pub(super) async fn mark(tx: &impl GenericClient, before_ms: u64, n: usize) -> Result<Vec<BlobRecord>, Failure> {
    let candidates: Vec<String> = tx
        .query(
            "SELECT digest FROM blobs b
             WHERE (marked OR last_referenced_ms < $1)
               AND NOT EXISTS (SELECT 1 FROM blob_refs r WHERE r.blob = b.digest)
             ORDER BY digest LIMIT $2 FOR UPDATE",
            &[&int(before_ms), &int(n as u64)],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if candidates.is_empty() {
        return Ok(Vec::new());
    }
    let rows = tx
        .query(
            &format!(
                "UPDATE blobs b SET marked = TRUE
                 WHERE digest = ANY($1) AND NOT EXISTS (SELECT 1 FROM blob_refs r WHERE r.blob = b.digest)
                 RETURNING {RECORD_COLUMNS}"
            ),
            &[&candidates],
        )
        .await?;
    let mut out = rows.iter().map(record_of).collect::<Result<Vec<_>>>()?;
    out.sort_by_key(|b| b.digest.to_string());
    Ok(out)
}

/// Drop the rows of deleted blobs (only if still marked) and every link to them.
pub(super) async fn forget(tx: &impl GenericClient, digests: &[Digest]) -> Result<(), Failure> {
    let keys: Vec<String> = digests.iter().map(|d| d.to_string()).collect();
    tx.execute("DELETE FROM blobs WHERE digest = ANY($1) AND marked", &[&keys])
        .await?;
    tx.execute("DELETE FROM blob_links WHERE digest = ANY($1)", &[&keys])
        .await?;
    Ok(())
}

/// Registered bytes by origin, counted by the database: a blob any private repository's
/// manifest references is private; one referenced only from cached repositories is cached.
pub(super) async fn usage(db: &impl GenericClient) -> Result<OriginUsage, Failure> {
    let rows = db
        .query(
            "SELECT class, COALESCE(SUM(size), 0)::BIGINT, COUNT(*) FROM (
                 SELECT b.size, CASE
                     WHEN NOT EXISTS (SELECT 1 FROM blob_refs r WHERE r.blob = b.digest) THEN 'u'
                     WHEN EXISTS (SELECT 1 FROM blob_refs r JOIN repos p ON p.name = r.repo
                                  WHERE r.blob = b.digest AND p.private) THEN 'p'
                     ELSE 'c' END AS class
                 FROM blobs b) classified
             GROUP BY class",
            &[],
        )
        .await?;
    let mut out = OriginUsage::default();
    for row in rows {
        let part = Part {
            bytes: uint(row.get(1)),
            blobs: uint(row.get(2)),
        };
        match row.get::<_, &str>(0) {
            "p" => out.private = part,
            "c" => out.cached = part,
            _ => out.unreferenced = part,
        }
    }
    Ok(out)
}
