//! Pull-through for proxied repositories: manifests by tag live for the upstream's `tag_ttl`,
//! then one HEAD revalidates them; content by digest is immutable; blob misses go through the
//! single-flight fills. When the upstream fails, cached content is served and marked stale.
//! In offline mode the upstream is never asked: what is cached is served however old, and a miss
//! is a 404 that says so.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use super::fill::FillError;
use super::manifests::record_of;
use super::route::Proxied;
use super::{BlobBody, CacheResult, Core, Error, ManifestHead, Result, Stored};
use crate::coord::Notice;
use crate::oci::{Digest, Manifest, Reference, Tag};
use crate::store::Origin;
use crate::upstream::{self, RemoteHead, RemoteManifest};

impl Core {
    pub(super) fn tag_is_fresh(&self, p: &Proxied, tag: &Tag) -> bool {
        let fresh = self.fresh_tags.lock();
        fresh
            .get(&(p.local.clone(), tag.clone()))
            .is_some_and(|at| at.elapsed() < p.upstream.settings().tag_ttl)
    }

    fn mark_fresh(&self, p: &Proxied, tag: &Tag) {
        self.fresh_tags
            .lock()
            .insert((p.local.clone(), tag.clone()), Instant::now());
    }

    /// Whether this request is the one to revalidate `tag` with the upstream now. The
    /// coordinator grants one check per tag and `tag_ttl` window across every request and
    /// replica; the others take what is cached as fresh for the window (and remember so, to
    /// ask again only when it ends). Coordination down: check, as a single node would.
    async fn claim_tag_check(&self, p: &Proxied, tag: &Tag) -> bool {
        match self
            .coord
            .claim_check(&check_key(p, tag), p.upstream.settings().tag_ttl)
            .await
        {
            Ok(true) => true,
            Ok(false) => {
                self.mark_fresh(p, tag);
                false
            }
            Err(e) => {
                tracing::warn!(repo = %p.local, %tag, error = %e, "tag check claim failed; checking anyway");
                true
            }
        }
    }

    /// A check that did not confirm the tag: the next request checks again.
    pub(super) async fn release_tag_check(&self, p: &Proxied, tag: &Tag) {
        self.fresh_tags.lock().remove(&(p.local.clone(), tag.clone()));
        if let Err(e) = self.coord.release_check(&check_key(p, tag)).await {
            tracing::warn!(repo = %p.local, %tag, error = %e, "could not release a tag check; it expires with its window");
        }
    }

    /// A proxied manifest's head, plus its bytes when they were just fetched.
    pub(super) async fn proxied_manifest(
        &self,
        p: &Proxied,
        reference: &Reference,
        accept: &[String],
    ) -> Result<(ManifestHead, Option<Bytes>)> {
        let cached = self.local_head(&p.local, reference).await.ok();
        if p.upstream.is_offline() {
            // Offline: a cached tag never expires, and nothing is asked upstream.
            return match cached {
                Some(head) => Ok((with_cache(Some(head), CacheResult::Hit), None)),
                None => Err(manifest_error(upstream_offline(p), p, reference)),
            };
        }
        let tag = match reference {
            // Content by digest never changes: a cached copy is always good.
            Reference::Digest(_) if cached.is_some() => {
                return Ok((with_cache(cached, CacheResult::Hit), None));
            }
            Reference::Digest(d) => {
                return self.fetch_manifest(p, reference, accept, Some(d), None).await;
            }
            Reference::Tag(t) => t,
        };
        if cached.is_some() && (self.tag_is_fresh(p, tag) || !self.claim_tag_check(p, tag).await) {
            return Ok((with_cache(cached, CacheResult::Hit), None));
        }
        let checked = p.upstream.head_manifest(&p.remote, tag.as_str(), accept).await;
        let answer = self.revalidated(p, reference, tag, accept, checked, cached).await;
        if !matches!(&answer, Ok((head, _)) if head.cache != Some(CacheResult::Stale)) {
            self.release_tag_check(p, tag).await;
        }
        answer
    }

