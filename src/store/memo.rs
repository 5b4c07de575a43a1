//! In-memory answers for the manifest hot path (tag → digest, digest → bytes and headers), so a
//! warm `GET`/`HEAD` by tag costs no database transaction and no file read.
//!
//! Staleness is ruled out with a generation counter rather than by chasing keys: every write
//! that can change what a tag or manifest means bumps it (after its commit), and an entry loaded
//! under an older generation is ignored. A reader that raced a write therefore cannot leave a
//! stale answer behind: it captured the generation before it read the database.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use moka::sync::Cache;

use super::Origin;
use crate::oci::{Digest, RepoName, Tag};

/// Bytes of manifests kept in memory at most.
const MANIFEST_BYTES: u64 = 64 << 20;
const TAGS: u64 = 100_000;

/// A stored manifest, ready to answer.
#[derive(Debug)]
pub struct Memoized {
    pub media_type: String,
    pub bytes: Bytes,
    generation: u64,
}

pub struct Memo {
    /// Origins of repositories that exist. An origin never changes while a repository exists,
    /// so the only invalidation is [`Memo::forget_origin`] when one is removed; unknown names
    /// are not remembered.
    origins: Cache<RepoName, Origin>,
    generation: AtomicU64,
    tags: Cache<(RepoName, Tag), (Digest, u64)>,
    manifests: Cache<(RepoName, Digest), Arc<Memoized>>,
}

impl Default for Memo {
    fn default() -> Self {
        Memo {
            origins: Cache::new(TAGS),
            generation: AtomicU64::new(0),
            tags: Cache::new(TAGS),
            manifests: Cache::builder()
                .max_capacity(MANIFEST_BYTES)
                .weigher(|_, m: &Arc<Memoized>| u32::try_from(m.bytes.len()).unwrap_or(u32::MAX))
                .build(),
        }
    }
}

impl Memo {
    /// Take before reading the database; pass to the `put_*` calls that store what was read.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Call after committing a change to tags or manifests.
    pub fn bump(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    pub fn origin(&self, repo: &RepoName) -> Option<Origin> {
        self.origins.get(repo)
    }

    pub fn put_origin(&self, repo: &RepoName, origin: Origin) {
        self.origins.insert(repo.clone(), origin);
    }

    /// Call after removing `repo`: the name may come back with another origin.
    pub fn forget_origin(&self, repo: &RepoName) {
        self.origins.invalidate(repo);
    }

    pub fn tag(&self, repo: &RepoName, tag: &Tag) -> Option<Digest> {
        let (digest, generation) = self.tags.get(&(repo.clone(), tag.clone()))?;
        (generation == self.generation()).then_some(digest)
    }

    pub fn put_tag(&self, repo: &RepoName, tag: &Tag, digest: &Digest, generation: u64) {
        self.tags
            .insert((repo.clone(), tag.clone()), (digest.clone(), generation));
    }

    pub fn manifest(&self, repo: &RepoName, digest: &Digest) -> Option<Arc<Memoized>> {
        let m = self.manifests.get(&(repo.clone(), digest.clone()))?;
        (m.generation == self.generation()).then_some(m)
    }

    pub fn put_manifest(
        &self,
        repo: &RepoName,
        digest: &Digest,
        media_type: String,
        bytes: Bytes,
        generation: u64,
    ) -> Arc<Memoized> {
        let m = Arc::new(Memoized {
            media_type,
            bytes,
            generation,
        });
        self.manifests.insert((repo.clone(), digest.clone()), m.clone());
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_makes_earlier_answers_invisible() {
        let memo = Memo::default();
        let (repo, tag, digest) = (
            "team/app".parse().unwrap(),
            "1".parse().unwrap(),
            Digest::sha256_of(b"m"),
        );
        let g = memo.generation();
        memo.put_tag(&repo, &tag, &digest, g);
        memo.put_manifest(&repo, &digest, "x".into(), Bytes::from_static(b"m"), g);
        assert_eq!(memo.tag(&repo, &tag), Some(digest.clone()));
        assert!(memo.manifest(&repo, &digest).is_some());
        // A reader that read the database before a write commits stores an old generation.
        let before_write = memo.generation();
        memo.bump();
        memo.put_tag(&repo, &tag, &digest, before_write);
        assert_eq!(memo.tag(&repo, &tag), None);
        assert!(memo.manifest(&repo, &digest).is_none());
    }
}
