//! Writing one blob to the bucket. The bytes go two ways at once: to a multipart upload of the
//! blob's final key, in equal parts, and to a spool file in the replica's disk cache, which hashes
//! them and which trailing readers of a fill read back ([`BlobWriter::read_back`]). `commit`
//! verifies the spool's digest and only then completes the upload, so the object never exists
//! unverified (parts of an open multipart upload are invisible); a mismatch or a drop aborts it.
//! On commit the spool file becomes the cache entry, so the first GET after a fill is warm.
//!
//! A blob shorter than one part never starts a multipart upload: it is buffered and put whole
//! after it verified (one request instead of three, for manifests and configs).
//!
//! Two writers of one digest may overlap: the replica leading a fill and one that follows it
//! (cluster mode), or a takeover after the owner stalled. Garage keeps one upload per key in
//! flight: when one completes, the other's parts and completion fail (`NoSuchUpload`,
//! `InvalidPart`). Content addressing makes whichever completes first the right object, so a
//! part that fails stops this writer's upload but not the write: the spool still takes every
//! byte, and `commit` finds the object published by the other writer, or uploads the verified
//! spool itself when there is none (an owner that died, an outage that passed).

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path as Key;
use object_store::{ObjectStoreExt, PutPayload};
use tokio::task::JoinHandle;

use super::super::blob_store::{BlobWriter, OnWritten, ReadBack, Written, verify};
use super::super::blobs::FileReadBack;
use super::super::spool::Spool;
use super::cache::DiskCache;
use super::{Bucket, PART, PARTS_IN_FLIGHT, blob_key, found, s3_error, unblock};
use crate::oci::{Digest, Hasher};
use crate::store::Result;

/// Bytes waiting to be cut into parts; the buffers are shared with the spool, not copied.
#[derive(Default)]
pub(super) struct PartBuffer {
    bufs: VecDeque<Bytes>,
    len: usize,
}

impl PartBuffer {
    pub(super) fn push(&mut self, bytes: Bytes) {
        self.len += bytes.len();
        self.bufs.push_back(bytes);
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// The first `n` bytes (all of them when fewer are buffered).
    pub(super) fn take(&mut self, n: usize) -> PutPayload {
        let mut taken = Vec::new();
        let mut left = n.min(self.len);
        self.len -= left;
        while left > 0 {
            let mut front = self.bufs.pop_front().expect("len counts these bytes");
            if front.len() > left {
                self.bufs.push_front(front.split_off(left));
            }
            left -= front.len();
            taken.push(front);
        }
        taken.into_iter().collect()
    }
}

/// Part uploads in order: at most [`PARTS_IN_FLIGHT`] run at once, and those still running
/// when the queue is dropped (a failed or cut-off write) are aborted.
#[derive(Default)]
pub(super) struct PartQueue {
    running: VecDeque<JoinHandle<object_store::Result<PartId>>>,
    done: Vec<PartId>,
}

impl PartQueue {
    /// Parts queued so far: the index of the next one.
    pub(super) fn len(&self) -> usize {
        self.done.len() + self.running.len()
    }

    /// Start uploading a part, then wait while too many are running.
    pub(super) async fn push(
        &mut self,
        upload: impl Future<Output = object_store::Result<PartId>> + Send + 'static,
    ) -> Result<()> {
        self.running.push_back(tokio::spawn(upload));
        while self.running.len() > PARTS_IN_FLIGHT {
            self.next().await?;
        }
        Ok(())
    }

    async fn next(&mut self) -> Result<()> {
        let task = self.running.pop_front().expect("a part is uploading");
        let part = task.await.map_err(io::Error::other)?.map_err(s3_error)?;
        self.done.push(part);
        Ok(())
    }

