//! The metadata interface. Kept narrow so a shared database can replace the embedded one: each
//! method is one transaction, and callers never hold a transaction open across I/O.

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::Result;
use crate::oci::{Algorithm, Digest, Hasher, RepoName, Tag};

/// Where a repository's content comes from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// Pushed by clients of this registry; never evicted.
    Private,
    /// Cached from the named upstream.
    Proxied { upstream: String },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoInfo {
    pub origin: Origin,
    pub created: u64,
}

/// What the registry remembers about a manifest in a repository. The bytes live in the blob
/// store under the manifest's digest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ManifestRecord {
    pub media_type: String,
    pub size: u64,
    /// Config and layer blobs the manifest references.
    pub blobs: Vec<Digest>,
    /// Child manifests of an index.
    pub children: Vec<Digest>,
    pub subject: Option<Digest>,
    pub artifact_type: Option<String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    pub stored_at: u64,
}

/// A resumable upload session: everything another process needs to continue it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadRecord {
    pub repo: RepoName,
    pub started: u64,
    /// The client that opened it (a user name or an address), for the per-client session limit.
    /// Empty for sessions recorded before berth kept it.
    #[serde(default)]
    pub owner: String,
    /// The committed bytes and their hash state, renewed with every chunk. `None` for sessions
    /// recorded before berth kept it: the backend rebuilds it from the bytes once.
    #[serde(default)]
    pub state: Option<UploadState>,
    /// Where the backend keeps the bytes. `None` for sessions recorded before berth kept it
    /// (the filesystem backend's file named by the session id).
    #[serde(default)]
    pub handle: Option<UploadHandle>,
}

/// How far an upload session has committed: its length and the SHA-256 state of exactly those
/// bytes, so a chunk continues the hash without reading back what came before.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadState {
    pub len: u64,
    /// [`save_hash`](super::save_hash) of a SHA-256 hasher, in hex.
    pub sha256: String,
}

impl UploadState {
    /// The state of `len` bytes hashed by `hasher` (a SHA-256 one).
    pub fn new(len: u64, hasher: &Hasher) -> UploadState {
        UploadState {
            len,
            sha256: hex::encode(super::save_hash(hasher)),
        }
    }

    /// The hasher to continue with, or `None` when the saved state is not one.
    pub fn hasher(&self) -> Option<Hasher> {
        super::load_hash(Algorithm::Sha256, &hex::decode(&self.sha256).ok()?)
    }
}

/// Where an upload session's bytes are, as its backend names them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UploadHandle {
    /// A file in the filesystem backend's uploads area.
    File { name: String },
    /// An S3 multipart upload (the S3 backend, `store::s3`): the parts committed so far, and how
    /// many bytes after them wait in a tail object, because every part but the last must be at
    /// least 5 MiB.
    Multipart {
        /// The upload's id, as the object store named it.
        upload_id: String,
        /// The committed parts' ids (ETags), in order: `parts[i]` is part `i + 1`.
        parts: Vec<String>,
        /// Bytes after the last part, in the session's tail object (see `store::s3`).
        tail: u64,
    },
}

/// One image as an import commits it: every manifest of it (an index with its children and the
/// referrers that came along), the blobs they use, and the tag on its root.
#[derive(Clone, Debug, Default)]
pub struct ImageRecords {
    pub blobs: Vec<Digest>,
    pub manifests: Vec<(Digest, ManifestRecord)>,
    pub tag: Option<(Tag, Digest)>,
}

/// One row of the blob registry: a blob the blob store holds (or is about to hold).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobRecord {
    pub digest: Digest,
    pub size: u64,
    /// When it was first registered, in unix milliseconds.
    pub created_ms: u64,
    /// When it was last registered again, linked or referenced by a stored manifest, in unix
    /// milliseconds. The GC grace period counts from here.
    pub last_referenced_ms: u64,
    /// Marked by a GC sweep that is deleting it: nothing may reference it until it is forgotten.
    pub marked: bool,
}

/// A manifest with what eviction planning needs of it (see [`Meta::manifest_page`]).
#[derive(Clone, Debug, PartialEq)]
pub struct ManifestRow {
    pub repo: RepoName,
    pub digest: Digest,
    pub record: ManifestRecord,
    /// When it was last pulled, if recorded.
    pub last_pull: Option<u64>,
}

