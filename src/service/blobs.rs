//! Blobs of a repository: reads (stored, or pulled through), sizes, deletes (unlinks).

use super::route::Route;
use super::{BlobBody, CacheResult, Core, Error, Result};
use crate::oci::{Digest, RepoName};
use std::sync::Arc;

/// Reads and deletes of the blobs of a repository.
#[derive(Clone)]
pub struct Blobs {
    pub(super) core: Arc<Core>,
}

impl Blobs {
    /// Open a blob of the routed repository. `whole` asks for a stored file even on a cache miss
    /// (Range requests are served only from verified bytes).
    pub async fn get(&self, route: &Route, digest: &Digest, whole: bool) -> Result<BlobBody> {
        match route {
            Route::Private(repo) => {
                if !self.core.store.meta.blob_linked(repo, digest).await? {
                    return Err(Error::BlobUnknown(digest.clone()));
                }
                let blob = self.core.store.blobs.open(digest).await?;
                Ok(BlobBody::Stored(
                    blob.ok_or_else(|| Error::BlobUnknown(digest.clone()))?,
                    None,
                ))
            }
            Route::Proxied(p) => self.core.proxied_blob(p, digest, whole).await,
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
        Ok(())
    }
}
