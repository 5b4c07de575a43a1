//! `berth export` and `berth import`: images in the OCI image layout (`oci-layout`, `index.json`,
//! `blobs/<alg>/<hex>`), as a directory or a tar, to carry content across an air gap. skopeo,
//! crane, oras and containerd read and write the same format.
//!
//! **Ref names carry the repository.** Every exported tag is an `index.json` entry whose
//! `org.opencontainers.image.ref.name` is `REPO:TAG` (`library/alpine:3.20`), so one layout holds
//! many repositories and `skopeo copy oci:DIR:library/alpine:3.20 …` picks one image. A layout
//! that skopeo wrote as `oci:DIR:TAG` has bare tags; an import takes their repository from
//! `--repository`. Referrers (`--referrers`: signatures, SBOMs) are entries without a ref name;
//! an import stores each in the repositories of its subject.
//!
//! **An interrupted import leaves nothing half-visible.** Every blob of the layout is verified
//! against its digest and published first (an unreferenced blob is invisible, and garbage
//! collection reclaims it after its grace period). Then each image is committed in one metadata
//! transaction (`Meta::put_image`), only after every manifest and blob it needs is in the store.
//! So at any moment an image is there whole or not at all, and running the import again finishes
//! the job. An export writes `PATH.partial` and renames it to `PATH` once complete.
//!
//! **A reviewed exception to "no `std::fs` in service":** the layout itself (an export's output,
//! an import's source) is a path on this host that the operator names, not part of the store, so
//! this module reads and writes it with `std::fs`. The store's blobs go through
//! [`crate::store::BlobStore`] like everywhere else, whatever the backend.

mod export;
mod import;
mod tree;

use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use export::ExportReport;
pub use import::ImportReport;

/// The annotation that names an image in a layout's `index.json`.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Largest `index.json` read (a layout of thousands of images fits in a few MiB).
const MAX_INDEX_BYTES: u64 = 16 << 20;

/// Why an export or import stopped. Each is a sentence for the operator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request or the layout cannot be used as it is; nothing was made visible.
    #[error("{0}")]
    Invalid(String),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(
        "stopped before the end: the images listed so far are complete, the rest is not visible; run it again to finish"
    )]
    Cancelled,
    #[error(transparent)]
    Service(#[from] super::Error),
}

impl From<crate::store::Error> for Error {
    fn from(e: crate::store::Error) -> Error {
        Error::Service(e.into())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn io_at(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_owned(),
        source,
    }
}

/// Which repositories `--all` and patterns take.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Origins {
    #[default]
    Both,
    /// Pushed content only.
    Private,
    /// Content cached from upstreams only.
    Cached,
}

/// What `berth export` writes.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ExportOptions {
    /// A directory, or a tar file when it ends in `.tar`. Must not exist yet.
    pub output: PathBuf,
    /// `REPO` or `REPO:TAG`; `*` in either matches any run of characters.
    pub patterns: Vec<String>,
    /// Every tag of every repository (of `origins`).
    pub all: bool,
    pub origins: Origins,
    /// Bring along the manifests whose subject is an exported manifest.
    pub referrers: bool,
    /// Export what the store has of an image that is incomplete (a multi-arch index of which
    /// only some platforms were pulled) instead of refusing.
    pub partial: bool,
}

/// What `berth import` reads.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ImportOptions {
    /// A layout directory or a tar of one.
    pub path: PathBuf,
    /// Import as content cached from this configured upstream instead of as private content.
    pub upstream: Option<String>,
    /// The repository for ref names that are bare tags (skopeo's `oci:DIR:TAG`).
    pub repository: Option<String>,
    /// Accept a multi-arch index of which some platforms are not in the layout.
    pub partial: bool,
}

/// How far an export or import is, as it happens, for a terminal or the admin stream.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LayoutProgress {
    /// Export: the images, files and bytes about to be written.
    Plan { images: usize, blobs: usize, bytes: u64 },
    /// Blobs copied so far: written by an export, read by an import.
    Blobs { done: usize, bytes: u64 },
    /// Import: this image (`REPO:TAG`) is now visible.
    Imported(String),
    /// Something left out, said as it happens and again in the report.
    Warning(String),
}

/// Where progress goes.
pub type Sink = Arc<dyn Fn(LayoutProgress) + Send + Sync>;

/// `REPO:TAG` as a ref name.
fn ref_name(repo: &crate::oci::RepoName, tag: &crate::oci::Tag) -> String {
    format!("{repo}:{tag}")
}

/// `linux/arm64/v8` from a descriptor's platform, for messages.
fn platform_of(d: &crate::oci::Descriptor) -> String {
    let Some(p) = &d.platform else {
        return d.digest.to_string();
    };
    let field = |k: &str| p.get(k).and_then(|v| v.as_str()).unwrap_or("");
    let mut s = format!("{}/{}", field("os"), field("architecture"));
    if !field("variant").is_empty() {
        s = format!("{s}/{}", field("variant"));
    }
    format!("{s} ({})", d.digest)
}
