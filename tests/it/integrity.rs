//! Integrity under cancellation and abuse: a request cut off mid-body never leaves an upload
//! session out of step with its bytes, a published blob is never replaced, fills joined from
//! another repository are scoped, and upload session counts cannot lock a client out.

use std::time::Duration;

use crate::support;
use crate::support::client::header;
use crate::support::{Berth, Hub, PRIVATE, pseudo_random, sha256};
use bytes::Bytes;
use reqwest::{Client, StatusCode};

fn h2_client() -> Client {
    berth::install_crypto_provider();
    Client::builder()
        .http2_prior_knowledge()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

fn h1_client() -> Client {
    berth::install_crypto_provider();
    Client::builder()
        .http1_only()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

async fn start_session(c: &Client, base: &str, repo: &str) -> String {
    let r = c.post(format!("{base}/v2/{repo}/blobs/uploads/")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    format!("{base}{}", header(&r, "location"))
}

/// PATCH `bytes` at `offset` (with a `Content-Range` when `ranged`), send only the first
/// `sent` of them, wait `hold`, then cut the request off the way a client does when it gives
/// up: the request future is dropped, which resets the HTTP/2 stream or closes the HTTP/1.1
/// connection.
async fn cancelled_patch(
    c: &Client,
    url: &str,
    offset: usize,
    bytes: &[u8],
    sent: usize,
    hold: Duration,
    ranged: bool,
) {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(64);
    let body = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
    let mut req = c
        .patch(url)
        .header("content-type", "application/octet-stream")
        .header("content-length", bytes.len())
        .body(reqwest::Body::wrap_stream(body));
    if ranged {
        req = req.header("content-range", format!("{offset}-{}", offset + bytes.len() - 1));
    }
    let request = tokio::spawn(req.send());
    for piece in bytes[..sent].chunks(16 << 10) {
        if tx.send(Ok(Bytes::copy_from_slice(piece))).await.is_err() {
            break;
        }
    }
    tokio::time::sleep(hold).await;
    request.abort();
    let _ = request.await;
    // Only now may the body's sender go: dropping it first would end the body cleanly.
    drop(tx);
}

async fn patch(c: &Client, url: &str, offset: usize, bytes: &[u8]) -> reqwest::Response {
    c.patch(url)
        .header("content-type", "application/octet-stream")
        .header("content-range", format!("{offset}-{}", offset + bytes.len() - 1))
        .body(bytes.to_vec())
        .send()
        .await
        .unwrap()
}

async fn finish(c: &Client, url: &str, digest: &str) -> reqwest::Response {
    let sep = if url.contains('?') { '&' } else { '?' };
    c.put(format!("{url}{sep}digest={digest}")).send().await.unwrap()
}

/// The location for the next request of a session (distribution may rotate it).
fn next_location(base: &str, r: &reqwest::Response, url: &str) -> String {
    match r.headers().get("location") {
        Some(l) => format!("{base}{}", l.to_str().unwrap()),
        None => url.to_owned(),
    }
}

/// Every session: one acknowledged chunk, then a second chunk cut off at a varying point
/// (sometimes after all of its bytes went out), then the client does what a client does after
/// a failed request: it sends that chunk again from the last offset the server acknowledged,
/// and finishes. The server must take it and publish exactly the bytes the digest names.
async fn cancelled_chunks_resume_to_the_right_blob(c: &Client, berth: &Berth, repo: &str, rounds: usize) {
    let base = &berth.url;
    for round in 0..rounds {
        let content = pseudo_random(700 << 10, 100 + round as u64);
        let digest = sha256(&content);
        let split = (100 << 10) + round * 7919;
        let (first, second) = content.split_at(split);
        let url = start_session(c, base, repo).await;
        let r = patch(c, &url, 0, first).await;
        assert_eq!(r.status(), StatusCode::ACCEPTED, "round {round}: first chunk");
        let url = next_location(base, &r, &url);

        // Cut points from a few KiB in to all but the last byte (with every byte sent, the
        // chunk is complete and the server rightly takes it).
        let sent = match round % 4 {
            0 => second.len() - 1,
            1 => second.len() - 4096,
            2 => 40 << 10,
            _ => second.len() / 2,
        };
        let hold = Duration::from_millis(20 + (round as u64 % 5) * 40);
        cancelled_patch(c, &url, split, second, sent, hold, round % 2 == 0).await;

        let status = c.get(&url).send().await.unwrap();
        assert_eq!(status.status(), StatusCode::NO_CONTENT, "round {round}: status");
        assert_eq!(
            header(&status, "range"),
            format!("0-{}", split - 1),
            "round {round}: a cut-off chunk must leave the session at its last acknowledged length"
        );
        let r = patch(c, &url, split, second).await;
        assert_eq!(r.status(), StatusCode::ACCEPTED, "round {round}: the chunk sent again");
        let url = next_location(base, &r, &url);
        let r = finish(c, &url, &digest).await;
        assert_eq!(r.status(), StatusCode::CREATED, "round {round}: finish");
        let stored = c
            .get(format!("{base}/v2/{repo}/blobs/{digest}"))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(
            sha256(&stored),
            digest,
            "round {round}: the published blob hashes to its name"
        );
        assert_eq!(stored.len(), content.len());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn uploads_cut_off_mid_chunk_over_http2_resume_and_publish_only_verified_bytes() {
    let berth = Berth::start(PRIVATE);
    cancelled_chunks_resume_to_the_right_blob(&h2_client(), &berth, "team/h2", 24).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn uploads_cut_off_by_an_http1_disconnect_resume_and_publish_only_verified_bytes() {
    let berth = Berth::start(PRIVATE);
    cancelled_chunks_resume_to_the_right_blob(&h1_client(), &berth, "team/h1", 12).await;
}

/// The attack the cancellation bug allowed: a cut-off PATCH of a prefix, then the layer's own
/// bytes, finished under the layer's digest, so that `prefix + L` would replace a cached
/// upstream layer `L` for every mirror client.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_push_cannot_replace_a_cached_upstream_layer() {
    let hub = Hub::start();
    let layer_digest = hub.push_blob("library/alpine", 1, 11);
    let berth = Berth::start(&format!(
        "{PRIVATE}[[upstream]]\nname = \"docker.io\"\nurl = \"{}\"\ntimeout = \"5s\"\n",
        hub.url
    ));
    let c = h2_client();
    let mirrored = format!("{}/v2/library/alpine/blobs/{layer_digest}", berth.url);
    let layer = c.get(&mirrored).send().await.unwrap().bytes().await.unwrap();
    assert_eq!(sha256(&layer), layer_digest);

    let prefix = pseudo_random(300 << 10, 5);
    for round in 0..12 {
        let url = start_session(&c, &berth.url, "team/evil").await;
        let hold = Duration::from_millis(10 + (round % 4) * 30);
        let sent = prefix.len() - 1 - (round as usize % 3) * (20 << 10);
        cancelled_patch(&c, &url, 0, &prefix, sent, hold, false).await;
        let r = c
            .patch(&url)
            .header("content-type", "application/octet-stream")
            .body(layer.to_vec())
            .send()
            .await
            .unwrap();
        let url = next_location(&berth.url, &r, &url);
        let done = finish(&c, &url, &layer_digest).await;
        assert!(
            done.status() == StatusCode::CREATED || done.status().is_client_error(),
            "round {round}: finish answered {}",
            done.status()
        );
        let served = c.get(&mirrored).send().await.unwrap();
        assert_eq!(header(&served, "x-berth-cache"), "hit");
        let served = served.bytes().await.unwrap();
        assert!(served == layer, "round {round}: the cached layer's bytes changed");
    }
}

/// The session limit counts the sessions that exist: a purge by GC and a monolithic push cut
/// off mid-body both give their places back, so abandoned pushes cannot lock a client out.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn abandoned_upload_sessions_do_not_lock_a_client_out() {
    let berth = Berth::start(&format!(
        "{PRIVATE}[limits]\nmax_upload_sessions = 3\n[gc]\ninterval = \"1s\"\nupload_ttl = \"2s\"\n"
    ));
    let c = h2_client();
    let post = |repo: &str| c.post(format!("{}/v2/{repo}/blobs/uploads/", berth.url)).send();
    for i in 0..3 {
        assert_eq!(
            post("team/a").await.unwrap().status(),
            StatusCode::ACCEPTED,
            "session {i}"
        );
    }
    let refused = post("team/a").await.unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(!header(&refused, "retry-after").is_empty());

    // Nobody finishes or cancels them; GC purges them after `upload_ttl`.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let r = post("team/a").await.unwrap();
        if r.status() == StatusCode::ACCEPTED {
            break;
        }
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert!(
            std::time::Instant::now() < deadline,
            "purged sessions never gave their places back"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Monolithic pushes cut off mid-body: each must end its session with the request.
    let berth = Berth::start(&format!("{PRIVATE}[limits]\nmax_upload_sessions = 2\n"));
    let layer = pseudo_random(600 << 10, 9);
    let digest = sha256(&layer);
    for round in 0..4 {
        let url = format!("{}/v2/team/b/blobs/uploads/?digest={digest}", berth.url);
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(64);
        let body = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|i| (i, rx)) });
        let request = tokio::spawn(
            c.post(url)
                .header("content-type", "application/octet-stream")
                .header("content-length", layer.len())
                .body(reqwest::Body::wrap_stream(body))
                .send(),
        );
        tx.send(Ok(Bytes::copy_from_slice(&layer[..100 << 10]))).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50 + round * 20)).await;
        request.abort();
        let _ = request.await;
        drop(tx);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut opened = 0;
    while opened < 2 {
        let r = c
            .post(format!("{}/v2/team/b/blobs/uploads/", berth.url))
            .send()
            .await
            .unwrap();
        if r.status() == StatusCode::ACCEPTED {
            opened += 1;
            continue;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "cut-off monolithic pushes still hold the client's sessions: {}",
            r.status()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn mirror_of(hub: &Hub, upstream_extra: &str) -> Berth {
    Berth::start(&format!(
        "{PRIVATE}[[upstream]]\nname = \"docker.io\"\nurl = \"{}\"\ntimeout = \"30s\"\n{upstream_extra}",
        hub.url
    ))
}

/// A fill is keyed by digest alone; a request from a repository the upstream does not say has
/// the blob must not join one started for another repository.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn joining_a_fill_needs_the_upstream_to_confirm_the_requesters_repository() {
    let hub = Hub::start();
    let digest = hub.push_blob("library/a", 8, 21);
    assert_eq!(hub.push_blob("library/c", 8, 21), digest, "same seed, same blob");
    let berth = mirror_of(&hub, "");
    hub.fault(serde_json::json!({"bandwidth_mbps": 16})).await;
    let c = h1_client();
    let url = |repo: &str| format!("{}/v2/{repo}/blobs/{digest}", berth.url);
    let first = c.get(url("library/a")).send().await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(header(&first, "x-berth-cache"), "miss");
    let first = tokio::spawn(first.bytes());

    // The fill of library/a is running (8 MiB at 16 Mbit/s takes about 4 s).
    let other = c.get(url("library/b")).send().await.unwrap();
    assert_eq!(
        other.status(),
        StatusCode::NOT_FOUND,
        "library/b joined library/a's fill"
    );
    assert_eq!(
        support::client::error_code(other, StatusCode::NOT_FOUND).await,
        "BLOB_UNKNOWN"
    );
    let shared = c.get(url("library/c")).send().await.unwrap();
    assert_eq!(shared.status(), StatusCode::OK);
    let shared = shared.bytes().await.unwrap();
    assert_eq!(sha256(&shared), digest);
    assert_eq!(sha256(&first.await.unwrap().unwrap()), digest);
    let stats = hub.stats().await;
    assert_eq!(
        stats["cdn_gets"][&digest].as_u64(),
        Some(1),
        "library/c joined the one fetch"
    );
}

/// An upstream that drips its body: clients see the bytes as they come, the fill is aborted
/// when it stays below the minimum rate (its clients' responses end in an error), and the next
/// request starts a fresh fetch that completes once the upstream is healthy again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stalled_fill_is_aborted_and_the_next_request_fetches_afresh() {
    let hub = Hub::start();
    let digest = hub.push_blob("library/slow", 1, 31);
    let berth = mirror_of(&hub, "fill_min_rate = \"64KiB\"\nfill_rate_window = \"2s\"\n");
    hub.fault(serde_json::json!({"drip_bps": 50})).await;
    let c = h1_client();
    let url = format!("{}/v2/library/slow/blobs/{digest}", berth.url);
    let started = std::time::Instant::now();
    let mut dripping = c.get(&url).send().await.unwrap();
    assert_eq!(dripping.status(), StatusCode::OK);
    let first = tokio::time::timeout(Duration::from_secs(3), dripping.chunk())
        .await
        .expect("no byte reached the client while the upstream dripped");
    assert!(first.unwrap().is_some_and(|b| !b.is_empty()));

    // The upstream recovers, but the stuck fill must still end, in an error.
    hub.fault(serde_json::json!({"drip_bps": 0})).await;
    let outcome = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            match dripping.chunk().await {
                Ok(Some(_)) => continue,
                Ok(None) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    })
    .await
    .expect("the stalled fill was never aborted");
    assert!(
        outcome.is_err(),
        "a stalled fill's response completed instead of failing"
    );
    assert!(started.elapsed() < Duration::from_secs(12));

    let fresh = tokio::time::timeout(Duration::from_secs(10), async {
        c.get(&url).send().await.unwrap().bytes().await.unwrap()
    })
    .await
    .expect("the next request did not fetch afresh");
    assert_eq!(sha256(&fresh), digest);
    let again = c.get(&url).send().await.unwrap();
    assert_eq!(header(&again, "x-berth-cache"), "hit");
}

/// `Retry-After` values that overflow a clock or mean "forever" are capped, and nothing panics.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_absurd_retry_after_is_capped_and_berth_keeps_serving() {
    let hub = Hub::start();
    hub.seed(0);
    let berth = mirror_of(&hub, "max_retry_after = \"90s\"\n");
    let c = h1_client();
    for value in ["18446744073709551615", "99999999999"] {
        hub.fault(serde_json::json!({"rate_limit": 0, "retry_after": value}))
            .await;
        let r = c
            .get(format!("{}/v2/library/alpine/manifests/latest", berth.url))
            .send()
            .await
            .expect("berth answered");
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS, "Retry-After {value}");
        let pause: u64 = header(&r, "retry-after").parse().unwrap();
        assert!(
            (1..=90).contains(&pause),
            "Retry-After {value} became a pause of {pause} s"
        );
    }
    let health = c.get(format!("{}/healthz", berth.url)).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
}
