//! The S3 backends (`[storage] backend = "s3"`): blobs ([`S3Blobs`]) and upload sessions
//! ([`S3Uploads`]) in one bucket that several berth replicas share, through the `object_store`
//! crate (on berth's reqwest and its ring TLS provider; its `aws` feature, which would add
//! aws-lc-rs, is left off).
//!
//! Bucket layout:
//! ```text
//! blobs/sha256/ab/abcdef…        published blobs: each completed only after its digest verified
//! uploads/<id>/tail.<len>        an upload session's bytes past its last multipart part (< 8 MiB)
//! uploads/<id>/data              the session's multipart upload (parts are invisible until done);
//!                                completed by `finish`, copied to its blob key and removed
//! probe/<uuid>                   the readiness probe's write, removed at once
//! ```
//! Parts are 8 MiB: S3's 10,000 parts per upload cover 78 GiB, above berth's 64 GiB upload limit.
//! Multipart uploads a crash leaves open are listed (`open_uploads`) and aborted by garbage
//! collection, through [`UploadStore::orphans`].
//!
//! Nothing relies on conditional PUT (Garage ignores `If-None-Match`): keys are content
//! addressed, so two replicas completing the same blob write the same bytes.
//!
//! Each replica keeps a bounded disk cache (`cache`) in front of the bucket, so a warm GET is a
//! local file served with `sendfile`, as on one host.

mod blobs;
mod cache;
mod open_uploads;
mod uploads;
mod writer;

#[cfg(test)]
mod tests;

use std::io;
use std::path::Path;
use std::sync::Arc;

use object_store::ClientOptions;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as Key;

pub use blobs::S3Blobs;
pub use uploads::S3Uploads;

use super::{BlobStore, Error, Meta, Result, UploadStore};
use crate::config::{S3Config, Storage};
use crate::oci::Digest;

/// S3 parts must be at least this long, except the last (the S3 API's rule).
const MIN_PART: usize = 5 << 20;

const _: () = assert!(PART >= MIN_PART);

/// The part size writers upload. Equal parts (some stores, R2 for one, want them) of a size that
/// keeps a writer's memory small: at most [`PARTS_IN_FLIGHT`] parts plus the one filling.
const PART: usize = 8 << 20;

/// Parts a blob writer uploads at once.
const PARTS_IN_FLIGHT: usize = 2;

/// How long a request may wait for the store's next bytes.
const READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// The bucket, shared by the blob and upload stores.
#[derive(Clone, Debug)]
pub(crate) struct Bucket {
    pub(crate) s3: Arc<AmazonS3>,
    /// Lists open multipart uploads, which `s3` cannot.
    lister: open_uploads::Lister,
}

impl Bucket {
    /// A client for `cfg`'s bucket, with the credentials its `*_env` variables hold. Plain
    /// `http://` endpoints are allowed (a store on the same host or network); `https://` uses
    /// berth's rustls with the ring provider ([`crate::install_crypto_provider`] must have run).
    pub(crate) fn new(cfg: &S3Config) -> Result<Bucket> {
        let env = |name: &str| {
            std::env::var(name).map_err(|_| {
                config_error(format!(
                    "[storage.s3] needs the environment variable {name} (the S3 credentials)"
                ))
            })
        };
        Bucket::connect(cfg, &env(&cfg.access_key_id_env)?, &env(&cfg.secret_access_key_env)?)
    }

    /// A client for `cfg`'s bucket with these credentials.
    pub(crate) fn connect(cfg: &S3Config, key_id: &str, secret: &str) -> Result<Bucket> {
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(&cfg.bucket)
            .with_region(&cfg.region)
            .with_access_key_id(key_id)
            .with_secret_access_key(secret)
            .with_virtual_hosted_style_request(!cfg.path_style)
            // No cap on a whole request (object_store's default is 30 s, response body included):
            // a blob streamed to a slow client takes as long as it takes. A store that stops
            // sending is caught by the read timeout instead.
            .with_client_options(
                ClientOptions::new()
                    .with_allow_http(true)
                    .with_timeout_disabled()
                    .with_read_timeout(READ_TIMEOUT),
            );
        if !cfg.endpoint.is_empty() {
            builder = builder.with_endpoint(&cfg.endpoint);
        }
        let s3 = builder.build().map_err(s3_error)?;
        Ok(Bucket {
            s3: Arc::new(s3),
            lister: open_uploads::Lister::new(cfg, key_id, secret)?,
        })
    }
}

/// The blob and upload stores over the bucket `storage.s3` names, with `meta` holding upload
/// sessions. The disk cache is `cache_dir`, or `<root>/s3-cache`.
pub fn open(storage: &Storage, meta: Arc<dyn Meta>) -> Result<(Arc<dyn BlobStore>, Arc<dyn UploadStore>)> {
    let cfg = &storage.s3;
    let cache_dir = if cfg.cache_dir.as_os_str().is_empty() {
        storage.root.join("s3-cache")
    } else {
        cfg.cache_dir.clone()
    };
    let bucket = Bucket::new(cfg)?;
    let blobs = S3Blobs::open(bucket.clone(), &cache_dir, cfg)?;
    let uploads = S3Uploads::new(bucket, blobs.clone(), meta);
    Ok((Arc::new(blobs), Arc::new(uploads)))
}

/// `blobs/<alg>/<first two hex>/<hex>`, as the filesystem backend lays them out.
fn blob_key(digest: &Digest) -> Key {
    let hex = digest.hex();
    Key::from(format!("blobs/{}/{}/{}", digest.algorithm().as_str(), &hex[..2], hex))
}

/// The digest a blob key names, or `None` for anything else under `blobs/`.
fn digest_of(key: &Key) -> Option<Digest> {
    let mut parts = key.as_ref().split('/');
    let (Some("blobs"), Some(alg), Some(_), Some(hex), None) =
        (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    format!("{alg}:{hex}").parse().ok()
}

/// An object store failure as a store error.
fn s3_error(e: object_store::Error) -> Error {
    Error::Io(io::Error::other(format!("object store: {e}")))
}

fn config_error(message: String) -> Error {
    Error::Io(io::Error::new(io::ErrorKind::InvalidInput, message))
}

/// `Ok(None)` for an object that is not there.
fn found<T>(r: object_store::Result<T>) -> Result<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(s3_error(e)),
    }
}

/// Run blocking file work off the async threads.
async fn unblock<T: Send + 'static>(f: impl FnOnce() -> io::Result<T> + Send + 'static) -> io::Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(io::Error::other)?
}

/// Remove a file that may already be gone.
fn remove_quietly(path: &Path) {
    let _ = std::fs::remove_file(path);
}
