//! In-memory backends, for tests: the same contracts as the filesystem's (the conformance suites
//! run against both), nothing on disk, gone with the process.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use parking_lot::Mutex;

use super::Result;
use super::blob_store::{
    BlobEntry, BlobStat, BlobStore, BlobWriter, ByteStream, OnWritten, RangeRead, ReadBack, RemoteBlob, Space, Stored,
    Written, verify, verify_bytes,
};
pub use super::memory_uploads::{MemoryUploads, UploadData};
use crate::oci::{Digest, Hasher};

/// Blobs in a map. Served as streams (there is no file to map).
#[derive(Clone, Default)]
pub struct MemoryBlobs {
    blobs: Arc<Mutex<HashMap<Digest, (Bytes, SystemTime)>>>,
}

/// A fresh, empty in-memory blob store.
pub fn blobs() -> Arc<dyn BlobStore> {
    Arc::new(MemoryBlobs::default())
}

/// A store whose blobs and upload sessions live in memory, over `meta`.
pub fn store(meta: Arc<dyn super::Meta>) -> super::Store {
    let blobs = MemoryBlobs::default();
    let uploads = Arc::new(MemoryUploads::new(UploadData::default(), blobs.clone()));
    super::Store::new(Arc::new(blobs), uploads, meta)
}

#[async_trait::async_trait]
impl BlobStore for MemoryBlobs {
    async fn stat(&self, digest: &Digest) -> Result<Option<BlobStat>> {
        Ok(self.blobs.lock().get(digest).map(|(b, at)| BlobStat {
            size: b.len() as u64,
            modified: *at,
        }))
    }

    async fn open(&self, digest: &Digest) -> Result<Option<Stored>> {
        Ok(self.blobs.lock().get(digest).map(|(b, _)| {
            Stored::Stream(RemoteBlob {
                size: b.len() as u64,
                read: Box::new(InMemory(b.clone())),
            })
        }))
    }

    async fn read(&self, digest: &Digest) -> Result<Option<Bytes>> {
        Ok(self.blobs.lock().get(digest).map(|(b, _)| b.clone()))
    }

    async fn writer(&self, digest: &Digest, on_written: OnWritten) -> Result<Box<dyn BlobWriter>> {
        Ok(Box::new(MemoryWriter {
            store: self.clone(),
            hasher: Some(Hasher::new(digest.algorithm())),
            bytes: Arc::default(),
            on_written,
            written: None,
        }))
    }

    async fn put(&self, digest: &Digest, bytes: Bytes) -> Result<()> {
        verify_bytes(&bytes, digest)?;
        self.publish(digest, bytes);
        Ok(())
    }

    async fn delete(&self, digest: &Digest) -> Result<bool> {
        Ok(self.blobs.lock().remove(digest).is_some())
    }

    async fn list(&self) -> Result<Vec<BlobEntry>> {
        Ok(self
            .blobs
            .lock()
            .iter()
            .map(|(digest, (b, at))| BlobEntry {
                digest: digest.clone(),
                size: b.len() as u64,
                modified: *at,
            })
            .collect())
    }

    async fn probe(&self) -> Result<()> {
        Ok(())
    }

    async fn space(&self) -> Result<Option<Space>> {
        Ok(None)
    }
}

impl MemoryBlobs {
    /// Publish verified bytes, keeping an existing blob.
    fn publish(&self, digest: &Digest, bytes: Bytes) {
        self.blobs
            .lock()
            .entry(digest.clone())
            .or_insert_with(|| (bytes, SystemTime::now()));
    }
}

struct InMemory(Bytes);

impl RangeRead for InMemory {
    fn range(self: Box<Self>, start: u64, len: u64) -> ByteStream {
        let part = self.0.slice(start as usize..(start + len) as usize);
        Box::pin(futures_util::stream::once(async move { Ok(part) }))
    }
}

struct MemoryWriter {
    store: MemoryBlobs,
    hasher: Option<Hasher>,
    bytes: Arc<Mutex<Vec<u8>>>,
    on_written: OnWritten,
    written: Option<Written>,
}

#[async_trait::async_trait]
impl BlobWriter for MemoryWriter {
    async fn append(&mut self, batch: Vec<Bytes>) -> Result<()> {
        let hasher = self
            .hasher
            .as_mut()
            .ok_or_else(|| std::io::Error::other("the writer is closed"))?;
        let len = {
            let mut bytes = self.bytes.lock();
            for b in &batch {
                hasher.update(b);
                bytes.extend_from_slice(b);
            }
            bytes.len() as u64
        };
        (self.on_written)(len);
        Ok(())
    }

    fn read_back(&self) -> Arc<dyn ReadBack> {
        Arc::new(MemoryReadBack(self.bytes.clone()))
    }

    async fn close(&mut self) -> Result<Written> {
        if let Some(hasher) = self.hasher.take() {
            self.written = Some(Written {
                len: self.bytes.lock().len() as u64,
                digest: hasher.finish(),
            });
        }
        Ok(self.written.clone().expect("closed above"))
    }

    async fn commit(mut self: Box<Self>, expected: &Digest) -> Result<u64> {
        let written = self.close().await?;
        verify(&written, expected)?;
        let bytes = Bytes::from(self.bytes.lock().clone());
        self.store.publish(expected, bytes);
        Ok(written.len)
    }
}

struct MemoryReadBack(Arc<Mutex<Vec<u8>>>);

#[async_trait::async_trait]
impl ReadBack for MemoryReadBack {
    async fn read_at(&self, pos: u64, len: usize) -> Result<Bytes> {
        let bytes = self.0.lock();
        let part = bytes
            .get(pos as usize..pos as usize + len)
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "read past what was written"))?;
        Ok(Bytes::copy_from_slice(part))
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn the_memory_backend_keeps_the_blob_store_contract() {
        super::super::conformance::blob_store(super::blobs()).await;
    }
}
