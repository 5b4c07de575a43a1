//! Operating berth: Prometheus metrics, health and readiness, access logs, graceful shutdown, and
//! the web UI in a real (headless) browser.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::support;
use crate::support::client::{OCI_INDEX, OCI_MANIFEST, client, header, push_blob, push_image};
use crate::support::ui::{form, input_value, session_cookie};
use crate::support::{Berth, Hub, PRIVATE, chromium, htpasswd, mirror_of, sha256};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// One parsed series of the `/metrics` exposition.
struct Series {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

async fn scrape(b: &Berth) -> Vec<Series> {
    let r = client().get(b.at("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(header(&r, "content-type").starts_with("application/openmetrics-text"));
    let text = r.text().await.unwrap();
    assert!(text.ends_with("# EOF\n"), "a complete exposition");
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').expect("series value");
            let (name, labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let labels = labels
                .split("\",")
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once("=\"").expect("label");
                    (k.to_owned(), v.trim_end_matches('"').to_owned())
                })
                .collect();
            Series {
                name: name.to_owned(),
                labels,
                value: value.parse().expect("numeric value"),
            }
        })
        .collect()
}

/// The sum of the series called `name` whose labels include `labels`.
fn metric(all: &[Series], name: &str, labels: &[(&str, &str)]) -> f64 {
    all.iter()
        .filter(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}

/// Scrape until `ok` holds (request counters are written when a response body has been sent,
/// which can be a moment after the client has read it).
async fn scrape_until(b: &Berth, ok: impl Fn(&[Series]) -> bool) -> Vec<Series> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let all = scrape(b).await;
        if ok(&all) || Instant::now() > deadline {
            return all;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn metrics_count_a_miss_then_a_hit_then_a_stale_answer() {
    let hub = Hub::start();
    hub.seed(0);
    let b = mirror_of(&hub.url, "1s", "");
    let tag_url = b.at("/v2/library/alpine/manifests/latest");
    let cache = |all: &[Series], kind: &str, result: &str| {
        metric(all, "berth_cache_requests_total", &[("kind", kind), ("result", result)])
    };

    let before = scrape(&b).await;
    for result in ["hit", "miss", "stale"] {
        assert_eq!(cache(&before, "manifest", result), 0.0, "{result} starts at 0");
    }

    let r = client().get(&tag_url).send().await.unwrap();
    assert_eq!(header(&r, "x-berth-cache"), "miss");
    let manifest: Value = r.json().await.unwrap();
    let all = scrape(&b).await;
    assert_eq!(cache(&all, "manifest", "miss"), 1.0);
    assert_eq!(cache(&all, "manifest", "hit"), 0.0);
    assert!(
        metric(
            &all,
            "berth_upstream_requests_total",
            &[("upstream", "docker.io"), ("code", "200")]
        ) >= 1.0
    );
    assert!(
        metric(
            &all,
            "berth_upstream_request_duration_seconds_count",
            &[("upstream", "docker.io")]
        ) >= 1.0
    );

    let r = client().get(&tag_url).send().await.unwrap();
    assert_eq!(header(&r, "x-berth-cache"), "hit");
    let all = scrape(&b).await;
    assert_eq!(cache(&all, "manifest", "hit"), 1.0);
    assert_eq!(cache(&all, "manifest", "miss"), 1.0);

    // A layer: a miss streamed through a fill, then a hit from the store.
    let layer = manifest["layers"][0]["digest"].as_str().unwrap().to_owned();
    let size = manifest["layers"][0]["size"].as_f64().unwrap();
    let blob_url = b.at(&format!("/v2/library/alpine/blobs/{layer}"));
    for expected in ["miss", "hit"] {
        let r = client().get(&blob_url).send().await.unwrap();
        assert_eq!(header(&r, "x-berth-cache"), expected);
        assert_eq!(sha256(&r.bytes().await.unwrap()), layer);
    }
    let all = scrape_until(&b, |all| {
        metric(
            all,
            "berth_cache_served_bytes_total",
            &[("kind", "blob"), ("result", "hit")],
        ) == size
    })
    .await;
    assert_eq!(cache(&all, "blob", "miss"), 1.0);
    assert_eq!(cache(&all, "blob", "hit"), 1.0);
    assert_eq!(
        metric(
            &all,
            "berth_cache_served_bytes_total",
            &[("kind", "blob"), ("result", "hit")]
        ),
        size,
        "hit bytes are bytes saved upstream"
    );
    assert_eq!(metric(&all, "berth_cache_fills_total", &[("result", "ok")]), 1.0);
    assert_eq!(metric(&all, "berth_cache_fills_in_flight", &[]), 0.0);
    assert_eq!(metric(&all, "berth_cache_fill_waiters", &[]), 0.0);
    assert!(
        metric(
            &all,
            "berth_upstream_received_bytes_total",
            &[("upstream", "docker.io")]
        ) >= size
    );
    assert!(metric(&all, "berth_http_response_bytes_total", &[("kind", "blob")]) >= 2.0 * size);

    // Past the TTL with the hub down: the cached tag is answered stale, and the failure counted.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    hub.fault(json!({ "down": true })).await;
    let r = client().get(&tag_url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "x-berth-cache"), "stale");
    let all = scrape_until(&b, |all| {
        metric(
            all,
            "berth_http_requests_total",
            &[("kind", "manifest"), ("method", "GET"), ("code", "200")],
        ) == 3.0
    })
    .await;
    assert_eq!(cache(&all, "manifest", "stale"), 1.0);
    assert_eq!(cache(&all, "manifest", "hit"), 1.0);
    assert_eq!(cache(&all, "manifest", "miss"), 1.0);
    assert_eq!(
        metric(
            &all,
            "berth_http_requests_total",
            &[("kind", "manifest"), ("method", "GET"), ("code", "200")]
        ),
        3.0
    );
    assert!(metric(&all, "berth_upstream_errors_total", &[("upstream", "docker.io")]) >= 1.0);
    assert!(
        metric(
            &all,
            "berth_upstream_requests_total",
            &[("upstream", "docker.io"), ("code", "503")]
        ) >= 1.0
    );
    assert_eq!(
        metric(&all, "berth_build_info", &[("version", env!("CARGO_PKG_VERSION"))]),
        1.0
    );
}

#[tokio::test]
async fn readyz_fails_when_the_store_is_not_writable_and_healthz_stays_up() {
    let b = Berth::start("");
    let get = |path: &'static str| {
        let url = b.at(path);
        async move { client().get(url).send().await.unwrap() }
    };
    let r = get("/healthz").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.text().await.unwrap(), "ok");
    let r = get("/readyz").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "ready");

    // Tests run as root, where permissions stop no write: put a regular file where the store's
    // temporary directory (the path every upload and fill writes through) should be.
    let tmp = support::store_layout::temp_dir(&b.root);
    std::fs::remove_dir_all(&tmp).unwrap();
    std::fs::write(&tmp, b"not a directory").unwrap();
    let r = get("/readyz").await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["status"], "unavailable");
    assert!(
        body["reason"].as_str().unwrap().contains("not writable"),
        "the reason names the store: {body}"
    );
    assert_eq!(
        get("/healthz").await.status(),
        StatusCode::OK,
        "liveness does not depend on the disk"
    );

    std::fs::remove_file(&tmp).unwrap();
    std::fs::create_dir(&tmp).unwrap();
    assert_eq!(
        get("/readyz").await.status(),
        StatusCode::OK,
        "ready again once the store is"
    );
}

