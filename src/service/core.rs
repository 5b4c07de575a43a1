//! The core every service shares: the store and its seams, the upstreams, the coordinator, the
//! manifest memo, metrics, the notifier and the switches, built once and held behind an `Arc`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;

use super::manifests::ManifestHead;
use super::memo::{Memo, Memoized};
use super::{Error, Result, Switches, fill, referrers, usage};
use crate::coord::Coordinator;
use crate::metrics::Metrics;
use crate::notify::Notifier;
use crate::oci::{Digest, Reference, RepoName, Tag};
use crate::store::{self, Store, Stored};
use crate::upstream::{Remote, Upstream};

/// What every service shares, held once behind an `Arc` (see [`super::Services`]): the store,
/// the upstreams, the coordinator, the memo, metrics, the notifier and the switches, plus the
/// helpers more than one service calls (routing, the pull-through proxy, local manifest reads).
pub struct Core {
    pub(super) store: Store,
    /// Configured upstreams; the first is the default for unqualified names.
    pub(super) upstreams: Arc<Vec<Arc<dyn Remote>>>,
    /// Who leads fills and periodic tasks, and where memo invalidations go.
    pub(super) coord: Arc<dyn Coordinator>,
    /// Manifests by tag and digest from memory; see [`Memo`].
    pub(super) memo: Arc<Memo>,
    /// `[private] namespaces` patterns.
    pub(super) private: Arc<Vec<String>>,
    /// `[private] claim_on_push`: a push may claim an unclaimed name.
    pub(super) claim_on_push: bool,
    pub(super) fills: Arc<fill::Fills>,
    /// When each proxied tag was last confirmed with its upstream, here or (as the coordinator's
    /// `claim_check` said) by another request or replica: a process-local cache in front of the
    /// coordinator, so a warm tag costs no coordination round trip.
    pub(super) fresh_tags: Arc<Mutex<HashMap<(RepoName, Tag), Instant>>>,
    /// Subjects of proxied repositories the upstream listed no referrers for, and when.
    pub(super) no_referrers: Arc<referrers::Absent>,
    /// Upload sessions one client may hold open at once.
    pub(super) session_limit: u32,
    /// Pulls noted in memory, flushed to the metadata store in batches.
    pub(super) pulls: Arc<crate::cache::Pulls>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) usage: Arc<usage::LastMeasurement>,
    /// Below this much free space the registry reports itself not ready.
    pub(super) min_free: store::MinFree,
    /// Read-only mode and the delete switch.
    pub(super) switches: Arc<Switches>,
    /// Where push, pull, delete and fill events go (nowhere unless configured).
    pub(super) notifier: Arc<Notifier>,
}

impl Core {
    /// A core over `store`, pulling through `upstreams`, coordinating through `coord` (the
    /// caller picks it, as it picks the store: in-process on one node), counting into a fresh
    /// [`Metrics`].
    pub fn new(store: Store, upstreams: Vec<Upstream>, coord: Arc<dyn Coordinator>) -> Core {
        let metrics = Arc::new(Metrics::new());
        let upstreams = upstreams
            .into_iter()
            .map(|u| {
                let counters = metrics.upstream(u.name());
                Arc::new(u.with_metrics(counters)) as Arc<dyn Remote>
            })
            .collect();
        Core::with_remotes(store, upstreams, coord, metrics)
    }

    /// A core over `store`, pulling through `remotes` as they are (tests put in-process fakes
    /// here), counting into `metrics`.
    pub fn with_remotes(
        store: Store,
        remotes: Vec<Arc<dyn Remote>>,
        coord: Arc<dyn Coordinator>,
        metrics: Arc<Metrics>,
    ) -> Core {
        let notifier = Arc::new(Notifier::default());
        Core {
            store,
            upstreams: Arc::new(remotes),
            memo: Memo::new(coord.clone()),
            coord,
            private: Arc::default(),
            claim_on_push: true,
            fills: Arc::new(fill::Fills::new(metrics.clone(), notifier.clone())),
            fresh_tags: Arc::default(),
            no_referrers: Arc::default(),
            session_limit: u32::MAX,
            pulls: Arc::default(),
            metrics,
            usage: Arc::default(),
            min_free: store::MinFree::Bytes(0),
            switches: Arc::default(),
            notifier,
        }
    }

    /// The metrics every part of the registry counts into (GC and eviction too).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The coordinator: periodic tasks ask it for leadership.
    pub fn coordinator(&self) -> &Arc<dyn Coordinator> {
        &self.coord
    }

    /// Repositories matching these patterns are private even before anything is pushed.
    pub fn with_private_namespaces(mut self, patterns: Vec<String>) -> Core {
        self.private = Arc::new(patterns);
        self
    }

    /// Whether a first push claims an unclaimed name as private (`[private] claim_on_push`).
    pub fn with_claim_on_push(mut self, claim: bool) -> Core {
        self.claim_on_push = claim;
        self
    }