/// Bytes and blobs of one part of the blob registry (see [`Meta::usage`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Part {
    pub bytes: u64,
    pub blobs: u64,
}

impl Part {
    pub fn add(&mut self, bytes: u64) {
        self.bytes += bytes;
        self.blobs += 1;
    }
}

/// The registered blobs by origin. A blob that a private repository's manifest references counts
/// as private even when a cached repository references it too.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OriginUsage {
    pub private: Part,
    pub cached: Part,
    /// Referenced by no manifest: garbage collection reclaims it after the grace period.
    pub unreferenced: Part,
}

pub(crate) use crate::clock::{unix_now, unix_now_ms};

/// Repositories, tags, manifests, blob links, upload sessions and the blob registry.
///
/// Contract (checked for every implementation by `store::meta_conformance`):
/// - every method is one transaction: it applies whole or not at all, and none is held across
///   the caller's I/O;
/// - **the GC invariant**: [`Meta::put_manifest`], [`Meta::put_image`] and [`Meta::link_blob`]
///   check the blobs they reference in the same transaction that references them. A blob that
///   is marked for deletion is refused ([`BlobDeleting`](super::Error::BlobDeleting)); so is one that is not
///   registered ([`BlobUnregistered`](super::Error::BlobUnregistered)), except in a proxied repository, whose manifests
///   name layers that are fetched when first pulled, and except an index's child manifests,
///   which a partial import may leave out. A sweep marks candidates
///   ([`Meta::mark_unreferenced`]), deletes their objects, then forgets them
///   ([`Meta::forget_blobs`]), so a referenced blob is never deleted;
/// - pull times only move forward ([`Meta::record_pulls`] keeps the newest).
#[async_trait]
pub trait Meta: Send + Sync {
    async fn repo(&self, repo: &RepoName) -> Result<Option<RepoInfo>>;
    /// Repository names after `last`, in lexical order, at most `n`.
    async fn repos(&self, last: Option<&str>, n: usize) -> Result<Vec<(RepoName, RepoInfo)>>;
    /// Remove a repository and everything it holds (tags, manifest records, blob links,
    /// referrer entries, pull times) in one transaction. The blobs stay registered for GC.
    /// `false` when there was no such repository.
    async fn remove_repo(&self, repo: &RepoName) -> Result<bool>;

    /// Record that `repo` may serve `digest` (creating the repository with `origin` if needed),
    /// and renew the blob's grace period. The blob must be registered and not marked.
    async fn link_blob(&self, repo: &RepoName, digest: &Digest, origin: Origin) -> Result<()>;
    async fn blob_linked(&self, repo: &RepoName, digest: &Digest) -> Result<bool>;
    async fn unlink_blob(&self, repo: &RepoName, digest: &Digest) -> Result<bool>;

    /// Store a manifest record and, if given, point `tag` at it, in one transaction that checks
    /// and references the manifest's own bytes, its blobs and its children (see the GC invariant).
    async fn put_manifest(
        &self,
        repo: &RepoName,
        digest: &Digest,
        record: &ManifestRecord,
        tag: Option<&Tag>,
        origin: Origin,
    ) -> Result<()>;
    async fn manifest(&self, repo: &RepoName, digest: &Digest) -> Result<Option<ManifestRecord>>;
    /// Remove a manifest, every tag that points at it, its referrer entry and its pull time.
    async fn delete_manifest(&self, repo: &RepoName, digest: &Digest) -> Result<bool>;
    /// Manifests in `repo` whose subject is `subject`.
    async fn referrers(&self, repo: &RepoName, subject: &Digest) -> Result<Vec<(Digest, ManifestRecord)>>;
    /// Manifests in `repo` that list `digest` as a child (the indexes that contain it).
    async fn parents(&self, repo: &RepoName, digest: &Digest) -> Result<Vec<Digest>>;

    async fn tag(&self, repo: &RepoName, tag: &Tag) -> Result<Option<Digest>>;
    async fn delete_tag(&self, repo: &RepoName, tag: &Tag) -> Result<bool>;
    /// Tags after `last`, in lexical order, at most `n`; `None` when the repository is unknown.
    async fn tags(&self, repo: &RepoName, last: Option<&str>, n: usize) -> Result<Option<Vec<String>>>;
    /// The tags of `repo` with the digest each points at (one repository, for export, `du` and
    /// untagged-manifest collection).
    async fn tag_targets(&self, repo: &RepoName) -> Result<Vec<(String, Digest)>>;

