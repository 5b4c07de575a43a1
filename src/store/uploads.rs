//! The filesystem [`UploadStore`]. Each session's bytes go to `uploads/<id>` and are hashed as
//! they arrive; the session row lives in the metadata store. The session's state is that data: its
//! length is the file's, and its hash state is rebuilt by hashing the file when a process (this
//! one after a restart, or another) first touches the session. (Saving the hash state instead,
//! see [`super::save_hash`], would need a place beside the row for it; the memory backend shows
//! how, and a shared backend keeps it with its session record.) Finishing verifies the digest, fsyncs, and renames
//! the file into `blobs/`: unverified bytes are never reachable as a blob.
//!
//! A chunk can be cut off at any await point (an HTTP/2 reset, a disconnect, the drain timeout):
//! its future is dropped mid-write. So a chunk works on a copy of the session's length and hash
//! and commits them only once its writer has put every byte in the file. The writer thread may
//! outlive a dropped chunk; it holds the session's writer lock until it exits, and every later
//! operation first waits for that lock and cuts the file back to the committed length. The bytes
//! in the file up to the session's length are therefore always exactly the bytes its hash covers.
//!
//! Sessions in this process are tracked in an in-memory map (one lock per session); that map
//! works only inside one process, as its name says.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tokio::fs;
use tokio::io::AsyncReadExt;

use super::blobs::Blobs;
use super::meta::{Meta, UploadRecord, unix_now};
use super::spool::Spool;
use super::upload_store::{ChunkRange, UploadStore};
use super::{ByteStream, Error, Result};
use crate::oci::{Algorithm, Digest, Hasher, RepoName};

/// Read size when rehashing a session's file after a restart.
const REHASH_BUFFER: usize = 1 << 20;

/// In-memory state of a session: its length and the hash of exactly those bytes.
#[derive(Clone)]
struct Session {
    repo: RepoName,
    len: u64,
    hasher: Hasher,
}

/// A session as this process knows it.
#[derive(Default)]
struct Slot {
    /// The committed state; its lock serialises the session's operations.
    state: tokio::sync::Mutex<Option<Session>>,
    /// Held by a chunk's file writer until the writer thread has exited (see the module doc).
    writer: Arc<tokio::sync::Mutex<()>>,
    /// The client that opened a monolithic session, which lives only in this map.
    monolithic_owner: Option<String>,
}

pub struct Uploads {
    dir: PathBuf,
    blobs: Blobs,
    meta: Arc<dyn Meta>,
    /// Sessions this process has touched. Sessions missing here after a restart are rebuilt from
    /// their file and metadata row. Process-local.
    local_sessions: Mutex<HashMap<String, Arc<Slot>>>,
    /// Serialises counting a client's sessions with opening one, so two concurrent starts cannot
    /// both pass the limit. Process-local.
    admission: tokio::sync::Mutex<()>,
}

impl Uploads {
    pub fn open(root: &Path, blobs: Blobs, meta: Arc<dyn Meta>) -> Result<Uploads> {
        let dir = root.join("uploads");
        std::fs::create_dir_all(&dir)?;
        Ok(Uploads {
            dir,
            blobs,
            meta,
            local_sessions: Mutex::new(HashMap::new()),
            admission: tokio::sync::Mutex::new(()),
        })
    }

    fn path(&self, id: &str) -> PathBuf {
        // `id` is always one we generated (a simple UUID) or checked by `parse_id`.
        self.dir.join(id)
    }

