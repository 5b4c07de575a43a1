//! Blobs of a repository: reads (stored, or pulled through), sizes, deletes (unlinks).

use super::route::Route;
use super::{BlobBody, CacheResult, Core, Error, Result};
use crate::coord::Notice;
use crate::oci::{Digest, RepoName};
use std::sync::Arc;

/// Reads and deletes of the blobs of a repository.
#[derive(Clone)]
pub struct Blobs {
    pub(super) core: Arc<Core>,
}

impl Blobs {
    /// Open a blob of the routed repository. `whole` asks for the stored file even on a cache
    /// miss, waiting for the fill to verify and publish it (a prefetch); a `Range` request goes
    /// through [`Blobs::range`] instead.
    pub async fn get(&self, route: &Route, digest: &Digest, whole: bool) -> Result<BlobBody> {
        match route {
            Route::Private(repo) => {
                if let Some(blob) = self.core.memoized_blob(repo, digest) {
                    return Ok(BlobBody::Stored(blob, None));
                }
                let generation = self.core.memo.generation();
                if !self.core.store.meta.blob_linked(repo, digest).await? {
                    return Err(Error::BlobUnknown(digest.clone()));
                }
                let blob = self.core.store.blobs.open(digest).await?;
                let blob = blob.ok_or_else(|| Error::BlobUnknown(digest.clone()))?;
                self.core.memoize_blob(repo, digest, &blob, generation);
                Ok(BlobBody::Stored(blob, None))
            }
            Route::Proxied(p) => self.core.proxied_blob(p, digest, whole).await,
        }
    }

    /// A blob of the routed repository for a `Range` request (`range`, the header as sent):
    /// like `get(.., true)`, but a proxied miss serves the range as soon as its bytes are known.
    pub async fn range(&self, route: &Route, digest: &Digest, range: &str) -> Result<BlobBody> {
        match route {
            Route::Proxied(p) => self.core.proxied_blob_with(p, digest, true, Some(range)).await,
            Route::Private(_) => self.get(route, digest, true).await,
        }
    }

    /// Size of a blob of the routed repository.
    pub async fn size(&self, route: &Route, digest: &Digest) -> Result<(u64, Option<CacheResult>)> {
        match route {
            Route::Private(repo) => {
                if !self.core.store.meta.blob_linked(repo, digest).await? {
                    return Err(Error::BlobUnknown(digest.clone()));
                }
                let size = self.core.store.blobs.size(digest).await?;
                Ok((size.ok_or_else(|| Error::BlobUnknown(digest.clone()))?, None))
            }
            Route::Proxied(p) => Ok(self
                .core
                .proxied_blob_size(p, digest)
                .await
                .map(|(s, c)| (s, Some(c)))?),
        }
    }

    /// Remove the blob from `repo`. The bytes stay until garbage collection finds them unused.
    pub async fn delete(&self, repo: &RepoName, digest: &Digest) -> Result<()> {
        self.core.check_delete()?;
        if !self.core.store.meta.unlink_blob(repo, digest).await? {
            return Err(Error::BlobUnknown(digest.clone()));
        }
        self.core.memo.changed(Notice::BlobsChanged);
        Ok(())
    }
}
