//! Registry logic between the HTTP API and the store: what may be read or written where, manifest
//! validation, upload flow, listings. Controllers call services; services never know HTTP.

//!
//! The registry is a few services with one job each, sharing one [`Core`] (see [`Services`]):
//! [`Manifests`] (get, head, put, delete, tags, referrers), [`Blobs`] (get, size, delete),
//! [`Uploads`] (start, mount, status, chunk, finish, cancel), [`Browse`] (the catalog and the web
//! UI's views), [`Admin`] (switches, usage, readiness, garbage collection, export and import) and
//! [`Prefetch`]. The pull-through proxy and routing are the core's, since every service needs them.

mod admin;
mod blobs;
mod browse;
mod core;
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
mod uploads;
mod usage;

use std::pin::Pin;
use std::sync::Arc;

/// What serving a stored blob takes; see [`crate::store::Stored`].
pub use crate::store::{ChunkRange, Stored};
pub use admin::Admin;
pub use blobs::Blobs;
pub use browse::{Browse, Item, ManifestView, RepoList, RepoSummary, RepoView, TagRow};
pub use core::Core;
pub use fill::{ClusterPeers, PeerBlob};
pub use listing::{Page, listing_limit};
pub use manifests::{ManifestBody, ManifestHead, Manifests, PutManifest};
pub use prefetch::Prefetch;
pub use route::{Proxied, Route, resolve};
pub use switches::Switches;
pub use uploads::{CancelOnDrop, Mount, UploadState, Uploads};
pub use usage::{Part, Usage};
// What the edges see of the floors below, so they import only the service (ARCHITECTURE.md,
// "Layers"): `Error` wraps these two, and blob bodies and chunk uploads carry the store's types.
pub use crate::store::Error as StoreError;
pub use crate::upstream::Error as UpstreamError;
/// The internal blob endpoint's path and secret header (cluster mode), for the API to route.
pub use crate::upstream::{PEER_BLOB_PATH, PEER_SECRET_HEADER};

use crate::notify::Notifier;
use crate::oci::{Digest, NameError, RepoName};
use crate::store::{self, Store};
use crate::upstream;

/// Every service, over one shared [`Core`]. Cheap to clone; shared by every request. Controllers
/// (`api`, `ui`, `cli`) call services; services never call controllers.
#[derive(Clone)]
pub struct Services {
    /// What the services share; the edges read metrics, the notifier and the store from it.
    pub core: Arc<Core>,
    pub manifests: Manifests,
    pub blobs: Blobs,
    pub uploads: Uploads,
    pub browse: Browse,
    pub admin: Admin,
    pub prefetch: Prefetch,
}

impl Services {
    /// The services over `core`, which they hold once between them.
    pub fn new(core: Core) -> Services {
        let core = Arc::new(core);
        let manifests = Manifests { core: core.clone() };
        let blobs = Blobs { core: core.clone() };
        Services {
            uploads: Uploads { core: core.clone() },
            browse: Browse { core: core.clone() },
            admin: Admin { core: core.clone() },
            prefetch: Prefetch {
                core: core.clone(),
                manifests: manifests.clone(),
                blobs: blobs.clone(),
            },
            manifests,
            blobs,
            core,
        }
    }
}

impl From<Core> for Services {
    fn from(core: Core) -> Services {
        Services::new(core)
    }
}

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

/// How many times [`register`] waits 50 ms for a sweep to forget a blob.
const REGISTER_WAITS: u32 = 100;
