//! The blob seam: content-addressed bytes behind [`BlobStore`], written through a [`BlobWriter`].
//! Backends: the filesystem ([`super::fs`], mmap + sendfile) and memory ([`super::memory`], for
//! tests); the cluster issue adds S3. Every backend passes the suite in [`super::conformance`].
//!
//! The contract is S3-friendly on purpose: no rename and no append to an existing object is
//! assumed. A writer is told its digest up front (an S3 multipart upload names its key when it
//! starts) and publishes only at `commit`, after the digest verified.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use futures_util::Stream;

use super::Result;
use super::mapped::LocalBlob;
use crate::oci::Digest;

/// Bytes arriving in order; an `Err` item ends the body (and aborts an HTTP response).
pub type ByteStream = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>;

/// Told how many bytes a writer has written so far, after each batch (see [`BlobStore::writer`]).
pub type OnWritten = Box<dyn FnMut(u64) + Send>;

/// What a backend knows of a published blob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobStat {
    pub size: u64,
    /// When it was published. Garbage collection's grace period counts from the metadata blob
    /// registry instead ([`super::Meta::register_blob`]), never from this.
    pub modified: SystemTime,
}

/// A published blob as a listing sees it.
#[derive(Clone, Debug)]
pub struct BlobEntry {
    pub digest: Digest,
    pub size: u64,
    pub modified: SystemTime,
}

/// Room on the filesystem the store is on, as `df` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Space {
    /// Bytes berth may still write (what is reserved for root not counted).
    pub free: u64,
    pub total: u64,
}

/// A blob ready to serve: one of three things, by backend.
pub enum Stored {
    /// A file on this host. Served as mapped windows, which plain HTTP connections send with
    /// `sendfile`; the file itself stays private to the filesystem backend.
    Local(LocalBlob),
    /// Bytes the backend streams by range.
    Stream(RemoteBlob),
    /// The client fetches the bytes itself from this (presigned) URL.
    Redirect { url: String, size: u64 },
}

impl Stored {
    pub fn size(&self) -> u64 {
        match self {
            Stored::Local(b) => b.size(),
            Stored::Stream(b) => b.size,
            Stored::Redirect { size, .. } => *size,
        }
    }

    /// The bytes `start..start + len`; `None` for a redirect, whose bytes berth does not send.
    pub fn range(self, start: u64, len: u64) -> Option<ByteStream> {
        match self {
            Stored::Local(b) => Some(Box::pin(b.chunks(start, len))),
            Stored::Stream(b) => Some(b.read.range(start, len)),
            Stored::Redirect { .. } => None,
        }
    }
}

/// A blob a backend streams (no local file): its size and a ranged reader.
pub struct RemoteBlob {
    pub size: u64,
    pub read: Box<dyn RangeRead>,
}

/// Reads one range of one blob.
pub trait RangeRead: Send {
    /// The bytes `start..start + len`, which the caller checked lie within the blob.
    fn range(self: Box<Self>, start: u64, len: u64) -> ByteStream;
}