/// Read `r`'s body at about `bytes_per_sec`, calling `at(bytes_read_so_far)` after each chunk.
async fn read_slowly(
    r: reqwest::Response,
    bytes_per_sec: f64,
    mut at: impl FnMut(usize),
) -> Result<Vec<u8>, reqwest::Error> {
    use futures_util::StreamExt;
    let started = Instant::now();
    let mut body = Vec::new();
    let mut stream = r.bytes_stream();
    while let Some(chunk) = stream.next().await {
        body.extend_from_slice(&chunk?);
        at(body.len());
        let due = Duration::from_secs_f64(body.len() as f64 / bytes_per_sec);
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            tokio::time::sleep(wait).await;
        }
    }
    Ok(body)
}

fn big_blob(mib: usize) -> Vec<u8> {
    // Incompressible-looking but cheap: a counter through a multiplicative hash.
    (0..mib << 20)
        .map(|i: usize| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

#[tokio::test]
async fn sigterm_lets_a_large_download_finish_then_exits_zero() {
    let mut b = Berth::start("[server]\ndrain_timeout = \"25s\"\n");
    let blob = big_blob(48);
    let digest = push_blob(&b.url, "big/blob", &blob).await;
    let r = client()
        .get(b.at(&format!("/v2/big/blob/blobs/{digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    // About 8 MiB/s: some six seconds in all; SIGTERM arrives after the first 4 MiB.
    let mut signalled = None;
    let body = read_slowly(r, 8.0 * 1048576.0, |n| {
        if n >= 4 << 20 && signalled.is_none() {
            b.signal("TERM");
            signalled = Some(Instant::now());
        }
    })
    .await
    .expect("the download in flight completes");
    let signalled = signalled.expect("SIGTERM was sent mid-download");
    assert!(
        signalled.elapsed() > Duration::from_secs(2),
        "the download was still running well after SIGTERM"
    );
    assert_eq!(body.len(), blob.len());
    assert_eq!(sha256(&body), digest, "the body is complete and verifies");

    let status = b
        .wait_exit(Duration::from_secs(25))
        .expect("berth exits after the drain");
    assert_eq!(status.code(), Some(0), "berth exits 0 after a drain");
    let log = b.log();
    assert!(log.contains("draining transfers"), "{log}");
    assert!(log.contains("berth stopped"), "{log}");
    assert!(
        std::net::TcpStream::connect(&b.addr).is_err(),
        "nothing listens once berth is gone"
    );
}

/// berth serves on one listening socket per core (`SO_REUSEPORT`, see `server::serve`), which
/// must not let a second server join the port and take half its connections.
#[tokio::test]
async fn a_second_berth_on_a_port_in_use_refuses_to_start_and_the_first_serves_on() {
    let first = Berth::start("");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("mirror.toml");
    let root = dir.path().join("data");
    std::fs::write(
        &config,
        format!(
            "upstream = []\n[server]\nlisten = \"{}\"\n[storage]\nroot = \"{}\"\n",
            first.addr,
            root.display()
        ),
    )
    .unwrap();
    let mut second = std::process::Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["serve", "--config"])
        .arg(&config)
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = second.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            second.kill().unwrap();
            panic!(
                "a second berth started on {} and is serving beside the first",
                first.addr
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut second.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "the second server exits: {stderr}");
    assert!(stderr.contains(&format!("serving on {}", first.addr)), "{stderr}");
    assert!(stderr.contains("in use"), "{stderr}");
    for _ in 0..20 {
        let r = client().get(first.at("/v2/")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "every connection reaches the first server");
    }
}

#[tokio::test]
async fn drain_timeout_cuts_off_a_stalled_download_and_berth_still_exits_zero() {
    let mut b = Berth::start("[server]\ndrain_timeout = \"1s\"\n");
    let blob = big_blob(48);
    let digest = push_blob(&b.url, "big/blob", &blob).await;
    let r = client()
        .get(b.at(&format!("/v2/big/blob/blobs/{digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    b.signal("TERM");
    let stopped = Instant::now();
    // New connections are refused once shutdown began.
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect(&b.addr).is_ok() {
        assert!(
            Instant::now() < deadline,
            "berth kept accepting connections after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A client that reads 1 MiB/s would need 48 s; the 1 s drain ends it. berth's exit is timed
    // apart from the client: what the kernel had already buffered (several MiB on loopback)
    // still reaches the client afterwards, at the client's pace.
    let read = tokio::spawn(read_slowly(r, 1048576.0, |_| {}));
    let status = b
        .wait_exit(Duration::from_secs(10))
        .expect("berth exits after the drain timeout");
    let drained = stopped.elapsed();
    assert_eq!(status.code(), Some(0));
    assert!(drained < Duration::from_secs(8), "the drain took {drained:?}");
    let read = read.await.expect("the reading task");
    assert!(read.is_err(), "the stalled download was cut off, not completed");
}

/// An htpasswd file with bcrypt entries, made by `htpasswd -B` as users make it.
#[tokio::test]
async fn every_request_logs_one_json_line_with_its_id_and_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    let pw = htpasswd(dir.path(), &[("alice", "s3cret-pass")]);
    let b = Berth::start(&format!(
        "[auth]\nhtpasswd = \"{}\"\nscheme = \"basic\"\n[log]\nformat = \"json\"\n",
        pw.display()
    ));
    let c = client();
    let r = c
        .get(b.at("/v2/"))
        .basic_auth("alice", Some("s3cret-pass"))
        .header("x-request-id", "ops-test-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "x-request-id"), "ops-test-1", "a sane id is echoed");
    let r = c
        .get(b.at("/v2/_catalog?access_token=query-secret-token"))
        .basic_auth("alice", Some("wrong-password"))
        .header("x-request-id", "bad id with spaces")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let generated = header(&r, "x-request-id");
    assert!(
        generated.len() == 32 && generated.bytes().all(|b| b.is_ascii_hexdigit()),
        "an unsafe id is replaced: {generated:?}"
    );
    let r = c
        .get(b.at("/token?service=berth&scope=repository:team/app:pull"))
        .basic_auth("alice", Some("s3cret-pass"))
        .header("x-request-id", "ops-test-3")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let token = r.json::<Value>().await.unwrap()["token"].as_str().unwrap().to_owned();

    let lines = access_lines(&b, |lines| lines.len() >= 3).await;
    let with_id = |id: &str| -> Vec<&Value> { lines.iter().filter(|l| l["fields"]["request_id"] == id).collect() };
    for id in ["ops-test-1", generated.as_str(), "ops-test-3"] {
        assert_eq!(with_id(id).len(), 1, "exactly one access line for {id}: {lines:?}");
    }
    let first = &with_id("ops-test-1")[0]["fields"];
    assert_eq!(first["method"], "GET");
    assert_eq!(first["path"], "/v2/");
    assert_eq!(first["status"], 200);
    assert_eq!(first["user"], "alice");
    assert_eq!(first["client"], "127.0.0.1");
    assert_eq!(first["bytes"], 2);
    assert_eq!(first["complete"], true);
    assert!(first["duration_ms"].as_f64().is_some());
    let second = &with_id(&generated)[0]["fields"];
    assert_eq!(second["path"], "/v2/_catalog", "the query string is never logged");
    assert_eq!(second["status"], 401);
    assert_eq!(second["user"], "-", "rejected credentials log no user");
    assert_eq!(with_id("ops-test-3")[0]["fields"]["user"], "alice");

    let log = b.log();
    use base64::Engine;
    let basic = base64::engine::general_purpose::STANDARD.encode("alice:s3cret-pass");
    let signature = token.rsplit('.').next().unwrap();
    for secret in ["s3cret-pass", "wrong-password", "query-secret-token", &basic, signature] {
        assert!(!log.contains(secret), "the log holds a secret ({secret}):\n{log}");
    }
    assert!(
        !log.to_ascii_lowercase().contains("authorization"),
        "no header is logged"
    );
}

#[tokio::test]
async fn a_large_blob_sent_whole_is_logged_complete_and_a_cut_one_is_not() {
    let b = Berth::start("[log]\nformat = \"json\"\n");
    let blob: Vec<u8> = (0..24u32 << 20).map(|i| (i % 253) as u8).collect();
    let digest = push_blob(&b.url, "team/big", &blob).await;
    let url = b.at(&format!("/v2/team/big/blobs/{digest}"));
    let whole = client().get(&url).header("x-request-id", "whole").send().await.unwrap();
    assert_eq!(sha256(&whole.bytes().await.unwrap()), digest);
    // A client that reads the first bytes and hangs up (closing with unread data sends a reset).
    let mut cut = std::net::TcpStream::connect(b.url.trim_start_matches("http://")).unwrap();
    let request = format!("GET /v2/team/big/blobs/{digest} HTTP/1.1\r\nhost: berth\r\nx-request-id: cut\r\n\r\n");
    std::io::Write::write_all(&mut cut, request.as_bytes()).unwrap();
    std::io::Read::read_exact(&mut cut, &mut [0u8; 65536]).unwrap();
    drop(cut);

    let has = |lines: &[Value], id: &str| lines.iter().any(|l| l["fields"]["request_id"] == id);
    let lines = access_lines(&b, |lines| has(lines, "whole") && has(lines, "cut")).await;
    let line = |id: &str| match lines.iter().find(|l| l["fields"]["request_id"] == id) {
        Some(l) => l["fields"].clone(),
        None => panic!("no access line for {id}:\n{}", b.log()),
    };
    let whole = line("whole");
    assert_eq!(whole["bytes"], blob.len() as u64);
    assert_eq!(whole["complete"], true, "every byte was sent: {whole}");
    let cut = line("cut");
    assert!(cut["bytes"].as_u64().unwrap() < blob.len() as u64);
    assert_eq!(cut["complete"], false, "the client went away midway: {cut}");
}

/// berth's JSON access-log lines, once `enough` holds for them or after 5 s.
async fn access_lines(b: &Berth, enough: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let lines: Vec<Value> = b
            .log()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|l| l["target"] == "berth::access")
            .collect();
        if enough(&lines) || Instant::now() > deadline {
            return lines;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Cheap PNG checks without a decoder: the signature, the IHDR size, and enough compressed data
/// to be more than a blank page (a blank page of the same size compresses to a few KiB).
fn assert_screenshot(png: &Path, width: u32, height: u32, blank_len: u64) {
    let bytes = std::fs::read(png).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{} is a PNG", png.display());
    assert_eq!(&bytes[12..16], b"IHDR");
    let w = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
    let h = u32::from_be_bytes(bytes[20..24].try_into().unwrap());
    assert_eq!((w, h), (width, height), "screenshot size");
    assert!(
        bytes.len() as u64 > (blank_len * 3).max(15_000),
        "{} ({} bytes) looks blank next to an empty page ({blank_len} bytes)",
        png.display(),
        bytes.len()
    );
}

/// Where screenshots are kept for people to look at.
fn shot_path(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("ui-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

#[tokio::test]
async fn web_ui_in_chromium_lists_images_shows_platforms_and_deletes_a_tag() {
    let hub = Hub::start();
    let seed = hub.seed(0);
    let b = mirror_of(&hub.url, "5m", PRIVATE);
    push_image(&b.url, "team/app", "1.0", &[b"layer one".as_slice(), &[7u8; 300_000]]).await;
    push_image(&b.url, "team/app", "2.0", &[b"layer two".as_slice()]).await;
    // Pull the multi-arch busybox through the mirror: the index and its amd64 image.
    let busybox = &seed["images"]["library/busybox:latest"];
    let index_digest = busybox["digest"].as_str().unwrap();
    let amd64 = busybox["manifests"][0]["digest"].as_str().unwrap();
    for (reference, accept) in [("latest", OCI_INDEX), (amd64, OCI_MANIFEST)] {
        let r = client()
            .get(b.at(&format!("/v2/library/busybox/manifests/{reference}")))
            .header("accept", accept)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "busybox {reference}");
    }

    let (w, h) = (1280, 900);
    let blank = shot_path("blank.png");
    chromium::screenshot("data:text/html,<html><body></body></html>", &blank, w, h);
    let blank_len = std::fs::metadata(&blank).unwrap().len();

    let home = b.at("/ui");
    let dom = chromium::dom(&home);
    for text in [
        "team/app",
        "library/busybox",
        "private",
        "cached",
        "Cache hit ratio",
        "Disk use",
    ] {
        assert!(dom.contains(text), "the home page shows {text:?}:\n{dom}");
    }
    let png = shot_path("home.png");
    chromium::screenshot(&home, &png, w, h);
    assert_screenshot(&png, w, h, blank_len);

    let search = chromium::dom(&b.at("/ui?q=busy"));
    assert!(
        search.contains("library/busybox") && !search.contains("team/app"),
        "search by name:\n{search}"
    );

    let manifest = b.at(&format!("/ui/manifest?repo=library/busybox&ref={index_digest}"));
    let dom = chromium::dom(&manifest);
    for text in ["Platforms (2)", "linux/amd64", "linux/arm64/v8", OCI_INDEX] {
        assert!(dom.contains(text), "the index page shows {text:?}:\n{dom}");
    }
    let png = shot_path("manifest.png");
    chromium::screenshot(&manifest, &png, w, h);
    assert_screenshot(&png, w, h, blank_len);
    let image = chromium::dom(&b.at(&format!("/ui/manifest?repo=library/busybox&ref={amd64}")));
    let layer = busybox["manifests"][0]["layers"][0]["digest"].as_str().unwrap();
    assert!(
        image.contains("Layers (1)") && image.contains(layer),
        "the image page lists its layers:\n{image}"
    );

    let repo_page = b.at("/ui/repo?name=team/app");
    let dom = chromium::dom(&repo_page);
    assert!(
        dom.contains("action=\"/ui/delete\""),
        "admins get the delete form:\n{dom}"
    );
    assert!(dom.contains("value=\"2.0\"") && dom.contains("value=\"1.0\""));
    assert!(
        dom.contains("Authentication is off"),
        "the page says deletion is open to all"
    );
    let png = shot_path("repo.png");
    chromium::screenshot(&repo_page, &png, w, h);
    assert_screenshot(&png, w, h, blank_len);

    // Submit the form as the browser would: the session cookie, the form's token, same origin.
    let c = client();
    let r = c.get(&repo_page).send().await.unwrap();
    let cookie = session_cookie(&r);
    let html = r.text().await.unwrap();
    let csrf = input_value(&html, "csrf").expect("a csrf token in the form");
    let post = |origin: &str, cookie: &str, csrf: &str| {
        c.post(b.at("/ui/delete"))
            .header("origin", origin.to_owned())
            .header("cookie", cookie.to_owned())
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form(&[("repo", "team/app"), ("tag", "2.0"), ("csrf", csrf)]))
            .send()
    };
    let forged = [
        post("http://evil.example", &cookie, &csrf).await.unwrap(),
        post(&b.url, "berth_ui=00000000000000000000000000000000", &csrf)
            .await
            .unwrap(),
        post(&b.url, &cookie, "00").await.unwrap(),
    ];
    for r in forged {
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "a forged delete is refused");
    }
    let r = post(&b.url, &cookie, &csrf).await.unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(header(&r, "location"), "/ui/repo?name=team%2Fapp&deleted=2.0");

    let r = client().get(b.at("/v2/team/app/manifests/2.0")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND, "the tag is gone");
    let tags: Value = client()
        .get(b.at("/v2/team/app/tags/list"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(tags["tags"], json!(["1.0"]));
    let dom = chromium::dom(&b.at("/ui/repo?name=team/app&deleted=2.0"));
    assert!(dom.contains("Deleted tag") && !dom.contains("value=\"2.0\"") && dom.contains("value=\"1.0\""));
}

#[tokio::test]
async fn web_ui_needs_a_login_and_offers_deletion_only_to_admins() {
    let dir = tempfile::tempdir().unwrap();
    let pw = htpasswd(dir.path(), &[("admin", "admin-pass"), ("viewer", "viewer-pass")]);
    let b = Berth::start(&format!(
        "[auth]\nhtpasswd = \"{}\"\nscheme = \"basic\"\n\
         [[auth.access]]\nrepository = \"team/*\"\nusers = [\"admin\"]\nactions = [\"pull\", \"push\", \"delete\"]\n\
         [[auth.access]]\nrepository = \"team/*\"\nusers = [\"viewer\"]\nactions = [\"pull\"]\n",
        pw.display()
    ));
    // Push as admin over Basic auth.
    let c = client();
    let config = br#"{"architecture":"amd64","os":"linux"}"#;
    let mut digests = Vec::new();
    for blob in [config.as_slice(), b"the layer"] {
        let d = sha256(blob);
        let r = c
            .post(b.at(&format!("/v2/team/app/blobs/uploads/?digest={d}")))
            .basic_auth("admin", Some("admin-pass"))
            .body(blob.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        digests.push(d);
    }
    let manifest = json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digests[0], "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digests[1], "size": 9}],
    });
    let r = c
        .put(b.at("/v2/team/app/manifests/1.0"))
        .basic_auth("admin", Some("admin-pass"))
        .header("content-type", OCI_MANIFEST)
        .body(serde_json::to_vec(&manifest).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);

    let page = b.at("/ui/repo?name=team/app");
    let r = c.get(&page).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(
        header(&r, "www-authenticate").starts_with("Basic"),
        "the browser is asked to log in"
    );
    let r = c.get(&page).basic_auth("viewer", Some("wrong")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    let r = c
        .get(&page)
        .basic_auth("viewer", Some("viewer-pass"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let viewer_cookie = session_cookie(&r);
    let html = r.text().await.unwrap();
    assert!(
        html.contains("1.0") && !html.contains("/ui/delete"),
        "a viewer sees no delete form"
    );
    assert!(!html.contains("Authentication is off"));

    let r = c
        .get(&page)
        .basic_auth("admin", Some("admin-pass"))
        .send()
        .await
        .unwrap();
    let admin_cookie = session_cookie(&r);
    let html = r.text().await.unwrap();
    assert!(html.contains("action=\"/ui/delete\""), "the admin sees the delete form");
    let csrf = input_value(&html, "csrf").unwrap();

    let delete = |user: &'static str, password: &'static str, cookie: &str, csrf: &str| {
        c.post(b.at("/ui/delete"))
            .basic_auth(user, Some(password))
            .header("origin", b.url.clone())
            .header("cookie", cookie.to_owned())
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form(&[("repo", "team/app"), ("tag", "1.0"), ("csrf", csrf)]))
            .send()
    };
    let r = delete("viewer", "viewer-pass", &viewer_cookie, &csrf).await.unwrap();
    assert_eq!(
        r.status(),
        StatusCode::FORBIDDEN,
        "the admin's token is no good for the viewer"
    );
    let r = delete("viewer", "viewer-pass", &admin_cookie, &csrf).await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = c
        .get(b.at("/v2/team/app/manifests/1.0"))
        .basic_auth("admin", Some("admin-pass"))
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "still there");

    let r = delete("admin", "admin-pass", &admin_cookie, &csrf).await.unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let r = c
        .get(b.at("/v2/team/app/manifests/1.0"))
        .basic_auth("admin", Some("admin-pass"))
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND, "deleted by the admin");
    assert!(b.log().contains("tag deleted in the web UI"));
}
