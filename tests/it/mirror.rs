//! Pull-through against the project's Docker Hub emulator (a real distribution registry behind
//! Hub-style token auth and CDN redirects): real dockerd and podman as mirror clients, corrupt
//! upstream bytes, single flight, tag TTL, serve-stale, upstream auth and error mapping.

use std::time::Duration;

use crate::support::client::{cached_blob_digest, client, count, error_code, get_json, header, manifest_json};
use crate::support::{Berth, Dockerd, Hub, Podman, mirror_of, sha256, store_layout};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// Sum of a stats section's counters whose key starts with `prefix`.
fn count_prefix(stats: &Value, section: &str, prefix: &str) -> u64 {
    stats[section]
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(k, _)| k.starts_with(prefix))
                .map(|(_, v)| v.as_u64().unwrap_or(0))
                .sum()
        })
        .unwrap_or(0)
}

/// No response of berth's was a 500 (internal errors are logged as "request failed").
fn assert_no_internal_errors(b: &Berth) {
    let log = b.log();
    assert!(!log.contains("request failed"), "berth answered 500:\n{log}");
}

#[tokio::test]
async fn dockerd_pulls_through_berth_and_keeps_pulling_when_the_hub_is_gone() {
    let hub = Hub::start();
    hub.seed(0);
    let b = mirror_of(&hub.url, "1s", "");
    let d = Dockerd::start(&[&b.url]);
    let images = ["alpine", "busybox", "multilayer", "myorg/tool:1.0"];
    for image in images {
        d.ok(&["pull", image]);
    }
    let stats = hub.stats().await;
    assert!(
        count_prefix(&stats, "manifest_gets", "library/busybox") >= 2,
        "index and a child came from the hub: {stats}"
    );
    let catalog: Value = get_json(b.at("/v2/_catalog")).await;
    for repo in ["library/alpine", "library/busybox", "library/multilayer", "myorg/tool"] {
        assert!(
            catalog["repositories"].as_array().unwrap().contains(&json!(repo)),
            "{repo} cached: {catalog}"
        );
    }

    drop(hub);
    tokio::time::sleep(Duration::from_millis(1500)).await; // past the tag TTL: the stale path
    for image in images {
        d.ok(&["rmi", image]);
        d.ok(&["pull", image]);
    }
    assert!(
        b.log().contains("serving the cached manifest stale"),
        "the outage was logged"
    );
    assert_no_internal_errors(&b);
}

#[tokio::test]
async fn podman_pulls_through_a_registries_conf_mirror() {
    let hub = Hub::start();
    hub.seed(0);
    let b = mirror_of(&hub.url, "5m", "");
    let podman = Podman::with_mirror(&b.addr);
    podman.ok(&["pull", "docker.io/library/alpine:latest"]);
    let (digest, _) = manifest_json(&b.url, "library/alpine", "latest").await;
    let images = podman.ok(&["images", "--digests", "--format", "{{.Digest}}"]);
    assert!(images.contains(&digest), "podman holds {digest}: {images}");
    let stats = hub.stats().await;
    assert_eq!(
        count(&stats, "manifest_gets", "library/alpine:latest")
            + count(&stats, "manifest_gets", &format!("library/alpine@{digest}")),
        1
    );
}

#[tokio::test]
async fn corrupt_upstream_blob_is_never_stored_or_completed() {
    let hub = Hub::start();
    hub.seed(0);
    let b = mirror_of(&hub.url, "5m", "");
    let (_, manifest) = manifest_json(&b.url, "library/multilayer", "latest").await;
    let layer = manifest["layers"][2]["digest"].as_str().unwrap().to_owned();
    hub.fault(json!({ "corrupt_blob": layer })).await;

    // A direct GET: the body must not complete normally.
    let r = client()
        .get(b.at(&format!("/v2/library/multilayer/blobs/{layer}")))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success() || r.status().is_server_error());
    let body = r.bytes().await;
    assert!(
        body.is_err() || sha256(&body.unwrap()) == layer,
        "a corrupt body completed normally"
    );
    let d = Dockerd::start(&[&b.url]);
    assert!(
        d.try_docker(&["pull", "multilayer"]).is_err(),
        "pull of a corrupt layer must fail"
    );
    assert!(
        !store_layout::has_blob(&b.root, &layer),
        "corrupt bytes were stored under {layer}"
    );
    let r = client()
        .head(b.at(&format!("/v2/library/multilayer/blobs/{layer}")))
        .send()
        .await
        .unwrap();
    assert_eq!(header(&r, "x-berth-cache"), "miss", "nothing cached under the digest");

    hub.fault(json!({})).await;
    hub.reset_stats().await;
    d.ok(&["pull", "multilayer"]);
    let stats = hub.stats().await;
    assert_eq!(
        count(&stats, "cdn_gets", &layer),
        1,
        "fetched exactly once more: {stats}"
    );
    assert_eq!(cached_blob_digest(&b.url, "library/multilayer", &layer).await, layer);
    assert_no_internal_errors(&b);
}

