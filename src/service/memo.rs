//! In-memory answers for the manifest hot path (tag → digest, digest → bytes and headers), so a
//! warm `GET`/`HEAD` by tag costs no database transaction and no file read; and for small blobs
//! (image configs, mostly), which every pull asks for beside its manifest. Under 1,000 connections
//! (benchmark W10) a small-blob GET that read the links table and the file, two trips to other
//! threads, set the tail latency.
//!
//! It lives in `service` rather than in `store` or `cache`: it caches what the metadata store
//! answered and listens to the coordinator's notices, two seams only the service may combine, so
//! no store backend has to know it.
//!
//! Staleness is ruled out with a generation counter rather than by chasing keys: every write
//! that can change what a tag or manifest means bumps it (after its commit), and an entry loaded
//! under an older generation is ignored. A reader that raced a write therefore cannot leave a
//! stale answer behind: it captured the generation before it read the database.
//!
//! The counter is a consumer of coordinator [`Notice`]s: a write here calls [`Memo::changed`],
//! which bumps at once (so this process reads its own writes) and publishes the notice; a task
//! bumps again on every notice received, which is how writes by other replicas (cluster mode)
//! reach this memo. A process's own notice comes back too and costs one extra miss per write,
//! which keeps the receive side free of any bookkeeping. The hit path reads one atomic, as before.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use bytes::Bytes;
use moka::sync::Cache;

use crate::coord::{Coordinator, Notice};
use crate::oci::{Digest, RepoName, Tag};
use crate::store::Origin;

/// Bytes of manifests kept in memory at most.
const MANIFEST_BYTES: u64 = 64 << 20;
const TAGS: u64 = 100_000;
/// Bytes of small blobs kept in memory at most, and the largest blob kept.
const BLOB_BYTES: u64 = 16 << 20;
const SMALL_BLOB: usize = 64 << 10;

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
    /// A blob linked to a repository, with its bytes. Only positive answers: a blob linked
    /// later is simply a miss until then; an unlink or delete publishes `BlobsChanged`.
    blobs: Cache<(RepoName, Digest), (Bytes, u64)>,
    /// Where [`Memo::changed`] publishes.
    coord: Arc<dyn Coordinator>,
}

impl Memo {
    /// A memo that publishes its changes through `coord` and consumes everyone's. Inside a Tokio
    /// runtime it starts the task that receives notices (it ends when the memo is dropped).
    pub fn new(coord: Arc<dyn Coordinator>) -> Arc<Memo> {
        Memo::with_tag_ttl(coord, None)
    }

    /// [`Memo::new`] whose tag entries also expire `tag_ttl` after they were stored. Cluster
    /// mode sets it: notices cross replicas over the network, and one lost in a reconnect must
    /// not pin a moved tag here for long.
    pub fn with_tag_ttl(coord: Arc<dyn Coordinator>, tag_ttl: Option<std::time::Duration>) -> Arc<Memo> {
        let mut memo = Memo::detached(coord);
        if let Some(ttl) = tag_ttl {
            memo.tags = Cache::builder().max_capacity(TAGS).time_to_live(ttl).build();
            memo.blobs = blob_cache(Some(ttl));
        }
        let memo = Arc::new(memo);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(receive(memo.coord.subscribe(), Arc::downgrade(&memo)));
        }
        memo
    }

    fn detached(coord: Arc<dyn Coordinator>) -> Memo {
        Memo {
            coord,
            origins: Cache::new(TAGS),
            generation: AtomicU64::new(0),
            tags: Cache::new(TAGS),
            manifests: Cache::builder()
                .max_capacity(MANIFEST_BYTES)
                .weigher(|_, m: &Arc<Memoized>| u32::try_from(m.bytes.len()).unwrap_or(u32::MAX))
                .build(),
            blobs: blob_cache(None),
        }
    }
}

fn blob_cache(ttl: Option<std::time::Duration>) -> Cache<(RepoName, Digest), (Bytes, u64)> {
    let builder = Cache::builder()
        .max_capacity(BLOB_BYTES)
        // The key and entry overhead count too, so many tiny blobs stay bounded.
        .weigher(|_, (b, _): &(Bytes, u64)| u32::try_from(b.len() + 256).unwrap_or(u32::MAX));
    match ttl {
        Some(ttl) => builder.time_to_live(ttl).build(),
        None => builder.build(),
    }
}

impl Memo {
    /// Take before reading the database; pass to the `put_*` calls that store what was read.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Call after committing a change to tags or manifests: invalidates here at once, and
    /// everywhere else through the coordinator.
    pub fn changed(&self, notice: Notice) {
        self.apply(&notice);
        self.coord.publish(notice);
    }

