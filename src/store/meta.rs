//! The metadata interface. Kept narrow so a shared database can replace the embedded one: each
//! method is one transaction, and callers never hold a transaction open across I/O.

use std::collections::{BTreeMap, HashMap};
use std::time::{SystemTime, UNIX_EPOCH};

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
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Repositories, tags, manifests, blob links and upload sessions.
pub trait Meta: Send + Sync {
    fn repo(&self, repo: &RepoName) -> Result<Option<RepoInfo>>;
    /// Create the repository with `origin` unless it exists; returns what is stored.
    fn ensure_repo(&self, repo: &RepoName, origin: Origin) -> Result<RepoInfo>;
    /// Repository names after `last`, in lexical order, at most `n`.
    fn repos(&self, last: Option<&str>, n: usize) -> Result<Vec<String>>;

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
    fn upload(&self, id: &str) -> Result<Option<UploadRecord>>;
    fn delete_upload(&self, id: &str) -> Result<()>;

    /// Every digest some repository references (linked blobs and manifests), mapped to whether a
    /// private repository is among those referencing it. One read transaction; for usage reports.
    fn referenced_digests(&self) -> Result<HashMap<Digest, bool>>;
}
