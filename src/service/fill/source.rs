//! Where a fill's bytes come from, and how a fill led by another replica carries on when that
//! replica dies (cluster mode).
//!
//! A follower streams from the leader's internal endpoint. When the stream breaks, it claims the
//! fill again: if the leader's lease expired it now leads (a higher generation), and resumes from
//! the upstream with a `Range` from the bytes it has, so the blob is never fetched whole twice;
//! if another replica leads, it resumes from that one. While the dead leader's lease has not
//! expired yet it polls. It gives up once no byte has come for [`ClusterPeers::patience`], so a
//! fill never hangs.

use std::fmt;

use futures_util::StreamExt;

use super::FillError;
use super::job::Job;
use crate::coord::{FillClaim, FillFollower};
use crate::upstream::{self, RemoteBlob};

/// The source of a fill's bytes.
#[derive(Clone, Debug)]
pub(super) enum Source {
    /// The repository's upstream.
    Upstream,
    /// The replica advertised at this URL, which leads the fill.
    Peer(String),
}

impl Source {
    pub(super) fn is_peer(&self) -> bool {
        matches!(self, Source::Peer(_))
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Upstream => f.write_str("upstream"),
            Source::Peer(url) => write!(f, "replica {url}"),
        }
    }
}

impl Job {
    /// The blob's bytes from `from` on (of `size`, once known), from the current source. A
    /// replica that cannot be reached is claimed around, as after a broken stream.
    pub(super) async fn open(&mut self, from: u64, size: Option<u64>) -> Result<RemoteBlob, FillError> {
        let deadline = self.deadline();
        self.open_by(from, size, deadline).await
    }

    /// The rest of a body whose stream from a replica broke at `from`. `progressed`: whether
    /// that stream brought any bytes (the wait for a takeover then starts afresh).
    pub(super) async fn resume(
        &mut self,
        from: u64,
        size: Option<u64>,
        progressed: bool,
    ) -> Result<futures_util::stream::BoxStream<'static, upstream::Result<bytes::Bytes>>, FillError> {
        if progressed || self.give_up_at.is_none() {
            self.give_up_at = Some(self.deadline());
        }
        let deadline = self.give_up_at.expect("set above");
        Ok(self.open_by(from, size, deadline).await?.body)
    }

    fn deadline(&self) -> tokio::time::Instant {
        let patience = self.cluster.as_ref().map(|c| c.patience()).unwrap_or_default();
        tokio::time::Instant::now() + patience
    }

    async fn open_by(
        &mut self,
        from: u64,
        size: Option<u64>,
        deadline: tokio::time::Instant,
    ) -> Result<RemoteBlob, FillError> {
        loop {
            let url = match &self.source {
                Source::Upstream => return self.upstream_body(from, size).await,
                Source::Peer(url) => url.clone(),
            };
            let cluster = self
                .cluster
                .clone()
                .expect("a fill follows a replica only in cluster mode");
            match cluster
                .peers()
                .get_blob(&url, &self.local, &self.fill.digest, from)
                .await
            {
                Ok(blob) => {
                    if from == 0 {
                        self.fills.metrics.fills_from_peers.inc();
                    }
                    return Ok(blob);
                }
                // The replicas disagree on the secret: serve the clients from the upstream, not
                // single-flight, rather than wait for a lease that never ends.
                Err(e @ upstream::Error::Invalid { .. }) => {
                    tracing::error!(digest = %self.fill.digest, %url, error = %e, "cannot stream from the leading replica; fetching from the upstream");
                    self.source = Source::Upstream;
                    continue;
                }
                Err(e) => {
                    tracing::debug!(digest = %self.fill.digest, %url, error = %e, "the leading replica did not answer")
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(FillError::Upstream(upstream::Error::Unavailable {
                    upstream: url,
                    reason: format!(
                        "the replica leading this fill stopped, and none took it over within {:?}",
                        cluster.patience()
                    ),
                }));
            }
            tokio::time::sleep(cluster.poll()).await;
            self.claim_again().await;
        }
    }

    /// Claim the fill again: lead it if the leader's lease expired, or follow the new leader.
    async fn claim_again(&mut self) {
        match self.coord.claim_fill(&self.fill.digest, self.fill.clone()).await {
            Ok(FillClaim::Lead(lease)) => {
                tracing::info!(digest = %self.fill.digest, generation = lease.generation(), "took over the fill from a replica that stopped");
                self.fills.metrics.fills_resumed_upstream.inc();
                self.lease = Some(lease);
                self.source = Source::Upstream;
            }
            Ok(FillClaim::Follow(FillFollower {
                leader_url: Some(url), ..
            })) => self.source = Source::Peer(url),
            // Led by another fill in this process: cannot be, since this process's requests
            // join this fill while it runs; wait for the lease instead.
            Ok(FillClaim::Follow(_)) => {}
            Err(e) => tracing::warn!(digest = %self.fill.digest, error = %e, "fill claim failed; retrying"),
        }
    }

    /// The blob from the upstream, from byte `from` on: a ranged request when resuming.
    async fn upstream_body(&self, from: u64, size: Option<u64>) -> Result<RemoteBlob, FillError> {
        let digest = &self.fill.digest;
        if from == 0 {
            return self
                .upstream
                .get_blob(&self.remote, digest)
                .await
                .map_err(FillError::Upstream);
        }
        let Some(size) = size else {
            return Err(FillError::Upstream(upstream::Error::Unavailable {
                upstream: self.upstream.name().to_owned(),
                reason: "cannot resume a blob whose size was not announced".into(),
            }));
        };
        if from >= size {
            // Every byte is in; only the end of the stream was missing.
            return Ok(RemoteBlob {
                size: Some(0),
                whole: Some(size),
                content_type: None,
                digest: None,
                body: futures_util::stream::empty().boxed(),
            });
        }
        self.upstream
            .get_blob_range(&self.remote, digest, from, size - from)
            .await
            .map_err(FillError::Upstream)
    }
}
