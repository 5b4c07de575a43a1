//! Manifests: resolve, serve the exact stored bytes, validate and store pushes, delete.

use std::sync::Arc;

use bytes::Bytes;

use super::route::Route;
use super::{CacheResult, Core, Error, MAX_MANIFEST_BYTES, Result};
use crate::clock::unix_now;
use crate::coord::Notice;
use crate::oci::{Digest, Hasher, Manifest, Reference, RepoName};
use crate::store::{self, ManifestRecord, Origin};

/// What a HEAD needs: no body.
#[derive(Clone, Debug)]
pub struct ManifestHead {
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
    /// Set for proxied repositories.
    pub cache: Option<CacheResult>,
}

/// A manifest with its exact bytes.
#[derive(Clone, Debug)]
pub struct ManifestBody {
    pub head: ManifestHead,
    pub bytes: Bytes,
}

/// The outcome of a manifest PUT.
#[derive(Clone, Debug)]
pub struct PutManifest {
    pub digest: Digest,
    pub subject: Option<Digest>,
    pub media_type: String,
    pub size: u64,
}

/// Manifests of a repository: get and head (stored, or pulled through), put, delete, and whole
/// images and repositories removed; tags and referrers are listed in `listing.rs` and
/// `referrers.rs`.
#[derive(Clone)]
pub struct Manifests {
    pub(super) core: Arc<Core>,
}

impl Manifests {
    /// A manifest's head; a HEAD by tag is how clients check an image they have, so it counts
    /// as a pull.
    pub async fn head(&self, route: &Route, reference: &Reference, accept: &[String]) -> Result<ManifestHead> {
        let head = match route {
            Route::Private(repo) => self.core.local_head(repo, reference).await?,
            Route::Proxied(p) => self.core.proxied_manifest(p, reference, accept).await?.0,
        };
        self.core.pulls.record(route.local(), &head.digest, unix_now());
        Ok(head)
    }

    pub async fn get(&self, route: &Route, reference: &Reference, accept: &[String]) -> Result<ManifestBody> {
        let body = match route {
            Route::Private(repo) => {
                let (digest, m) = self.core.local(repo, reference).await?;
                let head = ManifestHead {
                    digest,
                    media_type: m.media_type.clone(),
                    size: m.bytes.len() as u64,
                    cache: None,
                };
                ManifestBody {
                    head,
                    bytes: m.bytes.clone(),
                }
            }
            Route::Proxied(p) => match self.core.proxied_manifest(p, reference, accept).await? {
                (head, Some(bytes)) => ManifestBody { head, bytes },
                (head, None) => {
                    let (_, m) = self
                        .core
                        .local(&p.local, &Reference::Digest(head.digest.clone()))
                        .await?;
                    ManifestBody {
                        head,
                        bytes: m.bytes.clone(),
                    }
                }
            },
        };
        self.core.pulls.record(route.local(), &body.head.digest, unix_now());
        Ok(body)
    }

