//! Resumable upload sessions. Each session's bytes go to `uploads/<id>` and are hashed as they
//! arrive; the session row lives in the metadata store, so an upload survives a restart (the hash
//! state is rebuilt from the file on first use). Finishing verifies the digest, fsyncs, and renames
//! the file into `blobs/`: unverified bytes are never reachable as a blob.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tokio::fs;
use tokio::io::AsyncReadExt;

use super::blobs::Blobs;
use super::meta::{Meta, UploadRecord, unix_now};
use super::spool::Spool;
use super::{Error, Result};
use crate::oci::{Algorithm, Digest, Hasher, RepoName};

/// Read size when rehashing a session's file after a restart.
const REHASH_BUFFER: usize = 1 << 20;

/// A PATCH's `Content-Range`: the first and last byte offsets, inclusive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkRange {
    pub start: u64,
    pub end: u64,
}

/// In-memory state of a session: its length and the hash of those bytes.
struct Session {
    repo: RepoName,
    len: u64,
    hasher: Hasher,
}

pub struct Uploads {
    dir: PathBuf,
    blobs: Blobs,
    meta: Arc<dyn Meta>,
    /// One lock per live session serialises its chunks. Sessions missing here after a restart are
    /// rebuilt from their file.
    sessions: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<Session>>>>>,
}

impl Uploads {
    pub fn open(root: &Path, blobs: Blobs, meta: Arc<dyn Meta>) -> Result<Uploads> {
        let dir = root.join("uploads");
        std::fs::create_dir_all(&dir)?;
        Ok(Uploads {
            dir,
            blobs,
            meta,
            sessions: Mutex::new(HashMap::new()),
        })
    }

    fn path(&self, id: &str) -> PathBuf {
        // `id` is always one we generated (a simple UUID) or checked by `parse_id`.
        self.dir.join(id)
    }

    fn slot(&self, id: &str) -> Arc<tokio::sync::Mutex<Option<Session>>> {
        self.sessions
            .lock()
            .expect("sessions lock")
            .entry(id.to_owned())
            .or_default()
            .clone()
    }

    fn forget(&self, id: &str) {
        self.sessions.lock().expect("sessions lock").remove(id);
    }