    /// The answer to a tag request after the upstream's `HEAD` (`checked`).
    async fn revalidated(
        &self,
        p: &Proxied,
        reference: &Reference,
        tag: &Tag,
        accept: &[String],
        checked: upstream::Result<RemoteHead>,
        cached: Option<ManifestHead>,
    ) -> Result<(ManifestHead, Option<Bytes>)> {
        match (checked, cached) {
            (Ok(head), Some(cached)) if head.digest.as_ref() == Some(&cached.digest) => {
                self.mark_fresh(p, tag);
                Ok((
                    ManifestHead {
                        cache: Some(CacheResult::Hit),
                        ..cached
                    },
                    None,
                ))
            }
            (Ok(head), cached) => {
                // Changed upstream, or never cached: fetch by digest when the HEAD named one.
                let by = head
                    .digest
                    .clone()
                    .map(Reference::Digest)
                    .unwrap_or_else(|| reference.clone());
                match self
                    .fetch_manifest(p, &by, accept, head.digest.as_ref(), Some(tag))
                    .await
                {
                    Err(Error::Upstream(e)) if cached.is_some() && is_outage(&e) => {
                        Ok((self.stale(p, reference, cached, &e), None))
                    }
                    other => other,
                }
            }
            (Err(upstream::Error::NotFound), _) => Err(Error::ManifestUnknown(reference.to_string())),
            (Err(e), Some(cached)) => Ok((self.stale(p, reference, Some(cached), &e), None)),
            (Err(e), None) => Err(manifest_error(e, p, reference)),
        }
    }

    fn stale(
        &self,
        p: &Proxied,
        reference: &Reference,
        cached: Option<ManifestHead>,
        e: &upstream::Error,
    ) -> ManifestHead {
        tracing::warn!(repo = %p.local, %reference, error = %e, "upstream unavailable; serving the cached manifest stale");
        with_cache(cached, CacheResult::Stale)
    }

    /// GET a manifest upstream, verify it, cache it (tagging it when `tag` is given) and return it.
    async fn fetch_manifest(
        &self,
        p: &Proxied,
        by: &Reference,
        accept: &[String],
        expected: Option<&Digest>,
        tag: Option<&Tag>,
    ) -> Result<(ManifestHead, Option<Bytes>)> {
        let remote = p
            .upstream
            .get_manifest(&p.remote, &by.to_string(), accept, expected)
            .await
            .map_err(|e| manifest_error(e, p, by))?;
        let bytes = remote.bytes.clone();
        Ok((self.cache_manifest(p, by, remote, tag).await?, Some(bytes)))
    }

    /// Verify-parsed, store and (with `tag`) tag a manifest fetched from the upstream.
    pub(super) async fn cache_manifest(
        &self,
        p: &Proxied,
        by: &Reference,
        remote: RemoteManifest,
        tag: Option<&Tag>,
    ) -> Result<ManifestHead> {
        let RemoteManifest {
            digest,
            media_type,
            bytes,
        } = remote;
        let head = match Manifest::parse(&bytes, media_type.as_deref()) {
            Ok(manifest) => {
                // Registered before it is written, so GC counts its grace period from now.
                self.register(&digest, bytes.len() as u64).await?;
                self.store.blobs.put(&digest, bytes.clone()).await?;
                let record = record_of(&manifest, bytes.len());
                let origin = Origin::Proxied {
                    upstream: p.upstream.name().to_owned(),
                };
                self.store
                    .meta
                    .put_manifest(&p.local, &digest, &record, tag, origin)
                    .await?;
                self.memo.changed(match &tag {
                    Some(tag) => Notice::TagMoved {
                        repo: p.local.clone(),
                        tag: (*tag).clone(),
                    },
                    None => Notice::ManifestsChanged,
                });
                if let Some(tag) = tag {
                    self.mark_fresh(p, tag);
                    // Just fetched: the other replicas need not check it again in this window
                    // (already claimed when this request was the one checking).
                    let _ = self
                        .coord
                        .claim_check(&check_key(p, tag), p.upstream.settings().tag_ttl)
                        .await;
                }
                let media_type = Some(manifest.media_type.as_str());
                super::notify_fill(&self.notifier, &p.local, &digest, media_type, bytes.len() as u64);
                ManifestHead {
                    digest,
                    media_type: manifest.media_type,
                    size: bytes.len() as u64,
                    cache: Some(CacheResult::Miss),
                }
            }
            // A manifest kind berth does not model (schema 1, say) is passed through uncached.
            Err(e) => {
                tracing::info!(repo = %p.local, reference = %by, error = %e, "passing an unsupported upstream manifest through uncached");
                let media_type = media_type.unwrap_or_else(|| "application/json".into());
                ManifestHead {
                    digest,
                    media_type,
                    size: bytes.len() as u64,
                    cache: Some(CacheResult::Miss),
                }
            }
        };
        Ok(head)
    }

