//! Blobs and uploads: repository-scoped reads, deletes (unlinks), upload sessions, cross-repo mount.

use std::io;

use bytes::Bytes;
use futures_util::Stream;

use super::route::Route;
use super::{BlobBody, CacheResult, Error, Registry, Result};
use crate::oci::{Digest, RepoName};
use crate::store::{self, ChunkRange, Origin, parse_upload_id};

/// Where an upload session stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UploadState {
    pub id: String,
    /// Bytes received so far.
    pub len: u64,
}

/// The outcome of a `POST ?mount=&from=`.
#[derive(Debug)]
pub enum Mount {
    Mounted(Digest),
    /// The blob could not be mounted; a fresh session was started instead.
    Started(UploadState),
}

/// Uploads larger than this are refused; far above any real layer, well below a full disk.
const MAX_UPLOAD_BYTES: u64 = 64 << 30;

impl Registry {
    /// Open a blob of the routed repository. `whole` asks for the stored file even on a cache
    /// miss, waiting for the fill to verify and publish it (a prefetch); a `Range` request goes
    /// through [`Registry::blob_range`] instead.
    pub async fn blob(&self, route: &Route, digest: &Digest, whole: bool) -> Result<BlobBody> {
        match route {
            Route::Private(repo) => {
                if !self.store.meta.blob_linked(repo, digest).await? {
                    return Err(Error::BlobUnknown(digest.clone()));
                }
                let blob = self.store.blobs.open(digest).await?;
                Ok(BlobBody::Stored(
                    blob.ok_or_else(|| Error::BlobUnknown(digest.clone()))?,
                    None,
                ))
            }
            Route::Proxied(p) => self.proxied_blob(p, digest, whole).await,
        }
    }

    /// A blob of the routed repository for a `Range` request (`range`, the header as sent):
    /// like `blob(.., true)`, but a proxied miss serves the range as soon as its bytes are known.
    pub async fn blob_range(&self, route: &Route, digest: &Digest, range: &str) -> Result<BlobBody> {
        match route {
            Route::Proxied(p) => self.proxied_blob_with(p, digest, true, Some(range)).await,
            Route::Private(_) => self.blob(route, digest, true).await,
        }
    }

    /// Size of a blob of the routed repository.
    pub async fn blob_size(&self, route: &Route, digest: &Digest) -> Result<(u64, Option<CacheResult>)> {
        match route {
            Route::Private(repo) => {
                if !self.store.meta.blob_linked(repo, digest).await? {
                    return Err(Error::BlobUnknown(digest.clone()));
                }
                let size = self.store.blobs.size(digest).await?;
                Ok((size.ok_or_else(|| Error::BlobUnknown(digest.clone()))?, None))
            }
            Route::Proxied(p) => Ok(self.proxied_blob_size(p, digest).await.map(|(s, c)| (s, Some(c)))?),
        }
    }

    /// Remove the blob from `repo`. The bytes stay until garbage collection finds them unused.
    pub async fn delete_blob(&self, repo: &RepoName, digest: &Digest) -> Result<()> {
        self.check_delete()?;
        if !self.store.meta.unlink_blob(repo, digest).await? {
            return Err(Error::BlobUnknown(digest.clone()));
        }
        Ok(())
    }

    /// Start an upload session for `owner` (a user name or client address); `resumable` unless
    /// it is a monolithic upload finished in the same request.
    pub async fn start_upload(&self, repo: &RepoName, owner: &str, resumable: bool) -> Result<UploadState> {
        self.check_push()?;
        let id = self
            .store
            .uploads
            .create(repo, owner, resumable, self.session_limit)
            .await
            .map_err(|e| match e {
                store::Error::SessionLimit { limit } => Error::TooManyRequests {
                    retry_after: 30,
                    reason: format!("{owner} already has {limit} upload sessions open; finish or cancel one"),
                },
                other => other.into(),
            })?;
        Ok(UploadState { id, len: 0 })
    }

    /// A guard that cancels the session `id` if it is dropped before [`CancelOnDrop::disarm`]:
    /// a monolithic upload's session is the request's alone, so a request cut off mid-body
    /// must not leave it (and its place in the client's session count) behind.
    pub fn cancel_on_drop(&self, repo: &RepoName, id: &str) -> CancelOnDrop {
        CancelOnDrop {
            registry: Some(self.clone()),
            repo: repo.clone(),
            id: id.to_owned(),
        }
    }

