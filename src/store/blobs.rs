//! Content-addressed blob files. A file under `blobs/` always matches its digest: bytes are
//! written to `tmp/` (or `uploads/`), verified, fsynced, and only then renamed into place.

use std::io;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use tokio::fs;

use super::{Error, Result};
use crate::oci::{Digest, Hasher};

/// The blob directory and its temporary area.
#[derive(Clone, Debug)]
pub struct Blobs {
    blobs: PathBuf,
    tmp: PathBuf,
}

/// A published blob as garbage collection sees it.
#[derive(Clone, Debug)]
pub struct BlobEntry {
    pub digest: Digest,
    pub size: u64,
    pub modified: std::time::SystemTime,
}

/// Room on the filesystem the store is on, as `df` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Space {
    /// Bytes berth may still write (what is reserved for root not counted).
    pub free: u64,
    pub total: u64,
}

/// `[storage] min_free`, a typed setting (defined with the settings, a floor below).
pub use crate::config::MinFree;

/// An open published blob, ready to stream.
pub struct BlobFile {
    pub file: std::fs::File,
    pub size: u64,
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
    pub fn path(&self, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        self.blobs.join(digest.algorithm().as_str()).join(&hex[..2]).join(hex)
    }

    /// A fresh path in the temporary area, on the same filesystem as `blobs/` so rename is atomic.
    pub fn temp_path(&self) -> PathBuf {
        self.tmp.join(uuid::Uuid::new_v4().simple().to_string())
    }

    pub async fn size(&self, digest: &Digest) -> Result<Option<u64>> {
        match fs::metadata(self.path(digest)).await {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn open_file(&self, digest: &Digest) -> Result<Option<BlobFile>> {
        let path = self.path(digest);
        let opened = tokio::task::spawn_blocking(move || {
            let file = std::fs::File::open(path)?;
            let size = file.metadata()?.len();
            Ok::<_, io::Error>(BlobFile { file, size })
        })
        .await
        .map_err(io::Error::other)?;
        match opened {
            Ok(blob) => Ok(Some(blob)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The whole blob in memory; for manifests, which are size-limited.
    pub async fn read(&self, digest: &Digest) -> Result<Option<Bytes>> {
        match fs::read(self.path(digest)).await {
            Ok(b) => Ok(Some(Bytes::from(b))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Verify `bytes` against `digest` and publish them (used for manifests).
    pub async fn write(&self, digest: &Digest, bytes: &[u8]) -> Result<()> {
        let mut hasher = Hasher::new(digest.algorithm());
        hasher.update(bytes);
        let actual = hasher.finish();
        if actual != *digest {
            return Err(Error::DigestMismatch {
                expected: digest.clone(),
                actual,
            });
        }
        if self.size(digest).await?.is_some() {
            return Ok(());
        }
        let tmp = self.temp_path();
        let result = async {
            fs::write(&tmp, bytes).await?;
            fs::File::open(&tmp).await?.sync_all().await?;
            self.publish(&tmp, digest).await
        }
        .await;
        if result.is_err() {
            let _ = fs::remove_file(&tmp).await;
        }
        result
    }

    /// Atomically move an fsynced, verified file into place, then fsync the directory so the
    /// rename itself survives a crash. A blob file is never replaced: when the digest is already
    /// published, the existing (verified) file stays and `verified` is discarded.
    pub async fn publish(&self, verified: &Path, digest: &Digest) -> Result<()> {
        let dest = self.path(digest);
        let dir = dest.parent().expect("blob path has a parent").to_owned();
        fs::create_dir_all(&dir).await?;
        let source = verified.to_owned();
        let placed = tokio::task::spawn_blocking(move || rename_noreplace(&source, &dest))
            .await
            .map_err(io::Error::other)??;
        if !placed {
            fs::remove_file(verified).await?;
            return Ok(());
        }
        fs::File::open(&dir).await?.sync_all().await?;
        Ok(())
    }

    /// Call `f` with the digest and size of every published blob. Blocking: run it off the async
    /// workers. Files whose names are not digests are skipped.
    pub fn scan(&self, mut f: impl FnMut(&Digest, u64)) -> Result<()> {
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
                    match file.metadata() {
                        Ok(m) if m.is_file() => f(&digest, m.len()),
                        Ok(_) => {}
                        // Removed by GC while the walk ran.
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        }
        Ok(())
    }

    /// Create, write, fsync and remove a small file in the temporary area: the write path every
    /// upload and cache fill takes. Blocking.
    pub fn probe_writable(&self) -> io::Result<()> {
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
    pub fn space(&self) -> io::Result<Space> {
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

    /// Remove a blob file (garbage collection).
    pub async fn remove(&self, digest: &Digest) -> Result<bool> {
        match fs::remove_file(self.path(digest)).await {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Refresh a blob's modification time: a push about to reference it (a mount) renews its
    /// grace period, so garbage collection spares it.
    pub async fn touch(&self, digest: &Digest) -> Result<()> {
        let path = self.path(digest);
        tokio::task::spawn_blocking(move || {
            std::fs::File::options()
                .write(true)
                .open(path)?
                .set_modified(std::time::SystemTime::now())
        })
        .await
        .map_err(|e| Error::Io(std::io::Error::other(e)))??;
        Ok(())
    }

    /// Every published blob with its size and modification time (a directory walk).
    pub fn list(&self) -> Result<Vec<BlobEntry>> {
        let mut out = Vec::new();
        for alg in std::fs::read_dir(&self.blobs)? {
            let alg = alg?;
            for prefix in std::fs::read_dir(alg.path())? {
                for file in std::fs::read_dir(prefix?.path())? {
                    let file = file?;
                    let name = format!(
                        "{}:{}",
                        alg.file_name().to_string_lossy(),
                        file.file_name().to_string_lossy()
                    );
                    let Ok(digest) = name.parse() else { continue };
                    let meta = file.metadata()?;
                    out.push(BlobEntry {
                        digest,
                        size: meta.len(),
                        modified: meta.modified()?,
                    });
                }
            }
        }
        Ok(out)
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
        blobs.write(&digest, b"the real layer").await.unwrap();
        // Someone publishes other bytes under the same name (a bug or an attack upstream of
        // `publish`): the verified file stays.
        let impostor = blobs.temp_path();
        std::fs::write(&impostor, b"something else").unwrap();
        blobs.publish(&impostor, &digest).await.unwrap();
        assert_eq!(blobs.read(&digest).await.unwrap().unwrap().as_ref(), b"the real layer");
        assert!(!impostor.exists(), "the discarded file is removed");
    }
}
