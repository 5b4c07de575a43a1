//! Registry logic between the HTTP API and the store: what may be read or written where, manifest
//! validation, upload flow, listings. Controllers call services; services never know HTTP.

mod blobs;
mod browse;
mod fill;
pub mod gc;
// issue 15: `berth export` and `berth import` in the OCI image layout.
pub mod layout;
mod listing;
mod manifests;
mod memo;
pub mod prefetch;
mod proxy;
mod referrers;
mod route;
mod switches;
mod usage;

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::Instant;

/// What serving a stored blob takes; see [`crate::store::Stored`].
pub use crate::store::{ChunkRange, Stored};
pub use blobs::{CancelOnDrop, Mount, UploadState};
pub use browse::{Item, ManifestView, RepoList, RepoSummary, RepoView, TagRow};
pub use listing::{Page, listing_limit};
pub use manifests::{ManifestBody, ManifestHead, PutManifest};
pub use route::{Proxied, Route, resolve};
pub use switches::Switches;
pub use usage::{Part, Usage};
// What the edges see of the floors below, so they import only the service (ARCHITECTURE.md,
// "Layers"): `Error` wraps these two, and blob bodies and chunk uploads carry the store's types.
pub use crate::store::Error as StoreError;
pub use crate::upstream::Error as UpstreamError;

use crate::coord::{self, Coordinator};
use crate::metrics::Metrics;
use crate::notify::Notifier;
use crate::oci::{Digest, NameError, RepoName, Tag};
use crate::store::{self, Store};
use crate::upstream::{self, Remote, Upstream};
use memo::Memo;

/// How a proxied response was answered: one type for the `X-Berth-Cache` header, the access log
/// and the `result` label of the cache metrics (a leaf, so the metrics need not know the service).
pub use crate::metrics::CacheResult;

/// A blob to send: a stored blob (a local file, a backend's stream, or a redirect), or bytes
/// streaming in from a cache fill.
pub enum BlobBody {
    Stored(Stored, Option<CacheResult>),
    Stream {
        size: Option<u64>,
        stream: Pin<Box<dyn futures_util::Stream<Item = std::io::Result<bytes::Bytes>> + Send>>,
        cache: CacheResult,
    },
}

/// Re-exported for the API's body limits; defined in `oci`, the floor both layers share.
pub use crate::oci::MAX_MANIFEST_BYTES;

