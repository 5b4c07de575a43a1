//! The store's files, for the few checks where a fact on disk IS the behaviour under test: a crash
//! or a refused write leaves no file behind, garbage collection gives the disk space back, a file
//! under a digest's name always hashes to that digest, hostile requests write nothing. Every other
//! check of the store goes through the HTTP API or the `berth` CLI.
//!
//! This is the filesystem backend's layout (ARCHITECTURE.md, "On-disk layout"). It is named here
//! only, so a change to that layout changes this file and no test.

use std::path::{Path, PathBuf};

/// The file that holds `digest`'s bytes.
fn blob_file(root: &Path, digest: &str) -> PathBuf {
    let hex = digest.trim_start_matches("sha256:");
    root.join("blobs/sha256").join(&hex[..2]).join(hex)
}

/// Whether the store holds a file for `digest`. Through the API a blob that no repository links
/// looks the same as one that is gone; the disk space is what garbage collection and a refused
/// write are about.
pub fn has_blob(root: &Path, digest: &str) -> bool {
    blob_file(root, digest).exists()
}

/// Every blob file hashes to its own name. Returns how many were checked. A crash must never
/// leave a torn file under a digest's name, including blobs no tag reaches (which the API cannot
/// show).
pub fn assert_blob_files_verify(root: &Path) -> usize {
    let mut checked = 0;
    for path in files_under(&root.join("blobs/sha256")) {
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        assert_eq!(
            super::sha256(&std::fs::read(&path).unwrap()),
            format!("sha256:{name}"),
            "blob file {path:?} does not match its name"
        );
        checked += 1;
    }
    checked
}

/// How many blob files the store holds, referenced or not (what GC may delete and a crash may
/// leave half-written).
pub fn blob_files(root: &Path) -> usize {
    files_under(&root.join("blobs")).len()
}

/// The store's temporary directory (where fills and uploads write before they publish). Tests
/// break it to make the store unwritable and check that a restart leaves it empty.
pub fn temp_dir(root: &Path) -> PathBuf {
    root.join("tmp")
}

/// Files of upload sessions: a request cut off must not leave a session's file out of step.
pub fn upload_files(root: &Path) -> usize {
    files_under(&root.join("uploads")).len()
}

/// Every file under the store root with its size, the metadata database aside (its pages change
/// on reads): hostile requests must write no file anywhere under the root.
pub fn files_with_sizes(root: &Path) -> Vec<(PathBuf, u64)> {
    let mut files: Vec<_> = files_under(root)
        .into_iter()
        .filter(|p| p.file_name().unwrap() != "meta.redb")
        .map(|p| {
            let len = std::fs::metadata(&p).unwrap().len();
            (p, len)
        })
        .collect();
    files.sort();
    files
}

/// Every file below `dir` (none when it does not exist).
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}