    fn sessions(&self) -> parking_lot::MutexGuard<'_, HashMap<String, Arc<Slot>>> {
        self.local_sessions.lock()
    }

    fn slot(&self, id: &str) -> Arc<Slot> {
        self.sessions().entry(id.to_owned()).or_default().clone()
    }

    fn forget(&self, id: &str) {
        self.sessions().remove(id);
    }

    /// Sessions `owner` holds: monolithic ones in this process and resumable ones on record.
    async fn open_sessions(&self, owner: &str) -> Result<usize> {
        let monolithic = self
            .sessions()
            .values()
            .filter(|s| s.monolithic_owner.as_deref() == Some(owner))
            .count();
        let resumable = self.meta.upload_count(owner).await?;
        Ok(monolithic + resumable)
    }

    /// Wait until no chunk writer of this session is running, then cut the file back to the
    /// committed length `len` (a chunk that failed or was dropped may have written past it).
    /// Returns the file, which then holds exactly the session's `len` bytes: no writer can start
    /// while the caller holds the session's state lock.
    async fn settle(&self, id: &str, slot: &Slot, len: u64) -> Result<fs::File> {
        drop(slot.writer.lock().await);
        let file = fs::OpenOptions::new()
            .write(true)
            .open(self.path(id))
            .await
            .map_err(|_| Error::UploadUnknown)?;
        let on_disk = file.metadata().await?.len();
        if on_disk < len {
            return Err(Error::Io(io::Error::other(format!(
                "upload {id} has {on_disk} bytes in its file but {len} recorded"
            ))));
        }
        if on_disk > len {
            file.set_len(len).await?;
        }
        Ok(file)
    }

    async fn write_chunk<S>(
        &self,
        id: &str,
        slot: &Slot,
        work: &mut Session,
        body: S,
        declared: Option<u64>,
        limit: u64,
    ) -> Result<()>
    where
        S: Stream<Item = Result<Bytes, io::Error>> + Unpin,
    {
        let file = fs::OpenOptions::new().append(true).open(self.path(id)).await?;
        let busy = slot.writer.clone().lock_owned().await;
        let mut spool = Spool::for_upload(file.into_std().await, busy);
        let received = receive(work, body, declared, limit, &mut spool).await;
        // Wait for the writer either way: only bytes it wrote may be committed. Its own error (a
        // full disk, say) explains a failed hand-off better than the hand-off does.
        spool.close().await?;
        received
    }

    /// The in-memory state, rebuilt by hashing the file when berth restarted mid-upload.
    async fn load<'a>(&self, id: &str, slot: &'a mut Option<Session>) -> Result<&'a mut Session> {
        if slot.is_none() {
            let record = self.meta.upload(id).await?.ok_or(Error::UploadUnknown)?;
            let (len, hasher) = self.hash_file(id, Algorithm::Sha256).await?;
            *slot = Some(Session {
                repo: record.repo,
                len,
                hasher,
            });
        }
        Ok(slot.as_mut().expect("just filled"))
    }

    async fn hash_file(&self, id: &str, algorithm: Algorithm) -> Result<(u64, Hasher)> {
        let mut file = fs::File::open(self.path(id)).await.map_err(|_| Error::UploadUnknown)?;
        let mut hasher = Hasher::new(algorithm);
        let mut buf = vec![0; REHASH_BUFFER];
        let mut len = 0;
        loop {
            let n = file.read(&mut buf).await?;
            if n == 0 {
                return Ok((len, hasher));
            }
            hasher.update(&buf[..n]);
            len += n as u64;
        }
    }

    async fn end(&self, id: &str) -> Result<()> {
        self.forget(id);
        match fs::remove_file(self.path(id)).await {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        self.meta.delete_upload(id).await
    }
}

#[async_trait::async_trait]
impl UploadStore for Uploads {
    /// Start a session for `repo` opened by `owner`; returns its id. Refused when `owner` already
    /// holds `limit` sessions, counted from the sessions that exist, so every way a session ends
    /// (finish, cancel, a purge, a dropped monolithic request) gives its place back.
    ///
    /// A `resumable` session is recorded durably so it survives a restart; a monolithic upload,
    /// which the client never sees as a session, lives in memory only (its file is purged by GC
    /// if a crash orphans it).
    async fn create(&self, repo: &RepoName, owner: &str, resumable: bool, limit: u32) -> Result<String> {
        let _admission = self.admission.lock().await;
        if self.open_sessions(owner).await? >= limit as usize {
            return Err(Error::SessionLimit { limit });
        }
        let id = uuid::Uuid::new_v4().simple().to_string();
        fs::File::create(self.path(&id)).await?;
        if resumable {
            let record = UploadRecord {
                repo: repo.clone(),
                started: unix_now(),
                owner: owner.to_owned(),
            };
            if let Err(e) = self.meta.put_upload(&id, &record).await {
                let _ = fs::remove_file(self.path(&id)).await;
                return Err(e);
            }
        } else {
            let slot = Slot {
                state: tokio::sync::Mutex::new(Some(Session {
                    repo: repo.clone(),
                    len: 0,
                    hasher: Hasher::new(Algorithm::Sha256),
                })),
                writer: Arc::default(),
                monolithic_owner: Some(owner.to_owned()),
            };
            self.sessions().insert(id.clone(), Arc::new(slot));
        }
        Ok(id)
    }

