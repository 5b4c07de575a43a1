//! Storage lifecycle: TTL eviction, the size cap, online GC under concurrent pushes and pulls,
//! the `berth gc` / `berth delete` / `berth du` commands, and SIGKILL during a collection.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::support;
use crate::support::client::*;
use crate::support::store_layout::{self, assert_blob_files_verify, has_blob};
use crate::support::verify::assert_registry_consistent;
use crate::support::{Berth, Dockerd, Hub, sha256, upstream};
use reqwest::StatusCode;
use serde_json::Value;

/// The digests a gc report lists as removed (or, dry, removable) blobs; not those held back.
fn removed_blobs(report: &str) -> BTreeSet<String> {
    report
        .lines()
        .filter(|l| l.starts_with("blob eligible for deletion: ") || l.starts_with("blob deleted: "))
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with("sha256:")))
        .map(str::to_owned)
        .collect()
}

async fn fetch_blob(b: &Berth, repo: &str, digest: &str) {
    let r = client()
        .get(b.at(&format!("/v2/{repo}/blobs/{digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(sha256(&r.bytes().await.unwrap()), digest);
}

#[tokio::test]
async fn ttl_evicts_cached_images_nobody_pulls_and_keeps_private_and_shared_layers() {
    let hub = Hub::start();
    hub.seed(0);
    let b = Berth::start(&format!(
        "[cache]\nttl = \"3s\"\n[gc]\ngrace = \"0s\"\n[private]\nnamespaces = [\"team/*\"]\n{}",
        upstream(&hub.url, None)
    ));
    let private = push_image(&b.url, "team/p", "1", &[b"private layer"]).await;
    let (latest, latest_m) = manifest_json(&b.url, "library/alpine", "latest").await;
    let (_, old_m) = manifest_json(&b.url, "library/alpine", "3.20").await;
    let (latest_config, old_config) = (
        latest_m["config"]["digest"].as_str().unwrap(),
        old_m["config"]["digest"].as_str().unwrap(),
    );
    let shared = latest_m["layers"][0]["digest"].as_str().unwrap();
    assert_eq!(
        shared,
        old_m["layers"][0]["digest"].as_str().unwrap(),
        "the seeded tags share their layer"
    );
    for d in [latest_config, old_config, shared] {
        fetch_blob(&b, "library/alpine", d).await;
    }
    // alpine:3.20 stays in use; alpine:latest and the private image are not pulled again.
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        manifest_json(&b.url, "library/alpine", "3.20").await;
    }
    let report = b.cli_ok(&["gc"]);
    assert!(
        report.contains(&format!("evicted cached manifest library/alpine@{latest}")),
        "{report}"
    );
    assert!(
        !report.contains("team/p"),
        "private content is never evicted:\n{report}"
    );
    let removed = removed_blobs(&report);
    assert!(removed.contains(latest_config) && removed.contains(&latest), "{report}");
    assert!(
        !removed.contains(shared) && !removed.contains(old_config),
        "a layer a live image uses stays:\n{report}"
    );
    assert!(!has_blob(&b.root, latest_config), "disk space comes back");
    assert!(has_blob(&b.root, shared));
    let (digest, _) = manifest_json(&b.url, "team/p", "1").await;
    assert_eq!(digest, private);
    let (_, m) = manifest_json(&b.url, "team/p", "1").await;
    fetch_blob(&b, "team/p", m["layers"][0]["digest"].as_str().unwrap()).await;
}

#[tokio::test]
async fn size_cap_evicts_the_least_recently_pulled_and_recent_images_still_pull_without_the_hub() {
    let hub = Hub::start();
    hub.seed(0);
    let b = Berth::start(&format!(
        "[cache]\nmax_size = \"12MiB\"\n[gc]\ngrace = \"0s\"\n{}",
        upstream(&hub.url, None)
    ));
    let d = Dockerd::start(&[&b.url]);
    for image in ["multilayer", "myorg/tool:1.0", "alpine"] {
        d.ok(&["pull", image]);
        tokio::time::sleep(Duration::from_millis(1100)).await; // pull times have second resolution
    }
    let before = b.cli_ok(&["du"]);
    let report = b.cli_ok(&["gc"]);
    assert!(
        report.contains("evicted cached manifest library/multilayer@"),
        "the oldest pull goes first:\n{before}\n{report}"
    );
    assert!(
        !report.contains("library/alpine@") && !report.contains("myorg/tool@"),
        "{report}"
    );
    let usage = b.cli_ok(&["du"]);
    let total: String = usage
        .lines()
        .last()
        .unwrap()
        .rsplit("total ")
        .next()
        .unwrap()
        .to_owned();
    let bytes = total.parse::<bytesize::ByteSize>().unwrap().as_u64();
    assert!(bytes <= 12 << 20, "under the cap after gc: {usage}");

    drop(hub);
    for image in ["alpine", "myorg/tool:1.0"] {
        d.ok(&["rmi", image]);
        d.ok(&["pull", image]);
    }
    d.ok(&["rmi", "multilayer"]);
    assert!(
        d.try_docker(&["pull", "multilayer"]).is_err(),
        "the evicted image is gone with the hub"
    );
}

/// Run one collection through the server's admin socket; the bytes it reclaimed.
async fn admin_gc(root: &std::path::Path) -> u64 {
    berth::install_crypto_provider();
    let r = reqwest::Client::builder()
        .unix_socket(root.join("admin.sock"))
        .build()
        .unwrap()
        .post("http://berth/gc")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let text = r.text().await.unwrap();
    let last: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    last["report"]["reclaimed_bytes"]
        .as_u64()
        .unwrap_or_else(|| panic!("gc failed: {text}"))
}

#[tokio::test]
async fn gc_in_a_tight_loop_never_loses_what_pushes_and_pulls_reference() {
    let b = Berth::start("[gc]\ngrace = \"3s\"\n");
    let stop = Arc::new(AtomicBool::new(false));
    let reclaimed = Arc::new(AtomicU64::new(0));
    let collector = {
        let (root, stop, reclaimed) = (b.root.clone(), stop.clone(), reclaimed.clone());
        tokio::spawn(async move {
            let mut runs = 0;
            while !stop.load(Ordering::Relaxed) {
                reclaimed.fetch_add(admin_gc(&root).await, Ordering::Relaxed);
                runs += 1;
            }
            runs
        })
    };
    let shared = Arc::new(support::pseudo_random(300_000, 1));
    let pushers = (0..4u64).map(|p| {
        let (url, shared) = (b.url.clone(), shared.clone());
        tokio::spawn(async move {
            let repo = format!("team/s{p}");
            let mut previous: Option<String> = None;
            for round in 0..14u64 {
                let c = client();
                // The shared layer: mounted from a neighbour when it has it, else uploaded.
                let digest = sha256(&shared);
                let neighbour = format!("team/s{}", (p + 1) % 4);
                let r = c
                    .post(format!(
                        "{url}/v2/{repo}/blobs/uploads/?mount={digest}&from={neighbour}"
                    ))
                    .send()
                    .await
                    .unwrap();
                if r.status() != StatusCode::CREATED {
                    push_blob(&url, &repo, &shared).await;
                }
                let unique = support::pseudo_random(50_000, p * 1000 + round);
                let m = image_manifest(&url, &repo, &[&shared, &unique]).await;
                let r = put_manifest(&url, &repo, &format!("r{round}"), OCI_MANIFEST, &m).await;
                assert_eq!(
                    r.status(),
                    StatusCode::CREATED,
                    "push {repo}:r{round} must never lose a blob to GC: {}",
                    r.text().await.unwrap()
                );
                // Every other round, delete the previous image: its unique layer becomes garbage.
                if round % 2 == 1 {
                    if let Some(d) = previous.take() {
                        assert_eq!(
                            c.delete(format!("{url}/v2/{repo}/manifests/{d}"))
                                .send()
                                .await
                                .unwrap()
                                .status(),
                            StatusCode::ACCEPTED
                        );
                    }
                } else {
                    previous = Some(sha256(&m));
                }
                // Pull what is tagged, as clients would.
                let tags: Value = get_json(format!("{url}/v2/{repo}/tags/list")).await;
                for tag in tags["tags"].as_array().unwrap() {
                    let r = c
                        .get(format!("{url}/v2/{repo}/manifests/{}", tag.as_str().unwrap()))
                        .send()
                        .await
                        .unwrap();
                    assert!(r.status().is_success());
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        })
    });
    for p in futures_util::future::join_all(pushers).await {
        p.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(3200)).await; // let the last garbage age past the grace
    stop.store(true, Ordering::Relaxed);
    let runs = collector.await.unwrap();
    reclaimed.fetch_add(admin_gc(&b.root).await, Ordering::Relaxed);
    assert!(runs >= 10, "gc ran in a loop during the pushes: {runs} runs");
    assert!(
        reclaimed.load(Ordering::Relaxed) > 0,
        "gc collected garbage while pushes ran; otherwise the test proves nothing"
    );
    assert!(
        assert_registry_consistent(&b.url).await >= 4 * 7,
        "every tag left verifies"
    );
    assert!(assert_blob_files_verify(&b.root) > 0, "blob files exist and verify");
}

#[tokio::test]
async fn gc_dry_run_lists_exactly_what_gc_removes_and_delete_reclaims_only_unshared_blobs() {
    let b = Berth::start("[gc]\ngrace = \"0s\"\n");
    let shared: &[u8] = b"a base layer both images use";
    push_image(&b.url, "team/a", "1", &[shared, b"only in a"]).await;
    push_image(&b.url, "team/b", "1", &[shared, b"only in b"]).await;
    let du = b.cli_ok(&["du"]);
    assert!(du.contains("team/a") && du.contains("private"), "{du}");

    let dry = b.cli_ok(&["gc", "--dry-run"]);
    assert!(removed_blobs(&dry).is_empty(), "nothing is garbage yet:\n{dry}");
    let out = b.cli_ok(&["delete", "team/a:1"]);
    assert!(out.contains("deleted team/a:1"), "{out}");
    let r = client().get(b.at("/v2/team/a/manifests/1")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND, "the tag is gone");

    // Still linked, and served: a small blob is then answered from memory (`service::memo`).
    fetch_blob(&b, "team/a", &sha256(b"only in a")).await;
    let dry = b.cli_ok(&["gc", "--dry-run"]);
    assert!(dry.contains("blob eligible for deletion: "), "{dry}");
    // `du` calls unreferenced exactly what gc would reclaim (one rule for both).
    let amount = |text: &str, after: &str| -> u64 {
        let rest = text
            .split(after)
            .nth(1)
            .unwrap_or_else(|| panic!("{after:?} in {text}"));
        let words: Vec<&str> = rest.split_whitespace().take(2).collect();
        words
            .join(" ")
            .trim_end_matches(',')
            .parse::<bytesize::ByteSize>()
            .unwrap()
            .as_u64()
    };
    let du = b.cli_ok(&["du"]);
    assert_eq!(
        amount(&du, "unreferenced "),
        amount(&dry, "would reclaim "),
        "{du}\n{dry}"
    );
    let would = removed_blobs(&dry);
    assert!(would.contains(&sha256(b"only in a")), "{dry}");
    assert!(
        !would.contains(&sha256(shared)),
        "a layer team/b still uses stays:\n{dry}"
    );
    assert!(has_blob(&b.root, &sha256(b"only in a")), "a dry run removes nothing");
    let real = b.cli_ok(&["gc"]);
    assert_eq!(
        removed_blobs(&real),
        would,
        "dry run and real run agree:\n{dry}\n{real}"
    );
    assert!(!has_blob(&b.root, &sha256(b"only in a")));
    // Served from memory before; collected, it is not.
    let r = client()
        .get(b.at(&format!("/v2/team/a/blobs/{}", sha256(b"only in a"))))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r, StatusCode::NOT_FOUND).await, "BLOB_UNKNOWN");
    assert!(has_blob(&b.root, &sha256(shared)));
    assert_eq!(assert_registry_consistent(&b.url).await, 1, "team/b:1 intact");
}

#[tokio::test]
async fn sigkill_during_gc_restarts_clean_and_keeps_everything_referenced() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = Berth::start_in(dir.path(), "[gc]\ngrace = \"0s\"\n");
    for i in 0..3u64 {
        push_image(
            &b.url,
            &format!("team/keep{i}"),
            "v1",
            &[&support::pseudo_random(200_000, i), b"common"],
        )
        .await;
    }
    let count = |b: &Berth| store_layout::blob_files(&b.root);
    let referenced = count(&b);
    for attempt in 0..3u64 {
        // Garbage for the sweep to chew on: many unreferenced blobs.
        let url = b.url.clone();
        let uploads = (0..6u64).map(|w| {
            let url = url.clone();
            tokio::spawn(async move {
                for i in 0..60u64 {
                    push_blob(
                        &url,
                        "team/junk",
                        &support::pseudo_random(64, attempt * 100_000 + w * 1000 + i),
                    )
                    .await;
                }
            })
        });
        futures_util::future::join_all(uploads).await;
        let before = count(&b);
        let mut gc = std::process::Command::new(env!("CARGO_BIN_EXE_berth"))
            .args(["gc", "--config"])
            .arg(&b.config)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Kill the server as soon as the sweep has started deleting.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while count(&b) == before && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        b.kill();
        let _ = gc.wait();
        let left = count(&b);
        assert!(left < before, "attempt {attempt}: the sweep had started");
        b.restart();
        assert!(assert_blob_files_verify(&b.root) > 0, "blob files exist and verify");
        assert_eq!(
            assert_registry_consistent(&b.url).await,
            3,
            "attempt {attempt}: everything referenced survived (left {left} of {before})"
        );
        assert!(count(&b) >= referenced);
    }
    let report = b.cli_ok(&["gc"]);
    assert!(report.contains("reclaimed"), "{report}");
    assert_eq!(count(&b), referenced, "a later gc finishes the job");
}
