//! [`S3Uploads`]: upload sessions as S3 multipart uploads, with every bit of their state in the
//! metadata store, so the POST, the PATCHes and the PUT of one upload may each land on a
//! different replica.
//!
//! A session's record ([`UploadRecord`]) holds its length and SHA-256 state ([`UploadState`]) and
//! a [`UploadHandle::Multipart`]: the multipart upload's id (started with the session, on
//! `uploads/<id>/data`), the ETags of the parts committed, and the length of its tail.
//!
//! Small chunks: S3 parts other than the last must be at least 5 MiB, and clients PATCH in any
//! size. As distribution's S3 driver does, the bytes after the last full part are kept as an
//! object of their own, `uploads/<id>/tail.<session length>`. A chunk reads the tail back (less
//! than one part), appends its body, uploads every full part (of `PART` bytes) and writes what is
//! left as the new tail. Then the record commits, in one metadata write, and the old tail is
//! removed. So a chunk is all or nothing: a chunk that fails or is dropped before its record
//! commits leaves the record pointing at the old tail and parts; the part numbers it used are
//! overwritten by the next chunk, and parts past the record are never completed.
//!
//! `finish` checks the recorded hash first, then uploads the tail as the last part, completes the
//! upload and copies the object to its content-addressed key (S3's CopyObject: at most 5 GiB per
//! blob). A session that never filled a part is PUT directly to its key from the tail instead.
//! `cancel`, and garbage collection's purge of abandoned sessions through it, abort the
//! multipart upload and delete the tail.
//!
//! One replica runs one session's operations one at a time (a lock per session); across replicas
//! the client does, since a registry client sends an upload's requests one after another.

use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path as Key;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use parking_lot::Mutex;

use super::super::meta::unix_now;
use super::super::upload_store::{ChunkRange, UploadStore};
use super::super::{BlobStore, ByteStream, Error, Meta, Result, UploadHandle, UploadRecord, UploadState};
use super::writer::{PartBuffer, PartQueue};
use super::{Bucket, PART, S3Blobs, blob_key, s3_error};
use crate::oci::{Algorithm, Digest, Hasher, RepoName};

pub struct S3Uploads {
    bucket: Bucket,
    blobs: S3Blobs,
    meta: Arc<dyn Meta>,
    /// One lock per session, so this replica runs its operations one at a time. Process-local.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Serialises counting an owner's sessions with opening one. Process-local.
    admission: tokio::sync::Mutex<()>,
}

/// A session as its record describes it.
struct Session {
    record: UploadRecord,
    len: u64,
    hasher: Hasher,
    upload_id: String,
    parts: Vec<String>,
    tail: u64,
}

/// Between the key and the upload id in the name of an orphaned multipart upload.
const UPLOAD_ID: &str = "?uploadId=";

fn data_key(id: &str) -> Key {
    Key::from(format!("uploads/{id}/data"))
}

/// The tail of a session whose committed length is `len`: a new name for every commit, so a
/// chunk never overwrites the tail its record still names.
fn tail_key(id: &str, len: u64) -> Key {
    Key::from(format!("uploads/{id}/tail.{len}"))
}

fn broken(id: &str, what: &str) -> Error {
    Error::Io(io::Error::new(
        io::ErrorKind::InvalidData,
        format!("upload {id} is broken: {what}"),
    ))
}

impl S3Uploads {
    pub(crate) fn new(bucket: Bucket, blobs: S3Blobs, meta: Arc<dyn Meta>) -> S3Uploads {
        S3Uploads {
            bucket,
            blobs,
            meta,
            locks: Mutex::default(),
            admission: tokio::sync::Mutex::new(()),
        }
    }

    /// Whether the session an `uploads/<id>/…` key belongs to has a record.
    async fn has_session(&self, key: &str) -> Result<bool> {
        let Some(id) = key.split('/').nth(1) else {
            return Ok(false);
        };
        Ok(self.meta.upload(id).await?.is_some())
    }

    fn lock(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.locks.lock().entry(id.to_owned()).or_default().clone()
    }

    async fn session(&self, id: &str) -> Result<Session> {
        let record = self.meta.upload(id).await?.ok_or(Error::UploadUnknown)?;
        let Some(UploadHandle::Multipart { upload_id, parts, tail }) = record.handle.clone() else {
            return Err(broken(id, "it is not an S3 multipart upload"));
        };
        let state = record
            .state
            .as_ref()
            .ok_or_else(|| broken(id, "it has no hash state"))?;
        let hasher = state
            .hasher()
            .ok_or_else(|| broken(id, "its recorded hash state is not one"))?;
        Ok(Session {
            len: state.len,
            hasher,
            upload_id,
            parts,
            tail,
            record,
        })
    }

    /// The session's tail bytes.
    async fn tail(&self, id: &str, session: &Session) -> Result<Bytes> {
        if session.tail == 0 {
            return Ok(Bytes::new());
        }
        let got = self.bucket.s3.get(&tail_key(id, session.len)).await.map_err(s3_error)?;
        let bytes = got.bytes().await.map_err(s3_error)?;
        if bytes.len() as u64 != session.tail {
            return Err(broken(id, "its tail object is not as long as recorded"));
        }
        Ok(bytes)
    }

