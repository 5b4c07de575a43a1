//! Single-flight cache fills for blobs. The first miss for a digest starts one upstream fetch in
//! its own task (a client that disconnects does not cancel it).
//!
//! Each batch of bytes from the upstream goes two ways without being copied: into a window of
//! recent bytes that waiting clients are served from, and to the store's [`BlobWriter`] (on the
//! filesystem, a thread that hashes it and appends it to a temporary file). The network side and
//! the hashing and disk side so run on separate cores, and a client that keeps up never reads its
//! bytes back. A client that falls more than `RECENT` bytes behind reads them back through the
//! writer instead.
//!
//! Who leads a fill is the [`Coordinator`]'s decision (single-flight per digest); a request that
//! follows a fill led in this process joins its window and readers. In cluster mode a fill led by
//! another replica is followed by one local fill whose source is that replica (`source`), so this
//! replica's clients share one window as well, and get bytes before the leader has them all;
//! `peer` serves the other side, a replica's request for a fill led here.
//!
//! A reader never gets the last byte before the digest has verified, so a response of unverified
//! bytes cannot complete normally: on a mismatch the writer is dropped (which discards its bytes)
//! and every reader's body ends in an error, which aborts the HTTP response.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;

use bytes::Bytes;
use tokio::sync::watch;

use crate::coord::{Coordinator, FillClaim};
use crate::metrics::{Metrics, Tracked};
use crate::oci::{Digest, RepoName};
use crate::store::{self, ReadBack, Store};
use crate::upstream;

use super::route::Proxied;

mod job;
mod lazy;
mod peer;
mod reader;
mod source;
pub use lazy::{Early, known_size, ranged};
pub use peer::{ClusterPeers, PeerBlob};
use reader::Recent;
use source::Source;

/// The progress of one fill, broadcast to its readers.
#[derive(Clone, Debug)]
pub enum FillProgress {
    Connecting,
    /// `received` bytes may be served from memory (`Fill::recent`) and the first `written` of
    /// them can be read back from the writer.
    Streaming {
        size: Option<u64>,
        received: u64,
        written: u64,
    },
    /// All bytes are in and match the digest: readers may finish. The blob is being made durable
    /// and published; a response never waits for that.
    Verified {
        size: u64,
    },
    /// Published in the store.
    Done {
        size: u64,
    },
    Failed(FillError),
}

/// Why a fill failed, as waiters report it.
#[derive(Clone, Debug)]
pub enum FillError {
    Upstream(upstream::Error),
    /// The bytes did not match the digest; nothing was kept.
    Corrupt(String),
    Io(String),
    /// The store is full: nothing was kept, and the client is told so (507), not a server fault.
    Full(String),
}

impl From<store::Error> for FillError {
    /// A full store is told apart, so its 507 survives the trip through the fill's progress.
    fn from(e: store::Error) -> FillError {
        match e {
            store::Error::Full(io) => FillError::Full(io.to_string()),
            other => FillError::Io(other.to_string()),
        }
    }
}

pub struct Fill {
    pub digest: Digest,
    /// The repository (and its upstream) the fill was started for; a request from another
    /// repository may join only once its own upstream confirms that repository has the blob.
    pub repo: RepoName,
    pub upstream: String,
    /// The bytes written so far; set before the first byte is announced.
    written: OnceLock<Arc<dyn ReadBack>>,
    progress: watch::Sender<FillProgress>,
    recent: Mutex<Recent>,
    /// Set by a ranged request asked for upstream before this fill's own request ([`Early`]):
    /// the fill's request waits for that part's answer to begin (see `lazy`).
    part_first: Mutex<Option<tokio::sync::oneshot::Receiver<()>>>,
}

/// Starts and joins fills; which fills are in flight is the coordinator's to know, except the
/// ones following another replica (the coordinator knows leaders only).
pub struct Fills {
    metrics: Arc<Metrics>,
    notifier: Arc<crate::notify::Notifier>,
    /// Cluster mode: the other replicas, to stream fills they lead from.
    cluster: Option<ClusterPeers>,
    /// Fills of this process that follow another replica, so this process's other requests for
    /// the digest join them instead of opening a second stream.
    following: Mutex<HashMap<Digest, Arc<Fill>>>,
}

impl Fills {
    pub fn new(metrics: Arc<Metrics>, notifier: Arc<crate::notify::Notifier>) -> Fills {
        Fills {
            metrics,
            notifier,
            cluster: None,
            following: Mutex::default(),
        }
    }

    /// Stream fills that another replica leads from it (cluster mode).
    pub fn with_cluster(mut self, cluster: ClusterPeers) -> Fills {
        self.cluster = Some(cluster);
        self
    }

    /// The cluster's peers, in cluster mode.
    pub fn cluster(&self) -> Option<&ClusterPeers> {
        self.cluster.as_ref()
    }

    /// Count a client waiting for (or streaming from) a fill, for as long as the guard lives.
    pub fn waiter(&self) -> Tracked {
        Tracked::new(&self.metrics.fill_waiters)
    }