    /// Files in the uploads area with no session, older than `age` (left by a crash), by path.
    async fn orphans(&self, age: std::time::Duration) -> Result<Vec<String>> {
        let cutoff = std::time::SystemTime::now() - age;
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let path = entry?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("").to_owned();
            let old = std::fs::metadata(&path)
                .and_then(|m| m.modified())
                .is_ok_and(|m| m < cutoff);
            let live = self.sessions().contains_key(&name);
            if old && !live && self.meta.upload(&name).await?.is_none() {
                out.push(path.display().to_string());
            }
        }
        Ok(out)
    }

    async fn remove_orphan(&self, name: &str) -> Result<()> {
        // Only a path `orphans` named: a file directly in the uploads area.
        let path = Path::new(name);
        if path.parent() != Some(self.dir.as_path()) {
            return Err(Error::UploadUnknown);
        }
        match fs::remove_file(path).await {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// The session's repository and committed length, or `UploadUnknown`.
    async fn status(&self, id: &str) -> Result<(RepoName, u64)> {
        let in_memory = self.sessions().get(id).cloned();
        if let Some(slot) = in_memory
            && let Some(session) = slot.state.lock().await.as_ref()
        {
            return Ok((session.repo.clone(), session.len));
        }
        let repo = self.meta.upload(id).await?.ok_or(Error::UploadUnknown)?.repo;
        // Not loaded since a restart: the file is the record (no chunk of this process is
        // pending on it).
        let len = fs::metadata(self.path(id))
            .await
            .map_err(|_| Error::UploadUnknown)?
            .len();
        Ok((repo, len))
    }

    /// Append a chunk. With `range`, its start must equal the current length and the body must be
    /// exactly as long as the range. A rejected or interrupted chunk leaves the session as it was.
    /// Returns the new length.
    async fn append(&self, id: &str, range: Option<ChunkRange>, body: ByteStream, limit: u64) -> Result<u64> {
        let slot = self.slot(id);
        let mut guard = slot.state.lock().await;
        let session = self.load(id, &mut guard).await?;
        if let Some(r) = range
            && r.start != session.len
        {
            return Err(Error::RangeMismatch {
                start: r.start,
                offset: session.len,
            });
        }
        let declared = range.map(|r| r.byte_count());
        self.settle(id, &slot, session.len).await?;
        // Work on a copy: if this future is dropped anywhere below, the session stays as it was.
        let mut work = session.clone();
        match self.write_chunk(id, &slot, &mut work, body, declared, limit).await {
            Ok(()) => {
                *session = work;
                Ok(session.len)
            }
            Err(e) => {
                self.settle(id, &slot, session.len).await?;
                Err(e)
            }
        }
    }

    /// Verify the session's bytes against `digest` and publish them as that blob. The session ends
    /// either way: a mismatched upload cannot become right by sending more.
    async fn finish(&self, id: &str, digest: &Digest) -> Result<u64> {
        let slot = self.slot(id);
        let mut guard = slot.state.lock().await;
        let session = self.load(id, &mut guard).await?;
        // After this the file holds exactly the bytes the session's hash covers.
        let file = self.settle(id, &slot, session.len).await?;
        let actual = if digest.algorithm() == Algorithm::Sha256 {
            session.hasher.clone().finish()
        } else {
            self.hash_file(id, digest.algorithm()).await?.1.finish()
        };
        let len = session.len;
        let result = if actual == *digest {
            file.sync_all().await?;
            self.blobs.publish(&self.path(id), digest).await
        } else {
            Err(Error::DigestMismatch {
                expected: digest.clone(),
                actual,
            })
        };
        *guard = None;
        drop(guard);
        self.end(id).await?;
        result.map(|()| len)
    }

    /// Drop a session and its bytes.
    async fn cancel(&self, id: &str) -> Result<()> {
        self.status(id).await?;
        self.end(id).await
    }
}

/// Hash a chunk's bytes into the (working copy of the) session as they arrive and hand them to
/// the spool, enforcing the declared length and the size limit.
async fn receive<S>(
    session: &mut Session,
    mut body: S,
    declared: Option<u64>,
    limit: u64,
    spool: &mut Spool,
) -> Result<()>
where
    S: Stream<Item = Result<Bytes, io::Error>> + Unpin,
{
    let start = session.len;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(Error::Body)?;
        let received = session.len - start + chunk.len() as u64;
        if declared.is_some_and(|d| received > d) {
            return Err(Error::ChunkLength {
                declared: declared.unwrap_or(0),
                got: received,
            });
        }
        if session.len + chunk.len() as u64 > limit {
            return Err(Error::TooLarge { limit });
        }
        session.hasher.update(&chunk);
        session.len += chunk.len() as u64;
        spool.push(chunk).await?;
    }
    if let Some(d) = declared.filter(|&d| d != session.len - start) {
        return Err(Error::ChunkLength {
            declared: d,
            got: session.len - start,
        });
    }
    spool.flush().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::RedbMeta;

    #[tokio::test]
    async fn the_filesystem_backend_keeps_the_upload_store_contract() {
        let root = tempfile::tempdir().unwrap();
        let meta: Arc<dyn Meta> = Arc::new(RedbMeta::open(&root.path().join("meta.redb")).unwrap());
        let blobs = Blobs::open(root.path()).unwrap();
        let reopen =
            || Arc::new(Uploads::open(root.path(), blobs.clone(), meta.clone()).unwrap()) as Arc<dyn UploadStore>;
        super::super::conformance::upload_store(&reopen, Arc::new(blobs.clone())).await;
    }
}
