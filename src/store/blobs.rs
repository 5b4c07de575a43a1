//! The filesystem blob backend. A file under `blobs/` always matches its digest: bytes are
//! written to `tmp/` (or `uploads/`), verified, fsynced, and only then renamed into place, with
//! `renameat2(RENAME_NOREPLACE)` so an existing blob is never replaced. Serving maps the file
//! ([`LocalBlob`]), so warm GETs cost no copies.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use tokio::fs;

use super::blob_store::{
    BlobEntry, BlobStat, BlobStore, BlobWriter, OnWritten, ReadBack, Space, Stored, Written, verify, verify_bytes,
};
use super::mapped::{LocalBlob, READ_WHOLE, map};
use super::spool::Spool;
use super::{Error, Result};
use crate::oci::{Digest, Hasher};

/// The blob directory and its temporary area.
#[derive(Clone, Debug)]
pub struct Blobs {
    blobs: PathBuf,
    tmp: PathBuf,
}

/// `[storage] min_free`, a typed setting (defined with the settings, a floor below).
pub use crate::config::MinFree;

/// `Ok(None)` for a file that is not there.
fn found<T>(r: io::Result<T>) -> Result<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

async fn unblock<T: Send + 'static>(f: impl FnOnce() -> io::Result<T> + Send + 'static) -> io::Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(io::Error::other)?
}