    /// Every part, once all are uploaded.
    pub(super) async fn finish(&mut self) -> Result<Vec<PartId>> {
        while !self.running.is_empty() {
            self.next().await?;
        }
        Ok(std::mem::take(&mut self.done))
    }
}

impl Drop for PartQueue {
    fn drop(&mut self) {
        self.running.iter().for_each(JoinHandle::abort);
    }
}

/// A multipart upload in progress.
struct Multipart {
    id: String,
    parts: PartQueue,
}

pub(super) struct S3Writer {
    bucket: Bucket,
    key: Key,
    cache: Arc<DiskCache>,
    /// The spool file, until it is moved into the cache (or discarded).
    temp: Option<PathBuf>,
    file: Arc<std::fs::File>,
    spool: Option<Spool>,
    written: Option<Written>,
    buffer: PartBuffer,
    upload: Option<Multipart>,
    /// A part failed: no more parts are sent; `commit` uploads the spool if it must.
    detached: bool,
}

impl S3Writer {
    pub(super) async fn start(
        bucket: Bucket,
        cache: Arc<DiskCache>,
        digest: &Digest,
        on_written: OnWritten,
    ) -> Result<S3Writer> {
        let spool_cache = cache.clone();
        let (temp, file) = unblock(move || spool_cache.temp_file()).await?;
        let file = Arc::new(file);
        let spool = Spool::for_fill(file.try_clone()?, Hasher::new(digest.algorithm()), on_written);
        Ok(S3Writer {
            bucket,
            key: blob_key(digest),
            cache,
            temp: Some(temp),
            file,
            spool: Some(spool),
            written: None,
            buffer: PartBuffer::default(),
            upload: None,
            detached: false,
        })
    }

    /// Upload `payload` as the next part, starting the multipart upload with the first one, and
    /// wait while more than [`PARTS_IN_FLIGHT`] are uploading.
    async fn send_part(&mut self, payload: PutPayload) -> Result<()> {
        if self.upload.is_none() {
            let id = self.bucket.s3.create_multipart(&self.key).await.map_err(s3_error)?;
            self.upload = Some(Multipart {
                id,
                parts: PartQueue::default(),
            });
        }
        let upload = self.upload.as_mut().expect("started above");
        let (s3, key, id) = (self.bucket.s3.clone(), self.key.clone(), upload.id.clone());
        let index = upload.parts.len();
        upload
            .parts
            .push(async move { s3.put_part(&key, &id, index, payload).await })
            .await
    }

    /// Upload what is buffered as the last part, wait for every part, and complete the upload.
    async fn complete(&mut self) -> Result<()> {
        let rest = self.buffer.take(usize::MAX);
        let Some(upload) = self.upload.as_ref() else {
            // Shorter than a part: one PUT, of bytes that verified.
            self.bucket.s3.put(&self.key, rest).await.map_err(s3_error)?;
            return Ok(());
        };
        if rest.content_length() > 0 || upload.parts.len() == 0 {
            self.send_part(rest).await?;
        }
        let upload = self.upload.as_mut().expect("started");
        let parts = upload.parts.finish().await?;
        self.bucket
            .s3
            .complete_multipart(&self.key, &upload.id, parts)
            .await
            .map_err(s3_error)?;
        self.upload = None;
        Ok(())
    }
}

impl S3Writer {
    /// Whether the blob's object exists (any writer's: they all hold the same bytes).
    async fn published(&self) -> Result<bool> {
        Ok(found(self.bucket.s3.head(&self.key).await)?.is_some())
    }

    /// Stop this writer's multipart upload (aborted in the background); the spool goes on.
    fn detach(&mut self) {
        self.detached = true;
        if let Some(upload) = self.upload.take() {
            abort_in_background(&self.bucket, &self.key, upload);
        }
    }

