//! Air-gapped sites (issue 15): offline mode switched at runtime, OCI 1.1 referrers (signatures)
//! through the mirror via the hub emulator's tag schema, and a berth whose upstream is another
//! berth, pulled through with a real dockerd.

use std::time::{Duration, Instant};

use crate::support::client::{
    OCI_INDEX, OCI_MANIFEST, cached_blob_digest, client, descriptor, header, manifest_json, oci_error,
};
use crate::support::{Berth, Dockerd, Hub, mirror_of, sha256};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// Set `offline` of every `[[upstream]]` in `b`'s config file and send SIGHUP; wait until
/// `/metrics` shows the new mode.
async fn switch_offline(b: &Berth, offline: bool) {
    let mut config: toml::Table = std::fs::read_to_string(&b.config).unwrap().parse().unwrap();
    for entry in config["upstream"].as_array_mut().unwrap() {
        entry.as_table_mut().unwrap().insert("offline".into(), offline.into());
    }
    std::fs::write(&b.config, config.to_string()).unwrap();
    b.signal("HUP");
    let want = format!("berth_upstream_offline{{upstream=\"docker.io\"}} {}", u8::from(offline));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = client()
            .get(b.at("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if metrics.contains(&want) {
            return;
        }
        assert!(Instant::now() < deadline, "no {want:?} after SIGHUP:\n{metrics}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Requests the hub received (the control API is not counted).
fn hub_requests(stats: &Value) -> u64 {
    stats["requests"]
        .as_object()
        .map(|m| m.values().map(|v| v.as_u64().unwrap_or(0)).sum())
        .unwrap_or(0)
}

/// GET a blob through `b`, asserting it arrives whole.
async fn pull_blob(b: &Berth, repo: &str, digest: &str) {
    let r = client()
        .get(b.at(&format!("/v2/{repo}/blobs/{digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "blob {digest}");
    assert_eq!(sha256(&r.bytes().await.unwrap()), digest);
}

#[tokio::test]
async fn offline_mode_serves_the_cache_past_its_ttl_never_contacts_the_hub_and_switches_at_runtime() {
    let hub = Hub::start();
    let seed = hub.seed(0);
    hub.reset_stats().await; // the seeding pushes count too
    let b = mirror_of(&hub.url, "1s", "offline = true");
    let alpine = &seed["images"]["library/alpine:latest"];
    let layer = alpine["layers"][0]["digest"].as_str().unwrap();

    // Configured offline from the start: nothing is cached, every read is a 404 that says why.
    let r = client()
        .get(b.at("/v2/library/alpine/manifests/latest"))
        .send()
        .await
        .unwrap();
    let (status, code, message) = oci_error(r).await;
    assert_eq!((status, code.as_str()), (StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN"));
    assert!(
        message.contains("offline") && message.contains("not cached"),
        "{message}"
    );
    let r = client()
        .get(b.at(&format!("/v2/library/alpine/blobs/{layer}")))
        .send()
        .await
        .unwrap();
    let (status, code, message) = oci_error(r).await;
    assert_eq!((status, code.as_str()), (StatusCode::NOT_FOUND, "BLOB_UNKNOWN"));
    assert!(
        message.contains("offline") && message.contains("not cached"),
        "{message}"
    );
    let html = client().get(b.at("/ui")).send().await.unwrap().text().await.unwrap();
    assert!(html.contains("badge offline"), "the web UI shows the mode");
    assert_eq!(hub_requests(&hub.stats().await), 0, "the hub was never contacted");

    // Online (SIGHUP, no restart): the image is cached.
    switch_offline(&b, false).await;
    let (digest, _) = manifest_json(&b.url, "library/alpine", "latest").await;
    assert_eq!(digest, alpine["digest"].as_str().unwrap());
    pull_blob(&b, "library/alpine", alpine["config"]["digest"].as_str().unwrap()).await;
    pull_blob(&b, "library/alpine", layer).await;
    assert!(hub_requests(&hub.stats().await) > 0);

    // Offline again: the cached tag is served well past its 1 s TTL, the hub sees nothing.
    switch_offline(&b, true).await;
    hub.reset_stats().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for _ in 0..2 {
        let r = client()
            .get(b.at("/v2/library/alpine/manifests/latest"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(header(&r, "docker-content-digest"), digest);
        assert_eq!(header(&r, "x-berth-cache"), "hit");
        pull_blob(&b, "library/alpine", layer).await;
    }
    let r = client()
        .head(b.at("/v2/alpine/manifests/latest?ns=docker.io"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // The tag list comes from the cache too.
    let tags: Value = client()
        .get(b.at("/v2/library/alpine/tags/list"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(tags["tags"], json!(["latest"]));
    // What was never cached is a 404 with the offline message, manifests and blobs alike.
    let r = client()
        .get(b.at("/v2/library/busybox/manifests/latest"))
        .send()
        .await
        .unwrap();
    let (status, code, message) = oci_error(r).await;
    assert_eq!((status, code.as_str()), (StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN"));
    assert!(
        message.contains("upstream docker.io is offline") && message.contains("not cached"),
        "{message}"
    );
    let other = seed["images"]["library/alpine:3.20"]["config"]["digest"]
        .as_str()
        .unwrap();
    let r = client()
        .get(b.at(&format!("/v2/library/alpine/blobs/{other}")))
        .send()
        .await
        .unwrap();
    let (status, code, _) = oci_error(r).await;
    assert_eq!((status, code.as_str()), (StatusCode::NOT_FOUND, "BLOB_UNKNOWN"));
    let r = client()
        .head(b.at(&format!("/v2/library/alpine/blobs/{other}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let stats = hub.stats().await;
    assert_eq!(
        hub_requests(&stats),
        0,
        "offline: the hub saw no request at all: {stats}"
    );

    // And back online: the stale tag is revalidated and the miss is fetched.
    switch_offline(&b, false).await;
    let (busybox, _) = manifest_json(&b.url, "library/busybox", "latest").await;
    assert_eq!(
        busybox,
        seed["images"]["library/busybox:latest"]["digest"].as_str().unwrap()
    );
    assert!(hub_requests(&hub.stats().await) > 0, "online again, the hub is asked");
    let html = client().get(b.at("/ui")).send().await.unwrap().text().await.unwrap();
    assert!(html.contains("badge online") && !html.contains("badge offline"));
}

/// What an offline upstream cached cannot be fetched again, so `[cache] ttl` does not evict it
/// while the upstream is offline; once it is back online, the TTL applies again.
#[tokio::test]
async fn eviction_by_ttl_spares_an_offline_upstreams_cache_until_it_is_back_online() {
    let hub = Hub::start();
    hub.seed(0);
    let b = Berth::start(&format!(
        "[[upstream]]\nname = \"docker.io\"\nurl = \"{}\"\ntimeout = \"5s\"\n[cache]\nttl = \"1s\"\n[gc]\ngrace = \"0s\"\n",
        hub.url
    ));
    let (digest, _) = manifest_json(&b.url, "library/alpine", "latest").await;
    switch_offline(&b, true).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let gc = b.cli(&["gc"]);
    assert!(gc.status.success(), "{}", String::from_utf8_lossy(&gc.stderr));
    let r = client()
        .get(b.at("/v2/library/alpine/manifests/latest"))
        .header("accept", OCI_INDEX)
        .header("accept", "application/vnd.docker.distribution.manifest.v2+json")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::OK,
        "gc evicted what the offline upstream cannot give back"
    );
    assert_eq!(header(&r, "docker-content-digest"), digest);

    switch_offline(&b, false).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let gc = b.cli(&["gc"]);
    let out = String::from_utf8_lossy(&gc.stdout).into_owned() + &String::from_utf8_lossy(&gc.stderr);
    assert!(gc.status.success(), "{out}");
    assert!(
        out.contains(&digest),
        "online again, the TTL evicts the unpulled image:\n{out}"
    );
}

const SIG_TYPE: &str = "application/vnd.dev.cosign.artifact.sig.v1+json";
const SBOM_TYPE: &str = "application/spdx+json";

/// Push an artifact of `artifact_type` whose `subject` is `subject` to the hub, as cosign and
/// oras do; returns its manifest descriptor (with `artifactType`) and its payload digest.
async fn push_artifact(hub: &Hub, repo: &str, subject: &Value, artifact_type: &str, payload: &[u8]) -> (Value, String) {
    let empty = hub.push_blob_bytes(repo, b"{}").await;
    let layer = hub.push_blob_bytes(repo, payload).await;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": descriptor("application/vnd.oci.empty.v1+json", &empty, 2),
        "layers": [descriptor("application/octet-stream", &layer, payload.len())],
        "subject": subject,
    });
    let bytes = serde_json::to_vec(&manifest).unwrap();
    let digest = hub
        .put_manifest_bytes(repo, &sha256(&bytes), OCI_MANIFEST, &bytes)
        .await;
    let mut d = descriptor(OCI_MANIFEST, &digest, bytes.len());
    d["artifactType"] = json!(artifact_type);
    (d, layer)
}

/// The referrers index `b` answers for `subject`, with its headers.
async fn referrers(b: &Berth, repo: &str, subject: &str, query: &str) -> (Value, reqwest::header::HeaderMap) {
    let r = client()
        .get(b.at(&format!("/v2/{repo}/referrers/{subject}{query}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "referrers of {subject}{query}");
    assert_eq!(header(&r, "content-type"), OCI_INDEX);
    let headers = r.headers().clone();
    (r.json().await.unwrap(), headers)
}

/// `?artifactType=<t>`, encoded as clients send it (a `+` in a query would mean a space).
fn artifact_query(artifact_type: &str) -> String {
    format!("?artifactType={}", artifact_type.replace('+', "%2B"))
}

/// Pull an artifact manifest of library/alpine by digest through `b`, and its payload blob.
async fn pull_artifact(b: &Berth, digest: &str, payload: &str) {
    let r = client()
        .get(b.at(&format!("/v2/library/alpine/manifests/{digest}")))
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "artifact {digest}");
    assert_eq!(sha256(&r.bytes().await.unwrap()), digest);
    pull_blob(b, "library/alpine", payload).await;
}

/// `(digest, artifactType)` of each descriptor in a referrers index, sorted.
fn listed(index: &Value) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["digest"].as_str().unwrap().into(),
                d["artifactType"].as_str().unwrap_or("").into(),
            )
        })
        .collect();
    out.sort();
    out
}

#[tokio::test]
async fn signatures_come_through_the_mirror_and_a_mirror_of_the_mirror_by_the_referrers_api() {
    let hub = Hub::start();
    let seed = hub.seed(0);
    let alpine = &seed["images"]["library/alpine:latest"];
    let subject_digest = alpine["digest"].as_str().unwrap();
    let subject = descriptor(
        alpine["mediaType"].as_str().unwrap(),
        subject_digest,
        alpine["size"].as_u64().unwrap() as usize,
    );
    // A "signed" image on a registry without the referrers API (distribution 2.8): artifacts
    // with `subject`, and the tag-schema index `sha256-<hex>` listing them.
    let (sig, sig_payload) = push_artifact(&hub, "library/alpine", &subject, SIG_TYPE, b"{\"critical\":{}}").await;
    let (sbom, _) = push_artifact(
        &hub,
        "library/alpine",
        &subject,
        SBOM_TYPE,
        b"{\"spdxVersion\":\"SPDX-2.3\"}",
    )
    .await;
    let index = json!({ "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [sig, sbom] });
    let schema_tag = subject_digest.replace(':', "-");
    hub.put_manifest_bytes(
        "library/alpine",
        &schema_tag,
        OCI_INDEX,
        &serde_json::to_vec(&index).unwrap(),
    )
    .await;
    let want = listed(&index);

    let a = mirror_of(&hub.url, "1s", "");
    let (got, headers) = referrers(&a, "library/alpine", subject_digest, "").await;
    assert_eq!(listed(&got), want, "berth lists the hub's referrers: {got}");
    assert_eq!(headers["x-berth-cache"], "miss");
    // containerd's form reaches the same answer.
    let (got, _) = referrers(&a, "alpine", subject_digest, "?ns=docker.io").await;
    assert_eq!(listed(&got), want);
    // Filtering by artifactType.
    let (got, headers) = referrers(&a, "library/alpine", subject_digest, &artifact_query(SIG_TYPE)).await;
    assert_eq!(
        listed(&got),
        vec![(sig["digest"].as_str().unwrap().to_owned(), SIG_TYPE.to_owned())]
    );
    assert_eq!(headers["oci-filters-applied"], "artifactType");

    // The signature manifest and its payload pull through like any manifest.
    let sig_digest = sig["digest"].as_str().unwrap();
    pull_artifact(&a, sig_digest, &sig_payload).await;

    // A second berth mirroring the first gets the same referrers through A's referrers API
    // (A answers it; the tag schema is not needed on the second hop).
    let api_answers = |log: String| {
        log.lines()
            .filter(|l| l.contains("/referrers/") && l.contains("status=200"))
            .count()
    };
    let answered_before = api_answers(a.log());
    let b = mirror_of(&a.url, "1s", "forward_ns = true");
    let (got, _) = referrers(&b, "library/alpine", subject_digest, "").await;
    assert_eq!(listed(&got), want, "through two hops: {got}");
    let (got, headers) = referrers(&b, "library/alpine", subject_digest, &artifact_query(SBOM_TYPE)).await;
    assert_eq!(
        listed(&got),
        vec![(sbom["digest"].as_str().unwrap().to_owned(), SBOM_TYPE.to_owned())]
    );
    assert_eq!(headers["oci-filters-applied"], "artifactType");
    assert!(api_answers(a.log()) > answered_before, "B asked A's referrers API");
    assert!(
        !a.log().contains(&format!("manifests/{schema_tag}")),
        "no tag-schema request reached A"
    );
    pull_artifact(&b, sig_digest, &sig_payload).await;

    // The hub goes down: past the TTL, A serves the cached referrers stale.
    hub.fault(json!({ "down": true })).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (got, headers) = referrers(&a, "library/alpine", subject_digest, "").await;
    assert_eq!(listed(&got), want);
    assert_eq!(headers["x-berth-cache"], "stale");
    // An image nobody signed has an empty list, not an error (hub back up).
    hub.fault(json!({})).await;
    let busybox = seed["images"]["library/busybox:latest"]["digest"].as_str().unwrap();
    let c = mirror_of(&hub.url, "5m", "");
    let (got, headers) = referrers(&c, "library/busybox", busybox, "").await;
    assert_eq!(got["manifests"], json!([]));
    assert_eq!(headers["x-berth-cache"], "miss");
    // ... and that answer is remembered for the tag TTL: asking again costs no upstream request.
    hub.reset_stats().await;
    let (got, headers) = referrers(&c, "library/busybox", busybox, "").await;
    assert_eq!(got["manifests"], json!([]));
    assert_eq!(headers["x-berth-cache"], "hit");
    assert_eq!(hub_requests(&hub.stats().await), 0);
}

#[tokio::test]
async fn dockerd_pulls_through_a_berth_whose_upstream_is_a_berth_and_the_hub_sends_each_blob_once() {
    let hub = Hub::start();
    let seed = hub.seed(0);
    // Central site A mirrors the hub under two names; remote site B reaches both through A.
    let a = Berth::start(&format!(
        "[[upstream]]\nname = \"docker.io\"\nurl = \"{0}\"\n[[upstream]]\nname = \"hub2\"\nurl = \"{0}\"\n",
        hub.url
    ));
    let b = Berth::start(&format!(
        "[[upstream]]\nname = \"docker.io\"\nurl = \"{0}\"\nforward_ns = true\n\
         [[upstream]]\nname = \"hub2\"\nurl = \"{0}\"\nforward_ns = true\n",
        a.url
    ));
    let d = Dockerd::start(&[&b.url]);
    for image in ["alpine", "busybox", "multilayer"] {
        d.ok(&["pull", image]);
    }
    let stats = hub.stats().await;
    for section in ["blob_gets", "cdn_gets"] {
        let counts = stats[section].as_object().unwrap();
        assert!(!counts.is_empty(), "{section}: {stats}");
        for (digest, n) in counts {
            assert_eq!(n.as_u64(), Some(1), "{section} {digest}: one fetch per blob: {stats}");
        }
    }
    let multilayer = &seed["images"]["library/multilayer:latest"];
    for layer in multilayer["layers"].as_array().unwrap() {
        let digest = layer["digest"].as_str().unwrap();
        assert_eq!(stats["cdn_gets"][digest], 1, "layer {digest} fetched once");
        let at_a = cached_blob_digest(&a.url, "library/multilayer", digest).await;
        assert_eq!(at_a, digest, "cached at A");
        let at_b = cached_blob_digest(&b.url, "library/multilayer", digest).await;
        assert_eq!(at_b, digest, "cached at B");
    }

    // `?ns=` and path prefixes keep picking the same upstream across both hops.
    let tool = seed["images"]["myorg/tool:1.0"]["digest"].as_str().unwrap();
    let r = client()
        .get(b.at("/v2/myorg/tool/manifests/1.0?ns=hub2"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "docker-content-digest"), tool);
    let r = client()
        .get(b.at("/v2/hub2/myorg/tool/manifests/1.0"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "docker-content-digest"), tool);
    assert_eq!(header(&r, "x-berth-cache"), "hit", "both forms share B's cache");
    let catalog: Value = client()
        .get(a.at("/v2/_catalog"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        catalog["repositories"]
            .as_array()
            .unwrap()
            .contains(&json!("hub2/myorg/tool")),
        "A cached it under its hub2 upstream: {catalog}"
    );
    // A single-entry remote berth needs no forward_ns: the prefix form passes through as a name.
    let c = mirror_of(&a.url, "5m", "");
    let r = client()
        .get(c.at("/v2/hub2/myorg/tool/manifests/1.0"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "docker-content-digest"), tool);
}