impl Blobs {
    /// Create the directories and drop any temporary file a crash left behind.
    pub fn open(root: &Path) -> Result<Blobs> {
        let blobs = root.join("blobs");
        let tmp = root.join("tmp");
        std::fs::create_dir_all(&blobs)?;
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp)?;
        }
        std::fs::create_dir_all(&tmp)?;
        Ok(Blobs { blobs, tmp })
    }

    /// `blobs/<alg>/<first two hex>/<hex>`. Safe: a `Digest` is validated lowercase hex.
    fn path(&self, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        self.blobs.join(digest.algorithm().as_str()).join(&hex[..2]).join(hex)
    }

    /// A fresh path in the temporary area, on the same filesystem as `blobs/` so rename is atomic.
    fn temp_path(&self) -> PathBuf {
        self.tmp.join(uuid::Uuid::new_v4().simple().to_string())
    }

    /// Atomically move an fsynced, verified file into place, then fsync the directory so the
    /// rename itself survives a crash. A blob file is never replaced: when the digest is already
    /// published, the existing (verified) file stays and `verified` is discarded.
    pub(super) async fn publish(&self, verified: &Path, digest: &Digest) -> Result<()> {
        let dest = self.path(digest);
        let dir = dest.parent().expect("blob path has a parent").to_owned();
        fs::create_dir_all(&dir).await?;
        let source = verified.to_owned();
        let placed = unblock(move || rename_noreplace(&source, &dest)).await?;
        if !placed {
            fs::remove_file(verified).await?;
            return Ok(());
        }
        fs::File::open(&dir).await?.sync_all().await?;
        Ok(())
    }

    /// Every published blob (blocking). Names that are not digests, and anything that is not a
    /// regular file, are skipped: a stray file must not stop garbage collection.
    pub(super) fn walk(&self) -> Result<Vec<BlobEntry>> {
        let mut out = Vec::new();
        for alg in std::fs::read_dir(&self.blobs)? {
            let alg = alg?;
            let Some(alg_name) = alg.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if !alg.file_type()?.is_dir() {
                continue;
            }
            for prefix in std::fs::read_dir(alg.path())? {
                let prefix = prefix?;
                if !prefix.file_type()?.is_dir() {
                    continue;
                }
                for file in std::fs::read_dir(prefix.path())? {
                    let file = file?;
                    let Some(digest) = file
                        .file_name()
                        .to_str()
                        .and_then(|hex| format!("{alg_name}:{hex}").parse::<Digest>().ok())
                    else {
                        continue;
                    };
                    // `None`: removed by GC while the walk ran.
                    if let Some(m) = found(file.metadata())?
                        && m.is_file()
                    {
                        out.push(BlobEntry {
                            digest,
                            size: m.len(),
                            modified: m.modified()?,
                        });
                    }
                }
            }
        }
        Ok(out)
    }

    /// Create, write, fsync and remove a small file in the temporary area: the write path every
    /// upload and cache fill takes. Blocking.
    fn probe_writable(&self) -> io::Result<()> {
        use std::io::Write;
        let path = self.tmp.join(format!("probe-{}", uuid::Uuid::new_v4().simple()));
        let written = std::fs::File::create(&path).and_then(|mut f| {
            f.write_all(b"ready\n")?;
            f.sync_all()
        });
        let removed = std::fs::remove_file(&path);
        written?;
        removed
    }

    /// Room on the store's filesystem. Blocking.
    fn space(&self) -> io::Result<Space> {
        use std::os::unix::ffi::OsStrExt;
        let path = std::ffi::CString::new(self.blobs.as_os_str().as_bytes()).map_err(io::Error::other)?;
        let mut s = std::mem::MaybeUninit::<libc::statvfs>::uninit();
        // SAFETY: `path` is a valid C string and `s` a writable statvfs that the call fills.
        if unsafe { libc::statvfs(path.as_ptr(), s.as_mut_ptr()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: statvfs returned 0, so it filled `s`.
        let s = unsafe { s.assume_init() };
        // The fields are u64 here, u32 on 32-bit targets.
        #[allow(clippy::useless_conversion)]
        let (block, free, total) = (u64::from(s.f_frsize), u64::from(s.f_bavail), u64::from(s.f_blocks));
        Ok(Space {
            free: free.saturating_mul(block),
            total: total.saturating_mul(block),
        })
    }
}

#[async_trait::async_trait]
impl BlobStore for Blobs {
    async fn stat(&self, digest: &Digest) -> Result<Option<BlobStat>> {
        Ok(found(fs::metadata(self.path(digest)).await)?.map(|m| BlobStat {
            size: m.len(),
            modified: m.modified().unwrap_or(std::time::UNIX_EPOCH),
        }))
    }

    async fn open(&self, digest: &Digest) -> Result<Option<Stored>> {
        let path = self.path(digest);
        // One trip to the blocking pool: a small blob is read here too (see `READ_WHOLE`).
        let opened = unblock(move || {
            let mut file = std::fs::File::open(path)?;
            let size = file.metadata()?.len();
            if size > READ_WHOLE {
                return Ok(LocalBlob::new(file, size));
            }
            let mut bytes = Vec::with_capacity(size as usize);
            std::io::Read::read_to_end(&mut file, &mut bytes)?;
            Ok(LocalBlob::read(Bytes::from(bytes)))
        })
        .await;
        Ok(found(opened)?.map(Stored::Local))
    }

    async fn read(&self, digest: &Digest) -> Result<Option<Bytes>> {
        Ok(found(fs::read(self.path(digest)).await)?.map(Bytes::from))
    }

    async fn writer(&self, digest: &Digest, on_written: OnWritten) -> Result<Box<dyn BlobWriter>> {
        let temp = self.temp_path();
        let path = temp.clone();
        // Read and write: the read side maps what was written for trailing readers.
        let file = unblock(move || {
            std::fs::File::options()
                .read(true)
                .write(true)
                .create_new(true)
                .open(path)
        })
        .await?;
        let file = Arc::new(file);
        let spool = Spool::for_fill(file.try_clone()?, Hasher::new(digest.algorithm()), on_written);
        Ok(Box::new(FileWriter {
            blobs: self.clone(),
            temp: Some(temp),
            file,
            spool: Some(spool),
            written: None,
        }))
    }

    /// Manifests are small: written in one call, with no writer thread.
    async fn put(&self, digest: &Digest, bytes: Bytes) -> Result<()> {
        verify_bytes(&bytes, digest)?;
        if self.stat(digest).await?.is_some() {
            return Ok(());
        }
        let tmp = self.temp_path();
        let result = async {
            fs::write(&tmp, &bytes).await?;
            fs::File::open(&tmp).await?.sync_all().await?;
            self.publish(&tmp, digest).await
        }
        .await;
        if result.is_err() {
            let _ = fs::remove_file(&tmp).await;
        }
        result
    }

    async fn delete(&self, digest: &Digest) -> Result<bool> {
        Ok(found(fs::remove_file(self.path(digest)).await)?.is_some())
    }

    async fn list(&self) -> Result<Vec<BlobEntry>> {
        let blobs = self.clone();
        tokio::task::spawn_blocking(move || blobs.walk())
            .await
            .map_err(|e| Error::Io(io::Error::other(e)))?
    }

    async fn probe(&self) -> Result<()> {
        let blobs = self.clone();
        Ok(unblock(move || blobs.probe_writable()).await?)
    }

    async fn space(&self) -> Result<Option<Space>> {
        let blobs = self.clone();
        Ok(Some(unblock(move || blobs.space()).await?))
    }
}

/// A blob being written to a temporary file by a [`Spool`] (which hashes it on its thread).
struct FileWriter {
    blobs: Blobs,
    /// The temporary file; `None` once published (or discarded).
    temp: Option<PathBuf>,
    /// Kept open for reading back: after the rename it is the published blob.
    file: Arc<std::fs::File>,
    spool: Option<Spool>,
    written: Option<Written>,
}

#[async_trait::async_trait]
impl BlobWriter for FileWriter {
    async fn append(&mut self, batch: Vec<Bytes>) -> Result<()> {
        let spool = self
            .spool
            .as_mut()
            .ok_or_else(|| io::Error::other("the writer is closed"))?;
        Ok(spool.send(batch).await?)
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

    async fn commit(mut self: Box<Self>, expected: &Digest) -> Result<u64> {
        let written = self.close().await?;
        verify(&written, expected)?;
        let file = self.file.clone();
        unblock(move || file.sync_all()).await?;
        let temp = self.temp.clone().expect("not published yet");
        self.blobs.publish(&temp, expected).await?;
        self.temp = None;
        Ok(written.len)
    }
}

impl Drop for FileWriter {
    /// Uncommitted: discard the bytes. A spool thread still writing holds the file open, which
    /// keeps the (unlinked) inode until it exits.
    fn drop(&mut self) {
        if let Some(temp) = self.temp.take() {
            let _ = std::fs::remove_file(temp);
        }
    }
}

/// Maps what a [`FileWriter`] (or the S3 writer's local spool) wrote: bytes below what it
/// reported are never rewritten.
pub(super) struct FileReadBack(pub(super) Arc<std::fs::File>);

#[async_trait::async_trait]
impl ReadBack for FileReadBack {
    async fn read_at(&self, pos: u64, len: usize) -> Result<Bytes> {
        let file = self.0.clone();
        Ok(unblock(move || map(&file, pos, len)).await?)
    }
}

/// Rename `from` to `to` unless `to` exists; returns whether it was renamed. `renameat2` with
/// `RENAME_NOREPLACE` makes the check and the rename one atomic step (std's `rename` replaces);
/// on a filesystem without it, a hard link, which also fails on an existing name, does the same.
fn rename_noreplace(from: &Path, to: &Path) -> io::Result<bool> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| CString::new(p.as_os_str().as_bytes()).map_err(io::Error::other);
    let (cfrom, cto) = (c(from)?, c(to)?);
    // SAFETY: both are valid NUL-terminated paths; AT_FDCWD resolves them like `rename` does.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            cfrom.as_ptr(),
            libc::AT_FDCWD,
            cto.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if rc == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EEXIST) => Ok(false),
        Some(libc::EINVAL) | Some(libc::ENOSYS) => match std::fs::hard_link(from, to) {
            Ok(()) => std::fs::remove_file(from).map(|()| true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(e),
        },
        _ => Err(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn publishing_an_existing_digest_keeps_the_existing_file() {
        let root = tempfile::tempdir().unwrap();
        let blobs = Blobs::open(root.path()).unwrap();
        let digest = Digest::sha256_of(b"the real layer");
        blobs.put(&digest, Bytes::from_static(b"the real layer")).await.unwrap();
        // Someone publishes other bytes under the same name (a bug or an attack upstream of
        // `publish`): the verified file stays.
        let impostor = blobs.temp_path();
        std::fs::write(&impostor, b"something else").unwrap();
        blobs.publish(&impostor, &digest).await.unwrap();
        assert_eq!(blobs.read(&digest).await.unwrap().unwrap().as_ref(), b"the real layer");
        assert!(!impostor.exists(), "the discarded file is removed");
    }

    #[tokio::test]
    async fn the_filesystem_backend_keeps_the_blob_store_contract() {
        let root = tempfile::tempdir().unwrap();
        let blobs: Arc<dyn BlobStore> = Arc::new(Blobs::open(root.path()).unwrap());
        super::super::conformance::blob_store(blobs).await;
    }

    #[tokio::test]
    async fn a_small_blob_is_read_whole_when_opened_and_serves_every_range() {
        let root = tempfile::tempdir().unwrap();
        let blobs = Blobs::open(root.path()).unwrap();
        let bytes: Bytes = (0..3000u32).map(|i| (i % 251) as u8).collect();
        let digest = Digest::sha256_of(&bytes);
        blobs.put(&digest, bytes.clone()).await.unwrap();
        for (start, len) in [(0, 3000), (0, 1), (2999, 1), (1000, 1000), (3000, 0)] {
            let stored = blobs.open(&digest).await.unwrap().unwrap();
            // Rewritten behind the store's back (a published blob never is): what is served now
            // was read when the blob was opened, so serving it took no trip to the disk.
            std::fs::write(blobs.path(&digest), vec![0u8; 3000]).unwrap();
            let mut got = Vec::new();
            let mut stream = stored.range(start, len).unwrap();
            while let Some(chunk) = futures_util::StreamExt::next(&mut stream).await {
                got.extend_from_slice(&chunk.unwrap());
            }
            assert!(
                got[..] == bytes[start as usize..(start + len) as usize],
                "range {start}+{len}"
            );
            std::fs::write(blobs.path(&digest), &bytes).unwrap();
        }
    }

    #[tokio::test]
    async fn a_stray_file_among_the_blobs_is_skipped_by_the_listing() {
        let root = tempfile::tempdir().unwrap();
        let blobs = Blobs::open(root.path()).unwrap();
        let digest = Digest::sha256_of(b"layer");
        blobs.put(&digest, Bytes::from_static(b"layer")).await.unwrap();
        std::fs::write(root.path().join("blobs/sha256/stray"), b"x").unwrap();
        std::fs::write(
            root.path()
                .join("blobs/sha256")
                .join(&digest.hex()[..2])
                .join("notes.txt"),
            b"x",
        )
        .unwrap();
        let listed: Vec<Digest> = blobs.list().await.unwrap().into_iter().map(|e| e.digest).collect();
        assert_eq!(listed, vec![digest]);
    }

    #[tokio::test]
    async fn opening_the_store_again_empties_the_temporary_area() {
        let root = tempfile::tempdir().unwrap();
        let blobs = Blobs::open(root.path()).unwrap();
        let mut writer = blobs.writer(&Digest::sha256_of(b"x"), Box::new(|_| {})).await.unwrap();
        writer.append(vec![Bytes::from_static(b"partial")]).await.unwrap();
        writer.close().await.unwrap();
        std::mem::forget(writer); // as a crash would
        assert_eq!(std::fs::read_dir(root.path().join("tmp")).unwrap().count(), 1);
        Blobs::open(root.path()).unwrap();
        assert_eq!(std::fs::read_dir(root.path().join("tmp")).unwrap().count(), 0);
    }
}
