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
    let meta: Arc<dyn Meta> = Arc::new(RedbMeta::open(&root.join("meta.redb"))?);
    let blobs = Blobs::open(root)?;
    let uploads = Arc::new(Uploads::open(root, blobs.clone(), meta.clone())?);

    Ok(Store::new(Arc::new(blobs), uploads, meta))
}