    /// A proxied blob: from the store when cached, else streamed through a fill. With `whole`,
    /// wait for the fill to verify and serve the stored file.
    pub(super) async fn proxied_blob(&self, p: &Proxied, digest: &Digest, whole: bool) -> Result<BlobBody> {
        self.proxied_blob_with(p, digest, whole, None).await
    }

    /// [`Core::proxied_blob`]; with `range` (a `Range` header), a miss whose fill announced
    /// the blob's size is served as soon as the range's bytes are known (`fill::ranged`).
    pub(super) async fn proxied_blob_with(
        &self,
        p: &Proxied,
        digest: &Digest,
        whole: bool,
        range: Option<&str>,
    ) -> Result<BlobBody> {
        if let Some(blob) = self.cached_blob(p, digest).await? {
            return Ok(BlobBody::Stored(blob, Some(CacheResult::Hit)));
        }
        if p.upstream.is_offline() {
            return Err(blob_error(upstream_offline(p), digest));
        }
        let fill = self
            .fills
            .join_or_start(&self.coord, &self.store, p, digest, false)
            .await;
        if fill.repo != p.local || fill.upstream != p.upstream.name() {
            // A fill is keyed by digest alone: joining one started for another repository
            // follows the rule for reading a blob cached for another repository.
            self.confirm_upstream_has(p, digest).await?;
        }
        let waiter = self.fills.waiter();
        // Asked for before the fill's answer is in, so the two upstream round trips overlap.
        let mut early = range.and_then(|r| super::fill::Early::start(&fill, &p.upstream, &p.remote, r));
        let size = super::fill::known_size(&fill, early.as_mut())
            .await
            .map_err(|e| fill_error(e, digest))?;
        if let (Some(_), Some(size), false) = (range, size, fill.verified()) {
            let (upstream, remote) = (p.upstream.clone(), p.remote.clone());
            let part = super::fill::ranged(fill, size, upstream, remote, early, waiter);
            return Ok(BlobBody::Stored(part, Some(CacheResult::Miss)));
        }
        if whole {
            fill.finished().await.map_err(|e| fill_error(e, digest))?;
            drop(waiter);
            let blob = self
                .store
                .blobs
                .open(digest)
                .await?
                .ok_or_else(|| Error::BlobUnknown(digest.clone()))?;
            return Ok(BlobBody::Stored(blob, Some(CacheResult::Miss)));
        }
        // Joining a fill whose bytes are all in and verified (it is only publishing) is a hit.
        let cache = if fill.verified() {
            CacheResult::Hit
        } else {
            CacheResult::Miss
        };
        Ok(BlobBody::Stream {
            size,
            stream: Box::pin(Arc::clone(&fill).stream(waiter)),
            cache,
        })
    }

    /// The stored blob when this repository may serve it. A blob cached for another repository is
    /// linked here only after the upstream confirms this repository has it, so a digest alone
    /// never reveals another repository's (possibly private) content.
    pub(super) async fn cached_blob(&self, p: &Proxied, digest: &Digest) -> Result<Option<Stored>> {
        if let Some(blob) = self.memoized_blob(&p.local, digest) {
            return Ok(Some(blob));
        }
        let generation = self.memo.generation();
        let Some(blob) = self.store.blobs.open(digest).await? else {
            return Ok(None);
        };
        if !self.store.meta.blob_linked(&p.local, digest).await? {
            self.confirm_upstream_has(p, digest).await?;
            let origin = Origin::Proxied {
                upstream: p.upstream.name().to_owned(),
            };
            self.store.meta.link_blob(&p.local, digest, origin).await?;
        }
        self.memoize_blob(&p.local, digest, &blob, generation);
        Ok(Some(blob))
    }

