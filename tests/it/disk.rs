//! A full disk. The store sits on a small tmpfs that the test mounts (tests run as root), filled
//! to the last byte: pushes are refused with a clear 507 (a response, not a reset), `/readyz` says
//! not ready, nothing partial becomes visible, and once space is freed pushes and cache fills work
//! again within seconds, without a restart.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support;
use crate::support::client::{client, header, push_image};
use crate::support::{Berth, Hub, pseudo_random, sha256, store_layout};
use reqwest::StatusCode;
use serde_json::Value;

/// A tmpfs of a given size mounted for one test; unmounted on drop, even when the test fails.
struct SmallFs {
    path: PathBuf,
}

impl SmallFs {
    fn mount(path: &Path, size: &str) -> SmallFs {
        support::require("mount");
        std::fs::create_dir_all(path).unwrap();
        support::run(
            Command::new("mount")
                .args([
                    "-t",
                    "tmpfs",
                    "-o",
                    &format!("size={size},mode=0755"),
                    "berth-disk-test",
                ])
                .arg(path),
        );
        SmallFs { path: path.to_owned() }
    }

    /// Bytes an unprivileged writer may still use.
    fn free(&self) -> u64 {
        let c = std::ffi::CString::new(self.path.as_os_str().as_encoded_bytes()).unwrap();
        let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut s) }, 0, "statvfs");
        s.f_bavail * s.f_frsize
    }

    /// Grow `filler` until only `leave` bytes are free (0: until the filesystem refuses a byte).
    fn fill(&self, leave: u64) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path.join("filler"))
            .unwrap();
        let chunk = vec![0x5a; 64 << 10];
        loop {
            let free = self.free();
            if free <= leave {
                break;
            }
            let n = ((free - leave) as usize).min(chunk.len());
            match f.write(&chunk[..n]) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::StorageFull => break,
                Err(e) => panic!("filling the test filesystem: {e}"),
            }
        }
        if leave == 0 {
            // Byte by byte into the last page, so not even a small write fits.
            while f.write(&[0x5a]).is_ok_and(|n| n == 1) {}
        }
    }

    fn free_up(&self) {
        std::fs::remove_file(self.path.join("filler")).unwrap();
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.path)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            // Something still holds a file there (a berth that has not quite exited): detach it.
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
    }
}

async fn readyz(b: &Berth) -> (StatusCode, Value) {
    let r = client().get(b.at("/readyz")).send().await.unwrap();
    (r.status(), r.json().await.unwrap_or_default())
}