    /// Upload the verified spool file as the blob: one PUT, or a multipart upload of `PART`s
    /// read from the file one at a time.
    async fn upload_spool(&mut self, len: u64) -> Result<()> {
        let file = self.file.clone();
        let read = move |at: u64, n: usize| {
            let file = file.clone();
            unblock(move || {
                use std::os::unix::fs::FileExt;
                let mut buf = vec![0; n];
                file.read_exact_at(&mut buf, at)?;
                Ok(Bytes::from(buf))
            })
        };
        if len <= PART as u64 {
            let bytes = read(0, len as usize).await?;
            return self
                .bucket
                .s3
                .put(&self.key, bytes.into())
                .await
                .map(drop)
                .map_err(s3_error);
        }
        let s3 = self.bucket.s3.clone();
        let id = s3.create_multipart(&self.key).await.map_err(s3_error)?;
        // Held as this writer's upload until it completes: a failure, or a commit cut off
        // midway, drops the writer, whose `Drop` aborts it.
        self.upload = Some(Multipart {
            id: id.clone(),
            parts: PartQueue::default(),
        });
        let mut parts = Vec::new();
        let mut at = 0;
        while at < len {
            let n = (len - at).min(PART as u64) as usize;
            let bytes = read(at, n).await?;
            parts.push(
                s3.put_part(&self.key, &id, parts.len(), bytes.into())
                    .await
                    .map_err(s3_error)?,
            );
            at += n as u64;
        }
        s3.complete_multipart(&self.key, &id, parts).await.map_err(s3_error)?;
        self.upload = None;
        Ok(())
    }
}

/// Abort `upload` from a spawned task (a drop cannot wait), freeing its parts.
fn abort_in_background(bucket: &Bucket, key: &Key, upload: Multipart) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let (s3, key) = (bucket.s3.clone(), key.clone());
    runtime.spawn(async move {
        drop(upload.parts); // aborts the parts still uploading
        if let Err(e) = s3.abort_multipart(&key, &upload.id).await {
            tracing::warn!(key = %key, error = %e, "aborting a multipart upload failed");
        }
    });
}

#[async_trait::async_trait]
impl BlobWriter for S3Writer {
    async fn append(&mut self, batch: Vec<Bytes>) -> Result<()> {
        let spool = self
            .spool
            .as_mut()
            .ok_or_else(|| io::Error::other("the writer is closed"))?;
        spool.send(batch.clone()).await?;
        for bytes in batch {
            self.buffer.push(bytes);
        }
        while !self.detached && self.buffer.len() >= PART {
            let part = self.buffer.take(PART);
            if let Err(e) = self.send_part(part).await {
                tracing::info!(key = %self.key, error = %e, "a part upload failed; the blob is kept in the spool and uploaded from it at commit unless another writer publishes it first");
                self.detach();
            }
        }
        if self.detached {
            self.buffer = PartBuffer::default();
        }
        Ok(())
    }

    fn read_back(&self) -> Arc<dyn ReadBack> {
        Arc::new(FileReadBack(self.file.clone()))
    }

    async fn close(&mut self) -> Result<Written> {
        if let Some(spool) = self.spool.take() {
            self.written = Some(spool.written().await?);
        }
        Ok(self.written.clone().expect("closed above"))
    }

    /// Verify, then publish: complete the upload unless the blob exists already (another
    /// writer, maybe on another replica, published the same bytes). Either way the spool
    /// becomes this replica's cache entry.
    async fn commit(mut self: Box<Self>, expected: &Digest) -> Result<u64> {
        let written = self.close().await?;
        verify(&written, expected)?;
        if self.published().await? {
            self.detach();
        } else if self.detached {
            self.upload_spool(written.len).await?;
        } else if let Err(e) = self.complete().await {
            // Another writer's upload may have completed over ours: then the object is there.
            self.detach();
            if !self.published().await? {
                tracing::info!(key = %self.key, error = %e, "completing the upload failed; uploading the verified spool again");
                self.upload_spool(written.len).await?;
            }
        }
        let temp = self.temp.take().expect("not published yet");
        let (cache, digest) = (self.cache.clone(), expected.clone());
        unblock(move || cache.insert(&temp, &digest, written.len)).await?;
        Ok(written.len)
    }
}

impl Drop for S3Writer {
    /// Not committed (or a commit that failed): abort the multipart upload, so its parts are
    /// freed and nothing is ever published, and discard the spool.
    fn drop(&mut self) {
        if let Some(upload) = self.upload.take() {
            abort_in_background(&self.bucket, &self.key, upload);
        }
        if let Some(temp) = self.temp.take() {
            super::remove_quietly(&temp);
        }
    }
}
