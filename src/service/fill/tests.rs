//! Fills against an upstream that fails in ways a real registry cannot be made to on demand
//! (`upstream::fault`): the body breaks or stalls mid-stream, after the headers announced the
//! whole size.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::oci::Digest;
use crate::service::route::Proxied;
use crate::service::{BlobBody, Core};
use crate::store::{self, BlobEntry, BlobStat, BlobStore, BlobWriter, OnWritten, ReadBack, Space, Stored, Written};
use crate::upstream::Remote;
use crate::upstream::fault::{Faulty, Then};

const BLOB: usize = 1 << 20;

fn blob() -> Vec<u8> {
    (0..BLOB).map(|i| (i * 7 % 251) as u8).collect()
}

/// A registry over a fresh store whose only upstream is `faulty`.
fn registry(faulty: Arc<Faulty>) -> (tempfile::TempDir, Core, Proxied) {
    let dir = tempfile::tempdir().unwrap();
    let store = crate::store::fs::open(dir.path()).unwrap();
    let remote: Arc<dyn Remote> = faulty;
    let registry = Core::with_remotes(
        store,
        vec![remote.clone()],
        crate::coord::Local::shared(),
        Arc::new(Metrics::new()),
    );
    let p = Proxied {
        local: "hub/library/x".parse().unwrap(),
        remote: "library/x".into(),
        upstream: remote,
    };
    (dir, registry, p)
}

/// Read a response to its end: the bytes that came, and whether it ended in an error (before
/// the first byte, when the fill failed before the request joined it, or mid-body).
async fn drain(response: crate::service::Result<BlobBody>) -> (usize, bool) {
    let Ok(body) = response else {
        return (0, true);
    };
    let BlobBody::Stream { mut stream, .. } = body else {
        panic!("a cold blob streams through a fill");
    };
    let mut got = 0;
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(30), stream.next())
        .await
        .expect("the body ends, in bytes or an error")
    {
        match chunk {
            Ok(bytes) => got += bytes.len(),
            Err(_) => return (got, true),
        }
    }
    (got, false)
}

#[tokio::test]
async fn a_body_that_breaks_mid_stream_fails_every_reader_and_stores_nothing() {
    let faulty = Arc::new(Faulty::new(&blob(), 300 << 10, Then::Break, ""));
    let digest = faulty.digest();
    let (_dir, registry, p) = registry(faulty.clone());
    // Two clients on one fill: both see the break, neither gets a whole (unverified) body.
    let (first, second) = tokio::join!(
        registry.proxied_blob(&p, &digest, false),
        registry.proxied_blob(&p, &digest, false)
    );
    for response in [first, second] {
        let (got, failed) = drain(response).await;
        assert!(
            failed,
            "the response ends in an error, so the client sees a broken transfer"
        );
        assert!(got < BLOB, "a reader never gets the last byte unverified ({got} bytes)");
    }
    assert_eq!(faulty.gets.load(Ordering::SeqCst), 1, "one fill for both clients");
    assert!(
        registry.store().blobs.size(&digest).await.unwrap().is_none(),
        "nothing is stored from a broken body"
    );
    // The failed fill released its claim: the next request fetches again.
    let (_, failed) = drain(registry.proxied_blob(&p, &digest, false).await).await;
    assert!(failed);
    assert_eq!(faulty.gets.load(Ordering::SeqCst), 2, "a new fill after the failure");
}

#[tokio::test]
async fn a_body_that_stalls_is_aborted_by_the_minimum_rate_and_stores_nothing() {
    let extra = "fill_min_rate = \"1KiB\"\nfill_rate_window = \"1s\"";
    let faulty = Arc::new(Faulty::new(&blob(), 64 << 10, Then::Stall, extra));
    let digest = faulty.digest();
    let (_dir, registry, p) = registry(faulty.clone());
    let (got, failed) = drain(registry.proxied_blob(&p, &digest, false).await).await;
    assert!(
        failed,
        "a stalled upstream ends the response in an error instead of hanging"
    );
    assert!(got <= 64 << 10, "only what arrived was served ({got} bytes)");
    assert!(registry.store().blobs.size(&digest).await.unwrap().is_none());
}

/// A blob store whose writers hash at once but hold their write (`close`, `commit`) until the
/// gate opens: a disk far slower than the network, which a real disk cannot be made on demand.
struct SlowDisk {
    inner: Arc<dyn BlobStore>,
    gate: watch::Receiver<bool>,
}

struct SlowWriter {
    inner: Box<dyn BlobWriter>,
    gate: watch::Receiver<bool>,
}

impl SlowWriter {
    async fn wait(&mut self) {
        let _ = self.gate.wait_for(|open| *open).await;
    }
}

#[async_trait::async_trait]
impl BlobStore for SlowDisk {
    async fn stat(&self, digest: &Digest) -> store::Result<Option<BlobStat>> {
        self.inner.stat(digest).await
    }
    async fn open(&self, digest: &Digest) -> store::Result<Option<Stored>> {
        self.inner.open(digest).await
    }
    async fn read(&self, digest: &Digest) -> store::Result<Option<Bytes>> {
        self.inner.read(digest).await
    }
    async fn writer(&self, digest: &Digest, on_written: OnWritten) -> store::Result<Box<dyn BlobWriter>> {
        let inner = self.inner.writer(digest, on_written).await?;
        Ok(Box::new(SlowWriter {
            inner,
            gate: self.gate.clone(),
        }))
    }
    async fn delete(&self, digest: &Digest) -> store::Result<bool> {
        self.inner.delete(digest).await
    }
    async fn list(&self) -> store::Result<Vec<BlobEntry>> {
        self.inner.list().await
    }
    async fn probe(&self) -> store::Result<()> {
        self.inner.probe().await
    }
    async fn space(&self) -> store::Result<Option<Space>> {
        self.inner.space().await
    }
}

