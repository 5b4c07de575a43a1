//! The upload seam: resumable upload sessions behind [`UploadStore`]. Backends: the filesystem
//! ([`super::Uploads`]) and memory ([`super::memory::MemoryUploads`]); both pass
//! [`super::conformance::upload_store`].

use super::Result;
use super::blob_store::ByteStream;
use crate::oci::{Algorithm, Digest, Hasher, RepoName};

/// A PATCH's `Content-Range`: the first and last byte offsets, inclusive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkRange {
    pub start: u64,
    pub end: u64,
}

impl ChunkRange {
    /// Bytes the range covers. Saturates: `0-18446744073709551615` claims more than any limit
    /// allows and is refused as too large, never wrapped.
    pub fn byte_count(&self) -> u64 {
        self.end.saturating_sub(self.start).saturating_add(1)
    }
}

/// Resumable upload sessions.
///
/// Contract, checked by [`super::conformance::upload_store`] for every backend:
/// - A session's state (its length, the hash of exactly those bytes, where the bytes are) is
///   data the backend keeps, not memory of one process: a store opened again over the same
///   data continues the session where it stood.
/// - A chunk is all or nothing: a rejected chunk (wrong start, wrong length, too large, a body
///   error) or one whose future is dropped mid-body leaves the session as it was.
/// - `finish` publishes the bytes as a blob only when they match the digest, and ends the
///   session either way. Unknown or ended sessions are `Error::UploadUnknown`.
#[async_trait::async_trait]
pub trait UploadStore: Send + Sync + 'static {
    /// Start a session for `repo` opened by `owner`; its id (32 lowercase hex digits). Refused
    /// with `SessionLimit` when `owner` holds `limit` sessions. A session that is not
    /// `resumable` (a monolithic upload, finished in the request that opened it) may live in
    /// this process only.
    async fn create(&self, repo: &RepoName, owner: &str, resumable: bool, limit: u32) -> Result<String>;

    /// The session's repository and length.
    async fn status(&self, id: &str) -> Result<(RepoName, u64)>;

    /// Append `body`; with `range`, it must start at the session's length and be exactly as
    /// long. The new length. Refused past `limit` bytes in all.
    async fn append(&self, id: &str, range: Option<ChunkRange>, body: ByteStream, limit: u64) -> Result<u64>;

    /// Verify the session's bytes against `digest` and publish them as that blob; their length.
    async fn finish(&self, id: &str, digest: &Digest) -> Result<u64>;

    /// Drop a session and its bytes.
    async fn cancel(&self, id: &str) -> Result<()>;

    /// Session data with no session, older than `age` (left by a crash), named for a report.
    async fn orphans(&self, age: std::time::Duration) -> Result<Vec<String>>;

    /// Remove one of the [`UploadStore::orphans`].
    async fn remove_orphan(&self, name: &str) -> Result<()>;
}

/// A hash state as bytes, so a session's hash can be stored and continued elsewhere. sha2's
/// cores implement `SerializableState` (the block state, the byte count and the partial block).
pub fn save_hash(hasher: &Hasher) -> Vec<u8> {
    use sha2::digest::common::hazmat::SerializableState;
    match hasher {
        Hasher::Sha256(h) => h.serialize().to_vec(),
        Hasher::Sha512(h) => h.serialize().to_vec(),
    }
}

/// The hash state [`save_hash`] saved, or `None` when `bytes` is not one.
pub fn load_hash(algorithm: Algorithm, bytes: &[u8]) -> Option<Hasher> {
    use sha2::digest::common::hazmat::SerializableState;
    Some(match algorithm {
        Algorithm::Sha256 => Hasher::Sha256(sha2::Sha256::deserialize(bytes.try_into().ok()?).ok()?),
        Algorithm::Sha512 => Hasher::Sha512(sha2::Sha512::deserialize(bytes.try_into().ok()?).ok()?),
    })
}

/// Accept only ids of the shape we hand out (32 lowercase hex digits), so an id is a safe file name.
pub fn parse_id(id: &str) -> Option<&str> {
    (id.len() == 32 && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_hash_state_continues_to_the_same_digest() {
        for algorithm in [Algorithm::Sha256, Algorithm::Sha512] {
            let mut whole = Hasher::new(algorithm);
            whole.update(b"first part, longer than nothing; second part");
            let mut first = Hasher::new(algorithm);
            first.update(b"first part, longer than nothing; ");
            let mut resumed = load_hash(algorithm, &save_hash(&first)).expect("a saved state loads");
            resumed.update(b"second part");
            assert_eq!(resumed.finish(), whole.finish());
        }
        assert!(load_hash(Algorithm::Sha256, b"not a state").is_none());
    }
}
