//! Lazy pulling through the mirror: a `Range` GET of a cold blob is answered as soon as its bytes
//! are known (issue 16), while the fill goes on, verifies and caches the blob as before.

use reqwest::StatusCode;

use crate::support::client::{client, count, header};
use crate::support::{Hub, mirror_of, sha256};

#[tokio::test]
async fn a_ranged_get_on_a_miss_returns_the_right_bytes_and_the_blob_is_still_verified_and_cached() {
    let hub = Hub::start();
    let digest = hub.push_blob("library/lazy", 32, 3);
    let b = mirror_of(&hub.url, "5m", "");
    let url = b.at(&format!("/v2/library/lazy/blobs/{digest}"));
    let size: u64 = 32 << 20;

    // Far into the blob, as a lazy client's first read (eStargz reads its footer) would be: the
    // fill has just started, so the part comes from a ranged upstream request beside it.
    let (start, end) = (size - (1 << 20) - 12345, size - (1 << 20) + 65535 - 12345);
    let r = client()
        .get(&url)
        .header("range", format!("bytes={start}-{end}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(header(&r, "x-berth-cache"), "miss");
    assert_eq!(header(&r, "content-range"), format!("bytes {start}-{end}/{size}"));
    let far = r.bytes().await.unwrap();
    // A part inside what the fill has (or soon has) received comes from the fill.
    let r = client()
        .get(&url)
        .header("range", "bytes=1000-1999")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    let near = r.bytes().await.unwrap();

    // The fill went on: the next whole GET is a hit on the verified, stored blob.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let whole = loop {
        let r = client().get(&url).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        if header(&r, "x-berth-cache") == "hit" {
            break r.bytes().await.unwrap();
        }
        assert!(std::time::Instant::now() < deadline, "the blob was never cached");
        r.bytes().await.unwrap();
    };
    assert_eq!(sha256(&whole), digest, "the cached blob verifies");
    assert!(
        far[..] == whole[start as usize..=end as usize],
        "the far part holds the blob's bytes"
    );
    assert!(near[..] == whole[1000..2000], "the near part holds the blob's bytes");

    let stats = hub.stats().await;
    let (gets, ranged) = (
        count(&stats, "cdn_gets", &digest),
        count(&stats, "cdn_range_gets", &digest),
    );
    assert_eq!(gets - ranged, 1, "one whole fetch upstream, the fill's: {stats}");
    // The far part did not wait for the fill (which is what the old code did): it was fetched
    // by a ranged request; the near one, by then inside the fill's bytes, most likely was not.
    assert!((1..=2).contains(&ranged), "one ranged fetch per part at most: {stats}");
    // The fill's own request waited for the far part's answer: an upstream already streaming
    // the whole blob answers a part several times slower (W9 in BENCHMARKS.md). So the part went
    // first, and the fill used the token the part's request fetched instead of fetching another.
    assert_eq!(
        count(&stats, "cdn_first_ranged", &digest),
        1,
        "the part reached the upstream before the whole blob's request: {stats}"
    );
    assert_eq!(
        count(&stats, "token_requests", "anonymous repository:library/lazy:pull"),
        1,
        "one token for the part and the fill: {stats}"
    );
}
