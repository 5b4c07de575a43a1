//! Prefetch (pre-warm) lists against the Docker Hub emulator: `berth prefetch` through a running
//! server and on a stopped store, one platform or all of a multi-arch index, idempotence, per-image
//! failures, the server's own schedule, and what eviction does with prefetched images. Afterwards
//! the hub is stopped and a real dockerd pulls what was prefetched.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::support;
use crate::support::client::{client, count, manifest_json};
use crate::support::{Berth, Dockerd, Hub, upstream};
use serde_json::Value;

/// The platform dockerd pulls on this machine, as the seeded busybox index names it.
fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "aarch64" => "arm64",
        _ => "amd64",
    }
}

/// `config` and layer digests of a seeded image (or index child).
fn blobs(image: &Value) -> BTreeSet<String> {
    let mut out: BTreeSet<String> = image["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_owned())
        .collect();
    out.insert(image["config"]["digest"].as_str().unwrap().to_owned());
    out
}

/// busybox's children: (the host platform's, the other one's).
fn busybox_children(seed: &Value) -> (Value, Value) {
    let children = seed["images"]["library/busybox:latest"]["manifests"]
        .as_array()
        .unwrap();
    let (host, other): (Vec<&Value>, Vec<&Value>) = children
        .iter()
        .partition(|c| c["platform"]["architecture"] == host_arch());
    assert_eq!(
        (host.len(), other.len()),
        (1, 1),
        "busybox has two platforms: {children:?}"
    );
    (host[0].clone(), other[0].clone())
}

fn platform_of(child: &Value) -> String {
    let p = &child["platform"];
    match p["variant"].as_str() {
        Some(v) => format!(
            "{}/{}/{v}",
            p["os"].as_str().unwrap(),
            p["architecture"].as_str().unwrap()
        ),
        None => format!("{}/{}", p["os"].as_str().unwrap(), p["architecture"].as_str().unwrap()),
    }
}

fn is_empty(stats: &Value, section: &str) -> bool {
    stats[section].as_object().is_none_or(|m| m.is_empty())
}

/// Run `berth prefetch ARGS`; (success, stdout, stderr).
fn prefetch(b: &Berth, args: &[&str]) -> (bool, String, String) {
    let mut all = vec!["prefetch"];
    all.extend_from_slice(args);
    let out = b.cli(&all);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn prefetch_through_the_server_fetches_only_the_asked_platforms_and_docker_pulls_them_with_the_hub_gone() {
    let hub = Hub::start();
    let seed = hub.seed(0);
    let (host, other) = busybox_children(&seed);
    let b = Berth::start(&format!(
        "{}[[prefetch]]\nimages = [\"alpine:3.20\", \"myorg/tool:1.0\"]\ninterval = \"0s\"\n\
         [[prefetch]]\nimages = [\"busybox\"]\nplatforms = [\"{}\"]\ninterval = \"0s\"\n",
        upstream(&hub.url, Some("1s")),
        platform_of(&host)
    ));
    hub.reset_stats().await;

    // The configured lists, through the running server.
    let (ok, stdout, stderr) = prefetch(&b, &[]);
    assert!(ok, "prefetch failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("3 of 3 images cached"), "{stdout}");
    let images = &seed["images"];
    let wanted: BTreeSet<String> = blobs(&images["library/alpine:3.20"])
        .into_iter()
        .chain(blobs(&images["myorg/tool:1.0"]))
        .chain(blobs(&host))
        .collect();
    let stats = hub.stats().await;
    for d in &wanted {
        assert_eq!(count(&stats, "cdn_gets", d), 1, "{d} fetched once: {stats}");
    }
    for d in blobs(&other) {
        assert_eq!(
            count(&stats, "blob_gets", &d) + count(&stats, "cdn_gets", &d),
            0,
            "the other platform's blob {d} was not fetched: {stats}"
        );
    }
    let other_digest = other["digest"].as_str().unwrap();
    assert_eq!(
        count(&stats, "manifest_gets", &format!("library/busybox@{other_digest}")),
        0,
        "nor its manifest"
    );

    // A second run revalidates the tags and fetches nothing.
    hub.reset_stats().await;
    let (ok, stdout, stderr) = prefetch(&b, &[]);
    assert!(ok, "second prefetch failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("fetched 0 blobs"), "{stdout}");
    let stats = hub.stats().await;
    for section in ["cdn_gets", "blob_gets", "manifest_gets"] {
        assert!(is_empty(&stats, section), "second run: no {section}: {stats}");
    }
    assert!(
        !is_empty(&stats, "manifest_heads"),
        "the tags were revalidated: {stats}"
    );

    // Named on the command line without --platform: all platforms; only the new one is fetched.
    hub.reset_stats().await;
    let (ok, stdout, stderr) = prefetch(&b, &["busybox"]);
    assert!(ok, "all-platform prefetch failed:\n{stdout}\n{stderr}");
    let stats = hub.stats().await;
    for d in blobs(&other) {
        assert_eq!(count(&stats, "cdn_gets", &d), 1, "{d} of the other platform: {stats}");
    }
    for d in blobs(&host) {
        assert_eq!(count(&stats, "cdn_gets", &d), 0, "{d} was cached already: {stats}");
    }
    let (ok, stdout, _) = prefetch(&b, &["busybox"]);
    assert!(ok && stdout.contains("fetched 0 blobs"), "idempotent: {stdout}");

    drop(hub);
    let d = Dockerd::start(&[&b.url]);
    tokio::time::sleep(Duration::from_millis(1500)).await; // past the tag TTL: served stale
    for image in ["alpine:3.20", "myorg/tool:1.0", "busybox"] {
        d.ok(&["pull", image]);
    }
    d.ok(&["pull", "--platform", &platform_of(&other), "busybox"]);
    assert!(
        d.try_docker(&["pull", "alpine:latest"]).is_err(),
        "an image nobody prefetched cannot be pulled with the hub gone"
    );
}

#[tokio::test]
async fn prefetch_on_a_stopped_store_reports_each_failure_and_the_server_then_serves_it() {
    let hub = Hub::start();
    let seed = hub.seed(0);
    let mut b = Berth::start(&upstream(&hub.url, Some("1s")));
    b.stop();

    let (ok, stdout, stderr) = prefetch(&b, &["alpine:3.20", "nosuch/image:1"]);
    assert!(!ok, "a failed image fails the command:\n{stdout}\n{stderr}");
    assert!(
        !stderr.contains("server is running"),
        "worked on the store directly: {stderr}"
    );
    assert!(stdout.contains("ok      alpine:3.20"), "{stdout}");
    assert!(
        stdout.contains("FAILED  nosuch/image:1") && stdout.contains("not known"),
        "the missing image is named with the reason: {stdout}"
    );
    assert!(stderr.contains("1 of 2 images failed"), "{stderr}");

    let (ok, stdout, stderr) = prefetch(&b, &["alpine:3.20"]);
    assert!(
        ok && stdout.contains("fetched 0 blobs"),
        "idempotent:\n{stdout}\n{stderr}"
    );

    b.restart();
    drop(hub);
    let expected = seed["images"]["library/alpine:3.20"]["digest"].as_str().unwrap();
    let (digest, manifest) = manifest_json(&b.url, "library/alpine", "3.20").await;
    assert_eq!(digest, expected);
    for layer in manifest["layers"].as_array().unwrap() {
        let d = layer["digest"].as_str().unwrap();
        let r = client()
            .get(b.at(&format!("/v2/library/alpine/blobs/{d}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{d}");
        assert_eq!(support::sha256(&r.bytes().await.unwrap()), d);
    }
}

#[tokio::test]
async fn the_server_refreshes_its_lists_on_schedule_and_eviction_keeps_them() {
    let hub = Hub::start();
    let seed = hub.seed(0);
    let images = &seed["images"];
    // A tag TTL of an hour: only the schedule, never a client, makes berth ask the hub again.
    let b = Berth::start(&format!(
        "{}[cache]\nttl = \"4s\"\nmax_size = \"1B\"\n\
         [[prefetch]]\nimages = [\"alpine:3.20\"]\ninterval = \"1s\"\n",
        upstream(&hub.url, Some("1h"))
    ));
    let config = images["library/alpine:3.20"]["config"]["digest"]
        .as_str()
        .unwrap()
        .to_owned();
    wait_for("the first scheduled run", || async {
        count(&hub.stats().await, "cdn_gets", &config) == 1
    })
    .await;

    // Upstream moves the tag: the next runs fetch the new image, with nobody pulling.
    let moved = hub.retag("library/alpine", "latest", "3.20").await;
    let new_config = images["library/alpine:latest"]["config"]["digest"]
        .as_str()
        .unwrap()
        .to_owned();
    wait_for("the schedule to pick up the moved tag", || async {
        count(&hub.stats().await, "cdn_gets", &new_config) == 1
    })
    .await;
    let (digest, _) = manifest_json(&b.url, "library/alpine", "3.20").await;
    assert_eq!(digest, moved);

    // An image a client pulled once, nothing keeps fresh.
    let (tool, _) = manifest_json(&b.url, "myorg/tool", "1.0").await;
    tokio::time::sleep(Duration::from_secs(5)).await; // past the 4 s TTL for both
    let out = b.cli(&["gc", "--grace", "0s"]);
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "gc: {report}");
    assert!(
        report.contains(&format!("evicted cached manifest myorg/tool@{tool}")),
        "{report}"
    );
    assert!(
        !report.contains(&format!("library/alpine@{moved}")),
        "the prefetched image counts as pulled (TTL) and is exempt from the 1-byte cap: {report}"
    );
    let (digest, _) = manifest_json(&b.url, "library/alpine", "3.20").await;
    assert_eq!(digest, moved);
    assert!(b.log().contains("prefetch: image up to date"), "each run is logged");
}

/// Poll `check` every 200 ms for up to 30 s.
async fn wait_for<F, Fut>(what: &str, check: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("timed out waiting for {what}");
}

/// Push `body` as a blob of `repo` to the hub with a push token; returns its digest.
async fn hub_push_blob(hub: &Hub, token: &str, repo: &str, body: &[u8]) -> String {
    let digest = support::sha256(body);
    let c = client();
    let r = c
        .post(format!("{}/v2/{repo}/blobs/uploads/", hub.url))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "hub upload start");
    let location = support::client::header(&r, "location");
    let location = if location.starts_with('/') {
        format!("{}{location}", hub.url)
    } else {
        location
    };
    let sep = if location.contains('?') { '&' } else { '?' };
    let r = c
        .put(format!("{location}{sep}digest={digest}"))
        .bearer_auth(token)
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "hub upload finish");
    digest
}

/// PUT a manifest to the hub; returns its digest.
async fn hub_put_manifest(
    hub: &Hub,
    token: &str,
    repo: &str,
    reference: &str,
    media_type: &str,
    body: &Value,
) -> String {
    let bytes = serde_json::to_vec(body).unwrap();
    let r = client()
        .put(format!("{}/v2/{repo}/manifests/{reference}", hub.url))
        .bearer_auth(token)
        .header("content-type", media_type)
        .body(bytes.clone())
        .send()
        .await
        .unwrap();
    let status = r.status();
    assert_eq!(status, 201, "hub PUT {repo}:{reference}: {}", r.text().await.unwrap());
    support::sha256(&bytes)
}

#[tokio::test]
async fn prefetch_with_referrers_brings_tag_schema_signatures_along() {
    let hub = Hub::start();
    let seed = hub.seed(0);
    let subject = &seed["images"]["library/alpine:3.20"];
    let subject_digest = subject["digest"].as_str().unwrap();
    // A signature the way cosign stores one on a registry without the referrers API: an
    // artifact manifest with `subject`, listed in the index under the tag `sha256-<hex>`.
    let token = &hub.push_token("library/alpine").await;
    let empty = hub_push_blob(&hub, token, "library/alpine", b"{}").await;
    let signature = b"{\"signature\": \"prefetch-test\"}";
    let sig_blob = hub_push_blob(&hub, token, "library/alpine", signature).await;
    let artifact_type = "application/vnd.dev.sigstore.bundle.v0.3+json";
    let artifact = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": artifact_type,
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty, "size": 2},
        "layers": [{"mediaType": artifact_type, "digest": sig_blob, "size": signature.len()}],
        "subject": {"mediaType": subject["mediaType"], "digest": subject_digest, "size": subject["size"]},
    });
    let artifact_bytes = serde_json::to_vec(&artifact).unwrap();
    let artifact_digest = hub_put_manifest(
        &hub,
        token,
        "library/alpine",
        &support::sha256(&artifact_bytes),
        "application/vnd.oci.image.manifest.v1+json",
        &artifact,
    )
    .await;
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": artifact_digest,
                       "size": artifact_bytes.len(), "artifactType": artifact_type}],
    });
    let tag = subject_digest.replace(':', "-");
    hub_put_manifest(
        &hub,
        token,
        "library/alpine",
        &tag,
        "application/vnd.oci.image.index.v1+json",
        &index,
    )
    .await;

    let b = Berth::start(&upstream(&hub.url, Some("1s")));
    hub.reset_stats().await;
    let (ok, stdout, stderr) = prefetch(&b, &["alpine:3.20"]);
    assert!(ok, "{stdout}\n{stderr}");
    assert!(!stdout.contains("referrers"), "none asked for: {stdout}");
    assert_eq!(count(&hub.stats().await, "cdn_gets", &sig_blob), 0);

    let (ok, stdout, stderr) = prefetch(&b, &["--referrers", "alpine:3.20"]);
    assert!(ok && stdout.contains("; 1 referrers"), "{stdout}\n{stderr}");
    let stats = hub.stats().await;
    assert_eq!(count(&stats, "cdn_gets", &sig_blob), 1, "{stats}");
    let (ok, stdout, _) = prefetch(&b, &["--referrers", "alpine:3.20"]);
    assert!(ok && stdout.contains("fetched 0 blobs"), "idempotent: {stdout}");

    drop(hub);
    let (digest, _) = manifest_json(&b.url, "library/alpine", &artifact_digest).await;
    assert_eq!(digest, artifact_digest);
    let (index_digest, listed) = manifest_json(&b.url, "library/alpine", &tag).await;
    assert!(!index_digest.is_empty());
    assert_eq!(listed["manifests"][0]["digest"], artifact_digest.as_str());
    let r = client()
        .get(b.at(&format!("/v2/library/alpine/blobs/{sig_blob}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(&r.bytes().await.unwrap()[..], signature);
}