    /// Start a session for `repo`; returns its id. A `resumable` session is recorded durably so
    /// it survives a restart; a monolithic upload, which the client never sees as a session,
    /// lives in memory only (its file is purged by GC if a crash orphans it).
    pub async fn create(&self, repo: &RepoName, resumable: bool) -> Result<String> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        fs::File::create(self.path(&id)).await?;
        if resumable {
            self.meta.put_upload(
                &id,
                &UploadRecord {
                    repo: repo.clone(),
                    started: unix_now(),
                },
            )?;
        } else {
            *self.slot(&id).lock().await = Some(Session {
                repo: repo.clone(),
                len: 0,
                hasher: Hasher::new(Algorithm::Sha256),
            });
        }
        Ok(id)
    }

    /// Files in the uploads area with no session, older than `age` (left by a crash).
    pub fn orphans(&self, age: std::time::Duration) -> Result<Vec<PathBuf>> {
        let cutoff = std::time::SystemTime::now() - age;
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let path = entry?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("").to_owned();
            let old = std::fs::metadata(&path)
                .and_then(|m| m.modified())
                .is_ok_and(|m| m < cutoff);
            let live = self.sessions.lock().expect("sessions lock").contains_key(&name);
            if old && !live && self.meta.upload(&name)?.is_none() {
                out.push(path);
            }
        }
        Ok(out)
    }

    /// The session's repository and current length, or `UploadUnknown`.
    pub async fn status(&self, id: &str) -> Result<(RepoName, u64)> {
        let in_memory = self.sessions.lock().expect("sessions lock").get(id).cloned();
        let repo = match in_memory {
            Some(slot) => slot.lock().await.as_ref().map(|s| s.repo.clone()),
            None => None,
        };
        let repo = match repo {
            Some(repo) => repo,
            None => self.meta.upload(id)?.ok_or(Error::UploadUnknown)?.repo,
        };
        let len = fs::metadata(self.path(id))
            .await
            .map_err(|_| Error::UploadUnknown)?
            .len();
        Ok((repo, len))
    }

    /// Append a chunk. With `range`, its start must equal the current length and the body must be
    /// exactly as long as the range. A rejected or interrupted chunk leaves the session as it was.
    /// Returns the new length.
    pub async fn append<S>(&self, id: &str, range: Option<ChunkRange>, body: S, limit: u64) -> Result<u64>
    where
        S: Stream<Item = Result<Bytes, io::Error>> + Unpin,
    {
        let slot = self.slot(id);
        let mut guard = slot.lock().await;
        let session = self.load(id, &mut guard).await?;
        if let Some(r) = range
            && r.start != session.len
        {
            return Err(Error::RangeMismatch {
                start: r.start,
                offset: session.len,
            });
        }
        let before = (session.len, session.hasher.clone());
        let declared = range.map(|r| r.end + 1 - r.start);
        match self.write_chunk(id, session, body, declared, limit).await {
            Ok(()) => Ok(session.len),
            Err(e) => {
                (session.len, session.hasher) = before;
                let file = fs::OpenOptions::new().write(true).open(self.path(id)).await?;
                file.set_len(session.len).await?;
                Err(e)
            }
        }
    }

    async fn write_chunk<S>(
        &self,
        id: &str,
        session: &mut Session,
        body: S,
        declared: Option<u64>,
        limit: u64,
    ) -> Result<()>
    where
        S: Stream<Item = Result<Bytes, io::Error>> + Unpin,
    {
        let file = fs::OpenOptions::new().append(true).open(self.path(id)).await?;
        let mut spool = Spool::for_upload(file.into_std().await);
        let received = receive(session, body, declared, limit, &mut spool).await;
        // Wait for the writer either way: the caller may truncate the file after an error. Its
        // own error (a full disk, say) explains a failed hand-off better than the hand-off does.
        spool.close().await?;
        received
    }

    /// The in-memory state, rebuilt by hashing the file when berth restarted mid-upload.
    async fn load<'a>(&self, id: &str, slot: &'a mut Option<Session>) -> Result<&'a mut Session> {
        if slot.is_none() {
            let record = self.meta.upload(id)?.ok_or(Error::UploadUnknown)?;
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

    /// Verify the session's bytes against `digest` and publish them as that blob. The session ends
    /// either way: a mismatched upload cannot become right by sending more.
    pub async fn finish(&self, id: &str, digest: &Digest) -> Result<u64> {
        let slot = self.slot(id);
        let mut guard = slot.lock().await;
        let session = self.load(id, &mut guard).await?;
        let actual = if digest.algorithm() == Algorithm::Sha256 {
            session.hasher.clone().finish()
        } else {
            self.hash_file(id, digest.algorithm()).await?.1.finish()
        };
        let len = session.len;
        let result = if actual == *digest {
            let path = self.path(id);
            fs::File::open(&path).await?.sync_all().await?;
            self.blobs.publish(&path, digest).await
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
    pub async fn cancel(&self, id: &str) -> Result<()> {
        self.status(id).await?;
        self.end(id).await
    }

    async fn end(&self, id: &str) -> Result<()> {
        self.forget(id);
        match fs::remove_file(self.path(id)).await {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        self.meta.delete_upload(id)
    }
}

/// Hash a chunk's bytes into the session as they arrive and hand them to the spool, enforcing
/// the declared length and the size limit.
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

/// Accept only ids of the shape we hand out (32 lowercase hex digits), so an id is a safe file name.
pub fn parse_id(id: &str) -> Option<&str> {
    (id.len() == 32 && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))).then_some(id)
}
