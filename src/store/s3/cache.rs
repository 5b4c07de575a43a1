//! A replica's bounded disk cache of blobs from the bucket. A warm GET opens the cached file as
//! the filesystem backend opens a blob ([`LocalBlob`]: mapped windows sent with `sendfile`), so
//! an S3-backed replica keeps the one-host hot path.
//!
//! Every file here was verified against its digest before it was renamed in (a writer's spool
//! after `commit`, or a fill after hashing what the bucket sent), so the cache survives a restart:
//! opening it indexes what is there and empties `tmp/`. Past `max` bytes the least recently used
//! entries are unlinked; a reader that has one open keeps its inode until it is done.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use parking_lot::Mutex;

use super::super::mapped::{LocalBlob, READ_WHOLE};
use crate::oci::Digest;

pub(super) struct DiskCache {
    blobs: PathBuf,
    tmp: PathBuf,
    max: u64,
    index: Mutex<Index>,
}

/// Which blobs are cached and how recently each was used.
#[derive(Default)]
struct Index {
    entries: HashMap<Digest, Entry>,
    /// Entries by last use (a counter, not a clock): the first is evicted first.
    by_use: BTreeMap<u64, Digest>,
    total: u64,
    tick: u64,
}

struct Entry {
    size: u64,
    used: u64,
}

impl Index {
    fn touch(&mut self, digest: &Digest) {
        self.tick += 1;
        if let Some(entry) = self.entries.get_mut(digest) {
            self.by_use.remove(&entry.used);
            entry.used = self.tick;
            self.by_use.insert(self.tick, digest.clone());
        }
    }

    fn add(&mut self, digest: Digest, size: u64) {
        self.remove(&digest);
        self.tick += 1;
        self.total += size;
        self.by_use.insert(self.tick, digest.clone());
        self.entries.insert(digest, Entry { size, used: self.tick });
    }

    fn remove(&mut self, digest: &Digest) -> bool {
        let Some(entry) = self.entries.remove(digest) else {
            return false;
        };
        self.by_use.remove(&entry.used);
        self.total -= entry.size;
        true
    }
}

impl DiskCache {
    /// Open the cache at `dir`, indexing the blobs a previous run left (oldest first by
    /// modification time) and dropping its partial files. Blocking.
    pub(super) fn open(dir: &Path, max: u64) -> io::Result<DiskCache> {
        let blobs = dir.join("blobs");
        let tmp = dir.join("tmp");
        std::fs::create_dir_all(&blobs)?;
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp)?;
        }
        std::fs::create_dir_all(&tmp)?;
        let mut found = Vec::new();
        for entry in std::fs::read_dir(&blobs)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(digest) = name
                .to_str()
                .and_then(|n| n.replacen('-', ":", 1).parse::<Digest>().ok())
            else {
                continue;
            };
            let meta = entry.metadata()?;
            found.push((meta.modified()?, digest, meta.len()));
        }
        found.sort_by_key(|(modified, ..)| *modified);
        let cache = DiskCache {
            blobs,
            tmp,
            max,
            index: Mutex::default(),
        };
        {
            let mut index = cache.index.lock();
            for (_, digest, size) in found {
                index.add(digest, size);
            }
        }
        cache.evict();
        Ok(cache)
    }

    /// `blobs/<alg>-<hex>`.
    fn path(&self, digest: &Digest) -> PathBuf {
        self.blobs
            .join(format!("{}-{}", digest.algorithm().as_str(), digest.hex()))
    }

    /// A new file in the temporary area, open for reading and writing, and its path. Blocking.
    pub(super) fn temp_file(&self) -> io::Result<(PathBuf, std::fs::File)> {
        let path = self.tmp.join(uuid::Uuid::new_v4().simple().to_string());
        let file = std::fs::File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        Ok((path, file))
    }

    /// Whether a blob of `size` bytes may be cached at all (it is not larger than the cache).
    pub(super) fn fits(&self, size: u64) -> bool {
        size <= self.max
    }

    /// The cached blob, opened to serve (a small one read whole, as the filesystem backend
    /// does), and marked as just used. Blocking.
    pub(super) fn get(&self, digest: &Digest) -> io::Result<Option<LocalBlob>> {
        let mut file = match std::fs::File::open(self.path(digest)) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.index.lock().remove(digest);
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        self.index.lock().touch(digest);
        let size = file.metadata()?.len();
        if size > READ_WHOLE {
            return Ok(Some(LocalBlob::new(file, size)));
        }
        let mut bytes = Vec::with_capacity(size as usize);
        io::Read::read_to_end(&mut file, &mut bytes)?;
        Ok(Some(LocalBlob::read(Bytes::from(bytes))))
    }

    /// The whole cached blob, if cached. Blocking.
    pub(super) fn read(&self, digest: &Digest) -> io::Result<Option<Bytes>> {
        match std::fs::read(self.path(digest)) {
            Ok(bytes) => {
                self.index.lock().touch(digest);
                Ok(Some(bytes.into()))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Move `temp`, a verified copy of `digest` of `size` bytes, into the cache, then evict past
    /// the cap. A blob larger than the whole cache is not kept. Blocking.
    pub(super) fn insert(&self, temp: &Path, digest: &Digest, size: u64) -> io::Result<()> {
        if !self.fits(size) {
            return std::fs::remove_file(temp);
        }
        // Replacing an entry is harmless: a digest names one content.
        std::fs::rename(temp, self.path(digest))?;
        self.index.lock().add(digest.clone(), size);
        self.evict();
        Ok(())
    }

    /// Write `bytes` (verified as `digest`) into the cache. Blocking.
    pub(super) fn insert_bytes(&self, digest: &Digest, bytes: &[u8]) -> io::Result<()> {
        let (temp, mut file) = self.temp_file()?;
        let written = io::Write::write_all(&mut file, bytes);
        if let Err(e) = written {
            let _ = std::fs::remove_file(&temp);
            return Err(e);
        }
        self.insert(&temp, digest, bytes.len() as u64)
    }

    /// Drop `digest` from the cache (a deleted blob). Blocking.
    pub(super) fn remove(&self, digest: &Digest) -> io::Result<()> {
        self.index.lock().remove(digest);
        match std::fs::remove_file(self.path(digest)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Unlink the least recently used entries until the cache fits its cap.
    fn evict(&self) {
        let mut index = self.index.lock();
        while index.total > self.max {
            let Some((_, digest)) = index.by_use.pop_first() else {
                break;
            };
            if let Some(entry) = index.entries.remove(&digest) {
                index.total -= entry.size;
            }
            let _ = std::fs::remove_file(self.path(&digest));
        }
    }

    /// Bytes cached now.
    #[cfg(test)]
    pub(super) fn total(&self) -> u64 {
        self.index.lock().total
    }
}
