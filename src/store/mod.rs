//! The store floor: blobs behind [`BlobStore`] (written through a [`BlobWriter`]), resumable
//! upload sessions behind [`UploadStore`], and the metadata behind [`Meta`]. It knows bytes and
//! `oci` types, never HTTP. Each trait's contract is checked by one conformance suite
//! (`conformance`) that every backend runs. Only `main` and `cli` choose backends: [`fs::open`]
//! (one host) or [`memory`] (tests).
//!
//! On-disk layout of the filesystem backends under `[storage] root`:
//! ```text
//! blobs/sha256/ab/abcdef…      published blobs, each verified against its name; never partial
//! uploads/<uuid>               bytes of an upload session in progress (resumable across restarts)
//! tmp/<uuid>                   partial writes (manifests, cache fills); emptied when opened
//! meta.redb                    repos, tags, manifest records, blob links, upload sessions (with
//!                              their committed length and hash state), and the blob registry
//!                              (size, created, last referenced per blob)
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

mod blob_store;
mod blobs;
#[cfg(test)]
mod conformance;
pub mod fs;
mod mapped;
pub mod memory;
mod memory_meta;
mod memory_uploads;
mod meta;
#[cfg(test)]
pub(crate) mod meta_conformance;
pub mod postgres;
mod redb_handle;
mod redb_meta;
mod redb_registry;
pub mod s3;
mod spool;
mod upload_store;
mod uploads;

use std::io;
use std::sync::Arc;

pub use blob_store::{
    BlobEntry, BlobStat, BlobStore, BlobWriter, ByteStream, OnWritten, RangeRead, ReadBack, RemoteBlob, Space, Stored,
    Written,
};
pub use blobs::MinFree;
pub use mapped::LocalBlob;
pub use memory_meta::MemoryMeta;
pub use meta::{
    BlobRecord, ImageRecords, ManifestRecord, ManifestRow, Meta, Origin, OriginUsage, Part, RepoInfo, UploadHandle,
    UploadRecord, UploadState,
};
pub use redb_meta::RedbMeta;
pub use spool::BATCH as WRITE_BATCH;
pub use upload_store::{ChunkRange, UploadStore, load_hash, parse_id as parse_upload_id, save_hash};
use uploads::Uploads;

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
    pub blobs: Arc<dyn BlobStore>,
    pub uploads: Arc<dyn UploadStore>,
    pub meta: Arc<dyn Meta>,
}

impl Store {
    /// A store of the given backends; `main` and `cli` choose them (see [`fs::open`]).
    pub fn new(blobs: Arc<dyn BlobStore>, uploads: Arc<dyn UploadStore>, meta: Arc<dyn Meta>) -> Store {
        Store { blobs, uploads, meta }
    }
}
