//! The seam between the service and an upstream registry: what the service may ask of one, with
//! no HTTP client type in sight. [`super::Upstream`] is the real one; tests may put an in-process
//! fake behind it to produce faults a real registry cannot (see `fault`).

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;

use super::{RemoteHead, RemoteManifest, Result};
use crate::config::UpstreamSettings;
use crate::metrics::UpstreamMetrics;
use crate::oci::Digest;

/// A blob body as it streams in from an upstream.
pub struct RemoteBlob {
    /// The announced length (`Content-Length`), when the upstream sent one.
    pub size: Option<u64>,
    /// The whole blob's size when the upstream told it: the announced length of a whole body, or
    /// the total of a part's `Content-Range`.
    pub whole: Option<u64>,
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
            .field("whole", &self.whole)
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

    /// GET the bytes `start..start + len` of a blob (a lazy-pulling client's range on a miss,
    /// fetched beside the fill). `size` is then `len`; the body is exactly those bytes, or ends in
    /// an error (fewer bytes are an error too). Unverified, like `get_blob`, and a part cannot be
    /// checked against the digest: never store it. The default fetches the whole blob and skips
    /// to the part, for an upstream that has no ranges; one that does sends a `Range`.
    async fn get_blob_range(&self, name: &str, digest: &Digest, start: u64, len: u64) -> Result<RemoteBlob> {
        let whole = self.get_blob(name, digest).await?;
        Ok(RemoteBlob {
            size: Some(len),
            body: part_of(whole.body, start, len, self.name().to_owned()),
            ..whole
        })
    }

    /// HEAD a blob: its size, when the upstream has it and says.
    async fn head_blob(&self, name: &str, digest: &Digest) -> Result<Option<u64>>;

    /// The referrers index of `subject`, unfiltered; `NotFound` without a referrers API.
    async fn referrers(&self, name: &str, subject: &Digest) -> Result<Bytes>;

    /// The tag list (`query` passed through), the JSON body as it came.
    async fn tags(&self, name: &str, query: &str) -> Result<Bytes>;
}

/// The bytes `start..start + len` of `body`, a stream of the whole blob (or of bytes from
/// `start` on, with `start` 0): the rest is skipped, and a body that ends early ends in an error.
pub(crate) fn part_of(
    body: BoxStream<'static, Result<Bytes>>,
    start: u64,
    len: u64,
    upstream: String,
) -> BoxStream<'static, Result<Bytes>> {
    let state = (body, 0u64, start, start + len, upstream);
    futures_util::stream::unfold(Some(state), |state| async move {
        let (mut body, mut pos, start, end, upstream) = state?;
        loop {
            if pos >= end {
                return None;
            }
            let chunk = match body.next().await {
                Some(Ok(chunk)) => chunk,
                Some(Err(e)) => return Some((Err(e), None)),
                None => {
                    let reason = format!("blob body ended at byte {pos}, before the range's end at {end}");
                    return Some((Err(super::Error::Unavailable { upstream, reason }), None));
                }
            };
            let (from, to) = (pos, pos + chunk.len() as u64);
            pos = to;
            if to <= start {
                continue;
            }
            let cut = chunk.slice(start.saturating_sub(from) as usize..(end.min(to) - from) as usize);
            return Some((Ok(cut), Some((body, pos, start, end, upstream))));
        }
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn collect(chunks: &[&'static [u8]], start: u64, len: u64) -> (Vec<u8>, bool) {
        let chunks: Vec<Result<Bytes>> = chunks.iter().map(|c| Ok(Bytes::from_static(c))).collect();
        let body = futures_util::stream::iter(chunks).boxed();
        let mut part = part_of(body, start, len, "hub".into());
        let mut got = Vec::new();
        while let Some(item) = part.next().await {
            match item {
                Ok(bytes) => got.extend_from_slice(&bytes),
                Err(_) => return (got, true),
            }
        }
        (got, false)
    }

    #[tokio::test]
    async fn a_part_is_cut_from_the_whole_body_across_its_batches() {
        let chunks: &[&'static [u8]] = &[b"0123", b"4567", b"89"];
        assert_eq!(collect(chunks, 0, 10).await, (b"0123456789".to_vec(), false));
        assert_eq!(collect(chunks, 3, 4).await, (b"3456".to_vec(), false));
        assert_eq!(collect(chunks, 4, 4).await, (b"4567".to_vec(), false));
        assert_eq!(collect(chunks, 9, 1).await, (b"9".to_vec(), false));
        let (got, failed) = collect(chunks, 8, 5).await;
        assert!(
            failed,
            "a body that ends before the part does is an error, not a short part"
        );
        assert_eq!(got, b"89");
    }
}