#[async_trait::async_trait]
impl BlobWriter for SlowWriter {
    async fn append(&mut self, batch: Vec<Bytes>) -> store::Result<()> {
        self.inner.append(batch).await
    }
    fn read_back(&self) -> Arc<dyn ReadBack> {
        self.inner.read_back()
    }
    async fn hashed(&mut self) -> store::Result<Written> {
        self.inner.hashed().await
    }
    async fn close(&mut self) -> store::Result<Written> {
        self.wait().await;
        self.inner.close().await
    }
    async fn commit(mut self: Box<Self>, expected: &Digest) -> store::Result<u64> {
        self.wait().await;
        self.inner.commit(expected).await
    }
}

/// A GET of the blob of an upstream whose body ends as `then` says, through a registry over a
/// fresh filesystem store behind a [`SlowDisk`] whose gate stays closed: the registry, the
/// blob's digest, the gate's opener, and the response as [`drain`] saw it (within 10 s).
async fn get_over_a_slow_disk(then: Then) -> (tempfile::TempDir, Core, Digest, watch::Sender<bool>, (usize, bool)) {
    let faulty = Arc::new(Faulty::new(&blob(), 300 << 10, then, ""));
    let digest = faulty.digest();
    let (dir, _, p) = registry(faulty.clone());
    let fs = crate::store::fs::open(dir.path()).unwrap();
    let (gate, closed) = watch::channel(false);
    let slow = SlowDisk {
        inner: fs.blobs.clone(),
        gate: closed,
    };
    let store = crate::store::Store::new(Arc::new(slow), fs.uploads.clone(), fs.meta.clone());
    let remote: Arc<dyn Remote> = faulty;
    let registry = Core::with_remotes(
        store,
        vec![remote],
        crate::coord::Local::shared(),
        Arc::new(Metrics::new()),
    );
    let response = registry.proxied_blob(&p, &digest, false).await;
    let drained = tokio::time::timeout(Duration::from_secs(10), drain(response))
        .await
        .expect("the body ends without waiting for the disk");
    (dir, registry, digest, gate, drained)
}

/// Wait (up to 15 s) until the blob is published in the store.
async fn cached(registry: &Core, digest: &Digest) {
    tokio::time::timeout(Duration::from_secs(15), async {
        while registry.store().blobs.size(digest).await.unwrap().is_none() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the blob is verified and cached");
}

#[tokio::test]
async fn the_last_byte_goes_out_once_the_digest_verifies_while_the_write_goes_on() {
    let (_dir, registry, digest, gate, drained) = get_over_a_slow_disk(Then::End).await;
    assert_eq!(drained, (BLOB, false), "every byte, the last one included");
    assert!(
        registry.store().blobs.size(&digest).await.unwrap().is_none(),
        "the write was still held back when the client finished"
    );
    gate.send_replace(true);
    cached(&registry, &digest).await;
    let stored = registry.store().blobs.read(&digest).await.unwrap().unwrap();
    assert!(stored == blob(), "the cached bytes are the blob's");
}

#[tokio::test]
async fn a_corrupt_body_never_gives_out_its_last_byte_even_with_the_hash_ahead_of_the_disk() {
    let (_dir, registry, digest, gate, (got, failed)) = get_over_a_slow_disk(Then::Corrupt).await;
    assert!(failed, "the response ends in an error");
    assert!(got < BLOB, "the last byte never went out ({got} bytes)");
    gate.send_replace(true);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        registry.store().blobs.size(&digest).await.unwrap().is_none(),
        "nothing is stored from a corrupt body"
    );
}

#[tokio::test]
async fn a_range_on_a_miss_answers_from_the_ranged_request_before_the_fills_own_answer() {
    let slow = Duration::from_secs(3);
    let faulty = Arc::new(Faulty::new(&blob(), 300 << 10, Then::End, "").answering_whole_after(slow));
    let digest = faulty.digest();
    let (_dir, registry, p) = registry(faulty);
    let (start, len) = (800_000u64, 64 << 10);
    let range = format!("bytes={start}-{}", start + len - 1);
    let begun = tokio::time::Instant::now();
    let body = tokio::time::timeout(
        Duration::from_secs(2),
        registry.proxied_blob_with(&p, &digest, false, Some(&range)),
    )
    .await
    .expect("the response does not wait for the fill's answer")
    .unwrap();
    let crate::service::BlobBody::Stored(stored, _) = body else {
        panic!("a range on a miss is served as a part");
    };
    assert_eq!(stored.size(), BLOB as u64, "the size from the ranged answer's total");
    let mut part = Vec::new();
    let mut stream = stored.range(start, len).expect("bytes, not a redirect");
    while let Some(chunk) = stream.next().await {
        part.extend_from_slice(&chunk.unwrap());
    }
    assert!(begun.elapsed() < slow, "the part came before the fill's answer");
    assert!(
        part == blob()[start as usize..(start + len) as usize],
        "the part's bytes"
    );
    // The fill goes on.
    cached(&registry, &digest).await;
}
