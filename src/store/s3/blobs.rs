//! [`S3Blobs`]: the [`BlobStore`] on a bucket, with a disk cache in front.
//!
//! Opening a blob: a cached one is a [`Stored::Local`] file (the warm path). A miss on a small
//! blob (at most `READ_WHOLE`, an image config) fetches it whole, caches it and serves it from
//! memory. A miss on a larger one is served as a [`Stored::Stream`] of ranged GETs straight from
//! the bucket, so its first byte is not held back until a whole layer is on local disk, while one
//! background fill per blob and replica copies it into the cache for the GETs after it. That
//! costs the first reader's bytes twice from the bucket, once; the alternative (fill, then
//! serve) would make a cold GET of a large layer wait for all of it.
//!
//! The cache is trusted for `open` and `read` (a GET costs no request to the bucket), never for
//! `stat`, which asks the bucket. A blob deleted through another replica may be served from this
//! one's cache until evicted: garbage collection deletes only blobs no manifest references, and
//! the service checks references before it opens a blob.

use std::collections::HashSet;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use object_store::path::Path as Key;
use object_store::signer::Signer;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt};
use parking_lot::Mutex;

use super::super::blob_store::{
    BlobEntry, BlobStat, BlobStore, BlobWriter, ByteStream, OnWritten, RangeRead, RemoteBlob, Space, Stored,
    verify_bytes,
};
use super::super::mapped::{LocalBlob, READ_WHOLE};
use super::super::spool::Spool;
use super::cache::DiskCache;
use super::writer::S3Writer;
use super::{Bucket, blob_key, digest_of, found, s3_error, unblock};
use crate::config::S3Config;
use crate::oci::{Digest, Hasher};
use crate::store::Result;

#[derive(Clone)]
pub struct S3Blobs {
    pub(super) bucket: Bucket,
    pub(super) cache: Arc<DiskCache>,
    /// How long presigned URLs live, when blob GETs redirect to them.
    redirect: Option<Duration>,
    /// Blobs being copied into the cache in the background, one fill each.
    filling: Arc<Mutex<HashSet<Digest>>>,
}

impl S3Blobs {
    /// The blobs in `bucket`, cached under `cache_dir` up to `cfg.cache_max_size`.
    pub(crate) fn open(bucket: Bucket, cache_dir: &Path, cfg: &S3Config) -> Result<S3Blobs> {
        Ok(S3Blobs {
            bucket,
            cache: Arc::new(DiskCache::open(cache_dir, cfg.cache_max_size)?),
            redirect: cfg.redirect.then_some(cfg.redirect_expiry),
            filling: Arc::default(),
        })
    }

    /// Copy `digest` (`size` bytes) from the bucket into the cache, in the background, unless a
    /// fill of it is running. What arrives is hashed and verified before it is cached.
    fn fill_in_background(&self, digest: &Digest) {
        if !self.filling.lock().insert(digest.clone()) {
            return;
        }
        let (blobs, digest) = (self.clone(), digest.clone());
        tokio::spawn(async move {
            if let Err(e) = blobs.fill(&digest).await {
                tracing::warn!(%digest, error = %e, "filling the S3 disk cache failed");
            }
            blobs.filling.lock().remove(&digest);
        });
    }

    async fn fill(&self, digest: &Digest) -> Result<()> {
        let cache = self.cache.clone();
        let (temp, file) = unblock(move || cache.temp_file()).await?;
        let result = async {
            let mut spool = Spool::for_fill(file, Hasher::new(digest.algorithm()), |_| {});
            let mut body = self
                .bucket
                .s3
                .get(&blob_key(digest))
                .await
                .map_err(s3_error)?
                .into_stream();
            while let Some(chunk) = body.next().await {
                spool.push(chunk.map_err(s3_error)?).await?;
            }
            spool.flush().await?;
            let spooled = spool.close().await?;
            let actual = spooled.digest.expect("the spool was given a hasher");
            if actual != *digest {
                return Err(io::Error::other(format!("the bucket's copy of {digest} holds {actual}")).into());
            }
            let (cache, temp, digest) = (self.cache.clone(), temp.clone(), digest.clone());
            Ok(unblock(move || cache.insert(&temp, &digest, spooled.len)).await?)
        }
        .await;
        if result.is_err() {
            super::remove_quietly(&temp);
        }
        result
    }

    /// The whole object, verified (a corrupt copy in the bucket must not be cached or served).
    async fn fetch(&self, digest: &Digest) -> Result<Option<Bytes>> {
        let Some(got) = found(self.bucket.s3.get(&blob_key(digest)).await)? else {
            return Ok(None);
        };
        let bytes = got.bytes().await.map_err(s3_error)?;
        verify_bytes(&bytes, digest)?;
        let (cache, digest, copy) = (self.cache.clone(), digest.clone(), bytes.clone());
        unblock(move || cache.insert_bytes(&digest, &copy)).await?;
        Ok(Some(bytes))
    }
}

