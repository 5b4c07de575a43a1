//! Referrers (OCI 1.1) of proxied repositories: signatures, SBOMs and attestations that point
//! at a mirrored image with `subject`.
//!
//! The upstream's referrers API is asked first. An upstream without it (distribution 2.8 answers
//! 404) is read through the tag schema instead: the tag `sha256-<hex>` holds an index of the
//! subject's referrers, which is what cosign and oras write to such registries. Either answer is
//! cached in the local repository under that same tag, so it lives for the upstream's `tag_ttl`,
//! is served stale while the upstream is down, and is served however old in offline mode. A
//! client that reads the tag schema from berth itself gets the same index.

use bytes::Bytes;
use serde_json::json;

use super::proxy::manifest_error;
use super::route::{Proxied, Route};
use super::{Cache, Error, Registry, Result};
use crate::oci::{Digest, Reference, Tag, media};
use crate::upstream::{self, RemoteManifest};

impl Registry {
    /// The referrers index of `subject` in the routed repository, filtered by `artifact_type`
    /// when given; for a proxied repository, how it was answered.
    pub async fn referrers_of(
        &self,
        route: &Route,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<(Vec<u8>, Option<Cache>)> {
        match route {
            Route::Private(repo) => Ok((self.referrers(repo, subject, artifact_type)?, None)),
            Route::Proxied(p) => {
                let (index, cache) = self.proxied_referrers(p, subject).await?;
                Ok((filtered(&index, artifact_type)?, Some(cache)))
            }
        }
    }

    /// The whole (unfiltered) referrers index of `subject` for a proxied repository.
    async fn proxied_referrers(&self, p: &Proxied, subject: &Digest) -> Result<(Bytes, Cache)> {
        let tag = schema_tag(subject);
        let reference = Reference::Tag(tag.clone());
        let cached = self
            .local(&p.local, &reference)
            .await
            .ok()
            .map(|(_, m)| m.bytes.clone());
        if (p.upstream.is_offline() || self.tag_is_fresh(p, &tag))
            && let Some(bytes) = &cached
        {
            return Ok((bytes.clone(), Cache::Hit));
        }
        match p.upstream.referrers(&p.remote, subject).await {
            // The spec makes the answer an OCI index whatever Content-Type says.
            Ok(bytes) => {
                let remote = RemoteManifest {
                    digest: Digest::sha256_of(&bytes),
                    media_type: Some(media::OCI_INDEX.to_owned()),
                    bytes: bytes.clone(),
                };
                self.cache_manifest(p, &reference, remote, Some(&tag)).await?;
                Ok((bytes, Cache::Miss))
            }
            // No referrers API upstream: the tag schema, through the ordinary tag path (TTL,
            // revalidation by HEAD, serve-stale).
            Err(upstream::Error::NotFound) => {
                let accept = [media::OCI_INDEX.to_owned()];
                match self.proxied_manifest(p, &reference, &accept).await {
                    Ok((head, Some(bytes))) => Ok((bytes, head.cache.unwrap_or(Cache::Miss))),
                    Ok((head, None)) => {
                        let (_, m) = self.local(&p.local, &Reference::Digest(head.digest.clone())).await?;
                        Ok((m.bytes.clone(), head.cache.unwrap_or(Cache::Hit)))
                    }
                    // No tag: nothing refers to the subject (yet).
                    Err(Error::ManifestUnknown(_)) => Ok((empty_index(), Cache::Miss)),
                    Err(e) => Err(e),
                }
            }
            Err(e) => match cached {
                Some(bytes) => {
                    tracing::warn!(repo = %p.local, %subject, error = %e, "upstream unavailable; serving cached referrers stale");
                    Ok((bytes, Cache::Stale))
                }
                None => Err(manifest_error(e, p, &reference)),
            },
        }
    }
}

/// The tag-schema tag of `subject`'s referrers: `<algorithm>-<hex>`.
fn schema_tag(subject: &Digest) -> Tag {
    format!("{}-{}", subject.algorithm().as_str(), subject.hex())
        .parse()
        .expect("an algorithm and a hex digest make a valid tag")
}

fn empty_index() -> Bytes {
    let index = json!({ "schemaVersion": 2, "mediaType": media::OCI_INDEX, "manifests": [] });
    Bytes::from(serde_json::to_vec(&index).expect("JSON of plain values"))
}

/// `index` with only the descriptors of `artifact_type` (all without a filter). An upstream's
/// index that is not JSON of the expected shape is an upstream fault.
fn filtered(index: &[u8], artifact_type: Option<&str>) -> Result<Vec<u8>> {
    let Some(wanted) = artifact_type else {
        return Ok(index.to_vec());
    };
    let invalid = |reason: &str| {
        Error::Upstream(upstream::Error::Invalid {
            upstream: "upstream".into(),
            reason: format!("referrers index: {reason}"),
        })
    };
    let mut value: serde_json::Value = serde_json::from_slice(index).map_err(|e| invalid(&e.to_string()))?;
    let manifests = value
        .get_mut("manifests")
        .and_then(|m| m.as_array_mut())
        .ok_or_else(|| invalid("no manifests list"))?;
    manifests.retain(|d| d.get("artifactType").and_then(|t| t.as_str()) == Some(wanted));
    Ok(serde_json::to_vec(&value).expect("JSON of parsed JSON"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schema_tag_is_algorithm_dash_hex() {
        let d: Digest = format!("sha256:{}", "ab".repeat(32)).parse().unwrap();
        assert_eq!(schema_tag(&d).as_str(), format!("sha256-{}", "ab".repeat(32)));
    }

    #[test]
    fn filtering_keeps_only_the_asked_artifact_type() {
        let index = json!({"schemaVersion": 2, "mediaType": media::OCI_INDEX, "manifests": [
            {"digest": "sha256:1", "artifactType": "application/sig"},
            {"digest": "sha256:2", "artifactType": "application/sbom"},
            {"digest": "sha256:3"},
        ]});
        let bytes = serde_json::to_vec(&index).unwrap();
        let out: serde_json::Value =
            serde_json::from_slice(&filtered(&bytes, Some("application/sbom")).unwrap()).unwrap();
        assert_eq!(
            out["manifests"],
            json!([{"digest": "sha256:2", "artifactType": "application/sbom"}])
        );
        assert_eq!(filtered(&bytes, None).unwrap(), bytes);
        assert!(filtered(b"not json", Some("x")).is_err());
    }
}