    async fn put_part(&self, id: &str, upload_id: &str, index: usize, payload: PutPayload) -> Result<String> {
        let part = self
            .bucket
            .s3
            .put_part(&data_key(id), &upload_id.to_owned(), index, payload)
            .await
            .map_err(s3_error)?;
        Ok(part.content_id)
    }

    /// Remove everything a session holds in the bucket and its record. `completed`: the
    /// multipart upload was completed into the data object (which goes), rather than aborted.
    async fn end(&self, id: &str, session: &Session, completed: bool) -> Result<()> {
        let s3 = &self.bucket.s3;
        if completed {
            s3.delete(&data_key(id)).await.map_err(s3_error)?;
        } else {
            match s3.abort_multipart(&data_key(id), &session.upload_id).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(s3_error(e)),
            }
        }
        if session.tail > 0 {
            s3.delete(&tail_key(id, session.len)).await.map_err(s3_error)?;
        }
        self.meta.delete_upload(id).await?;
        self.locks.lock().remove(id);
        Ok(())
    }

    /// The session's bytes, assembled: in memory when they never filled a part, else completed
    /// into the data object.
    async fn assemble(&self, id: &str, session: &Session) -> Result<Assembled> {
        let tail = self.tail(id, session).await?;
        if session.parts.is_empty() {
            return Ok(Assembled::Bytes(tail));
        }
        let mut parts: Vec<PartId> = session.parts.iter().map(|p| PartId { content_id: p.clone() }).collect();
        if !tail.is_empty() {
            let last = self.put_part(id, &session.upload_id, parts.len(), tail.into()).await?;
            parts.push(PartId { content_id: last });
        }
        self.bucket
            .s3
            .complete_multipart(&data_key(id), &session.upload_id, parts)
            .await
            .map_err(s3_error)?;
        Ok(Assembled::Object)
    }

    /// Hash the assembled bytes (a digest other than SHA-256, whose state is not recorded).
    async fn rehash(&self, id: &str, assembled: &Assembled, algorithm: Algorithm) -> Result<Digest> {
        let mut hasher = Hasher::new(algorithm);
        match assembled {
            Assembled::Bytes(bytes) => hasher.update(bytes),
            Assembled::Object => {
                let mut body = self.bucket.s3.get(&data_key(id)).await.map_err(s3_error)?.into_stream();
                while let Some(chunk) = body.next().await {
                    hasher.update(&chunk.map_err(s3_error)?);
                }
            }
        }
        Ok(hasher.finish())
    }
}

/// Where a finished session's bytes are.
enum Assembled {
    Bytes(Bytes),
    Object,
}

#[async_trait::async_trait]
impl UploadStore for S3Uploads {
    /// Every session, monolithic or not, is recorded: any replica may be asked to finish it.
    async fn create(&self, repo: &RepoName, owner: &str, _resumable: bool, limit: u32) -> Result<String> {
        let _admission = self.admission.lock().await;
        if self.meta.upload_count(owner).await? >= limit as usize {
            return Err(Error::SessionLimit { limit });
        }
        let id = uuid::Uuid::new_v4().simple().to_string();
        let upload_id = self
            .bucket
            .s3
            .create_multipart(&data_key(&id))
            .await
            .map_err(s3_error)?;
        let record = UploadRecord {
            repo: repo.clone(),
            started: unix_now(),
            owner: owner.to_owned(),
            state: Some(UploadState::new(0, &Hasher::new(Algorithm::Sha256))),
            handle: Some(UploadHandle::Multipart {
                upload_id: upload_id.clone(),
                parts: Vec::new(),
                tail: 0,
            }),
        };
        // Counted again with the insert: another replica may have admitted one meanwhile.
        if let Err(e) = self.meta.open_upload(&id, &record, limit).await {
            let _ = self.bucket.s3.abort_multipart(&data_key(&id), &upload_id).await;
            return Err(e);
        }
        Ok(id)
    }

    async fn status(&self, id: &str) -> Result<(RepoName, u64)> {
        let session = self.session(id).await?;
        Ok((session.record.repo, session.len))
    }

