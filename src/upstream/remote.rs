//! The seam between the service and an upstream registry: what the service may ask of one, with
//! no HTTP client type in sight. [`super::Upstream`] is the real one; tests may put an in-process
//! fake behind it to produce faults a real registry cannot (see `fault`).

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::BoxStream;

use super::{RemoteHead, RemoteManifest, Result};
use crate::config::UpstreamSettings;
use crate::metrics::UpstreamMetrics;
use crate::oci::Digest;

/// A blob body as it streams in from an upstream.
pub struct RemoteBlob {
    /// The announced length (`Content-Length`), when the upstream sent one.
    pub size: Option<u64>,
    pub content_type: Option<String>,
    /// The upstream's `Docker-Content-Digest`, when sent (unverified: the caller hashes).
    pub digest: Option<Digest>,
    /// The bytes, in the batches they arrived in. An error ends the body: the connection broke or
    /// stalled, and the error says so in the service's terms (already counted in the metrics).
    pub body: BoxStream<'static, Result<Bytes>>,
}

impl std::fmt::Debug for RemoteBlob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteBlob")
            .field("size", &self.size)
            .field("content_type", &self.content_type)
            .field("digest", &self.digest)
            .finish_non_exhaustive()
    }
}

/// One upstream registry, as the service uses it.
///
/// Contract:
/// - Every request method fails with `Error::Offline`, sending nothing, while offline mode is on.
/// - `NotFound` means the upstream answered 404; `Unavailable`, `RateLimited` and `Invalid` say
///   why it could not answer (the service serves stale content on the first two).
/// - `get_manifest` verifies the bytes against `expected` (or the announced digest) and refuses
///   bodies over `oci::MAX_MANIFEST_BYTES`; `get_blob` does not verify: its caller hashes.
/// - Credentials configured for this upstream go only to it and its token realm.
#[async_trait]
pub trait Remote: Send + Sync + std::fmt::Debug {
    /// The configured settings (name, TTLs, fill rate limits).
    fn settings(&self) -> &UpstreamSettings;

    fn name(&self) -> &str {
        &self.settings().name
    }

    /// The counters this upstream's requests go to.
    fn metrics(&self) -> &UpstreamMetrics;

    /// Whether offline mode is on: no request reaches this upstream.
    fn is_offline(&self) -> bool;

    /// Turn offline mode on or off; returns the previous state.
    fn set_offline(&self, on: bool) -> bool;

    /// HEAD a manifest (Docker Hub does not count HEADs against its pull rate limit).
    async fn head_manifest(&self, name: &str, reference: &str, accept: &[String]) -> Result<RemoteHead>;

    /// GET a manifest, verified.
    async fn get_manifest(
        &self,
        name: &str,
        reference: &str,
        accept: &[String],
        expected: Option<&Digest>,
    ) -> Result<RemoteManifest>;

    /// GET a blob: its body streams.
    async fn get_blob(&self, name: &str, digest: &Digest) -> Result<RemoteBlob>;

    /// HEAD a blob: its size, when the upstream has it and says.
    async fn head_blob(&self, name: &str, digest: &Digest) -> Result<Option<u64>>;

    /// The referrers index of `subject`, unfiltered; `NotFound` without a referrers API.
    async fn referrers(&self, name: &str, subject: &Digest) -> Result<Bytes>;

    /// The tag list (`query` passed through), the JSON body as it came.
    async fn tags(&self, name: &str, query: &str) -> Result<Bytes>;
}