    fn apply(&self, notice: &Notice) {
        if let Notice::RepoRemoved { repo } = notice {
            self.origins.invalidate(repo);
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    pub fn origin(&self, repo: &RepoName) -> Option<Origin> {
        self.origins.get(repo)
    }

    pub fn put_origin(&self, repo: &RepoName, origin: Origin) {
        self.origins.insert(repo.clone(), origin);
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

    /// The bytes of a small blob linked to `repo`, if memoized under the current generation.
    pub fn blob(&self, repo: &RepoName, digest: &Digest) -> Option<Bytes> {
        let (bytes, generation) = self.blobs.get(&(repo.clone(), digest.clone()))?;
        (generation == self.generation()).then_some(bytes)
    }

    /// Remember that `digest` is linked to `repo` and holds `bytes` (at most [`SMALL_BLOB`];
    /// larger blobs are not kept), as read under `generation`.
    pub fn put_blob(&self, repo: &RepoName, digest: &Digest, bytes: Bytes, generation: u64) {
        if bytes.len() <= SMALL_BLOB {
            self.blobs.insert((repo.clone(), digest.clone()), (bytes, generation));
        }
    }
}

/// Apply every notice to the memo until it is dropped. A receiver that lagged missed notices it
/// cannot name, so it forgets origins too.
async fn receive(mut notices: crate::coord::Notices, memo: Weak<Memo>) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        let notice = notices.recv().await;
        let Some(memo) = memo.upgrade() else { return };
        match notice {
            Ok(notice) => memo.apply(&notice),
            Err(RecvError::Lagged(_)) => {
                memo.origins.invalidate_all();
                memo.apply(&Notice::ManifestsChanged);
            }
            Err(RecvError::Closed) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_makes_earlier_answers_invisible() {
        let memo = Memo::detached(crate::coord::Local::shared());
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
        memo.changed(Notice::TagMoved {
            repo: repo.clone(),
            tag: tag.clone(),
        });
        memo.put_tag(&repo, &tag, &digest, before_write);
        assert_eq!(memo.tag(&repo, &tag), None);
        assert!(memo.manifest(&repo, &digest).is_none());
    }

    #[test]
    fn a_small_blob_is_kept_until_blobs_change_and_a_large_one_never() {
        let memo = Memo::detached(crate::coord::Local::shared());
        let repo: RepoName = "team/app".parse().unwrap();
        let (small, large) = (Bytes::from_static(b"{}"), Bytes::from(vec![0u8; SMALL_BLOB + 1]));
        let (d_small, d_large) = (Digest::sha256_of(&small), Digest::sha256_of(&large));
        let g = memo.generation();
        memo.put_blob(&repo, &d_small, small.clone(), g);
        memo.put_blob(&repo, &d_large, large, g);
        assert_eq!(memo.blob(&repo, &d_small), Some(small));
        assert_eq!(memo.blob(&repo, &d_large), None, "bounded by size");
        assert_eq!(
            memo.blob(&"team/other".parse().unwrap(), &d_small),
            None,
            "per repository"
        );
        memo.changed(Notice::BlobsChanged);
        assert_eq!(memo.blob(&repo, &d_small), None, "an unlink anywhere drops it");
    }

    #[test]
    fn in_cluster_mode_a_tag_entry_expires_even_without_a_notice() {
        let memo = Memo::with_tag_ttl(
            crate::coord::Local::shared(),
            Some(std::time::Duration::from_millis(200)),
        );
        let (repo, tag, digest): (RepoName, Tag, Digest) = (
            "team/app".parse().unwrap(),
            "1".parse().unwrap(),
            Digest::sha256_of(b"m"),
        );
        memo.put_tag(&repo, &tag, &digest, memo.generation());
        assert_eq!(memo.tag(&repo, &tag), Some(digest));
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert_eq!(
            memo.tag(&repo, &tag),
            None,
            "a lost notice pins a tag for the TTL at most"
        );
    }

    #[tokio::test]
    async fn a_notice_from_another_process_invalidates_this_memo() {
        let coord = crate::coord::Local::shared();
        let memo = Memo::new(coord.clone());
        let (repo, tag, digest): (RepoName, Tag, Digest) = (
            "team/app".parse().unwrap(),
            "1".parse().unwrap(),
            Digest::sha256_of(b"m"),
        );
        memo.put_origin(&repo, Origin::Private);
        memo.put_tag(&repo, &tag, &digest, memo.generation());
        assert_eq!(memo.tag(&repo, &tag), Some(digest.clone()));
        // Published by someone else (another replica's memo): this memo only receives it.
        coord.publish(Notice::RepoRemoved { repo: repo.clone() });
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while memo.tag(&repo, &tag).is_some() || memo.origin(&repo).is_some() {
            assert!(
                std::time::Instant::now() < deadline,
                "the notice never reached the memo"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }
}
