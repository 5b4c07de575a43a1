//! The filesystem [`UploadStore`]. Each session's bytes go to `uploads/<id>` and are hashed as
//! they arrive; the session's record in the metadata store holds the rest of its state: the
//! committed length and the SHA-256 state of exactly those bytes ([`UploadState`]), renewed with
//! every chunk. So a session continues after a restart (or in another process over the same
//! store) without reading its file back. Finishing verifies the digest, fsyncs, and renames the
//! file into `blobs/`: unverified bytes are never reachable as a blob.
//!
//! A chunk commits in this order: every byte in the file, the file synced, then the record. So the
//! record never claims bytes the file does not hold durably; a file longer than its record holds a
//! chunk cut off before its commit (a crash) and is cut back to the record, and a file shorter than
//! its record has lost committed bytes: that session is broken and says so. A record written
//! before berth kept states has none: its hash is rebuilt from the file once and recorded.
//!
//! A chunk can be cut off at any await point (an HTTP/2 reset, a disconnect, the drain timeout):
//! its future is dropped mid-write. So a chunk works on a copy of the session's length and hash
//! and commits them only once its writer has put every byte in the file. The writer thread may
//! outlive a dropped chunk; it holds the session's writer lock until it exits, and every later
//! operation first waits for that lock and cuts the file back to the committed length. The record
//! commit runs as a task that holds the same lock, and the session is unloaded while it runs: if
//! the chunk is dropped then, the next operation reloads it from whatever the record says. The
//! bytes in the file up to the session's length are therefore always exactly the bytes its hash
//! covers.
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
use super::meta::{Meta, UploadHandle, UploadRecord, UploadState, unix_now};
use super::spool::{Hashing, Spool};
use super::upload_store::{ChunkRange, UploadStore};
use super::{ByteStream, Error, Result};
use crate::oci::{Algorithm, Digest, Hasher, RepoName};

/// Read size when rehashing a session's file (a session recorded without its hash state, or a
/// finish with a digest other than SHA-256).
const REHASH_BUFFER: usize = 1 << 20;

/// In-memory state of a session: its length and the hash of exactly those bytes.
#[derive(Clone)]
struct Session {
    repo: RepoName,
    len: u64,
    hasher: Hasher,
    /// The durable record of a resumable session, as last committed; `None` for a monolithic one.
    record: Option<UploadRecord>,
}

/// A session as this process knows it.
#[derive(Default)]
struct Slot {
    /// The committed state, `None` until loaded from the record; its lock serialises the
    /// session's operations.
    state: tokio::sync::Mutex<Option<Session>>,
    /// Held by a chunk's file writer until the writer thread has exited, and by a record commit
    /// until it is done (see the module doc).
    writer: Arc<tokio::sync::Mutex<()>>,
    /// The client that opened a monolithic session, which lives only in this map.
    monolithic_owner: Option<String>,
}

pub struct Uploads {
    dir: PathBuf,
    blobs: Blobs,
    meta: Arc<dyn Meta>,
    /// Sessions this process has touched. Sessions missing here after a restart are loaded from
    /// their record. Process-local.
    local_sessions: Mutex<HashMap<String, Arc<Slot>>>,
    /// Serialises counting a client's sessions with opening one, so two concurrent starts cannot
    /// both pass the limit. Process-local.
    admission: tokio::sync::Mutex<()>,
    /// Sessions whose hash was rebuilt by reading their file, so tests can tell a resume from
    /// the recorded state apart from a rehash.
    #[cfg(test)]
    rehashed: std::sync::atomic::AtomicUsize,
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
            #[cfg(test)]
            rehashed: Default::default(),
        })
    }

    fn path(&self, id: &str) -> PathBuf {
        // `id` is always one we generated (a simple UUID) or checked by `parse_id`.
        self.dir.join(id)
    }

    /// The handle this backend records: the session's file, named by its id.
    fn handle(id: &str) -> UploadHandle {
        UploadHandle::File { name: id.to_owned() }
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
    /// committed length `len` (a chunk that failed, was dropped, or was cut off by a crash may
    /// have written past it). Returns the file, which then holds exactly the session's `len`
    /// bytes: no writer can start while the caller holds the session's state lock.
    async fn settle(&self, id: &str, slot: &Slot, len: u64) -> Result<fs::File> {
        drop(slot.writer.lock().await);
        let file = fs::OpenOptions::new()
            .write(true)
            .open(self.path(id))
            .await
            .map_err(|_| Error::UploadUnknown)?;
        let on_disk = file.metadata().await?.len();
        if on_disk < len {
            return Err(broken(id, on_disk, len));
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

    /// Sync the session's file, then commit `record`: the record never claims bytes the file
    /// does not hold durably. A task of its own does both while holding the session's writer
    /// lock, so a caller dropped here leaves the commit to finish before anyone touches the
    /// session again (see the module doc).
    async fn commit(&self, id: &str, slot: &Slot, record: &UploadRecord) -> Result<()> {
        let busy = slot.writer.clone().lock_owned().await;
        let (path, meta, id, record) = (self.path(id), self.meta.clone(), id.to_owned(), record.clone());
        let task = tokio::spawn(async move {
            let _busy = busy;
            let file = fs::File::open(&path).await.map_err(|_| Error::UploadUnknown)?;
            file.sync_data().await?;
            meta.put_upload(&id, &record).await
        });
        task.await.map_err(|e| Error::Io(io::Error::other(e)))?
    }

    /// The session's committed state. Not yet in this process (after a restart, or after a
    /// chunk dropped during its commit), it is loaded from the record; a record written before
    /// berth kept states is completed once by hashing the file.
    async fn load<'a>(&self, id: &str, slot: &Slot, state: &'a mut Option<Session>) -> Result<&'a mut Session> {
        if state.is_none() {
            // A dropped chunk's commit may still be running: read the record it leaves.
            drop(slot.writer.lock().await);
            let record = self.meta.upload(id).await?.ok_or(Error::UploadUnknown)?;
            if record.handle.as_ref().is_some_and(|h| *h != Uploads::handle(id)) {
                return Err(Error::Io(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("upload {id} is not kept in this store's files: {:?}", record.handle),
                )));
            }
            let session = match &record.state {
                Some(recorded) => Session {
                    repo: record.repo.clone(),
                    len: recorded.len,
                    hasher: recorded.hasher().ok_or_else(|| {
                        Error::Io(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("upload {id} is broken: its recorded hash state is not one"),
                        ))
                    })?,
                    record: Some(record),
                },
                None => {
                    let (len, hasher) = self.hash_file(id, Algorithm::Sha256).await?;
                    #[cfg(test)]
                    self.rehashed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let record = UploadRecord {
                        state: Some(UploadState::new(len, &hasher)),
                        handle: Some(Uploads::handle(id)),
                        ..record
                    };
                    self.commit(id, slot, &record).await?;
                    Session {
                        repo: record.repo.clone(),
                        len,
                        hasher,
                        record: Some(record),
                    }
                }
            };
            *state = Some(session);
        }
        Ok(state.as_mut().expect("just filled"))
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

