//! Reading a layout, a directory or a tar, in one pass (blocking: run it off the async workers).
//! Every blob is hashed while it is copied into the store's temporary area and published only
//! when it matches its name; a blob the store already has is not read again, only renewed
//! against garbage collection.

use std::fs::File;
use std::io::Read as _;
use std::path::Path;

use tokio_util::sync::CancellationToken;

use super::super::{Error, LayoutProgress, MAX_INDEX_BYTES, Result, Sink, io_at};
use bytes::Bytes;

use crate::oci::Digest;
use crate::store::BlobStore;

/// What one pass over the layout found.
pub(super) struct Read {
    /// The bytes of `index.json`.
    pub index: Vec<u8>,
    pub blobs: usize,
    pub new_blobs: usize,
    pub new_bytes: u64,
}

/// Counts, progress and the stop flag of one pass.
struct Pass<'a> {
    blobs: &'a dyn BlobStore,
    registry: &'a dyn crate::store::Meta,
    sink: &'a Sink,
    cancel: &'a CancellationToken,
    read: Read,
    layout: Option<Vec<u8>>,
    bytes_read: u64,
}

/// Publish every blob of the layout at `path` into `blobs`; return its `index.json`.
pub(super) fn ingest(
    blobs: &dyn BlobStore,
    registry: &dyn crate::store::Meta,
    path: &Path,
    sink: &Sink,
    cancel: &CancellationToken,
) -> Result<Read> {
    let mut pass = Pass {
        blobs,
        registry,
        sink,
        cancel,
        read: Read {
            index: Vec::new(),
            blobs: 0,
            new_blobs: 0,
            new_bytes: 0,
        },
        layout: None,
        bytes_read: 0,
    };
    let meta = std::fs::metadata(path).map_err(io_at(path))?;
    let mut index = None;
    if meta.is_dir() {
        pass.layout = read_small(path.join("oci-layout"))?;
        index = read_small(path.join("index.json"))?;
        let root = path.join("blobs");
        for alg in std::fs::read_dir(&root).map_err(io_at(&root))? {
            let alg = alg.map_err(io_at(&root))?;
            if !alg.path().is_dir() {
                continue;
            }
            let alg_name = alg.file_name().to_string_lossy().into_owned();
            for file in std::fs::read_dir(alg.path()).map_err(io_at(&alg.path()))? {
                let file = file.map_err(io_at(&alg.path()))?;
                let name = format!("blobs/{alg_name}/{}", file.file_name().to_string_lossy());
                let mut f = File::open(file.path()).map_err(io_at(&file.path()))?;
                pass.blob(&name, &mut f)?;
            }
        }
    } else {
        let file = File::open(path).map_err(io_at(path))?;
        let mut archive = tar::Archive::new(std::io::BufReader::with_capacity(1 << 20, file));
        let not_tar = |e: std::io::Error| {
            Error::Invalid(format!(
                "{} is neither a layout directory nor a tar of one: {e}",
                path.display()
            ))
        };
        for entry in archive.entries().map_err(not_tar)? {
            let mut entry = entry.map_err(not_tar)?;
            if !entry.header().entry_type().is_file() {
                continue;
            }
            let name = entry.path().map_err(not_tar)?.to_string_lossy().into_owned();
            let name = name.trim_start_matches("./").to_owned();
            match name.as_str() {
                "oci-layout" => pass.layout = Some(read_bounded(&mut entry, &name)?),
                "index.json" => index = Some(read_bounded(&mut entry, &name)?),
                n if n.starts_with("blobs/") => pass.blob(n, &mut entry)?,
                _ => {}
            }
        }
    }
    let version = pass
        .layout
        .as_deref()
        .and_then(|l| serde_json::from_slice::<serde_json::Value>(l).ok())
        .and_then(|v| v["imageLayoutVersion"].as_str().map(str::to_owned));
    match version {
        Some(v) if v.starts_with("1.") => {}
        Some(v) => return Err(Error::Invalid(format!("unsupported image layout version {v}"))),
        None => {
            return Err(Error::Invalid(format!(
                "{} is not an OCI image layout: it has no valid oci-layout file",
                path.display()
            )));
        }
    }
    pass.read.index = index.ok_or_else(|| Error::Invalid(format!("{} has no index.json", path.display())))?;
    (pass.sink)(LayoutProgress::Blobs {
        done: pass.read.blobs,
        bytes: pass.bytes_read,
    });
    Ok(pass.read)
}

