//! The local store: content-addressed blob files, resumable upload sessions, and the metadata
//! store behind the narrow [`Meta`] trait. It knows bytes and `oci` types, never HTTP.
//!
//! On-disk layout under `[storage] root`:
//! ```text
//! blobs/sha256/ab/abcdef…      published blobs, each verified against its name; never partial
//! uploads/<uuid>               bytes of an upload session in progress (resumable across restarts)
//! tmp/<uuid>                   partial writes (manifests, cache fills); emptied at startup
//! meta.redb                    repos, tags, manifest records, blob links, upload sessions, and
//!                              the blob registry (size, created, last referenced per blob)
//! ```
//! A blob is published by fsync + rename into `blobs/` only after its digest verified, and the
//! metadata that references it is committed after that, so a crash at any point leaves at worst an
//! unreferenced blob (reclaimed by GC) or a stale temporary file (removed at startup). A blob is
//! registered in [`Meta`] before it is published, so GC (which works from the registry, never
//! from the directory) counts its grace period from then.
//!
//! A full disk is [`Error::Full`], told apart where every `io::Error` becomes a store error. The
//! same holds: a write that did not fit is discarded, and the metadata database reopens itself
//! after the failed commit (see `redb_handle`), so writes work again once space is freed.

mod blobs;
mod mapped;
mod memo;
mod memory_meta;
mod meta;
#[cfg(test)]
pub(crate) mod meta_conformance;
mod redb_handle;
mod redb_meta;
mod redb_registry;
mod spool;
mod uploads;

use std::io;
use std::path::Path;
use std::sync::Arc;

pub use blobs::{BlobEntry, BlobFile, Blobs, MinFree, Space};
pub use mapped::map;
pub use memo::{Memo, Memoized};
pub use memory_meta::MemoryMeta;
pub use meta::{
    BlobRecord, ImageRecords, ManifestRecord, ManifestRow, Meta, Origin, OriginUsage, Part, RepoInfo, UploadRecord,
    unix_now, unix_now_ms,
};
pub use redb_meta::RedbMeta;
pub use spool::{Spool, Spooled};
pub use uploads::{ChunkRange, Uploads, parse_id as parse_upload_id};

use crate::oci::Digest;

/// Everything that can go wrong below the service layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("storage I/O: {0}")]
    Io(io::Error),
    /// The filesystem (or the quota) is full. What failed to be written was discarded.
    #[error("the store is full: {0}; nothing was stored, free disk space and retry")]
    Full(io::Error),
    #[error("metadata store: {0}")]
    Meta(String),
    /// The metadata database failed to read or write its file. It is reopened before its next use.
    #[error("metadata store I/O: {0}")]
    MetaIo(io::Error),
    #[error("upload session not found")]
    UploadUnknown,
    #[error("chunk starts at {start} but the upload has {offset} bytes")]
    RangeMismatch { start: u64, offset: u64 },
    #[error("chunk length {got} does not match its Content-Range length {declared}")]
    ChunkLength { declared: u64, got: u64 },
    #[error("content digest {actual} does not match {expected}")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("upload exceeds the {limit}-byte limit")]
    TooLarge { limit: u64 },
    #[error("request body: {0}")]
    Body(io::Error),
    #[error("the store is open in another process (a running berth server)")]
    Locked,
    #[error("this client already has {limit} upload sessions open; finish or cancel one")]
    SessionLimit { limit: u32 },
    /// A manifest or link names a blob the registry does not know (never published here).
    #[error("blob {0} is not in the store")]
    BlobUnregistered(Digest),
    /// A manifest or link names a blob a garbage collection sweep is deleting.
    #[error("blob {0} is being deleted by garbage collection; upload it again")]
    BlobDeleting(Digest),
    #[error("there is no berth store at {0} (no meta.redb there); check [storage] root in the configuration")]
    Missing(std::path::PathBuf),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<io::Error> for Error {
    /// A full disk is told apart here, where every write's error passes, so that no caller has to.
    fn from(e: io::Error) -> Error {
        if is_full(&e) { Error::Full(e) } else { Error::Io(e) }
    }
}

/// Whether `e` says the filesystem or the quota has no room left.
pub fn is_full(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded)
}

/// The store as the service uses it.
#[derive(Clone)]
pub struct Store {
    pub blobs: Blobs,
    pub uploads: Arc<Uploads>,
    pub meta: Arc<dyn Meta>,
    /// Manifests by tag and digest from memory; see [`Memo`].
    pub memo: Arc<Memo>,
}

impl Store {
    /// Open the store at `root` that a server made before, never creating one: a maintenance
    /// command pointed at the wrong directory must say so, not leave an empty store behind.
    pub fn open_existing(root: &Path) -> Result<Store> {
        if !root.join("meta.redb").is_file() {
            return Err(Error::Missing(root.to_owned()));
        }
        Store::open(root)
    }

    /// Open (or create) the filesystem store at `root`, clearing leftovers of a crash.
    pub fn open(root: &Path) -> Result<Store> {
        std::fs::create_dir_all(root)?;
        // The metadata database is locked by its process: open it first, so a second process
        // (`berth gc` beside a running server) fails here before it touches anything else.
        let redb = RedbMeta::open(&root.join("meta.redb"))?;
        let blobs = Blobs::open(root)?;
        // A store made before the blob registry has files but no rows: register them once.
        redb.migrate_blob_registry(|| {
            Ok(blobs
                .list()?
                .into_iter()
                .map(|b| (b.digest, b.size, millis(b.modified)))
                .collect())
        })?;
        let meta: Arc<dyn Meta> = Arc::new(redb);
        let uploads = Arc::new(Uploads::open(root, blobs.clone(), meta.clone())?);
        Ok(Store {
            blobs,
            uploads,
            meta,
            memo: Arc::default(),
        })
    }
}

fn millis(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