/// Content-addressed blob storage.
///
/// Contract, checked by [`super::conformance::blob_store`] for every backend:
/// - A published blob always holds exactly the bytes its digest names; nothing unverified is
///   ever visible under a digest, not even partly.
/// - An existing blob is never replaced: publishing a digest that exists keeps the existing bytes.
/// - `stat`, `open` and `read` of a missing blob are `Ok(None)`, never an error.
/// - `delete` of a missing blob is `Ok(false)`.
/// - Several writers of the same digest may run at once; each commits without error and the
///   blob is published once.
#[async_trait::async_trait]
pub trait BlobStore: Send + Sync + 'static {
    /// The blob's size and age, or `None` when it is not published.
    async fn stat(&self, digest: &Digest) -> Result<Option<BlobStat>>;

    /// Open a blob to serve it.
    async fn open(&self, digest: &Digest) -> Result<Option<Stored>>;

    /// The whole blob in memory; for manifests and configs, which are size-limited.
    async fn read(&self, digest: &Digest) -> Result<Option<Bytes>>;

    /// Start writing `digest`. Nothing is visible until [`BlobWriter::commit`]; dropping the
    /// writer uncommitted aborts it. `on_written` is told the bytes written after each batch.
    async fn writer(&self, digest: &Digest, on_written: OnWritten) -> Result<Box<dyn BlobWriter>>;

    /// Verify `bytes` against `digest` and publish them (a manifest). A no-op when published.
    async fn put(&self, digest: &Digest, bytes: Bytes) -> Result<()> {
        if self.stat(digest).await?.is_some() {
            return Ok(());
        }
        let mut writer = self.writer(digest, Box::new(|_| {})).await?;
        writer.append(vec![bytes]).await?;
        writer.commit(digest).await.map(drop)
    }

    /// Remove a blob; whether it existed.
    async fn delete(&self, digest: &Digest) -> Result<bool>;

    /// Every published blob (skipping anything that is not one): the store as it is, for checks
    /// against the metadata blob registry. Garbage collection and usage never walk it.
    async fn list(&self) -> Result<Vec<BlobEntry>>;

    /// Readiness: take (and remove) a small durable write along the path blob writes take.
    async fn probe(&self) -> Result<()>;

    /// Room left, for backends with a fixed capacity (`None`: unbounded, as memory or S3).
    async fn space(&self) -> Result<Option<Space>>;

    /// A presigned URL clients may fetch the blob from directly; `None` where there is none
    /// (the filesystem).
    async fn presign(&self, _digest: &Digest) -> Result<Option<String>> {
        Ok(None)
    }

    /// The size only; see [`BlobStore::stat`].
    async fn size(&self, digest: &Digest) -> Result<Option<u64>> {
        Ok(self.stat(digest).await?.map(|s| s.size))
    }
}

/// What a closed writer holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Written {
    pub len: u64,
    /// The digest of the bytes written, in the algorithm of the digest the writer was opened for.
    pub digest: Digest,
}

/// One blob being written.
///
/// Contract: batches are appended in order. [`BlobWriter::close`] waits until every batch is
/// written and says what was written; [`BlobWriter::commit`] verifies that against the expected
/// digest and only then publishes (durably) under it. On a mismatch nothing is published and the
/// bytes are discarded. Dropping a writer that was not committed discards its bytes.
#[async_trait::async_trait]
pub trait BlobWriter: Send {
    /// Append a batch of buffers. May return before they are written; a write error shows here
    /// or at `close`.
    async fn append(&mut self, batch: Vec<Bytes>) -> Result<()>;

    /// Reads of the bytes written so far (for readers trailing a fill). It outlives the writer:
    /// after a commit it reads the published blob.
    fn read_back(&self) -> Arc<dyn ReadBack>;

    /// Wait until everything appended is written; their length and digest. Idempotent.
    async fn close(&mut self) -> Result<Written>;

    /// Close, verify against `expected`, and publish; returns the blob's length. An existing
    /// blob of that digest is kept (and this writer's bytes discarded).
    async fn commit(self: Box<Self>, expected: &Digest) -> Result<u64>;
}

/// Reads back what a [`BlobWriter`] has written.
#[async_trait::async_trait]
pub trait ReadBack: Send + Sync {
    /// `len` bytes at `pos`, all of which the writer reported written (through `on_written`).
    async fn read_at(&self, pos: u64, len: usize) -> Result<Bytes>;
}

/// Check a closed writer's bytes against the digest they must have.
pub(super) fn verify(written: &Written, expected: &Digest) -> Result<()> {
    if written.digest != *expected {
        return Err(super::Error::DigestMismatch {
            expected: expected.clone(),
            actual: written.digest.clone(),
        });
    }
    Ok(())
}

/// Check bytes in memory against the digest they must have (a manifest).
pub(super) fn verify_bytes(bytes: &[u8], expected: &Digest) -> Result<()> {
    let mut hasher = crate::oci::Hasher::new(expected.algorithm());
    hasher.update(bytes);
    let written = Written {
        len: bytes.len() as u64,
        digest: hasher.finish(),
    };
    verify(&written, expected)
}
