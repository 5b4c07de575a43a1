//! The client for other replicas' internal blob endpoint (cluster mode): a replica whose client
//! waits for a blob another replica is filling streams it from there
//! (`GET {advertise}/_berth/cluster/blobs/{digest}?repo=…`) instead of fetching it upstream again.
//!
//! Requests carry the cluster secret (`[cluster] secret_env`) in [`PEER_SECRET_HEADER`]; the
//! receiving replica checks it with [`Peers::admits`]. Redirects are refused, so the secret never
//! leaves for another host. A peer's bytes are as unverified as an upstream's: the caller hashes.

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{CONTENT_RANGE, RANGE};
use sha2::{Digest as _, Sha256};

use super::{Error, RemoteBlob, Result, blob_response};
use crate::metrics::UpstreamMetrics;
use crate::oci::{Digest, RepoName};

/// Where the internal blob endpoint lives; the digest follows.
pub const PEER_BLOB_PATH: &str = "/_berth/cluster/blobs/";

/// The request header that carries the cluster secret.
pub const PEER_SECRET_HEADER: &str = "x-berth-cluster-secret";

/// How long a peer connection may stay silent. A leader's own upstream may pause longer than a
/// read takes; the follower then re-claims and resumes, so this bounds a dead peer, not a slow one.
const PEER_TIMEOUT: Duration = Duration::from_secs(30);

/// The other replicas of a cluster, as blob sources, and the secret they share.
pub struct Peers {
    http: reqwest::Client,
    secret: String,
    /// SHA-256 of the secret: what a presented secret is compared with, in constant time.
    hashed: [u8; 32],
    /// Body errors of peer streams; detached (not exported): peers are not upstreams.
    metrics: UpstreamMetrics,
}

impl std::fmt::Debug for Peers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peers").finish_non_exhaustive()
    }
}

impl Peers {
    /// Peers sharing `secret`. An empty secret is refused: it would admit anyone.
    pub fn new(secret: String) -> Result<Peers, String> {
        if secret.is_empty() {
            return Err("the cluster secret is empty; set the variable [cluster] secret_env names".into());
        }
        let http = super::http_client(PEER_TIMEOUT).map_err(|e| format!("building the peer client: {e}"))?;
        Ok(Peers {
            http,
            hashed: Sha256::digest(secret.as_bytes()).into(),
            secret,
            metrics: UpstreamMetrics::default(),
        })
    }

    /// Whether `presented` is the cluster secret. Compares hashes (fixed length) without an
    /// early exit, so the time taken says nothing about how much of it matched.
    pub fn admits(&self, presented: Option<&str>) -> bool {
        let Some(presented) = presented else {
            return false;
        };
        let hashed: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        hashed.iter().zip(&self.hashed).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }

    /// GET blob `digest` of `repo` (the local repository name, which routes the same on every
    /// replica) from the replica at `base`, from byte `from` on. The answer's `size` is the
    /// number of bytes from `from` to the end; a peer that answers another range is refused.
    /// `Invalid` when the peer refuses the secret (a misconfiguration, which retrying cannot
    /// mend); `Unavailable` when it cannot be reached or fails.
    pub async fn get_blob(&self, base: &str, repo: &RepoName, digest: &Digest, from: u64) -> Result<RemoteBlob> {
        let query = form_urlencoded::Serializer::new(String::new())
            .append_pair("repo", repo.as_str())
            .finish();
        let url = format!("{}{PEER_BLOB_PATH}{digest}?{query}", base.trim_end_matches('/'));
        let unavailable = |reason: String| Error::Unavailable {
            upstream: base.to_owned(),
            reason,
        };
        let mut request = self.http.get(&url).header(PEER_SECRET_HEADER, &self.secret);
        if from > 0 {
            request = request.header(RANGE, format!("bytes={from}-"));
        }
        let response = request.send().await.map_err(|e| unavailable(e.to_string()))?;
        match response.status() {
            StatusCode::OK if from == 0 => {}
            StatusCode::PARTIAL_CONTENT if from > 0 => {
                let answered = response.headers().get(CONTENT_RANGE).and_then(|v| v.to_str().ok());
                if !answered.is_some_and(|a| a.starts_with(&format!("bytes {from}-"))) {
                    return Err(unavailable(format!(
                        "asked from byte {from}, got Content-Range {answered:?}"
                    )));
                }
            }
            StatusCode::NOT_FOUND => return Err(Error::NotFound),
            // A configuration error, not an outage: waiting would not mend it.
            status @ (StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) => {
                return Err(Error::Invalid {
                    upstream: base.to_owned(),
                    reason: format!(
                        "the replica refused this one's cluster secret ({status}); is secret_env the same on every replica?"
                    ),
                });
            }
            status => return Err(unavailable(format!("peer answered {status}"))),
        }
        Ok(blob_response(response, self.metrics.clone(), base.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::Peers;

    #[test]
    fn only_the_exact_secret_is_admitted_and_an_empty_one_is_refused() {
        crate::install_crypto_provider();
        let peers = Peers::new("s3cret-value".into()).unwrap();
        assert!(peers.admits(Some("s3cret-value")));
        for wrong in [
            None,
            Some(""),
            Some("s3cret-valu"),
            Some("s3cret-value "),
            Some("S3CRET-VALUE"),
        ] {
            assert!(!peers.admits(wrong), "{wrong:?}");
        }
        assert!(Peers::new(String::new()).is_err(), "an empty secret would admit anyone");
    }
}