    async fn append(&self, id: &str, range: Option<ChunkRange>, body: ByteStream, limit: u64) -> Result<u64> {
        let lock = self.lock(id);
        let _held = lock.lock().await;
        let mut session = self.session(id).await?;
        if let Some(r) = range
            && r.start != session.len
        {
            return Err(Error::RangeMismatch {
                start: r.start,
                offset: session.len,
            });
        }
        let (start, old_tail) = (session.len, session.tail);
        let mut buffer = PartBuffer::default();
        buffer.push(self.tail(id, &session).await?);
        let mut new_parts = PartQueue::default();
        let declared = range.map(|r| r.byte_count());
        let mut body = body;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(Error::Body)?;
            let received = session.len - start + chunk.len() as u64;
            if let Some(d) = declared.filter(|&d| received > d) {
                return Err(Error::ChunkLength {
                    declared: d,
                    got: received,
                });
            }
            if session.len + chunk.len() as u64 > limit {
                return Err(Error::TooLarge { limit });
            }
            session.hasher.update(&chunk);
            session.len += chunk.len() as u64;
            buffer.push(chunk);
            while buffer.len() >= PART {
                let index = session.parts.len() + new_parts.len();
                let (s3, key, upload_id) = (self.bucket.s3.clone(), data_key(id), session.upload_id.clone());
                let part = buffer.take(PART);
                new_parts
                    .push(async move { s3.put_part(&key, &upload_id, index, part).await })
                    .await?;
            }
        }
        if let Some(d) = declared.filter(|&d| d != session.len - start) {
            return Err(Error::ChunkLength {
                declared: d,
                got: session.len - start,
            });
        }
        if session.len == start {
            return Ok(start);
        }
        let new_parts = new_parts.finish().await?;
        let tail = buffer.len() as u64;
        if tail > 0 {
            let rest = buffer.take(usize::MAX);
            self.bucket
                .s3
                .put(&tail_key(id, session.len), rest)
                .await
                .map_err(s3_error)?;
        }
        session.parts.extend(new_parts.into_iter().map(|p| p.content_id));
        let record = UploadRecord {
            state: Some(UploadState::new(session.len, &session.hasher)),
            handle: Some(UploadHandle::Multipart {
                upload_id: session.upload_id.clone(),
                parts: session.parts,
                tail,
            }),
            ..session.record
        };
        self.meta.put_upload(id, &record).await?;
        if old_tail > 0 {
            // Best effort: a tail left behind is removed with the session.
            let _ = self.bucket.s3.delete(&tail_key(id, start)).await;
        }
        Ok(session.len)
    }

    async fn finish(&self, id: &str, digest: &Digest) -> Result<u64> {
        let lock = self.lock(id);
        let _held = lock.lock().await;
        let session = self.session(id).await?;
        let mismatch = |actual: Digest| Error::DigestMismatch {
            expected: digest.clone(),
            actual,
        };
        if digest.algorithm() == Algorithm::Sha256 {
            let actual = session.hasher.clone().finish();
            if actual != *digest {
                self.end(id, &session, false).await?;
                return Err(mismatch(actual));
            }
        }
        let assembled = self.assemble(id, &session).await?;
        let completed = matches!(assembled, Assembled::Object);
        if digest.algorithm() != Algorithm::Sha256 {
            let actual = self.rehash(id, &assembled, digest.algorithm()).await?;
            if actual != *digest {
                self.end(id, &session, completed).await?;
                return Err(mismatch(actual));
            }
        }
        if self.blobs.stat(digest).await?.is_none() {
            match assembled {
                Assembled::Bytes(bytes) => self.blobs.put(digest, bytes).await?,
                Assembled::Object => self
                    .bucket
                    .s3
                    .copy(&data_key(id), &blob_key(digest))
                    .await
                    .map_err(s3_error)?,
            }
        }
        self.end(id, &session, completed).await?;
        Ok(session.len)
    }

    async fn cancel(&self, id: &str) -> Result<()> {
        let lock = self.lock(id);
        let _held = lock.lock().await;
        let session = self.session(id).await?;
        self.end(id, &session, false).await
    }

    /// What crashes left in the bucket, older than `age`: objects under `uploads/` of sessions
    /// that have no record (a tail written before its chunk committed, a data object of an
    /// interrupted `finish`), and open multipart uploads that nothing will complete: a session's
    /// with no record, or a blob fill's (under `blobs/`) started before `age` (a fill runs for
    /// minutes, and garbage collection passes its upload TTL, a day by default). A multipart
    /// upload is named `<key>?uploadId=<id>`.
    async fn orphans(&self, age: Duration) -> Result<Vec<String>> {
        let cutoff = SystemTime::now() - age;
        let listed: Vec<_> = self
            .bucket
            .s3
            .list(Some(&Key::from("uploads")))
            .try_collect()
            .await
            .map_err(s3_error)?;
        let mut out = Vec::new();
        for object in listed {
            let key = object.location.to_string();
            if SystemTime::from(object.last_modified) < cutoff && !self.has_session(&key).await? {
                out.push(key);
            }
        }
        for prefix in ["uploads/", "blobs/"] {
            for open in self.bucket.open_uploads(prefix).await? {
                if open.initiated < cutoff && (prefix == "blobs/" || !self.has_session(&open.key).await?) {
                    out.push(format!("{}{UPLOAD_ID}{}", open.key, open.upload_id));
                }
            }
        }
        Ok(out)
    }

    async fn remove_orphan(&self, name: &str) -> Result<()> {
        if !name.starts_with("uploads/") && !name.starts_with("blobs/") {
            return Err(Error::UploadUnknown);
        }
        match name.rsplit_once(UPLOAD_ID) {
            Some((key, upload_id)) => self
                .bucket
                .s3
                .abort_multipart(&Key::from(key), &upload_id.to_owned())
                .await
                .map_err(s3_error),
            None if name.starts_with("uploads/") => self.bucket.s3.delete(&Key::from(name)).await.map_err(s3_error),
            None => Err(Error::UploadUnknown),
        }
    }
}
