//! Crash safety: SIGKILL berth mid-upload and mid-push, restart it on the same store, and check
//! that nothing partial is served, uploads resume, and everything committed before is intact.

use std::time::Duration;

use crate::support;
use crate::support::client::*;
use crate::support::store_layout::{self, assert_blob_files_verify};
use crate::support::verify::assert_registry_consistent;
use crate::support::{Berth, sha256};
use futures_util::StreamExt;
use reqwest::StatusCode;

const MIB: usize = 1 << 20;

#[tokio::test]
async fn sigkill_mid_chunked_upload_then_resume() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = Berth::start_in(dir.path(), "");
    for i in 0..3u64 {
        let layer = support::pseudo_random(2 * MIB + i as usize, i);
        push_image(&b.url, &format!("team/app{i}"), "v1", &[&layer, b"small layer"]).await;
    }

    let data = support::pseudo_random(48 * MIB, 99);
    let digest = sha256(&data);
    let c = client();
    let location = header(
        &c.post(b.at("/v2/team/big/blobs/uploads/")).send().await.unwrap(),
        "location",
    );
    let r = c
        .patch(b.at(&location))
        .header("content-range", format!("0-{}", 16 * MIB - 1))
        .body(data[..16 * MIB].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);

    // Stream the second chunk slowly and kill berth after half of it is sent.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(1);
    let body = reqwest::Body::wrap_stream(tokio_stream_from(rx));
    let url = b.at(&location);
    let range = format!("{}-{}", 16 * MIB, 32 * MIB - 1);
    let patch = tokio::spawn(async move {
        client()
            .patch(url)
            .header("content-range", range)
            .body(body)
            .send()
            .await
    });
    for chunk in data[16 * MIB..24 * MIB].chunks(MIB) {
        tx.send(Ok(chunk.to_vec())).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let blob_url = b.at(&format!("/v2/team/big/blobs/{digest}"));
    assert_eq!(
        c.get(&blob_url).send().await.unwrap().status(),
        StatusCode::NOT_FOUND,
        "in-flight upload is not served"
    );
    b.kill();
    drop(tx);
    let _ = patch.await; // its outcome is the crash's business; what matters is the store below

    b.restart();
    let c = client();
    let r = c.get(&blob_url).send().await.unwrap();
    assert_eq!(
        error_code(r, StatusCode::NOT_FOUND).await,
        "BLOB_UNKNOWN",
        "nothing partial is served after the crash"
    );
    assert!(assert_blob_files_verify(&b.root) > 0, "blob files exist and verify");
    assert_eq!(
        assert_registry_consistent(&b.url).await,
        3,
        "all committed images are intact"
    );

    // The session resumes from what reached the disk before the kill.
    let r = c.get(b.at(&location)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let have: usize = header(&r, "range").split('-').nth(1).unwrap().parse::<usize>().unwrap() + 1;
    assert!((16 * MIB..=24 * MIB).contains(&have), "resumable offset {have}");
    let r = c
        .patch(b.at(&location))
        .header("content-range", format!("{have}-{}", data.len() - 1))
        .body(data[have..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let r = c
        .put(b.at(&format!("{location}?digest={digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let got = c.get(&blob_url).send().await.unwrap().bytes().await.unwrap();
    assert_eq!(sha256(&got), digest);
    assert!(assert_blob_files_verify(&b.root) > 0, "blob files exist and verify");
}

#[tokio::test]
async fn repeated_sigkill_during_pushes_never_corrupts_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = Berth::start_in(dir.path(), "");
    let mut committed = 0;
    for round in 0..6u64 {
        // Push images in the background and kill berth at a different moment each round: after
        // `round + 1` pushes completed, plus a little, so it lands inside a later push (counting
        // completions rather than sleeping keeps a busy machine from killing before any push).
        let url = b.url.clone();
        let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
        let pusher = tokio::spawn(async move {
            for i in 0..20u64 {
                let layer = support::pseudo_random(MIB / 2 + (i as usize) * 1000, round * 100 + i);
                let shared = support::pseudo_random(100_000, 7); // a layer every image shares
                let m = image_manifest(&url, &format!("team/r{round}"), &[&layer, &shared]).await;
                put_manifest(&url, &format!("team/r{round}"), &format!("t{i}"), OCI_MANIFEST, &m).await;
                let _ = done_tx.send(i);
            }
        });
        for _ in 0..=round {
            done_rx.recv().await.expect("a push completes before the kill");
        }
        tokio::time::sleep(Duration::from_millis(7 * round)).await;
        b.kill();
        let _ = pusher.await; // fails once berth is gone
        b.restart();
        let tags = assert_registry_consistent(&b.url).await;
        assert!(
            tags >= committed,
            "tags committed before a crash are lost: {tags} < {committed}"
        );
        committed = tags;
        assert!(assert_blob_files_verify(&b.root) > 0, "blob files exist and verify");
    }
    assert!(committed > 0, "no push completed in any round; the test proved nothing");
    assert!(
        std::fs::read_dir(store_layout::temp_dir(&b.root))
            .unwrap()
            .next()
            .is_none(),
        "temporary files are cleared at startup"
    );
}

/// Adapt a channel receiver into a stream for a streaming request body.
fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<Result<Vec<u8>, std::io::Error>>,
) -> impl futures_util::Stream<Item = Result<Vec<u8>, std::io::Error>> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed()
}
