//! In-memory upload sessions, for tests. Every session is plain data in [`UploadData`] (its
//! bytes and its [`UploadState`]: length and serialised hash state), so a second [`MemoryUploads`] over the same data
//! continues any session, as a replica of a shared backend would.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use parking_lot::Mutex;

use super::memory::MemoryBlobs;
use super::upload_store::{ChunkRange, UploadStore};
use super::{BlobStore, ByteStream, Error, Result, UploadState};
use crate::clock::unix_now;
use crate::oci::{Algorithm, Digest, Hasher, RepoName};

/// The sessions, shared by every [`MemoryUploads`] made over them.
#[derive(Clone, Default)]
pub struct UploadData(Arc<Mutex<HashMap<String, Session>>>);

#[derive(Clone)]
struct Session {
    repo: RepoName,
    owner: String,
    #[allow(dead_code)] // kept as a shared backend keeps it, for expiry
    started: u64,
    bytes: Vec<u8>,
    /// The length and SHA-256 state of exactly `bytes`.
    state: UploadState,
}

pub struct MemoryUploads {
    data: UploadData,
    blobs: MemoryBlobs,
    /// One lock per session, so its operations run one at a time. Process-local.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Serialises counting an owner's sessions with opening one. Process-local.
    admission: tokio::sync::Mutex<()>,
}

impl MemoryUploads {
    /// Sessions kept in `data`, publishing into `blobs`.
    pub fn new(data: UploadData, blobs: MemoryBlobs) -> MemoryUploads {
        MemoryUploads {
            data,
            blobs,
            locks: Mutex::default(),
            admission: tokio::sync::Mutex::new(()),
        }
    }

    fn lock(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.locks.lock().entry(id.to_owned()).or_default().clone()
    }

    fn session(&self, id: &str) -> Result<Session> {
        self.data.0.lock().get(id).cloned().ok_or(Error::UploadUnknown)
    }

    fn end(&self, id: &str) {
        self.data.0.lock().remove(id);
        self.locks.lock().remove(id);
    }
}

#[async_trait::async_trait]
impl UploadStore for MemoryUploads {
    async fn create(&self, repo: &RepoName, owner: &str, _resumable: bool, limit: u32) -> Result<String> {
        let _admission = self.admission.lock().await;
        let mut data = self.data.0.lock();
        if data.values().filter(|s| s.owner == owner).count() >= limit as usize {
            return Err(Error::SessionLimit { limit });
        }
        let id = uuid::Uuid::new_v4().simple().to_string();
        let session = Session {
            repo: repo.clone(),
            owner: owner.to_owned(),
            started: unix_now(),
            bytes: Vec::new(),
            state: UploadState::new(0, &Hasher::new(Algorithm::Sha256)),
        };
        data.insert(id.clone(), session);
        Ok(id)
    }

    async fn status(&self, id: &str) -> Result<(RepoName, u64)> {
        let s = self.session(id)?;
        Ok((s.repo, s.state.len))
    }

    async fn append(&self, id: &str, range: Option<ChunkRange>, mut body: ByteStream, limit: u64) -> Result<u64> {
        let lock = self.lock(id);
        let _op = lock.lock().await;
        // Work on a copy, stored only once the whole chunk is in: a dropped future changes nothing.
        let mut work = self.session(id)?;
        let start = work.state.len;
        if let Some(r) = range
            && r.start != start
        {
            return Err(Error::RangeMismatch {
                start: r.start,
                offset: start,
            });
        }
        let declared = range.map(|r| r.byte_count());
        let mut hasher = hasher(id, &work.state)?;
        while let Some(chunk) = body.next().await {
            let chunk: Bytes = chunk.map_err(Error::Body)?;
            let got = work.bytes.len() as u64 + chunk.len() as u64;
            if let Some(d) = declared.filter(|&d| got - start > d) {
                return Err(Error::ChunkLength {
                    declared: d,
                    got: got - start,
                });
            }
            if got > limit {
                return Err(Error::TooLarge { limit });
            }
            hasher.update(&chunk);
            work.bytes.extend_from_slice(&chunk);
        }
        let got = work.bytes.len() as u64 - start;
        if let Some(d) = declared.filter(|&d| d != got) {
            return Err(Error::ChunkLength { declared: d, got });
        }
        let len = work.bytes.len() as u64;
        work.state = UploadState::new(len, &hasher);
        self.data.0.lock().insert(id.to_owned(), work);
        Ok(len)
    }

    async fn finish(&self, id: &str, digest: &Digest) -> Result<u64> {
        let lock = self.lock(id);
        let _op = lock.lock().await;
        let session = self.session(id)?;
        self.end(id);
        let actual = match digest.algorithm() {
            Algorithm::Sha256 => hasher(id, &session.state)?.finish(),
            other => {
                let mut hasher = Hasher::new(other);
                hasher.update(&session.bytes);
                hasher.finish()
            }
        };
        if actual != *digest {
            return Err(Error::DigestMismatch {
                expected: digest.clone(),
                actual,
            });
        }
        let len = session.bytes.len() as u64;
        self.blobs.put(digest, Bytes::from(session.bytes)).await?;
        Ok(len)
    }

    async fn cancel(&self, id: &str) -> Result<()> {
        let lock = self.lock(id);
        let _op = lock.lock().await;
        self.session(id)?;
        self.end(id);
        Ok(())
    }

    /// Memory keeps nothing but sessions: nothing is ever orphaned.
    async fn orphans(&self, _age: Duration) -> Result<Vec<String>> {
        Ok(Vec::new())
    }

    async fn remove_orphan(&self, _name: &str) -> Result<()> {
        Ok(())
    }
}

/// The hasher to continue `state` with.
fn hasher(id: &str, state: &UploadState) -> Result<Hasher> {
    state
        .hasher()
        .ok_or_else(|| Error::Io(std::io::Error::other(format!("upload {id} has a corrupt hash state"))))
}

#[cfg(test)]
impl UploadData {
    /// The recorded state of session `id`, as the conformance suite checks it.
    pub(super) fn state(&self, id: &str) -> Option<UploadState> {
        self.0.lock().get(id).map(|s| s.state.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_memory_backend_keeps_the_upload_store_contract() {
        let (data, blobs) = (UploadData::default(), MemoryBlobs::default());
        let reopen = || Arc::new(MemoryUploads::new(data.clone(), blobs.clone())) as Arc<dyn UploadStore>;
        let recorded = |id: &str| {
            let state = data.state(id);
            Box::pin(async move { state }) as futures_util::future::BoxFuture<'static, _>
        };
        super::super::conformance::upload_store(&reopen, Arc::new(blobs.clone()), &recorded).await;
    }
}