    /// Link `digest` from `from` into `repo` when `from` holds it, else start a session.
    pub async fn mount(&self, repo: &RepoName, digest: &Digest, from: Option<&RepoName>, owner: &str) -> Result<Mount> {
        self.check_push()?;
        if let Some(from) = from {
            // The link renews the blob's grace period in the transaction that checks it is not
            // being swept; if a sweep got there first, the mount falls back to an upload (see `gc`).
            if self.store.meta.blob_linked(from, digest).await? && self.store.blobs.size(digest).await?.is_some() {
                match self.link(repo, digest).await {
                    Ok(()) => return Ok(Mount::Mounted(digest.clone())),
                    Err(Error::Store(store::Error::BlobDeleting(_) | store::Error::BlobUnregistered(_))) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(Mount::Started(self.start_upload(repo, owner, true).await?))
    }

    /// Check that `id` is a live session of `repo`.
    async fn session(&self, repo: &RepoName, id: &str) -> Result<UploadState> {
        let id = parse_upload_id(id).ok_or(store::Error::UploadUnknown)?;
        let (owner, len) = self.store.uploads.status(id).await?;
        if owner != *repo {
            return Err(store::Error::UploadUnknown.into());
        }
        Ok(UploadState { id: id.to_owned(), len })
    }

    pub async fn upload_status(&self, repo: &RepoName, id: &str) -> Result<UploadState> {
        self.session(repo, id).await
    }

    pub async fn upload_chunk<S>(
        &self,
        repo: &RepoName,
        id: &str,
        range: Option<ChunkRange>,
        body: S,
    ) -> Result<UploadState>
    where
        S: Stream<Item = Result<Bytes, io::Error>> + Send + 'static,
    {
        self.check_push()?;
        let state = self.session(repo, id).await?;
        let len = self
            .store
            .uploads
            .append(&state.id, range, Box::pin(body), MAX_UPLOAD_BYTES)
            .await?;
        Ok(UploadState { id: state.id, len })
    }

    /// Append the final body (possibly empty), verify against `digest`, publish and link the blob.
    pub async fn finish_upload<S>(
        &self,
        repo: &RepoName,
        id: &str,
        digest: &Digest,
        range: Option<ChunkRange>,
        body: S,
    ) -> Result<()>
    where
        S: Stream<Item = Result<Bytes, io::Error>> + Send + 'static,
    {
        self.check_push()?;
        let state = self.session(repo, id).await?;
        let len = self
            .store
            .uploads
            .append(&state.id, range, Box::pin(body), MAX_UPLOAD_BYTES)
            .await?;
        // Registered before it is published, so its grace period covers it until the link.
        self.register(digest, len).await?;
        self.store
            .uploads
            .finish(&state.id, digest)
            .await
            .map_err(|e| match e {
                store::Error::DigestMismatch { expected, actual } => Error::DigestMismatch {
                    expected: expected.to_string(),
                    actual,
                },
                other => other.into(),
            })?;
        self.link(repo, digest).await
    }

    pub async fn cancel_upload(&self, repo: &RepoName, id: &str) -> Result<()> {
        let state = self.session(repo, id).await?;
        Ok(self.store.uploads.cancel(&state.id).await?)
    }

    async fn link(&self, repo: &RepoName, digest: &Digest) -> Result<()> {
        Ok(self.store.meta.link_blob(repo, digest, Origin::Private).await?)
    }
}

/// See [`Registry::cancel_on_drop`].
pub struct CancelOnDrop {
    registry: Option<Registry>,
    repo: RepoName,
    id: String,
}

impl CancelOnDrop {
    /// The request finished (either way) and dealt with the session itself.
    pub fn disarm(mut self) {
        self.registry = None;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        let Some(registry) = self.registry.take() else {
            return;
        };
        let (repo, id) = (self.repo.clone(), std::mem::take(&mut self.id));
        // Drop cannot wait; the cancel waits for the session's lock (and any writer) itself.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = registry.cancel_upload(&repo, &id).await;
            });
        }
    }
}
