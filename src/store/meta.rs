//! The metadata interface. Kept narrow so a shared database can replace the embedded one: each
//! method is one transaction, and callers never hold a transaction open across I/O.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::Result;
use crate::oci::{Digest, RepoName, Tag};

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

/// A resumable upload session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadRecord {
    pub repo: RepoName,
    pub started: u64,
    /// The client that opened it (a user name or an address), for the per-client session limit.
    /// Empty for sessions recorded before berth kept it.
    #[serde(default)]
    pub owner: String,
}

/// One image as an import commits it: every manifest of it (an index with its children and the
/// referrers that came along), the blobs they use, and the tag on its root.
#[derive(Clone, Debug, Default)]
pub struct ImageRecords {
    pub blobs: Vec<Digest>,
    pub manifests: Vec<(Digest, ManifestRecord)>,
    pub tag: Option<(Tag, Digest)>,
}

pub(crate) use crate::clock::unix_now;

/// Repositories, tags, manifests, blob links and upload sessions.
pub trait Meta: Send + Sync {
    fn repo(&self, repo: &RepoName) -> Result<Option<RepoInfo>>;
    /// Create the repository with `origin` unless it exists; returns what is stored.
    fn ensure_repo(&self, repo: &RepoName, origin: Origin) -> Result<RepoInfo>;
    /// Repository names after `last`, in lexical order, at most `n`.
    fn repos(&self, last: Option<&str>, n: usize) -> Result<Vec<String>>;
    /// Remove a repository and everything it holds (tags, manifest records, blob links,
    /// referrer entries, pull times) in one transaction. The blob files stay for GC. `false`
    /// when there was no such repository.
    fn remove_repo(&self, repo: &RepoName) -> Result<bool>;

    /// Record that `repo` holds `digest` (created with the repo if needed).
    fn link_blob(&self, repo: &RepoName, digest: &Digest, origin: Origin) -> Result<()>;
    fn blob_linked(&self, repo: &RepoName, digest: &Digest) -> Result<bool>;
    fn unlink_blob(&self, repo: &RepoName, digest: &Digest) -> Result<bool>;

    /// Store a manifest record and, if given, point `tag` at it, in one transaction.
    fn put_manifest(
        &self,
        repo: &RepoName,
        digest: &Digest,
        record: &ManifestRecord,
        tag: Option<&Tag>,
        origin: Origin,
    ) -> Result<()>;
    fn manifest(&self, repo: &RepoName, digest: &Digest) -> Result<Option<ManifestRecord>>;
    /// Remove a manifest, every tag that points at it, and its referrer entry.
    fn delete_manifest(&self, repo: &RepoName, digest: &Digest) -> Result<bool>;
    /// Manifests in `repo` whose subject is `subject`.
    fn referrers(&self, repo: &RepoName, subject: &Digest) -> Result<Vec<(Digest, ManifestRecord)>>;

    fn tag(&self, repo: &RepoName, tag: &Tag) -> Result<Option<Digest>>;
    fn delete_tag(&self, repo: &RepoName, tag: &Tag) -> Result<bool>;
    /// Tags after `last`, in lexical order, at most `n`; `None` when the repository is unknown.
    fn tags(&self, repo: &RepoName, last: Option<&str>, n: usize) -> Result<Option<Vec<String>>>;

    fn put_upload(&self, id: &str, record: &UploadRecord) -> Result<()>;
    /// Every upload session (for purging stale ones).
    fn uploads(&self) -> Result<Vec<(String, UploadRecord)>>;
    fn upload(&self, id: &str) -> Result<Option<UploadRecord>>;
    fn delete_upload(&self, id: &str) -> Result<()>;

    // Lifecycle queries: full scans, for eviction, garbage collection and `berth du`.

    /// Every repository with its origin.
    fn all_repos(&self) -> Result<Vec<(RepoName, RepoInfo)>>;
    /// Every manifest record of every repository.
    fn all_manifests(&self) -> Result<Vec<(RepoName, Digest, ManifestRecord)>>;
    /// The tags of `repo` with the digest each points at.
    fn tag_targets(&self, repo: &RepoName) -> Result<Vec<(String, Digest)>>;
    /// Record when manifests were last pulled (a batch of `(repo, digest, unix seconds)`).
    fn record_pulls(&self, pulls: &[(RepoName, Digest, u64)]) -> Result<()>;
    /// When one manifest was last pulled, if recorded.
    fn last_pull(&self, repo: &RepoName, digest: &Digest) -> Result<Option<u64>>;
    /// When each manifest was last pulled, where known.
    fn last_pulls(&self) -> Result<Vec<(RepoName, Digest, u64)>>;
    /// Remove manifests (with their tags, referrer entries and pull times) in one transaction.
    fn remove_manifests(&self, manifests: &[(RepoName, Digest)]) -> Result<()>;
    /// Remove every repository's link to these blobs (their files are gone).
    fn unlink_everywhere(&self, blobs: &[Digest]) -> Result<()>;

    /// Commit one small durable write, for the readiness check: whether the store takes writes.
    fn probe(&self) -> Result<()>;

    // --- issue 15: export and import ---
    /// Store a whole image in one transaction (`berth import`): link its blobs, store its
    /// manifests and point its tag, so an interrupted import leaves all of an image or none of it.
    fn put_image(&self, repo: &RepoName, origin: Origin, image: &ImageRecords) -> Result<()>;
}
