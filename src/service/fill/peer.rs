//! Cluster mode, both sides of a fill shared between replicas: [`ClusterPeers`] (the other
//! replicas as a fill's source, and the secret they share), and the answer to another replica's
//! request for a blob this one is filling or has ([`Blobs::for_peer`], behind the internal
//! endpoint).
//!
//! A peer's request never follows a third replica: it is served from the store, joins a fill led
//! here, or leads one. Its body is the fill's as any client gets it: bytes as they arrive, the
//! last one only once the digest verified (so a peer's copy can only complete with the blob).

use std::sync::Arc;
use std::time::Duration;

use super::super::proxy::{blob_error, fill_error, upstream_offline};
use super::super::route::{Proxied, Route};
use super::super::{Blobs, Core, Error, Result};
use crate::oci::{Digest, RepoName};
use crate::store::ByteStream;
use crate::upstream::Peers;

/// The other replicas of a cluster, as the service sees them: where a fill led elsewhere
/// streams from, and the secret a replica's internal request must carry.
#[derive(Clone)]
pub struct ClusterPeers {
    peers: Arc<Peers>,
    lease: Duration,
}

impl ClusterPeers {
    /// Peers authenticating with `secret` (`[cluster] secret_env`), whose fill leases last
    /// `lease` (`[cluster] lease`): a follower whose leader stopped polls for the takeover at
    /// that pace. An empty secret is refused.
    pub fn new(secret: String, lease: Duration) -> std::result::Result<ClusterPeers, String> {
        Ok(ClusterPeers {
            peers: Arc::new(Peers::new(secret)?),
            lease,
        })
    }

    pub(super) fn peers(&self) -> &Peers {
        &self.peers
    }

    /// How often a follower whose leader stopped claims the fill again.
    pub(super) fn poll(&self) -> Duration {
        (self.lease / 5).clamp(Duration::from_millis(50), Duration::from_secs(1))
    }

    /// How long a follower waits without a byte for the fill to be taken over: the dead leader's
    /// lease must expire first, then a claim must win it and reach the upstream.
    pub(super) fn patience(&self) -> Duration {
        self.lease * 3 + Duration::from_secs(10)
    }
}

/// A blob for another replica's fill: the bytes from `from` on, of `size` in all (when known).
pub struct PeerBlob {
    pub size: Option<u64>,
    pub from: u64,
    pub body: ByteStream,
}

impl Blobs {
    /// Whether this replica is part of a cluster (the internal endpoint exists).
    pub fn cluster_mode(&self) -> bool {
        self.core.fills.cluster().is_some()
    }

    /// Blob `digest` of `repo` from byte `from` on, for the replica that presented `secret`.
    pub async fn for_peer(
        &self,
        secret: Option<&str>,
        repo: &RepoName,
        digest: &Digest,
        from: u64,
    ) -> Result<PeerBlob> {
        let Some(cluster) = self.core.fills.cluster() else {
            return Err(Error::Unsupported("cluster mode is off"));
        };
        if !cluster.peers().admits(secret) {
            return Err(Error::Unauthorized {
                challenge: String::new(),
            });
        }
        // Followers only stream proxied blobs; a private one is never filled.
        let Route::Proxied(p) = self.core.route(repo, None).await? else {
            return Err(Error::BlobUnknown(digest.clone()));
        };
        self.core.peer_blob(&p, digest, from).await
    }
}

impl Core {
    async fn peer_blob(&self, p: &Proxied, digest: &Digest, from: u64) -> Result<PeerBlob> {
        if let Some(blob) = self.cached_blob(p, digest).await? {
            let size = blob.size();
            if from > size {
                return Err(Error::ContentRange(format!(
                    "byte {from} is past the end of the blob ({size})"
                )));
            }
            let body = blob.range(from, size - from).ok_or(Error::Unsupported(
                "a blob served by redirect cannot stream to a replica",
            ))?;
            self.metrics.fills_served_to_peers.inc();
            return Ok(PeerBlob {
                size: Some(size),
                from,
                body,
            });
        }
        if p.upstream.is_offline() {
            return Err(blob_error(upstream_offline(p), digest));
        }
        let fill = self
            .fills
            .join_or_start(&self.coord, &self.store, p, digest, true)
            .await;
        if fill.repo != p.local || fill.upstream != p.upstream.name() {
            self.confirm_upstream_has(p, digest).await?;
        }
        let waiter = self.fills.waiter();
        let size = fill.started().await.map_err(|e| fill_error(e, digest))?;
        if size.is_some_and(|size| from > size) || (size.is_none() && from > 0) {
            return Err(Error::ContentRange(format!("byte {from} is past the end of the blob")));
        }
        self.metrics.fills_served_to_peers.inc();
        Ok(PeerBlob {
            size,
            from,
            body: Box::pin(fill.stream_from(from, waiter)),
        })
    }
}
