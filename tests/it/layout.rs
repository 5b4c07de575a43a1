//! `berth export` and `berth import` in the OCI image layout (issue 15): a round trip from a
//! mirror of the Docker Hub emulator to a berth without any upstream, checked with a real dockerd;
//! skopeo reading berth's layouts and berth reading skopeo's; corrupt, incomplete and interrupted
//! imports that leave nothing visible and finish when run again; referrers carried along.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::support;
use crate::support::client::{
    OCI_MANIFEST, client, descriptor, get_json, manifest_json, push_blob, push_image, put_manifest,
};
use crate::support::{Berth, Dockerd, Hub, run, sha256, skopeo};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// A berth whose default upstream is `hub`.
fn mirror_of(hub: &Hub) -> Berth {
    Berth::start(&format!(
        "[[upstream]]\nname = \"docker.io\"\nurl = \"{}\"\ntag_ttl = \"5m\"\ntimeout = \"10s\"\n",
        hub.url
    ))
}

/// Pull `image` through `b` as a client would (manifest, then the host platform's blobs).
fn pull_through(b: &Berth, image: &str, dir: &Path) {
    let dest = dir.join(image.replace(['/', ':'], "_"));
    skopeo(&[
        "copy",
        "--src-tls-verify=false",
        &format!("docker://{}/{image}", b.addr),
        &format!("dir:{}", dest.display()),
    ]);
}

