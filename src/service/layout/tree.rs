//! One image as a tree read from the blob store: its manifest, an index's children, and the
//! config and layer blobs they use, with what is missing. Export and import both walk it: the
//! export to know what to write, the import to check that an image is whole before committing it.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;

use super::{Result, platform_of};
use crate::oci::{Descriptor, Digest, Manifest};
use crate::service::MAX_MANIFEST_BYTES;
use crate::store::BlobStore;

/// A manifest of the tree with its exact length.
pub(super) struct Node {
    pub digest: Digest,
    pub manifest: Manifest,
    pub size: usize,
}

/// An image that is whole as far as it goes.
#[derive(Default)]
pub(super) struct Tree {
    /// Children before the index that lists them: the order an import commits them in.
    pub manifests: Vec<Node>,
    /// Config and layer blobs with their sizes.
    pub blobs: BTreeMap<Digest, u64>,
    /// Children of an index that are not whole, each said as `PLATFORM (DIGEST): WHY`.
    pub missing: Vec<String>,
}

impl Tree {
    /// Every file of the tree (manifests and blobs) with its size.
    pub fn files(&self) -> impl Iterator<Item = (&Digest, u64)> {
        self.manifests
            .iter()
            .map(|n| (&n.digest, n.size as u64))
            .chain(self.blobs.iter().map(|(d, s)| (d, *s)))
    }

    pub fn holds(&self, digest: &Digest) -> bool {
        self.manifests.iter().any(|n| &n.digest == digest)
    }
}

type Walk<'a> = Pin<Box<dyn Future<Output = Result<Result<Tree, String>>> + Send + 'a>>;

/// Read the manifest `d` names and everything below it from `blobs`. `Ok(Err(why))` when the
/// manifest itself or one of an image manifest's blobs is missing or has the wrong size; a
/// child of an index that is not whole is left out and listed in [`Tree::missing`].
pub(super) fn walk<'a>(blobs: &'a dyn BlobStore, d: &'a Descriptor) -> Walk<'a> {
    Box::pin(async move {
        let digest = &d.digest;
        let Some(size) = blobs.size(digest).await? else {
            return Ok(Err(format!("manifest {digest} is missing")));
        };
        if size != d.size {
            return Ok(Err(format!(
                "manifest {digest} is {size} bytes, but its descriptor says {}",
                d.size
            )));
        }
        if size > MAX_MANIFEST_BYTES as u64 {
            return Ok(Err(format!(
                "manifest {digest} exceeds the {MAX_MANIFEST_BYTES}-byte limit"
            )));
        }
        let Some(bytes) = blobs.read(digest).await? else {
            return Ok(Err(format!("manifest {digest} is missing")));
        };
        let manifest = match Manifest::parse(&bytes, Some(&d.media_type)) {
            Ok(m) => m,
            Err(e) => return Ok(Err(format!("manifest {digest}: {e}"))),
        };
        let mut tree = Tree::default();
        for blob in manifest.blob_refs() {
            let expected = manifest
                .config
                .iter()
                .chain(&manifest.layers)
                .find(|l| &l.digest == blob)
                .map(|l| l.size);
            match blobs.size(blob).await? {
                None => return Ok(Err(format!("blob {blob} of manifest {digest} is missing"))),
                Some(s) if Some(s) != expected => {
                    return Ok(Err(format!(
                        "blob {blob} of manifest {digest} is {s} bytes, but the manifest says {}",
                        expected.unwrap_or(0)
                    )));
                }
                Some(s) => {
                    tree.blobs.insert(blob.clone(), s);
                }
            }
        }
        for child in &manifest.manifests {
            match walk(blobs, child).await? {
                Ok(sub) => {
                    tree.manifests.extend(sub.manifests);
                    tree.blobs.extend(sub.blobs);
                    tree.missing.extend(sub.missing);
                }
                Err(why) => tree.missing.push(format!("{}: {why}", platform_of(child))),
            }
        }
        tree.manifests.push(Node {
            digest: digest.clone(),
            manifest,
            size: bytes.len(),
        });
        Ok(Ok(tree))
    })
}
