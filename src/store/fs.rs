//! The single-host store: blob files and upload files under one root, metadata in redb. This
//! is where the filesystem backends are chosen; nothing above `main` and `cli` names them.

use std::path::Path;
use std::sync::Arc;

use super::blobs::Blobs;
use super::{Error, Meta, RedbMeta, Result, Store, Uploads};

/// Open the store at `root` that a server made before, never creating one: a maintenance
/// command pointed at the wrong directory must say so, not leave an empty store behind.
pub fn open_existing(root: &Path) -> Result<Store> {
    if !root.join("meta.redb").is_file() {
        return Err(Error::Missing(root.to_owned()));
    }
    open(root)
}

/// Open (or create) the store at `root`, clearing leftovers of a crash.
pub fn open(root: &Path) -> Result<Store> {
    std::fs::create_dir_all(root)?;
    // The metadata database is locked by its process: open it first, so a second process
    // (`berth gc` beside a running server) fails here before it touches anything else.
    let redb = RedbMeta::open(&root.join("meta.redb"))?;
    let blobs = Blobs::open(root)?;
    // A store made before the blob registry has files but no rows: register them once (the one
    // directory walk left, and a migration, not a way of working).
    redb.migrate_blob_registry(|| {
        Ok(blobs
            .walk()?
            .into_iter()
            .map(|b| (b.digest, b.size, millis(b.modified)))
            .collect())
    })?;
    let meta: Arc<dyn Meta> = Arc::new(redb);
    let uploads = Arc::new(Uploads::open(root, blobs.clone(), meta.clone())?);

    Ok(Store::new(Arc::new(blobs), uploads, meta))
}

/// Blob and upload files under `root` with metadata elsewhere (PostgreSQL): one replica's own
/// disk. Nothing here is shared with another replica, so it suits a single replica on a shared
/// database, not several (those use an object store).
pub fn open_with_meta(root: &Path, meta: Arc<dyn Meta>) -> Result<Store> {
    std::fs::create_dir_all(root)?;
    let blobs = Blobs::open(root)?;
    let uploads = Arc::new(Uploads::open(root, blobs.clone(), meta.clone())?);
    Ok(Store::new(Arc::new(blobs), uploads, meta))
}

fn millis(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
