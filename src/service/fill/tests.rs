//! Fills against an upstream that fails in ways a real registry cannot be made to on demand
//! (`upstream::fault`): the body breaks or stalls mid-stream, after the headers announced the
//! whole size.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::StreamExt;

use crate::metrics::Metrics;
use crate::service::route::Proxied;
use crate::service::{BlobBody, Core};
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