    async fn put_upload(&self, id: &str, record: &UploadRecord) -> Result<()>;
    /// Store a new session's record unless its owner holds `limit` sessions already
    /// (`Error::SessionLimit`). A backend shared by several processes makes the count and the
    /// insert one step, so the limit holds cluster-wide; this default counts, then stores, which
    /// is exact for one process whose upload store admits one session at a time.
    async fn open_upload(&self, id: &str, record: &UploadRecord, limit: u32) -> Result<()> {
        if self.upload_count(&record.owner).await? >= limit as usize {
            return Err(super::Error::SessionLimit { limit });
        }
        self.put_upload(id, record).await
    }
    async fn upload(&self, id: &str) -> Result<Option<UploadRecord>>;
    async fn delete_upload(&self, id: &str) -> Result<()>;
    /// Upload sessions started before `before` (unix seconds), for purging stale ones.
    async fn uploads_started_before(&self, before: u64) -> Result<Vec<String>>;
    /// How many upload sessions `owner` has open (for the per-client session limit).
    async fn upload_count(&self, owner: &str) -> Result<usize>;

    /// Manifests in key order after `after`, at most `n`, with their pull times: eviction
    /// planning pages through them instead of loading the table at once.
    async fn manifest_page(&self, after: Option<(&RepoName, &Digest)>, n: usize) -> Result<Vec<ManifestRow>>;
    /// Record when manifests were last pulled (a batch of `(repo, digest, unix seconds)`),
    /// keeping the newest time of each.
    async fn record_pulls(&self, pulls: &[(RepoName, Digest, u64)]) -> Result<()>;
    /// When one manifest was last pulled, if recorded.
    async fn last_pull(&self, repo: &RepoName, digest: &Digest) -> Result<Option<u64>>;
    /// Remove manifests (with their tags, referrer entries and pull times) in one transaction.
    async fn remove_manifests(&self, manifests: &[(RepoName, Digest)]) -> Result<()>;

    /// Register a blob about to be published (or published again) with its size: created now
    /// if new, its grace period renewed if known (its size then stays). Refused with [`BlobDeleting`](super::Error::BlobDeleting) while a
    /// sweep is deleting it.
    async fn register_blob(&self, digest: &Digest, size: u64) -> Result<()>;
    /// The registry row of one blob.
    async fn blob(&self, digest: &Digest) -> Result<Option<BlobRecord>>;
    /// Registered blobs no manifest references, marked or not, with their times (for GC's
    /// report of what the grace period holds).
    async fn unreferenced(&self) -> Result<Vec<BlobRecord>>;
    /// Mark for deletion, in one transaction, the unreferenced blobs last referenced before
    /// `before_ms` (and any left marked by an interrupted sweep), at most `n`; returns them.
    async fn mark_unreferenced(&self, before_ms: u64, n: usize) -> Result<Vec<BlobRecord>>;
    /// Forget blobs whose objects were deleted: their registry rows (only if still marked) and
    /// every repository's link to them.
    async fn forget_blobs(&self, digests: &[Digest]) -> Result<()>;
    /// Registered bytes by origin.
    async fn usage(&self) -> Result<OriginUsage>;

    /// Commit one small durable write, for the readiness check: whether the store takes writes.
    async fn probe(&self) -> Result<()>;

    /// Store a whole image in one transaction (`berth import`): link its blobs, store its
    /// manifests and point its tag, so an interrupted import leaves all of an image or none of
    /// it. Its blobs and manifests must be registered (the GC invariant).
    async fn put_image(&self, repo: &RepoName, origin: Origin, image: &ImageRecords) -> Result<()>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_records_written_before_states_and_handles_still_load() {
        let old: UploadRecord = serde_json::from_str(r#"{"repo":"team/app","started":5,"owner":"alice"}"#).unwrap();
        assert_eq!((old.state, old.handle), (None, None));
        let older: UploadRecord = serde_json::from_str(r#"{"repo":"team/app","started":5}"#).unwrap();
        assert_eq!(older.owner, "");
    }
}