/// A session whose file lost bytes its record committed (a damaged or restored disk): it cannot
/// continue, and it must not be cut to fit.
fn broken(id: &str, on_disk: u64, len: u64) -> Error {
    Error::Io(io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "upload {id} is broken: its file holds {on_disk} bytes but {len} were committed; cancel it and upload again"
        ),
    ))
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
                state: Some(UploadState::new(0, &Hasher::new(Algorithm::Sha256))),
                handle: Some(Uploads::handle(&id)),
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
                    record: None,
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
        let record = self.meta.upload(id).await?.ok_or(Error::UploadUnknown)?;
        let on_disk = fs::metadata(self.path(id))
            .await
            .map_err(|_| Error::UploadUnknown)?
            .len();
        match record.state {
            Some(state) if on_disk < state.len => Err(broken(id, on_disk, state.len)),
            // A longer file holds a chunk cut off before its commit; the next chunk cuts it back.
            Some(state) => Ok((record.repo, state.len)),
            // Recorded before berth kept states: the file is the record.
            None => Ok((record.repo, on_disk)),
        }
    }

    /// Append a chunk. With `range`, its start must equal the current length and the body must be
    /// exactly as long as the range. A rejected or interrupted chunk leaves the session as it was.
    /// Returns the new length, committed to the session's record.
    async fn append(&self, id: &str, range: Option<ChunkRange>, body: ByteStream, limit: u64) -> Result<u64> {
        let slot = self.slot(id);
        let mut guard = slot.state.lock().await;
        let previous = self.load(id, &slot, &mut guard).await?.clone();
        if let Some(r) = range
            && r.start != previous.len
        {
            return Err(Error::RangeMismatch {
                start: r.start,
                offset: previous.len,
            });
        }
        let declared = range.map(|r| r.byte_count());
        self.settle(id, &slot, previous.len).await?;
        // Work on a copy: if this future is dropped anywhere below, the session stays as it was.
        let mut work = previous.clone();
        if let Err(e) = self.write_chunk(id, &slot, &mut work, body, declared, limit).await {
            self.settle(id, &slot, previous.len).await?;
            return Err(e);
        }
        if let Some(record) = &mut work.record {
            record.state = Some(UploadState::new(work.len, &work.hasher));
            // Unloaded until the record is committed: whether the commit lands or fails, or this
            // future is dropped, the next operation reloads the session from the record.
            *guard = None;
            self.commit(id, &slot, record).await?;
        }
        let len = work.len;
        *guard = Some(work);
        Ok(len)
    }

    /// Verify the session's bytes against `digest` and publish them as that blob. The session ends
    /// either way: a mismatched upload cannot become right by sending more.
    async fn finish(&self, id: &str, digest: &Digest) -> Result<u64> {
        let slot = self.slot(id);
        let mut guard = slot.state.lock().await;
        let session = self.load(id, &slot, &mut guard).await?;
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

    /// Drop a session and its bytes; a broken session too.
    async fn cancel(&self, id: &str) -> Result<()> {
        let in_memory = self.sessions().get(id).cloned();
        let loaded = match in_memory {
            Some(slot) => slot.state.lock().await.is_some(),
            None => false,
        };
        if !loaded && self.meta.upload(id).await?.is_none() {
            return Err(Error::UploadUnknown);
        }
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
    // Started by the first full batch: a small body is hashed here, without a thread hop.
    let mut hashing: Option<Hashing> = None;
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
        session.len += chunk.len() as u64;
        // The batch went to the writer; the hashing thread takes it too.
        if let Some(batch) = spool.push(chunk).await? {
            let hashing = hashing.get_or_insert_with(|| Hashing::start(session.hasher.clone()));
            hashing.send(batch).await?;
        }
    }
    if let Some(d) = declared.filter(|&d| d != session.len - start) {
        return Err(Error::ChunkLength {
            declared: d,
            got: session.len - start,
        });
    }
    let rest = spool.flush().await?.unwrap_or_default();
    match hashing {
        Some(hashing) => {
            hashing.send(rest).await?;
            session.hasher = hashing.finish().await?;
        }
        None => rest.iter().for_each(|b| session.hasher.update(b)),
    }
    Ok(())
}

#[cfg(test)]
#[path = "uploads_tests.rs"]
mod tests;