/// Every failure a registry operation can report; `api::error` maps each to its OCI code once.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Name(#[from] NameError),
    #[error("repository {0} is not known to this registry")]
    NameUnknown(RepoName),
    #[error("manifest {0} is not known in this repository")]
    ManifestUnknown(String),
    #[error("blob {0} is not known in this repository")]
    BlobUnknown(Digest),
    /// Offline mode, and the manifest is not in the cache (404 `MANIFEST_UNKNOWN`).
    #[error("upstream {upstream} is offline (berth does not contact it) and manifest {reference} is not cached")]
    ManifestOffline { reference: String, upstream: String },
    /// Offline mode, and the blob is not in the cache (404 `BLOB_UNKNOWN`).
    #[error("upstream {upstream} is offline (berth does not contact it) and blob {digest} is not cached")]
    BlobOffline { digest: Digest, upstream: String },
    #[error("manifest invalid: {0}")]
    ManifestInvalid(String),
    #[error("manifest exceeds the {MAX_MANIFEST_BYTES}-byte limit")]
    ManifestTooLarge,
    #[error("manifest references {0}, which is not in this repository")]
    ManifestBlobUnknown(Digest),
    #[error("digest mismatch: content is {actual}, not {expected}")]
    DigestMismatch { expected: String, actual: Digest },
    #[error("{0}")]
    DigestMissing(&'static str),
    #[error("invalid Content-Range {0:?}")]
    ContentRange(String),
    #[error("operation unsupported: {0}")]
    Unsupported(&'static str),
    #[error(
        "the registry is in read-only mode for maintenance: pushes and deletes are refused until an operator turns it off; pulls work"
    )]
    ReadOnly,
    #[error("deleting is turned off on this registry ([storage] delete = false)")]
    DeleteDisabled,
    #[error("{0}")]
    Denied(String),
    #[error("authentication required")]
    Unauthorized { challenge: String },
    #[error("{reason}; retry after {retry_after} s")]
    TooManyRequests { retry_after: u64, reason: String },
    #[error(transparent)]
    Upstream(#[from] upstream::Error),
    #[error(transparent)]
    Store(#[from] store::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The registry service. Cheap to clone; shared by every request.
#[derive(Clone)]
pub struct Registry {
    store: Store,
    /// Configured upstreams; the first is the default for unqualified names.
    upstreams: Arc<Vec<Arc<dyn Remote>>>,
    /// Who leads fills and periodic tasks, and where memo invalidations go.
    coord: Arc<dyn Coordinator>,
    /// Manifests by tag and digest from memory; see [`Memo`].
    memo: Arc<Memo>,
    /// `[private] namespaces` patterns.
    private: Arc<Vec<String>>,
    /// `[private] claim_on_push`: a push may claim an unclaimed name.
    claim_on_push: bool,
    fills: Arc<fill::Fills>,
    /// When each proxied tag was last confirmed with its upstream.
    fresh_tags: Arc<Mutex<HashMap<(RepoName, Tag), Instant>>>,
    /// Subjects of proxied repositories the upstream listed no referrers for, and when.
    no_referrers: Arc<referrers::Absent>,
    /// Upload sessions one client may hold open at once.
    session_limit: u32,
    /// Pulls noted in memory, flushed to the metadata store in batches.
    pulls: Arc<crate::cache::Pulls>,
    metrics: Arc<Metrics>,
    usage: Arc<usage::Cached>,
    /// Below this much free space the registry reports itself not ready.
    min_free: store::MinFree,
    /// Read-only mode and the delete switch.
    switches: Arc<Switches>,
    /// Where push, pull, delete and fill events go (nowhere unless configured).
    notifier: Arc<Notifier>,
}

impl Registry {
    /// A registry over `store`, pulling through `upstreams`, counting into a fresh [`Metrics`].
    ///
    /// Coordination is in-process ([`coord::Local`], the single-node default) until
    /// [`Registry::with_coordinator`] says otherwise.
    pub fn new(store: Store, upstreams: Vec<Upstream>) -> Registry {
        let metrics = Arc::new(Metrics::new());
        let upstreams = upstreams
            .into_iter()
            .map(|u| {
                let counters = metrics.upstream(u.name());
                Arc::new(u.with_metrics(counters)) as Arc<dyn Remote>
            })
            .collect();
        Registry::with_remotes(store, upstreams, metrics)
    }

    /// A registry over `store`, pulling through `remotes` as they are (tests put in-process fakes
    /// here), counting into `metrics`.
    pub fn with_remotes(store: Store, remotes: Vec<Arc<dyn Remote>>, metrics: Arc<Metrics>) -> Registry {
        let notifier = Arc::new(Notifier::default());
        let coord = coord::Local::shared();
        Registry {
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

    /// Coordinate fills, periodic tasks and memo invalidation through `coord` (call before
    /// serving: the memo starts over subscribed to it).
    pub fn with_coordinator(mut self, coord: Arc<dyn Coordinator>) -> Registry {
        self.memo = Memo::new(coord.clone());
        self.coord = coord;
        self
    }

    /// The coordinator: periodic tasks ask it for leadership.
    pub fn coordinator(&self) -> &Arc<dyn Coordinator> {
        &self.coord
    }

    /// Repositories matching these patterns are private even before anything is pushed.
    pub fn with_private_namespaces(mut self, patterns: Vec<String>) -> Registry {
        self.private = Arc::new(patterns);
        self
    }

    /// Whether a first push claims an unclaimed name as private (`[private] claim_on_push`).
    pub fn with_claim_on_push(mut self, claim: bool) -> Registry {
        self.claim_on_push = claim;
        self
    }

    /// At most `limit` open upload sessions per client.
    pub fn with_upload_session_limit(mut self, limit: u32) -> Registry {
        self.session_limit = limit;
        self
    }

    /// Report not ready while the store's filesystem has less than `min_free` free.
    pub fn with_min_free(mut self, min_free: store::MinFree) -> Registry {
        self.min_free = min_free;
        self
    }

    /// Send events to these `[[notifications]]` endpoints (starts one delivery task each, so it
    /// must run inside the Tokio runtime).
    pub fn with_notifications(self, endpoints: Vec<crate::config::NotificationSettings>, source: String) -> Registry {
        self.notifier.start(endpoints, source, &self.metrics);
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

/// A `fill` event: `digest` (a manifest of `media_type`, or a blob) is now cached in `repo`.
fn notify_fill(notifier: &Notifier, repo: &RepoName, digest: &Digest, media_type: Option<&str>, size: u64) {
    if !notifier.enabled() {
        return;
    }
    let target = crate::notify::Target {
        media_type: media_type.unwrap_or(crate::notify::BLOB_MEDIA_TYPE).to_owned(),
        size,
        digest: digest.to_string(),
        length: size,
        repository: repo.to_string(),
        ..Default::default()
    };
    notifier.emit(
        crate::notify::Action::Fill,
        target,
        Default::default(),
        Default::default(),
    );
}

/// Register a blob in the metadata store before publishing it, so GC counts its grace period
/// from now (see `gc`). A sweep deleting the same digest right now forgets it within moments;
/// wait for that rather than fail the push or fill.
async fn register(meta: &dyn store::Meta, digest: &Digest, size: u64) -> store::Result<()> {
    let mut waited = 0;
    loop {
        match meta.register_blob(digest, size).await {
            Err(store::Error::BlobDeleting(_)) if waited < REGISTER_WAITS => {
                waited += 1;
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            other => return other,
        }
    }
}

/// Every repository with its origin, read a page at a time (export and GC go through them all).
pub(crate) async fn all_repos(store: &Store) -> store::Result<Vec<(RepoName, store::RepoInfo)>> {
    const PAGE: usize = 1024;
    let mut out: Vec<(RepoName, store::RepoInfo)> = Vec::new();
    loop {
        let last = out.last().map(|(r, _)| r.to_string());
        let page = store.meta.repos(last.as_deref(), PAGE).await?;
        let done = page.len() < PAGE;
        out.extend(page);
        if done {
            return Ok(out);
        }
    }
}

impl Registry {
    /// See [`register`].
    async fn register(&self, digest: &Digest, size: u64) -> Result<()> {
        Ok(register(self.store.meta.as_ref(), digest, size).await?)
    }
}

/// How many times [`register`] waits 50 ms for a sweep to forget a blob.
const REGISTER_WAITS: u32 = 100;