    /// Join the fill of `digest` for the proxied repository `p`, or start one: `coord` decides
    /// which. `for_peer`: the request comes from another replica's fill, so it must not follow
    /// another replica in turn (no chains, no cycles): it joins a fill led here, or leads.
    pub async fn join_or_start(
        self: &Arc<Self>,
        coord: &Arc<dyn Coordinator>,
        store: &Store,
        p: &Proxied,
        digest: &Digest,
        for_peer: bool,
    ) -> Arc<Fill> {
        if !for_peer && let Some(following) = self.following.lock().get(digest).cloned() {
            self.metrics.fill_joins.inc();
            return following;
        }
        let (progress, _) = watch::channel(FillProgress::Connecting);
        let fill = Arc::new(Fill {
            digest: digest.clone(),
            repo: p.local.clone(),
            upstream: p.upstream.name().to_owned(),
            written: OnceLock::new(),
            progress,
            recent: Mutex::default(),
            part_first: Mutex::default(),
        });
        let (lease, source) = match coord.claim_fill(digest, fill.clone()).await {
            Ok(FillClaim::Lead(lease)) => (Some(lease), Source::Upstream),
            Ok(FillClaim::Follow(leader)) => {
                match (leader.local.and_then(|f| f.downcast::<Fill>().ok()), leader.leader_url) {
                    (Some(leader), _) => {
                        self.metrics.fill_joins.inc();
                        return leader;
                    }
                    (None, Some(url)) if !for_peer && self.cluster.is_some() => match self.follow(&fill) {
                        Some(running) => {
                            self.metrics.fill_joins.inc();
                            return running;
                        }
                        None => (None, Source::Peer(url)),
                    },
                    // Led by another replica, but this request is a peer's (which must not follow
                    // in turn), or there are no peers to stream from: fetching again is correct, only
                    // not single-flight.
                    _ => (None, Source::Upstream),
                }
            }
            // Coordination is down: serving the client matters more than single-flight.
            Err(e) => {
                tracing::warn!(%digest, error = %e, "fill claim failed; fetching without one");
                (None, Source::Upstream)
            }
        };
        let job = job::Job {
            lease,
            fills: self.clone(),
            fill: fill.clone(),
            store: store.clone(),
            upstream: p.upstream.clone(),
            remote: p.remote.clone(),
            local: p.local.clone(),
            source,
            coord: coord.clone(),
            cluster: self.cluster.clone(),
            give_up_at: None,
        };
        tokio::spawn(job.run());
        fill
    }

    /// Record `fill` as this process's follower of its digest, unless a concurrent request
    /// recorded one first: then that one, to join.
    fn follow(&self, fill: &Arc<Fill>) -> Option<Arc<Fill>> {
        let mut following = self.following.lock();
        if let Some(running) = following.get(&fill.digest) {
            return Some(running.clone());
        }
        following.insert(fill.digest.clone(), fill.clone());
        None
    }

    /// Forget `fill` as a follower (it ended).
    fn unfollow(&self, fill: &Arc<Fill>) {
        let mut following = self.following.lock();
        if following.get(&fill.digest).is_some_and(|f| Arc::ptr_eq(f, fill)) {
            following.remove(&fill.digest);
        }
    }
}

impl Fill {
    /// The spool has written the first `written` bytes to the file.
    fn written(&self, written: u64) {
        self.progress.send_modify(|p| {
            if let FillProgress::Streaming { written: w, .. } = p {
                *w = written;
            }
        });
    }

    /// Add a batch that brings the bytes received to `received` to the window readers are served
    /// from, and announce it.
    fn offer(&self, batch: &[Bytes], received: u64) {
        let written = match *self.progress.borrow() {
            FillProgress::Streaming { written, .. } => written,
            _ => 0,
        };
        self.recent.lock().add(batch, written);
        self.progress.send_modify(|p| {
            if let FillProgress::Streaming { received: r, .. } = p {
                *r = received;
            }
        });
    }

    /// Wait until the upstream answered: the blob's size if known, or why the fill failed.
    pub async fn started(&self) -> Result<Option<u64>, FillError> {
        let mut rx = self.progress.subscribe();
        loop {
            match &*rx.borrow_and_update() {
                FillProgress::Connecting => {}
                FillProgress::Streaming { size, .. } => return Ok(*size),
                FillProgress::Verified { size } | FillProgress::Done { size } => return Ok(Some(*size)),
                FillProgress::Failed(e) => return Err(e.clone()),
            }
            if rx.changed().await.is_err() {
                return Err(FillError::Io("fill ended without a result".into()));
            }
        }
    }

    /// Whether every byte is in and verified (the fill is only publishing): a request that
    /// joins now is served like a cache hit.
    pub fn verified(&self) -> bool {
        matches!(
            *self.progress.borrow(),
            FillProgress::Verified { .. } | FillProgress::Done { .. }
        )
    }

    /// Wait until the blob is verified and published (or the fill failed).
    pub async fn finished(&self) -> Result<u64, FillError> {
        let mut rx = self.progress.subscribe();
        loop {
            match &*rx.borrow_and_update() {
                FillProgress::Done { size } => return Ok(*size),
                FillProgress::Failed(e) => return Err(e.clone()),
                _ => {}
            }
            if rx.changed().await.is_err() {
                return Err(FillError::Io("fill ended without a result".into()));
            }
        }
    }
}

#[cfg(test)]
mod tests;