#[tokio::test]
async fn sixteen_concurrent_gets_of_a_cold_blob_make_one_upstream_fetch() {
    let hub = Hub::start();
    let digest = hub.push_blob("library/cold", 256, 1);
    let b = mirror_of(&hub.url, "5m", "");
    let url = b.at(&format!("/v2/library/cold/blobs/{digest}"));
    let gets = (0..16).map(|_| {
        let url = url.clone();
        tokio::spawn(async move {
            use futures_util::StreamExt;
            let r = client().get(url).send().await.unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            let mut hasher = berth::oci::Hasher::new(berth::oci::Algorithm::Sha256);
            let mut body = r.bytes_stream();
            while let Some(chunk) = body.next().await {
                hasher.update(&chunk.expect("body streams to the end"));
            }
            hasher.finish().to_string()
        })
    });
    for got in futures_util::future::join_all(gets).await {
        assert_eq!(got.unwrap(), digest, "every body verifies");
    }
    let stats = hub.stats().await;
    assert_eq!(count(&stats, "blob_gets", &digest), 1, "one upstream fetch: {stats}");
    assert_eq!(count(&stats, "cdn_gets", &digest), 1, "one CDN download: {stats}");
}

#[tokio::test]
async fn a_single_cold_get_streams_the_whole_blob_while_it_is_cached() {
    // The benchmark's cold GET: one client, a fresh blob, streamed as the fill writes it.
    let hub = Hub::start_with(&["--cdn-host", "localhost"]);
    let b = mirror_of(&hub.url, "5m", "");
    for seed in 0..4 {
        let digest = hub.push_blob("library/cold", 64, 100 + seed);
        let r = client()
            .get(b.at(&format!("/v2/library/cold/blobs/{digest}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(header(&r, "x-berth-cache"), "miss");
        assert_eq!(header(&r, "content-length"), (64u64 << 20).to_string());
        let body = r.bytes().await.expect("the body streams to the end");
        assert_eq!(sha256(&body), digest);
    }
    assert_no_internal_errors(&b);
}

#[tokio::test]
async fn range_on_a_miss_and_a_disconnecting_client_do_not_break_the_fill() {
    let hub = Hub::start();
    let digest = hub.push_blob("library/cold", 32, 2);
    let b = mirror_of(&hub.url, "5m", "");
    let url = b.at(&format!("/v2/library/cold/blobs/{digest}"));

    // The first client reads a little and hangs up; the fill carries on for everyone else.
    let r = client().get(&url).send().await.unwrap();
    let mut body = r.bytes_stream();
    use futures_util::StreamExt;
    body.next().await.unwrap().unwrap();
    drop(body);

    let r = client()
        .get(&url)
        .header("range", "bytes=1000-1999")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(header(&r, "content-range"), format!("bytes 1000-1999/{}", 32 << 20));
    let part = r.bytes().await.unwrap();
    assert_eq!(part.len(), 1000);
    // The range no longer waits for the fill (issue 16: lazy pulling), so the fill may still be
    // running: a whole GET joins it (a miss) until the blob is stored, then it is a hit.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let whole = loop {
        let whole = client().get(&url).send().await.unwrap();
        if header(&whole, "x-berth-cache") == "hit" {
            break whole;
        }
        assert!(std::time::Instant::now() < deadline, "the fill never stored the blob");
        assert_eq!(sha256(&whole.bytes().await.unwrap()), digest);
    };
    assert_eq!(header(&whole, "x-berth-cache"), "hit");
    let whole = whole.bytes().await.unwrap();
    assert_eq!(sha256(&whole), digest);
    assert_eq!(&whole[1000..2000], &part[..]);
    assert_eq!(count(&hub.stats().await, "cdn_gets", &digest), 1);
}

#[tokio::test]
async fn tag_ttl_revalidates_with_one_head_and_serves_stale_on_outage() {
    let hub = Hub::start();
    hub.seed(0);
    let b = mirror_of(&hub.url, "2s", "");
    let tag_url = b.at("/v2/library/alpine/manifests/latest");
    let r = client().get(&tag_url).send().await.unwrap();
    assert_eq!(header(&r, "x-berth-cache"), "miss");
    let first = header(&r, "docker-content-digest");

    hub.reset_stats().await;
    for _ in 0..5 {
        let r = client().get(&tag_url).send().await.unwrap();
        assert_eq!(header(&r, "x-berth-cache"), "hit");
        // containerd's ?ns= and Docker Hub's short name reach the same cache entry.
        let r = client()
            .head(b.at("/v2/alpine/manifests/latest?ns=docker.io"))
            .send()
            .await
            .unwrap();
        assert_eq!(header(&r, "docker-content-digest"), first);
    }
    let stats = hub.stats().await;
    assert_eq!(
        count_prefix(&stats, "requests", ""),
        0,
        "nothing upstream inside the TTL: {stats}"
    );

    tokio::time::sleep(Duration::from_millis(2200)).await;
    let r = client().get(&tag_url).send().await.unwrap();
    assert_eq!(header(&r, "x-berth-cache"), "hit");
    let stats = hub.stats().await;
    assert_eq!(
        count(&stats, "requests", "HEAD manifest"),
        1,
        "one HEAD after the TTL: {stats}"
    );
    assert_eq!(
        count(&stats, "requests", "GET manifest"),
        0,
        "no GET when unchanged: {stats}"
    );

    // Re-pushed upstream: picked up after the TTL.
    let moved = hub.retag("library/alpine", "3.20", "latest").await;
    assert_ne!(moved, first);
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let r = client().get(&tag_url).send().await.unwrap();
    assert_eq!(header(&r, "docker-content-digest"), moved);
    assert_eq!(header(&r, "x-berth-cache"), "miss");

    // Hub down: the cached tag is served, marked stale.
    hub.fault(json!({ "down": true })).await;
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let r = client().get(&tag_url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "x-berth-cache"), "stale");
    assert_eq!(header(&r, "docker-content-digest"), moved);

    // Hub rate limiting GETs while the tag moved again: still the cached copy, stale.
    hub.fault(json!({})).await;
    hub.retag("library/alpine", &first, "latest").await;
    hub.fault(json!({ "rate_limit": 0 })).await;
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let r = client().get(&tag_url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "x-berth-cache"), "stale");
    assert_eq!(header(&r, "docker-content-digest"), moved);
    assert_no_internal_errors(&b);
}