    /// Ask the repository's upstream whether that repository has `digest`.
    pub(super) async fn confirm_upstream_has(&self, p: &Proxied, digest: &Digest) -> Result<()> {
        match p.upstream.head_blob(&p.remote, digest).await {
            Ok(_) => Ok(()),
            Err(e) => Err(blob_error(e, digest)),
        }
    }

    /// Size of a proxied blob, asking the upstream (without caching) on a miss.
    pub(super) async fn proxied_blob_size(&self, p: &Proxied, digest: &Digest) -> Result<(u64, CacheResult)> {
        if let Some(blob) = self.cached_blob(p, digest).await? {
            return Ok((blob.size(), CacheResult::Hit));
        }
        match p.upstream.head_blob(&p.remote, digest).await {
            Ok(Some(size)) => Ok((size, CacheResult::Miss)),
            Ok(None) => Err(Error::Upstream(upstream::Error::Invalid {
                upstream: p.upstream.name().into(),
                reason: "blob HEAD without Content-Length".into(),
            })),
            Err(e) => Err(blob_error(e, digest)),
        }
    }

    /// The upstream's full tag list, or `None` when the upstream cannot answer.
    pub(super) async fn proxied_tags(&self, p: &Proxied) -> Option<Vec<String>> {
        let body = p.upstream.tags(&p.remote, "").await.ok()?;
        let json: serde_json::Value = serde_json::from_slice(&body).ok()?;
        let mut tags: Vec<String> = json["tags"]
            .as_array()?
            .iter()
            .filter_map(|t| t.as_str().map(str::to_owned))
            .collect();
        tags.sort();
        Some(tags)
    }
}

/// The coordinator's key for revalidating `tag` of a proxied repository.
fn check_key(p: &Proxied, tag: &Tag) -> String {
    format!("tag/{}:{tag}", p.local)
}

fn with_cache(head: Option<ManifestHead>, cache: CacheResult) -> ManifestHead {
    ManifestHead {
        cache: Some(cache),
        ..head.expect("cached head present")
    }
}

/// Outages that make a cached copy worth serving stale; a 404 is an answer, not an outage.
fn is_outage(e: &upstream::Error) -> bool {
    !matches!(e, upstream::Error::NotFound)
}

/// The error an offline upstream's client gives, without a request.
pub(super) fn upstream_offline(p: &Proxied) -> upstream::Error {
    upstream::Error::Offline {
        upstream: p.upstream.name().to_owned(),
    }
}

/// An upstream failure to fetch manifest `reference` of `p`, as a client of berth sees it.
pub(super) fn manifest_error(e: upstream::Error, p: &Proxied, reference: &Reference) -> Error {
    match e {
        upstream::Error::NotFound => Error::ManifestUnknown(reference.to_string()),
        upstream::Error::Offline { upstream } => {
            let sep = if matches!(reference, Reference::Digest(_)) {
                '@'
            } else {
                ':'
            };
            Error::ManifestOffline {
                reference: format!("{}{sep}{reference}", p.local),
                upstream,
            }
        }
        other => Error::Upstream(other),
    }
}

/// An upstream failure to fetch blob `digest`, as a client of berth sees it.
pub(super) fn blob_error(e: upstream::Error, digest: &Digest) -> Error {
    match e {
        upstream::Error::NotFound => Error::BlobUnknown(digest.clone()),
        upstream::Error::Offline { upstream } => Error::BlobOffline {
            digest: digest.clone(),
            upstream,
        },
        other => Error::Upstream(other),
    }
}

pub(super) fn fill_error(e: FillError, digest: &Digest) -> Error {
    match e {
        FillError::Upstream(e) => blob_error(e, digest),
        FillError::Corrupt(reason) => Error::Upstream(upstream::Error::Invalid {
            upstream: "upstream".into(),
            reason,
        }),
        FillError::Io(reason) => Error::Store(crate::store::Error::Io(std::io::Error::other(reason))),
        FillError::Full(reason) => Error::Store(crate::store::Error::Full(std::io::Error::new(
            std::io::ErrorKind::StorageFull,
            reason,
        ))),
    }
}
