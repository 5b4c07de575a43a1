//! Referrers (OCI 1.1) of proxied repositories: signatures, SBOMs and attestations that point
//! at a mirrored image with `subject`.
//!
//! The upstream's referrers API is asked first. An upstream without it (distribution 2.8 answers
//! 404) is read through the tag schema instead: the tag `sha256-<hex>` holds an index of the
//! subject's referrers, which is what cosign and oras write to such registries. Either answer is
//! cached in the local repository under that same tag, so it lives for the upstream's `tag_ttl`,
//! is served stale while the upstream is down, and is served however old in offline mode. A
//! client that reads the tag schema from berth itself gets the same index.

use std::collections::HashMap;
use std::time::Instant;

use bytes::Bytes;
use parking_lot::Mutex;
use serde_json::json;

use super::proxy::manifest_error;
use super::route::{Proxied, Route};
use super::{CacheResult, Error, Manifests, Result};
use crate::oci::{Digest, Reference, RepoName, Tag, media};
use crate::upstream::{self, RemoteManifest};

impl Manifests {
    /// The referrers index of `subject` in the routed repository, filtered by `artifact_type`
    /// when given; for a proxied repository, how it was answered.
    pub async fn referrers_of(
        &self,
        route: &Route,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<(Vec<u8>, Option<CacheResult>)> {
        match route {
            Route::Private(repo) => Ok((self.stored_referrers(repo, subject, artifact_type).await?, None)),
            Route::Proxied(p) => {
                let (index, cache) = self.proxied_referrers(p, subject).await?;
                Ok((filtered(&index, artifact_type)?, Some(cache)))
            }
        }
    }

    /// The whole (unfiltered) referrers index of `subject` for a proxied repository.
    async fn proxied_referrers(&self, p: &Proxied, subject: &Digest) -> Result<(Bytes, CacheResult)> {
        let tag = schema_tag(subject);
        let reference = Reference::Tag(tag.clone());
        let cached = self
            .core
            .local(&p.local, &reference)
            .await
            .ok()
            .map(|(_, m)| m.bytes.clone());
        if (p.upstream.is_offline() || self.core.tag_is_fresh(p, &tag))
            && let Some(bytes) = &cached
        {
            return Ok((bytes.clone(), CacheResult::Hit));
        }
        if cached.is_none() && self.core.no_referrers.fresh(p, subject) {
            return Ok((empty_index(), CacheResult::Hit));
        }
        match p.upstream.referrers(&p.remote, subject).await {
            // The spec makes the answer an OCI index whatever Content-Type says.
            Ok(bytes) => {
                let remote = RemoteManifest {
                    digest: Digest::sha256_of(&bytes),
                    media_type: Some(media::OCI_INDEX.to_owned()),
                    bytes: bytes.clone(),
                };
                self.core.cache_manifest(p, &reference, remote, Some(&tag)).await?;
                Ok((bytes, CacheResult::Miss))
            }
            // No referrers API upstream: the tag schema, through the ordinary tag path (TTL,
            // revalidation by HEAD, serve-stale).
            Err(upstream::Error::NotFound) => {
                let accept = [media::OCI_INDEX.to_owned()];
                match self.core.proxied_manifest(p, &reference, &accept).await {
                    Ok((head, Some(bytes))) => Ok((bytes, head.cache.unwrap_or(CacheResult::Miss))),
                    Ok((head, None)) => {
                        let (_, m) = self
                            .core
                            .local(&p.local, &Reference::Digest(head.digest.clone()))
                            .await?;
                        Ok((m.bytes.clone(), head.cache.unwrap_or(CacheResult::Hit)))
                    }
                    // No tag: nothing refers to the subject (yet); remembered for the tag TTL,
                    // so asking again does not cost two upstream requests each time.
                    Err(Error::ManifestUnknown(_)) => {
                        self.core.no_referrers.note(p, subject);
                        Ok((empty_index(), CacheResult::Miss))
                    }
                    Err(e) => Err(e),
                }
            }
            Err(e) => match cached {
                Some(bytes) => {
                    tracing::warn!(repo = %p.local, %subject, error = %e, "upstream unavailable; serving cached referrers stale");
                    Ok((bytes, CacheResult::Stale))
                }
                None => Err(manifest_error(e, p, &reference)),
            },
        }
    }
}

/// Subjects known to have no referrers upstream, each for its upstream's `tag_ttl`. Any client
/// can name any digest, so the map is bounded: when full, expired entries go, and if that is not
/// enough, all of them (the cost is only a few upstream requests).
#[derive(Debug, Default)]
pub struct Absent(Mutex<HashMap<(RepoName, Digest), Instant>>);

/// Entries [`Absent`] holds at most.
const ABSENT_MAX: usize = 4096;

impl Absent {
    fn fresh(&self, p: &Proxied, subject: &Digest) -> bool {
        self.0
            .lock()
            .get(&(p.local.clone(), subject.clone()))
            .is_some_and(|at| at.elapsed() < p.upstream.settings().tag_ttl)
    }

    fn note(&self, p: &Proxied, subject: &Digest) {
        let mut map = self.0.lock();
        if map.len() >= ABSENT_MAX {
            let ttl = p.upstream.settings().tag_ttl;
            map.retain(|_, at| at.elapsed() < ttl);
            if map.len() >= ABSENT_MAX {
                map.clear();
            }
        }
        map.insert((p.local.clone(), subject.clone()), Instant::now());
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
    use std::sync::Arc;

    use super::*;
    use crate::config::Config;
    use crate::upstream::Upstream;

    fn proxied(tag_ttl: &str) -> Proxied {
        crate::install_crypto_provider();
        let toml = format!("[[upstream]]\nname = \"hub\"\nurl = \"http://127.0.0.1:1\"\ntag_ttl = \"{tag_ttl}\"\n");
        let config = Config::from_toml(&toml, std::iter::empty()).unwrap();
        let upstream = Upstream::new(config.upstream_settings().unwrap().remove(0)).unwrap();
        Proxied {
            local: "library/x".parse().unwrap(),
            remote: "library/x".into(),
            upstream: Arc::new(upstream),
        }
    }

    #[test]
    fn subjects_without_referrers_are_remembered_for_the_tag_ttl_in_bounded_memory() {
        let p = proxied("1h");
        let absent = Absent::default();
        let d = |i: usize| Digest::sha256_of(&i.to_be_bytes());
        absent.note(&p, &d(0));
        assert!(absent.fresh(&p, &d(0)));
        assert!(!absent.fresh(&p, &d(1)));
        assert!(!absent.fresh(&proxied("0s"), &d(0)), "expired after the TTL");
        for i in 1..ABSENT_MAX + 10 {
            absent.note(&p, &d(i));
        }
        assert!(absent.0.lock().len() <= ABSENT_MAX);
        assert!(absent.fresh(&p, &d(ABSENT_MAX + 9)), "the newest is kept");
    }

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
