//! An in-process [`Remote`] that breaks in ways a real registry (or the hub emulator) cannot be
//! made to on demand: a blob body that fails or stalls after a given number of bytes, mid-stream,
//! with the headers already sent. Only for faults; anything a real peer can do is tested against
//! a real peer.

use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;

use super::{Error, Remote, RemoteBlob, RemoteHead, RemoteManifest, Result};
use crate::config::{Config, UpstreamSettings};
use crate::metrics::UpstreamMetrics;
use crate::oci::Digest;

/// What the body does after its first `after` bytes.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Then {
    /// The connection breaks: the stream yields an error (after a pause, so that concurrent
    /// requests in a test have joined the fill by then).
    Break,
    /// The upstream stops sending but keeps the connection open.
    Stall,
}

/// An upstream named `hub` that has exactly one blob, whose body goes wrong.
#[derive(Debug)]
pub(crate) struct Faulty {
    settings: UpstreamSettings,
    metrics: UpstreamMetrics,
    blob: Bytes,
    after: usize,
    then: Then,
    /// How many blob GETs reached this upstream.
    pub gets: AtomicUsize,
}

impl Faulty {
    /// `extra` is appended to the `[[upstream]]` entry (e.g. fill rate limits).
    pub(crate) fn new(blob: &[u8], after: usize, then: Then, extra: &str) -> Faulty {
        let toml = format!("[[upstream]]\nname = \"hub\"\nurl = \"http://127.0.0.1:1\"\n{extra}\n");
        let config = Config::from_toml(&toml, std::iter::empty::<(String, String)>()).unwrap();
        Faulty {
            settings: config.upstream_settings().unwrap().remove(0),
            metrics: UpstreamMetrics::default(),
            blob: Bytes::copy_from_slice(blob),
            after,
            then,
            gets: AtomicUsize::new(0),
        }
    }

    pub(crate) fn digest(&self) -> Digest {
        Digest::sha256_of(&self.blob)
    }
}

#[async_trait]
impl Remote for Faulty {
    fn settings(&self) -> &UpstreamSettings {
        &self.settings
    }

    fn metrics(&self) -> &UpstreamMetrics {
        &self.metrics
    }

    fn is_offline(&self) -> bool {
        false
    }

    fn set_offline(&self, _on: bool) -> bool {
        false
    }

    async fn head_manifest(&self, _: &str, _: &str, _: &[String]) -> Result<RemoteHead> {
        Err(Error::NotFound)
    }

    async fn get_manifest(&self, _: &str, _: &str, _: &[String], _: Option<&Digest>) -> Result<RemoteManifest> {
        Err(Error::NotFound)
    }

    async fn get_blob(&self, _: &str, digest: &Digest) -> Result<RemoteBlob> {
        if *digest != self.digest() {
            return Err(Error::NotFound);
        }
        self.gets.fetch_add(1, Ordering::SeqCst);
        let sent: Vec<Result<Bytes>> = self.blob[..self.after]
            .chunks(16 << 10)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        let head = futures_util::stream::iter(sent);
        let body = match self.then {
            Then::Break => head
                .chain(futures_util::stream::once(async {
                    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                    Err(Error::Unavailable {
                        upstream: "hub".into(),
                        reason: "reading blob: connection reset".into(),
                    })
                }))
                .boxed(),
            Then::Stall => head.chain(futures_util::stream::pending()).boxed(),
        };
        Ok(RemoteBlob {
            size: Some(self.blob.len() as u64),
            whole: Some(self.blob.len() as u64),
            content_type: Some("application/octet-stream".into()),
            digest: Some(self.digest()),
            body,
        })
    }

    async fn head_blob(&self, _: &str, digest: &Digest) -> Result<Option<u64>> {
        match *digest == self.digest() {
            true => Ok(Some(self.blob.len() as u64)),
            false => Err(Error::NotFound),
        }
    }

    async fn referrers(&self, _: &str, _: &Digest) -> Result<Bytes> {
        Err(Error::NotFound)
    }

    async fn tags(&self, _: &str, _: &str) -> Result<Bytes> {
        Err(Error::NotFound)
    }
}