/// Poll `/readyz` until it answers `want`, for at most `within`.
async fn readyz_until(b: &Berth, want: StatusCode, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let (status, body) = readyz(b).await;
        if status == want {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz still {status} after {within:?}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The OCI error of a response that must be the full store's 507.
async fn assert_store_full(r: reqwest::Response, what: &str) {
    assert_eq!(r.status(), StatusCode::INSUFFICIENT_STORAGE, "{what}");
    let body: Value = r.json().await.unwrap_or_else(|e| panic!("{what}: OCI error JSON: {e}"));
    let error = &body["errors"][0];
    assert_eq!(error["code"], "UNAVAILABLE", "{what}: {body}");
    assert!(
        error["message"].as_str().unwrap_or("").contains("the store is full"),
        "{what}: the message says so: {body}"
    );
}

/// Mount `digest` from team/app into `repo`: a push that writes metadata only.
async fn mount(b: &Berth, repo: &str, digest: &str) -> reqwest::Response {
    let url = b.at(&format!("/v2/{repo}/blobs/uploads/?mount={digest}&from=team/app"));
    client().post(url).send().await.unwrap()
}

#[tokio::test]
async fn a_full_disk_refuses_pushes_with_507_and_recovers_without_a_restart() {
    let hub = Hub::start();
    let cold = hub.push_blob("library/cold", 16, 11);
    let warm = hub.push_blob("library/cold", 1, 12);
    let dir = tempfile::Builder::new().prefix("berth-disk-").tempdir().unwrap();
    // The store alone is on the small filesystem; the config and berth's log stay outside it.
    let fs = SmallFs::mount(&dir.path().join("data"), "80m");
    let b = Berth::start_in(
        dir.path(),
        &format!(
            "[storage]\nmin_free = \"8MiB\"\n[private]\nnamespaces = [\"team/*\"]\n\
             [[upstream]]\nname = \"docker.io\"\nurl = \"{}\"\ntimeout = \"5s\"\n",
            hub.url
        ),
    );
    let c = client();
    let layer = pseudo_random(1 << 20, 1);
    let layer_digest = sha256(&layer);
    push_image(&b.url, "team/app", "v1", &[&layer]).await;
    // A resumable session opened while there is room, to append to once there is none.
    let r = c.post(b.at("/v2/team/app/blobs/uploads/")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let session = b.at(&header(&r, "location"));
    readyz_until(&b, StatusCode::OK, Duration::from_secs(5)).await;
    let warm_url = b.at(&format!("/v2/library/cold/blobs/{warm}"));
    let r = c.get(&warm_url).send().await.unwrap();
    assert_eq!(sha256(&r.bytes().await.unwrap()), warm, "cached while there is room");

    // Below the threshold but not yet full: not ready, and the reason says why.
    fs.fill(2 << 20);
    let (status, body) = readyz(&b).await;
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "2 MiB free of an 8 MiB minimum: {body}"
    );
    assert!(body["reason"].as_str().unwrap_or("").contains("free"), "{body}");

    fs.fill(0);
    // A monolithic push far larger than what the socket buffers hold: berth stops writing at the
    // first full page, and the client must still read the answer rather than a reset.
    let big = pseudo_random(32 << 20, 2);
    let digest = sha256(&big);
    let monolithic = b.at(&format!("/v2/team/app/blobs/uploads/?digest={digest}"));
    let r = c.post(&monolithic).body(big.clone()).send().await;
    assert_store_full(r.expect("an answer, not a connection reset"), "monolithic push").await;
    let r = c.patch(&session).body(big.clone()).send().await;
    assert_store_full(r.expect("an answer, not a connection reset"), "PATCH").await;
    let r = c.get(&session).send().await.unwrap();
    assert_eq!(
        header(&r, "range"),
        "0-0",
        "the failed chunk left nothing in the session"
    );

    // Metadata-only writes (cross-repository mounts): the database's own commits fail now.
    let mut refused = 0;
    for i in 0..10 {
        let r = mount(&b, &format!("team/m{i}"), &layer_digest).await;
        if r.status() != StatusCode::CREATED {
            assert_store_full(r, "mount").await;
            refused += 1;
        }
    }
    assert!(
        refused > 0,
        "no metadata commit failed on a full disk: the test proves nothing"
    );
    let (status, body) = readyz(&b).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    // Reads go on: cached content is served while the disk is full.
    let r = c.get(&warm_url).send().await.unwrap();
    assert_eq!(header(&r, "x-berth-cache"), "hit");
    assert_eq!(sha256(&r.bytes().await.unwrap()), warm, "a cached blob on a full disk");
    // A cache fill cannot be kept. Its response may have started (a fill streams as it
    // receives) and is then cut off; either way nothing of it is published. (16 MiB: more than
    // the fill's write queue holds, so the failed write is noticed before the body is through.)
    let r = c
        .get(b.at(&format!("/v2/library/cold/blobs/{cold}")))
        .send()
        .await
        .unwrap();
    if r.status() == StatusCode::OK {
        let body = r.bytes().await;
        assert!(
            body.is_err(),
            "a fill that could not be stored is aborted, not completed"
        );
    } else {
        assert_store_full(r, "fill").await;
    }
    assert!(
        !store_layout::has_blob(&b.root, &cold),
        "nothing of the failed fill is published"
    );

    fs.free_up();
    readyz_until(&b, StatusCode::OK, Duration::from_secs(10)).await;
    // Nothing of the refused pushes is visible.
    let r = c
        .head(b.at(&format!("/v2/team/app/blobs/{digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND, "the refused blob");
    assert!(!store_layout::has_blob(&b.root, &digest), "no file of the refused blob");

    // The same berth takes pushes again: the blob, a chunk into the old session, mounts, a tag.
    let r = c.post(&monolithic).body(big.clone()).send().await.unwrap();
    assert_eq!(
        r.status(),
        StatusCode::CREATED,
        "push after freeing space: {}",
        r.text().await.unwrap()
    );
    let got = c
        .get(b.at(&format!("/v2/team/app/blobs/{digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(sha256(&got.bytes().await.unwrap()), digest);
    let small = pseudo_random(3 << 20, 3);
    let r = c.patch(&session).body(small.clone()).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED, "the session takes its chunk");
    let r = c
        .put(format!("{}?digest={}", b.at(&header(&r, "location")), sha256(&small)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = mount(&b, "team/m0", &layer_digest).await;
    assert_eq!(r.status(), StatusCode::CREATED, "mount after freeing space");
    push_image(&b.url, "team/app", "v2", &[&small]).await;

    // A cache fill works, and is kept: the second GET is a hit.
    for cache in ["miss", "hit"] {
        let r = c
            .get(b.at(&format!("/v2/library/cold/blobs/{cold}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(header(&r, "x-berth-cache"), cache);
        assert_eq!(sha256(&r.bytes().await.unwrap()), cold);
    }
    assert!(!b.log().contains("request failed"), "no 500 at any point:\n{}", b.log());
    drop(b);
    drop(fs);
}