fn berth_fails(b: &Berth, args: &[&str]) -> String {
    let out: Output = b.cli(args);
    assert!(
        !out.status.success(),
        "berth {args:?} should fail:\nstdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

async fn catalog(b: &Berth) -> Vec<Value> {
    let c: Value = get_json(b.at("/v2/_catalog")).await;
    c["repositories"].as_array().cloned().unwrap_or_default()
}

async fn manifest_status(b: &Berth, repo: &str, reference: &str) -> StatusCode {
    client()
        .get(b.at(&format!("/v2/{repo}/manifests/{reference}")))
        .header("accept", "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json")
        .send()
        .await
        .unwrap()
        .status()
}

#[tokio::test]
async fn a_mirrors_export_imported_into_a_berth_without_upstream_pulls_with_identical_digests() {
    let hub = Hub::start();
    let seed = hub.seed(0);
    let a = mirror_of(&hub);
    let work = tempfile::tempdir().unwrap();
    for image in [
        "library/alpine:latest",
        "library/alpine:3.20",
        "library/busybox:latest",
        "myorg/tool:1.0",
    ] {
        pull_through(&a, image, work.path());
    }
    let tar = work.path().join("site.tar");
    let tar_arg = tar.to_str().unwrap();
    let wanted = [
        "--output",
        tar_arg,
        "library/alpine",
        "library/busybox:latest",
        "myorg/*",
    ];

    // busybox is a two-platform index of which A holds one: a clear refusal, and no file.
    let refused = berth_fails(&a, &[&["export"], &wanted[..]].concat());
    assert!(
        refused.contains("library/busybox:latest lacks platforms") && refused.contains("--partial"),
        "{refused}"
    );
    assert!(!tar.exists() && !work.path().join("site.tar.partial").exists());

    // Through A's admin socket while it serves.
    let out = a.cli_ok(&[&["export", "--partial"], &wanted[..]].concat());
    for name in [
        "library/alpine:latest",
        "library/alpine:3.20",
        "library/busybox:latest",
        "myorg/tool:1.0",
    ] {
        assert!(out.contains(&format!("exported {name}")), "{out}");
    }
    assert!(
        out.contains("warning: library/busybox:latest exported without linux/"),
        "{out}"
    );

    // B has no upstream; it is stopped, so the import opens its store directly.
    let mut b = Berth::start("");
    b.stop();
    let refused = berth_fails(&b, &["import", tar_arg]);
    assert!(
        refused.contains("--partial"),
        "an incomplete index needs --partial too: {refused}"
    );
    let out = b.cli_ok(&["import", "--partial", tar_arg]);
    assert!(out.contains("imported library/busybox:latest"), "{out}");
    b.restart();
    drop(a);
    drop(hub);

    let d = Dockerd::start(&[&b.url]);
    for (image, key) in [
        ("alpine", "library/alpine:latest"),
        ("alpine:3.20", "library/alpine:3.20"),
        ("busybox", "library/busybox:latest"),
        ("myorg/tool:1.0", "myorg/tool:1.0"),
    ] {
        d.ok(&["pull", image]);
        let digests = d.ok(&["image", "inspect", "--format", "{{json .RepoDigests}}", image]);
        let expected = seed["images"][key]["digest"].as_str().unwrap();
        assert!(
            digests.contains(expected),
            "{image}: {digests} has the hub's {expected}"
        );
    }
}

/// The air-gap workflow as an operator runs it: berth A prefetches (every platform), exports
/// the whole images to a tar, and berth B, which has no upstream, imports it without `--partial`
/// and serves docker the hub's digests.
#[tokio::test]
async fn a_prefetched_site_exports_whole_images_that_a_berth_without_upstream_serves() {
    let hub = Hub::start();
    let seed = hub.seed(0);
    let a = mirror_of(&hub);
    let out = a.cli_ok(&["prefetch", "alpine:3.20", "busybox"]);
    assert!(out.contains("alpine:3.20") && out.contains("busybox"), "{out}");
    let work = tempfile::tempdir().unwrap();
    let tar = work.path().join("site.tar");
    let tar_arg = tar.to_str().unwrap();
    let out = a.cli_ok(&[
        "export",
        "--output",
        tar_arg,
        "library/alpine:3.20",
        "library/busybox:latest",
    ]);
    assert!(!out.contains("without linux/"), "prefetched images are whole: {out}");

    let mut b = Berth::start("");
    b.stop();
    b.cli_ok(&["import", tar_arg]);
    b.restart();
    drop(a);
    drop(hub);
    let d = Dockerd::start(&[&b.url]);
    for (image, key) in [
        ("alpine:3.20", "library/alpine:3.20"),
        ("busybox", "library/busybox:latest"),
    ] {
        d.ok(&["pull", image]);
        let digests = d.ok(&["image", "inspect", "--format", "{{json .RepoDigests}}", image]);
        let expected = seed["images"][key]["digest"].as_str().unwrap();
        assert!(
            digests.contains(expected),
            "{image}: {digests} has the hub's {expected}"
        );
    }
}

#[tokio::test]
async fn skopeo_reads_berths_layouts_and_berth_imports_skopeos() {
    let hub = Hub::start();
    let seed = hub.seed(0);
    let a = mirror_of(&hub);
    let b = Berth::start("");
    let work = tempfile::tempdir().unwrap();
    let w = |name: &str| work.path().join(name).to_str().unwrap().to_owned();
    // Every platform of busybox's OCI index goes through A.
    let all_of_busybox = format!("docker://{}/library/busybox:latest", a.addr);
    skopeo(&[
        "copy",
        "--all",
        "--src-tls-verify=false",
        &all_of_busybox,
        &format!("dir:{}", w("pulled")),
    ]);
    let busybox = seed["images"]["library/busybox:latest"]["digest"].as_str().unwrap();
    pull_through(&a, "library/alpine:latest", work.path());

    // berth's directory and tar layouts, read by skopeo by the REPO:TAG ref name. skopeo's oci:
    // transport picks only OCI-typed entries; A's Docker schema2 alpine comes with a warning.
    let out = a.cli_ok(&[
        "export",
        "--output",
        &w("dir"),
        "library/busybox:latest",
        "library/alpine:latest",
    ]);
    assert!(
        out.contains("warning: library/alpine:latest is in Docker's manifest format"),
        "{out}"
    );
    a.cli_ok(&["export", "--output", &w("a.tar"), "library/busybox:latest"]);
    for (source, target) in [
        (format!("oci:{}:library/busybox:latest", w("dir")), "team/busybox:dir"),
        (
            format!("oci-archive:{}:library/busybox:latest", w("a.tar")),
            "team/busybox:tar",
        ),
    ] {
        let dest = format!("docker://{}/{target}", b.addr);
        skopeo(&[
            "copy",
            "--all",
            "--preserve-digests",
            "--dest-tls-verify=false",
            &source,
            &dest,
        ]);
        let raw = skopeo(&["inspect", "--raw", "--tls-verify=false", &dest]);
        assert_eq!(sha256(raw.as_bytes()), busybox, "{source}: the exact index");
    }

    // skopeo's layouts read by berth (through B's admin socket): a directory with a bare tag,
    // all platforms of an index, and an oci-archive written by Go's tar.
    let from_a = format!("docker://{}/library/busybox:latest", a.addr);
    let (dir_ref, tar_ref) = (
        format!("oci:{}:stable", w("sk")),
        format!("oci-archive:{}:site/busybox:1", w("sk.tar")),
    );
    let copy = ["copy", "--preserve-digests", "--src-tls-verify=false"];
    skopeo(&[&copy[..], &["--all", from_a.as_str(), dir_ref.as_str()]].concat());
    // Without --all, the host platform's image alone (an OCI manifest: an OCI layout holds no
    // Docker schema2 that skopeo would not convert).
    skopeo(&[&copy[..], &[from_a.as_str(), tar_ref.as_str()]].concat());
    let refused = berth_fails(&b, &["import", &w("sk")]);
    assert!(refused.contains("--repository"), "{refused}");
    let out = b.cli_ok(&["import", &w("sk"), "--repository", "mirror/busybox"]);
    assert!(out.contains("imported mirror/busybox:stable"), "{out}");
    b.cli_ok(&["import", &w("sk.tar")]);
    let (digest, _) = manifest_json(&b.url, "mirror/busybox", "stable").await;
    assert_eq!(digest, busybox, "every platform of the index came along unchanged");
    let raw = skopeo(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{}/site/busybox:1", b.addr),
    ]);
    let children = seed["images"]["library/busybox:latest"]["manifests"]
        .as_array()
        .unwrap();
    assert!(
        children
            .iter()
            .any(|c| c["digest"].as_str() == Some(&sha256(raw.as_bytes()))),
        "one platform's manifest, unchanged"
    );
    // And docker can use what skopeo laid out (both platforms' blobs are in B).
    let copy = format!("docker://{}/mirror/busybox:stable", b.addr);
    skopeo(&[
        "copy",
        "--all",
        "--src-tls-verify=false",
        &copy,
        &format!("dir:{}", w("check")),
    ]);
}

/// Push two private images to `a` and export them as a directory; returns the layer digests.
async fn two_image_layout(a: &Berth, dir: &Path) -> (String, String) {
    let (l1, l2, l3) = (
        support::pseudo_random(300_000, 1),
        support::pseudo_random(200_000, 2),
        support::pseudo_random(100_000, 3),
    );
    push_image(&a.url, "team/a", "1", &[&l1, &l2]).await;
    push_image(&a.url, "team/b", "1", &[&l3]).await;
    a.cli_ok(&["export", "--output", dir.to_str().unwrap(), "team/*:1"]);
    (sha256(&l2), sha256(&l3))
}

fn blob_file(layout: &Path, digest: &str) -> std::path::PathBuf {
    layout.join("blobs/sha256").join(digest.trim_start_matches("sha256:"))
}

#[tokio::test]
async fn corrupt_or_incomplete_layouts_import_nothing_and_the_fixed_layout_finishes() {
    let a = Berth::start("");
    let b = Berth::start("");
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("layout");
    let (l2, l3) = two_image_layout(&a, &layout).await;
    let arg = layout.to_str().unwrap();

    // One flipped byte in team/a's second layer.
    let good = std::fs::read(blob_file(&layout, &l2)).unwrap();
    let mut bad = good.clone();
    bad[good.len() / 2] ^= 0xff;
    std::fs::write(blob_file(&layout, &l2), &bad).unwrap();
    let refused = berth_fails(&b, &["import", arg]);
    assert!(
        refused.contains("corrupt") && refused.contains(l2.trim_start_matches("sha256:")),
        "the error names the corrupt blob: {refused}"
    );
    assert!(catalog(&b).await.is_empty(), "nothing visible");
    assert_eq!(manifest_status(&b, "team/a", "1").await, StatusCode::NOT_FOUND);

    // Fixed, but team/b's layer is missing (into a berth that never saw it): still nothing,
    // not even the whole team/a.
    std::fs::write(blob_file(&layout, &l2), &good).unwrap();
    let c = Berth::start("");
    let l3_bytes = std::fs::read(blob_file(&layout, &l3)).unwrap();
    std::fs::remove_file(blob_file(&layout, &l3)).unwrap();
    let refused = berth_fails(&c, &["import", arg]);
    assert!(refused.contains(&format!("team/b:1: blob {l3}")), "{refused}");
    assert!(catalog(&c).await.is_empty(), "nothing visible: {:?}", catalog(&c).await);

    // Complete: both images, byte for byte, in both; a second run is a no-op that succeeds.
    std::fs::write(blob_file(&layout, &l3), &l3_bytes).unwrap();
    for target in [&b, &c] {
        let out = target.cli_ok(&["import", arg]);
        assert!(
            out.contains("imported team/a:1") && out.contains("imported team/b:1"),
            "{out}"
        );
        let again = target.cli_ok(&["import", arg]);
        assert!(again.contains(", 0 new"), "nothing read twice: {again}");
        for repo in ["team/a", "team/b"] {
            let (there, _) = manifest_json(&a.url, repo, "1").await;
            let (here, m) = manifest_json(&target.url, repo, "1").await;
            assert_eq!(here, there);
            for layer in m["layers"].as_array().unwrap() {
                let d = layer["digest"].as_str().unwrap();
                let body = client()
                    .get(target.at(&format!("/v2/{repo}/blobs/{d}")))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(sha256(&body.bytes().await.unwrap()), d);
            }
        }
    }
}

/// Start `berth import --config CONFIG` of a pipe that delivers the first half of `tar`, wait until that half
/// is read, then run `cut` (which kills something); the pipe closes afterwards.
async fn import_cut_off(config: &Path, tar: &[u8], dir: &Path, cut: impl FnOnce(&mut std::process::Child)) {
    let fifo = dir.join(format!("pipe-{}.tar", support::free_port()));
    run(Command::new("mkfifo").arg(&fifo));
    let mut import = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["import", fifo.to_str().unwrap(), "--config"])
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // In a thread: opening a pipe waits for its reader, which a broken import never opens.
    let half = tar[..tar.len() / 2].to_vec();
    let feeder = std::thread::spawn(move || {
        let mut writer = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
        writer.write_all(&half).unwrap();
        writer
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !feeder.is_finished() {
        assert!(std::time::Instant::now() < deadline, "the import never read the pipe");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let writer = feeder.join().unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    cut(&mut import);
    let _ = import.kill();
    import.wait().unwrap();
    drop(writer);
}

#[tokio::test]
async fn an_import_cut_off_midway_shows_nothing_and_a_second_run_finishes() {
    let a = Berth::start("");
    let work = tempfile::tempdir().unwrap();
    let mut b = Berth::start_in(work.path(), "");
    let big = support::pseudo_random(8 << 20, 9);
    push_image(&a.url, "team/big", "1", &[&big]).await;
    let tar = work.path().join("big.tar");
    a.cli_ok(&["export", "--output", tar.to_str().unwrap(), "team/big:1"]);
    let bytes = std::fs::read(&tar).unwrap();

    // The command is killed (Ctrl-C) half-way; the server's job ends with the pipe.
    import_cut_off(&b.config, &bytes, work.path(), |cli| cli.kill().unwrap()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(catalog(&b).await.is_empty(), "nothing visible after the cut");
    assert_eq!(manifest_status(&b, "team/big", "1").await, StatusCode::NOT_FOUND);

    // The server is killed (-9) half-way: it restarts clean, with nothing visible.
    let config = b.config.clone();
    import_cut_off(&config, &bytes, work.path(), |_| b.kill()).await;
    b.restart();
    assert!(catalog(&b).await.is_empty(), "nothing visible after the crash");

    let out = b.cli_ok(&["import", tar.to_str().unwrap()]);
    assert!(out.contains("imported team/big:1"), "{out}");
    let (digest, _) = manifest_json(&b.url, "team/big", "1").await;
    let (expected, _) = manifest_json(&a.url, "team/big", "1").await;
    assert_eq!(digest, expected);
}

#[tokio::test]
async fn referrers_come_along_and_read_only_mode_refuses_imports() {
    let a = Berth::start("");
    let subject = push_image(&a.url, "team/app", "1", &[&b"app layer"[..]]).await;
    let (subject_size, empty) = {
        let r = client()
            .get(a.at("/v2/team/app/manifests/1"))
            .header("accept", OCI_MANIFEST)
            .send()
            .await
            .unwrap();
        (
            r.bytes().await.unwrap().len(),
            push_blob(&a.url, "team/app", b"{}").await,
        )
    };
    let signature = push_blob(&a.url, "team/app", b"a signature").await;
    let artifact = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": "application/vnd.dev.cosign.artifact.sig.v1+json",
        "config": descriptor("application/vnd.oci.empty.v1+json", &empty, 2),
        "layers": [descriptor("application/vnd.dev.cosign.simplesigning.v1+json", &signature, 11)],
        "subject": descriptor(OCI_MANIFEST, &subject, subject_size),
    }))
    .unwrap();
    let artifact_digest = sha256(&artifact);
    let r = put_manifest(&a.url, "team/app", &artifact_digest, OCI_MANIFEST, &artifact).await;
    assert_eq!(r.status(), StatusCode::CREATED);

    let work = tempfile::tempdir().unwrap();
    let (plain, signed) = (work.path().join("plain"), work.path().join("signed"));
    let out = a.cli_ok(&[
        "export",
        "--output",
        signed.to_str().unwrap(),
        "--referrers",
        "team/app:1",
    ]);
    assert!(out.contains("1 referrers"), "{out}");
    a.cli_ok(&["export", "--output", plain.to_str().unwrap(), "team/app:1"]);
    assert!(
        !blob_file(&plain, &artifact_digest).exists(),
        "no referrers unless asked"
    );

    let read_only = Berth::start("[storage]\nread_only = true\n");
    let refused = berth_fails(&read_only, &["import", signed.to_str().unwrap()]);
    assert!(refused.contains("read-only"), "{refused}");
    assert!(catalog(&read_only).await.is_empty());

    let b = Berth::start("");
    b.cli_ok(&["import", signed.to_str().unwrap()]);
    let referrers: Value = get_json(b.at(&format!("/v2/team/app/referrers/{subject}"))).await;
    assert_eq!(
        referrers["manifests"][0]["digest"],
        json!(artifact_digest),
        "{referrers}"
    );
    let r = client()
        .get(b.at(&format!("/v2/team/app/blobs/{signature}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.bytes().await.unwrap().as_ref(), b"a signature");
}

#[tokio::test]
async fn an_import_as_an_upstreams_cache_is_served_under_the_mirrors_names() {
    let a = Berth::start("");
    let pushed = push_image(&a.url, "app", "1", &[&b"cached layer"[..]]).await;
    let work = tempfile::tempdir().unwrap();
    let tar = work.path().join("app.tar");
    a.cli_ok(&["export", "--output", tar.to_str().unwrap(), "app:1"]);

    // A mirror of a Docker Hub it cannot reach (nothing listens on port 9).
    let c = Berth::start("[[upstream]]\nname = \"docker.io\"\nurl = \"http://127.0.0.1:9\"\ntimeout = \"2s\"\n");
    let unknown = berth_fails(&c, &["import", tar.to_str().unwrap(), "--upstream", "ghcr.io"]);
    assert!(
        unknown.contains("not a configured upstream (configured: docker.io)"),
        "{unknown}"
    );
    let out = c.cli_ok(&["import", tar.to_str().unwrap(), "--upstream", "docker.io"]);
    assert!(
        out.contains("imported library/app:1"),
        "Docker Hub's name for it: {out}"
    );
    for name in ["app", "library/app"] {
        let r = client()
            .get(c.at(&format!("/v2/{name}/manifests/1")))
            .header("accept", OCI_MANIFEST)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{name}");
        assert_eq!(support::client::header(&r, "docker-content-digest"), pushed);
        assert_eq!(
            support::client::header(&r, "x-berth-cache"),
            "stale",
            "served from the cache"
        );
    }
    let du = c.cli_ok(&["du"]);
    assert!(
        du.lines()
            .any(|l| l.starts_with("library/app") && l.contains("docker.io")),
        "{du}"
    );
}