    /// Let memoized tags expire `ttl` after they were stored, notices or not (cluster mode).
    pub fn with_memo_tag_ttl(mut self, ttl: std::time::Duration) -> Core {
        self.memo = Memo::with_tag_ttl(self.coord.clone(), Some(ttl));
        self
    }

    /// At most `limit` open upload sessions per client.
    pub fn with_upload_session_limit(mut self, limit: u32) -> Core {
        self.session_limit = limit;
        self
    }

    /// Report not ready while the store's filesystem has less than `min_free` free.
    pub fn with_min_free(mut self, min_free: store::MinFree) -> Core {
        self.min_free = min_free;
        self
    }

    /// Send events to these `[[notifications]]` endpoints (starts one delivery task each, so it
    /// must run inside the Tokio runtime).
    pub fn with_notifications(self, endpoints: Vec<crate::config::NotificationSettings>, source: String) -> Core {
        self.notifier.start(endpoints, source, &self.metrics);
        self
    }

    /// Cluster mode: a fill another replica leads streams from it (through `peers`), and the
    /// internal endpoint serves this replica's fills to the others. Without it, a fill led
    /// elsewhere is fetched again and the internal endpoint does not exist.
    pub fn with_cluster(mut self, peers: super::ClusterPeers) -> Core {
        let fills = fill::Fills::new(self.metrics.clone(), self.notifier.clone()).with_cluster(peers);
        self.fills = Arc::new(fills);
        self
    }

    /// The notification sink of push, pull, delete and fill events.
    pub fn notifier(&self) -> &Arc<Notifier> {
        &self.notifier
    }

    /// Pulls noted since the last flush (for eviction by last pull).
    pub fn pulls(&self) -> &Arc<crate::cache::Pulls> {
        &self.pulls
    }

    pub fn store(&self) -> &Store {
        &self.store
    }
}

impl Core {
    /// See [`register`].
    pub(super) async fn register(&self, digest: &Digest, size: u64) -> Result<()> {
        Ok(super::register(self.store.meta.as_ref(), digest, size).await?)
    }

    /// The error for a reference that resolves to nothing: is it the repository or the manifest?
    pub(super) async fn unknown(&self, repo: &RepoName, reference: &Reference) -> Error {
        match self.store.meta.repo(repo).await {
            Ok(None) => Error::NameUnknown(repo.clone()),
            Ok(Some(_)) => Error::ManifestUnknown(reference.to_string()),
            Err(e) => e.into(),
        }
    }

    /// A stored manifest, from memory when possible (see `service::memo`).
    pub(super) async fn local(&self, repo: &RepoName, reference: &Reference) -> Result<(Digest, Arc<Memoized>)> {
        let memo = &self.memo;
        let generation = memo.generation();
        let digest = match reference {
            Reference::Digest(d) => d.clone(),
            Reference::Tag(t) => match memo.tag(repo, t) {
                Some(d) => d,
                None => {
                    let d = self.store.meta.tag(repo, t).await?;
                    let Some(d) = d else {
                        return Err(self.unknown(repo, reference).await);
                    };
                    memo.put_tag(repo, t, &d, generation);
                    d
                }
            },
        };
        if let Some(m) = memo.manifest(repo, &digest) {
            return Ok((digest, m));
        }
        let Some(record) = self.store.meta.manifest(repo, &digest).await? else {
            return Err(self.unknown(repo, reference).await);
        };
        let bytes = self
            .store
            .blobs
            .read(&digest)
            .await?
            .ok_or_else(|| Error::ManifestUnknown(reference.to_string()))?;
        let m = memo.put_manifest(repo, &digest, record.media_type, bytes, generation);
        Ok((digest, m))
    }

    /// A small blob of `repo` kept by [`Core::memoize_blob`] and still current.
    pub(super) fn memoized_blob(&self, repo: &RepoName, digest: &Digest) -> Option<Stored> {
        let bytes = self.memo.blob(repo, digest)?;
        Some(Stored::Local(store::LocalBlob::read(bytes)))
    }

    /// Keep a small blob read whole (see `service::memo`) for the next GET of it from `repo`.
    pub(super) fn memoize_blob(&self, repo: &RepoName, digest: &Digest, blob: &Stored, generation: u64) {
        if let Stored::Local(local) = blob
            && let Some(bytes) = local.in_memory()
        {
            self.memo.put_blob(repo, digest, bytes.clone(), generation);
        }
    }

    /// A stored manifest's head.
    pub(super) async fn local_head(&self, repo: &RepoName, reference: &Reference) -> Result<ManifestHead> {
        let (digest, m) = self.local(repo, reference).await?;
        Ok(ManifestHead {
            digest,
            media_type: m.media_type.clone(),
            size: m.bytes.len() as u64,
            cache: None,
        })
    }
}