#[async_trait::async_trait]
impl BlobStore for S3Blobs {
    async fn stat(&self, digest: &Digest) -> Result<Option<BlobStat>> {
        Ok(found(self.bucket.s3.head(&blob_key(digest)).await)?.map(|m| BlobStat {
            size: m.size,
            modified: m.last_modified.into(),
        }))
    }

    async fn open(&self, digest: &Digest) -> Result<Option<Stored>> {
        let (cache, cached) = (self.cache.clone(), digest.clone());
        if let Some(local) = unblock(move || cache.get(&cached)).await? {
            return Ok(Some(Stored::Local(local)));
        }
        let Some(meta) = found(self.bucket.s3.head(&blob_key(digest)).await)? else {
            return Ok(None);
        };
        if meta.size <= READ_WHOLE {
            return Ok(self.fetch(digest).await?.map(|b| Stored::Local(LocalBlob::read(b))));
        }
        if self.cache.fits(meta.size) {
            self.fill_in_background(digest);
        }
        Ok(Some(Stored::Stream(RemoteBlob {
            size: meta.size,
            read: Box::new(Ranged {
                bucket: self.bucket.clone(),
                key: blob_key(digest),
            }),
        })))
    }

    async fn read(&self, digest: &Digest) -> Result<Option<Bytes>> {
        let (cache, cached) = (self.cache.clone(), digest.clone());
        if let Some(bytes) = unblock(move || cache.read(&cached)).await? {
            return Ok(Some(bytes));
        }
        self.fetch(digest).await
    }

    async fn writer(&self, digest: &Digest, on_written: OnWritten) -> Result<Box<dyn BlobWriter>> {
        Ok(Box::new(
            S3Writer::start(self.bucket.clone(), self.cache.clone(), digest, on_written).await?,
        ))
    }

    /// A manifest: verified, then one PUT.
    async fn put(&self, digest: &Digest, bytes: Bytes) -> Result<()> {
        verify_bytes(&bytes, digest)?;
        if self.stat(digest).await?.is_some() {
            return Ok(());
        }
        let key = blob_key(digest);
        self.bucket.s3.put(&key, bytes.clone().into()).await.map_err(s3_error)?;
        let (cache, digest) = (self.cache.clone(), digest.clone());
        Ok(unblock(move || cache.insert_bytes(&digest, &bytes)).await?)
    }

    /// S3 answers a DELETE of a missing key with success, so whether it existed is asked first.
    async fn delete(&self, digest: &Digest) -> Result<bool> {
        let key = blob_key(digest);
        let existed = found(self.bucket.s3.head(&key).await)?.is_some();
        if existed {
            self.bucket.s3.delete(&key).await.map_err(s3_error)?;
        }
        let (cache, digest) = (self.cache.clone(), digest.clone());
        unblock(move || cache.remove(&digest)).await?;
        Ok(existed)
    }

    async fn list(&self) -> Result<Vec<BlobEntry>> {
        let listed: Vec<_> = self
            .bucket
            .s3
            .list(Some(&Key::from("blobs")))
            .try_collect()
            .await
            .map_err(s3_error)?;
        Ok(listed
            .into_iter()
            .filter_map(|m| {
                Some(BlobEntry {
                    digest: digest_of(&m.location)?,
                    size: m.size,
                    modified: m.last_modified.into(),
                })
            })
            .collect())
    }

    /// A small object written and removed: the bucket answers and takes writes.
    async fn probe(&self) -> Result<()> {
        let key = Key::from(format!("probe/{}", uuid::Uuid::new_v4().simple()));
        self.bucket
            .s3
            .put(&key, Bytes::from_static(b"ready\n").into())
            .await
            .map_err(s3_error)?;
        self.bucket.s3.delete(&key).await.map_err(s3_error)
    }

    async fn space(&self) -> Result<Option<Space>> {
        Ok(None)
    }

    async fn presign(&self, digest: &Digest) -> Result<Option<String>> {
        let Some(expiry) = self.redirect else {
            return Ok(None);
        };
        let url = self
            .bucket
            .s3
            .signed_url(object_store::signer::Method::GET, &blob_key(digest), expiry)
            .await
            .map_err(s3_error)?;
        Ok(Some(url.to_string()))
    }
}

/// Ranged GETs of one object.
struct Ranged {
    bucket: Bucket,
    key: Key,
}

impl RangeRead for Ranged {
    fn range(self: Box<Self>, start: u64, len: u64) -> ByteStream {
        if len == 0 {
            return Box::pin(futures_util::stream::empty());
        }
        let opened = async move {
            let options = GetOptions {
                range: Some(GetRange::Bounded(start..start + len)),
                ..Default::default()
            };
            let got = self
                .bucket
                .s3
                .get_opts(&self.key, options)
                .await
                .map_err(io::Error::other)?;
            Ok::<_, io::Error>(got.into_stream().map_err(io::Error::other))
        };
        Box::pin(futures_util::stream::once(opened).try_flatten())
    }
}