#[tokio::test]
async fn twenty_clients_after_the_tag_ttl_cause_one_upstream_head() {
    let hub = Hub::start();
    hub.seed(0);
    let b = mirror_of(&hub.url, "2s", "");
    let tag_url = b.at("/v2/library/alpine/manifests/latest");
    let first = client().get(&tag_url).send().await.unwrap();
    let digest = header(&first, "docker-content-digest");
    tokio::time::sleep(Duration::from_millis(2200)).await;
    hub.reset_stats().await;
    let pulls = (0..20).map(|_| {
        let url = tag_url.clone();
        tokio::spawn(async move { client().get(&url).send().await.unwrap() })
    });
    for pull in pulls {
        let r = pull.await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(header(&r, "docker-content-digest"), digest);
    }
    let stats = hub.stats().await;
    assert_eq!(
        count(&stats, "requests", "HEAD manifest"),
        1,
        "20 pulls at once after the TTL revalidate once: {stats}"
    );
    assert_eq!(count(&stats, "requests", "GET manifest"), 0, "{stats}");
    assert_no_internal_errors(&b);
}

#[tokio::test]
async fn upstream_auth_uses_cdn_redirects_configured_credentials_and_cached_tokens() {
    let hub = Hub::start();
    hub.seed(0);
    let b = mirror_of(&hub.url, "5m", "username = \"hubuser\"\npassword = \"hubpass\"");
    let d = Dockerd::start(&[&b.url]);
    hub.reset_stats().await;
    d.ok(&["pull", "multilayer"]);
    let stats = hub.stats().await;
    assert!(
        count(&stats, "responses", "GET cdn 200") >= 6,
        "blobs came through the CDN redirect: {stats}"
    );
    assert_eq!(
        count(&stats, "responses", "GET cdn 400"),
        0,
        "no token was forwarded to the CDN: {stats}"
    );
    let tokens = stats["token_requests"].as_object().expect("token_requests");
    assert!(!tokens.is_empty(), "{stats}");
    for (who, n) in tokens {
        assert!(
            who.starts_with("hubuser"),
            "configured credentials reach the token endpoint: {who}"
        );
        assert_eq!(
            n.as_u64(),
            Some(1),
            "one token per scope, reused until it expires: {stats}"
        );
    }
    assert!(b.log().contains("cached blob"), "berth cached the layers");
    assert!(!b.log().contains("hubpass"), "the password never appears in a log");
}

#[tokio::test]
async fn misses_during_an_outage_get_503_or_429_never_500() {
    let hub = Hub::start();
    hub.seed(0);
    let b = mirror_of(&hub.url, "5m", "");
    hub.fault(json!({ "down": true })).await;
    let r = client()
        .get(b.at("/v2/library/alpine/manifests/3.20"))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r, StatusCode::SERVICE_UNAVAILABLE).await, "UNAVAILABLE");
    let r = client()
        .get(b.at(&format!("/v2/library/alpine/blobs/{}", sha256(b"x"))))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r, StatusCode::SERVICE_UNAVAILABLE).await, "UNAVAILABLE");

    hub.fault(json!({ "down": false, "rate_limit": 0 })).await;
    let r = client()
        .get(b.at("/v2/library/alpine/manifests/3.20"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = header(&r, "retry-after").parse().expect("Retry-After seconds");
    assert!(retry_after >= 1);
    assert_eq!(error_code(r, StatusCode::TOO_MANY_REQUESTS).await, "TOOMANYREQUESTS");
    assert_no_internal_errors(&b);
}