    /// Validate and store a pushed manifest; `reference` is the tag or digest in the URL.
    pub async fn put(
        &self,
        repo: &RepoName,
        reference: &Reference,
        content_type: Option<&str>,
        bytes: Bytes,
    ) -> Result<PutManifest> {
        self.core.check_push()?;
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(Error::ManifestTooLarge);
        }
        let manifest = Manifest::parse(&bytes, content_type).map_err(|e| Error::ManifestInvalid(e.to_string()))?;
        let digest = match reference {
            Reference::Digest(expected) => {
                let mut hasher = Hasher::new(expected.algorithm());
                hasher.update(&bytes);
                let actual = hasher.finish();
                if actual != *expected {
                    return Err(Error::DigestMismatch {
                        expected: expected.to_string(),
                        actual,
                    });
                }
                actual
            }
            Reference::Tag(_) => Digest::sha256_of(&bytes),
        };
        // These checks answer early with the right error; the GC invariant itself is kept by
        // `put_manifest`, which checks and references the blobs in its one transaction (so a
        // sweep that got to them first fails the put instead of losing them; see `gc`).
        let meta = &self.core.store.meta;
        for blob in manifest.blob_refs() {
            if !meta.blob_linked(repo, blob).await? || self.core.store.blobs.size(blob).await?.is_none() {
                return Err(Error::ManifestBlobUnknown(blob.clone()));
            }
        }
        for child in manifest.child_refs() {
            if meta.manifest(repo, child).await?.is_none() {
                return Err(Error::ManifestBlobUnknown(child.clone()));
            }
        }
        self.core.register(&digest, bytes.len() as u64).await?;
        self.core.store.blobs.put(&digest, bytes.clone()).await?;
        let subject = manifest.subject.as_ref().map(|s| s.digest.clone());
        let record = record_of(&manifest, bytes.len());
        let media_type = record.media_type.clone();
        let tag = match reference {
            Reference::Tag(t) => Some(t.clone()),
            Reference::Digest(_) => None,
        };
        let notice = match &tag {
            Some(tag) => Notice::TagMoved {
                repo: repo.clone(),
                tag: tag.clone(),
            },
            None => Notice::ManifestsChanged,
        };
        meta.put_manifest(repo, &digest, &record, tag.as_ref(), Origin::Private)
            .await
            .map_err(|e| match e {
                store::Error::BlobUnregistered(d) | store::Error::BlobDeleting(d) => Error::ManifestBlobUnknown(d),
                other => other.into(),
            })?;
        self.core.memo.changed(notice);
        Ok(PutManifest {
            digest,
            subject,
            media_type,
            size: bytes.len() as u64,
        })
    }

    /// Delete by digest removes the manifest and its tags; delete by tag removes only the tag.
    pub async fn delete(&self, repo: &RepoName, reference: &Reference) -> Result<()> {
        self.core.check_delete()?;
        let meta = &self.core.store.meta;
        let removed = match reference {
            Reference::Digest(d) => meta.delete_manifest(repo, d).await?,
            Reference::Tag(t) => meta.delete_tag(repo, t).await?,
        };
        self.core.memo.changed(match reference {
            Reference::Digest(d) => Notice::ManifestDeleted {
                repo: repo.clone(),
                digest: d.clone(),
            },
            Reference::Tag(t) => Notice::TagMoved {
                repo: repo.clone(),
                tag: t.clone(),
            },
        });
        if !removed {
            return Err(Error::ManifestUnknown(reference.to_string()));
        }
        Ok(())
    }

    /// Remove a whole repository: its tags, manifests and blob links, in one transaction. It
    /// leaves the catalog and the UI at once, the next GC reclaims the blobs nothing else
    /// references, and a name an upstream serves is routed to that upstream again.
    pub async fn remove_repository(&self, repo: &RepoName) -> Result<()> {
        let (meta, memo, r) = (self.core.store.meta.clone(), self.core.memo.clone(), repo.clone());
        // The memo is invalidated in the same task as the commit, spawned so that a caller
        // that goes away mid-way cannot leave memoised answers for a repository that is gone.
        let removed = tokio::spawn(async move {
            let removed = meta.remove_repo(&r).await?;
            memo.changed(Notice::RepoRemoved { repo: r });
            Ok::<_, crate::store::Error>(removed)
        })
        .await
        .map_err(|e| crate::store::Error::Meta(format!("metadata task failed: {e}")))??;
        if !removed {
            return Err(Error::NameUnknown(repo.clone()));
        }
        tracing::info!(repo = %repo, "repository removed");
        Ok(())
    }

    /// `berth delete`: like a registry:2 delete script. By digest, the manifest and its tags go;
    /// by tag, the tag goes, and the manifest with it once no other tag points at it (unless an
    /// index in the repository lists it or it is a referrer). Garbage collection then reclaims
    /// the blobs only it used.
    pub async fn delete_image(&self, repo: &RepoName, reference: &Reference) -> Result<()> {
        self.core.check_delete()?;
        let Reference::Tag(tag) = reference else {
            return self.delete(repo, reference).await;
        };
        let digest = self
            .core
            .store
            .meta
            .tag(repo, tag)
            .await?
            .ok_or_else(|| Error::ManifestUnknown(reference.to_string()))?;
        self.delete(repo, reference).await?;
        let meta = &self.core.store.meta;
        let still_tagged = meta.tag_targets(repo).await?.iter().any(|(_, d)| *d == digest);
        let needed = !meta.parents(repo, &digest).await?.is_empty();
        let is_referrer = meta.manifest(repo, &digest).await?.is_some_and(|m| m.subject.is_some());
        if !still_tagged && !needed && !is_referrer {
            self.delete(repo, &Reference::Digest(digest)).await?;
        }
        Ok(())
    }
}

/// The metadata kept for a parsed manifest of `size` bytes.
pub(super) fn record_of(manifest: &Manifest, size: usize) -> ManifestRecord {
    ManifestRecord {
        media_type: manifest.media_type.clone(),
        size: size as u64,
        blobs: manifest.blob_refs().cloned().collect(),
        children: manifest.child_refs().cloned().collect(),
        subject: manifest.subject.as_ref().map(|s| s.digest.clone()),
        artifact_type: manifest.artifact_type.clone(),
        annotations: manifest.annotations.clone(),
        stored_at: unix_now(),
    }
}