fn read_small(path: std::path::PathBuf) -> Result<Option<Vec<u8>>> {
    match File::open(&path) {
        Ok(mut f) => read_bounded(&mut f, &path.display().to_string()).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_at(&path)(e)),
    }
}

fn read_bounded(r: &mut dyn std::io::Read, name: &str) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    r.take(MAX_INDEX_BYTES + 1)
        .read_to_end(&mut out)
        .map_err(|e| Error::Invalid(format!("reading {name}: {e}")))?;
    if out.len() as u64 > MAX_INDEX_BYTES {
        return Err(Error::Invalid(format!("{name} exceeds {MAX_INDEX_BYTES} bytes")));
    }
    Ok(out)
}

impl Pass<'_> {
    /// Ingest the blob `name` (`blobs/<alg>/<hex>`) from `source`.
    fn blob(&mut self, name: &str, source: &mut dyn std::io::Read) -> Result<()> {
        if self.cancel.is_cancelled() {
            return Err(Error::Cancelled);
        }
        let digest = name
            .strip_prefix("blobs/")
            .and_then(|rest| rest.split_once('/'))
            .and_then(|(alg, hex)| format!("{alg}:{hex}").parse::<Digest>().ok())
            .ok_or_else(|| Error::Invalid(format!("the layout holds {name}, which is not named by a digest")))?;
        self.read.blobs += 1;
        // This pass runs on a blocking thread; the store is async.
        let runtime = tokio::runtime::Handle::current();
        if let Some(existing) = runtime.block_on(self.blobs.stat(&digest))? {
            // Already verified in the store: renew its grace period so GC keeps it until the
            // image that uses it is committed.
            self.register(&digest, existing.size)?;
            return Ok(());
        }
        // Dropped on any early return, which discards what it wrote.
        let mut out = runtime.block_on(self.blobs.writer(&digest, Box::new(|_| {})))?;
        let (mut buf, mut size) = (vec![0u8; 1 << 20], 0u64);
        loop {
            let n = source
                .read(&mut buf)
                .map_err(|e| Error::Invalid(format!("reading {name} from the layout: {e}")))?;
            if n == 0 {
                break;
            }
            runtime.block_on(out.append(vec![Bytes::copy_from_slice(&buf[..n])]))?;
            size += n as u64;
            if self.cancel.is_cancelled() {
                return Err(Error::Cancelled);
            }
        }
        let written = runtime.block_on(out.close())?;
        if written.digest != digest {
            return Err(Error::Invalid(format!(
                "the layout is corrupt: {name} holds content whose digest is {}; nothing was imported (no image of the layout is visible)",
                written.digest
            )));
        }
        // Registered before it is published, so GC counts its grace period from now.
        self.register(&digest, size)?;
        runtime.block_on(out.commit(&digest))?;
        self.read.new_blobs += 1;
        self.read.new_bytes += size;
        self.bytes_read += size;
        if self.read.new_blobs.is_multiple_of(8) {
            (self.sink)(LayoutProgress::Blobs {
                done: self.read.blobs,
                bytes: self.bytes_read,
            });
        }
        Ok(())
    }

    /// Register a blob in the metadata store (this runs on a blocking thread).
    fn register(&self, digest: &Digest, size: u64) -> Result<()> {
        let registered = crate::service::register(self.registry, digest, size);
        Ok(tokio::runtime::Handle::current().block_on(registered)?)
    }
}
