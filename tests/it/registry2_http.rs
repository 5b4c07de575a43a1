//! registry:2's switches and headers as berth answers them: `[storage] delete = false` (405
//! UNSUPPORTED), read-only maintenance mode switched at runtime by SIGHUP, manifest `Etag` and
//! `If-None-Match`, invalid tags on reads (404) and writes (400), and the token realm taken from
//! the request authority (HTTP/2 `:authority`, trusted `X-Forwarded-*`, or `[auth] realm`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support;
use crate::support::client::*;
use crate::support::in_process::App;
use crate::support::tls::TestCa;
use crate::support::{Berth, Server, run, sha256};
use reqwest::StatusCode;
use serde_json::Value;

#[tokio::test]
async fn with_delete_off_every_delete_answers_405_unsupported_and_pulls_go_on() {
    let mut b = Berth::start("[storage]\ndelete = false\n");
    let digest = push_image(&b.url, "team/app", "1", &[b"layer one"]).await;
    let layer = sha256(b"layer one");
    let c = client();
    for path in [
        format!("/v2/team/app/manifests/{digest}"),
        "/v2/team/app/manifests/1".to_owned(),
        format!("/v2/team/app/blobs/{layer}"),
    ] {
        let (status, code, message) = oci_error(c.delete(b.at(&path)).send().await.unwrap()).await;
        assert_eq!(
            (status, code.as_str()),
            (StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED"),
            "{path}"
        );
        assert!(message.contains("delete = false"), "{path}: {message}");
    }
    let (got, _) = manifest_json(&b.url, "team/app", "1").await;
    assert_eq!(got, digest, "the tag and its manifest are still there");
    let r = c
        .get(b.at(&format!("/v2/team/app/blobs/{layer}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // The operator's `berth delete` obeys the same switch, through the server and without one.
    let out = b.cli(&["delete", "team/app:1"]);
    assert!(!out.status.success(), "berth delete must be refused too");
    b.stop();
    let out = b.cli(&["delete", "team/app:1"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("delete = false"), "{stderr}");
}

/// Rewrite `[storage] read_only` in berth's config file and send SIGHUP.
fn switch_read_only(b: &Berth, on: bool) {
    let text = std::fs::read_to_string(&b.config).unwrap();
    let mut toml: toml::Table = text.parse().unwrap();
    toml["storage"]
        .as_table_mut()
        .unwrap()
        .insert("read_only".into(), toml::Value::Boolean(on));
    std::fs::write(&b.config, toml.to_string()).unwrap();
    b.signal("HUP");
}

/// A monolithic blob upload's response.
async fn try_push_blob(b: &Berth, repo: &str, bytes: &[u8]) -> reqwest::Response {
    client()
        .post(b.at(&format!("/v2/{repo}/blobs/uploads/?digest={}", sha256(bytes))))
        .body(bytes.to_vec())
        .send()
        .await
        .unwrap()
}

/// Poll until a blob push gets `want` (the SIGHUP is handled asynchronously).
async fn wait_for_push_status(b: &Berth, want: StatusCode) -> reqwest::Response {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = try_push_blob(b, "team/app", b"probe").await;
        if r.status() == want || Instant::now() > deadline {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn read_only_mode_refuses_pushes_and_deletes_while_pulls_go_on_and_switches_on_sighup() {
    let b = Berth::start("");
    let digest = push_image(&b.url, "team/app", "1", &[b"layer one"]).await;
    let c = client();
    // A push in progress when the switch flips is refused at its next step.
    let r = c.post(b.at("/v2/team/app/blobs/uploads/")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let session = header(&r, "location");

    switch_read_only(&b, true);
    let (status, code, message) = oci_error(wait_for_push_status(&b, StatusCode::METHOD_NOT_ALLOWED).await).await;
    assert_eq!((status, code.as_str()), (StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED"));
    assert!(message.contains("read-only mode"), "{message}");
    let manifest = image_manifest_unpushed();
    let refused = [
        c.put(b.at("/v2/team/app/manifests/2"))
            .header("content-type", OCI_MANIFEST)
            .body(manifest)
            .send()
            .await
            .unwrap(),
        c.patch(b.at(&session)).body("more").send().await.unwrap(),
        c.post(b.at("/v2/team/app/blobs/uploads/")).send().await.unwrap(),
        c.delete(b.at(&format!("/v2/team/app/manifests/{digest}")))
            .send()
            .await
            .unwrap(),
        c.delete(b.at("/v2/team/app/manifests/1")).send().await.unwrap(),
    ];
    for r in refused {
        let url = r.url().to_string();
        let (status, code, message) = oci_error(r).await;
        assert_eq!(
            (status, code.as_str()),
            (StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED"),
            "{url}"
        );
        assert!(message.contains("read-only mode"), "{url}: {message}");
    }
    // Pulls go on.
    let (got, _) = manifest_json(&b.url, "team/app", "1").await;
    assert_eq!(got, digest);
    let layer = sha256(b"layer one");
    let r = c
        .get(b.at(&format!("/v2/team/app/blobs/{layer}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().await.unwrap().as_ref(), b"layer one");
    assert!(b.log().contains("SIGHUP"), "the re-read is logged");

    // And back, without a restart.
    switch_read_only(&b, false);
    let r = wait_for_push_status(&b, StatusCode::CREATED).await;
    assert_eq!(r.status(), StatusCode::CREATED, "pushes work again");
    push_image(&b.url, "team/app", "2", &[b"layer two"]).await;
    let r = c.delete(b.at("/v2/team/app/manifests/1")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
}

/// Some manifest body (the PUT is refused before it is looked at).
fn image_manifest_unpushed() -> Vec<u8> {
    let config = support::client::descriptor("application/vnd.oci.image.config.v1+json", &sha256(b"{}"), 2);
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config, "layers": []
    }))
    .unwrap()
}

// curl blocks this thread: the app in this process needs another worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifests_carry_their_digest_as_etag_and_if_none_match_gets_304() {
    let b = App::start("").await;
    let digest = push_image(&b.url, "team/app", "1", &[b"etag layer"]).await;
    let etag = format!("\"{digest}\"");
    let c = client();
    for reference in ["1", digest.as_str()] {
        let url = b.at(&format!("/v2/team/app/manifests/{reference}"));
        let r = c.get(&url).header("accept", OCI_MANIFEST).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(header(&r, "etag"), etag, "GET {reference}");
        let r = c.head(&url).header("accept", OCI_MANIFEST).send().await.unwrap();
        assert_eq!(header(&r, "etag"), etag, "HEAD {reference}");

        for method in [reqwest::Method::GET, reqwest::Method::HEAD] {
            let r = c
                .request(method.clone(), &url)
                .header("accept", OCI_MANIFEST)
                .header("if-none-match", &etag)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::NOT_MODIFIED, "{method} {reference}");
            assert_eq!(header(&r, "etag"), etag);
            assert!(r.bytes().await.unwrap().is_empty(), "a 304 has no body");
        }
        // A list that names it, and a stale one.
        let r = c
            .get(&url)
            .header("if-none-match", format!("\"sha256:{}\", {etag}", "0".repeat(64)))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
        let r = c
            .get(&url)
            .header("if-none-match", format!("\"sha256:{}\"", "0".repeat(64)))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "a different manifest is sent whole");
        assert_eq!(sha256(&r.bytes().await.unwrap()), digest);
    }
    // curl, as a user checks it.
    support::require("curl");
    let out = run(Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-H"])
        .arg(format!("If-None-Match: {etag}"))
        .arg(b.at("/v2/team/app/manifests/1")));
    assert_eq!(out, "304");
}

#[tokio::test]
async fn an_invalid_tag_reads_as_manifest_unknown_and_a_put_with_it_is_tag_invalid() {
    let b = App::start("").await;
    push_image(&b.url, "team/app", "1", &[b"tag layer"]).await;
    let c = client();
    let url = b.at("/v2/team/app/manifests/.INVALID_MANIFEST_NAME");
    let r = c.get(&url).send().await.unwrap();
    assert_eq!(error_code(r, StatusCode::NOT_FOUND).await, "MANIFEST_UNKNOWN");
    let r = c.head(&url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND, "HEAD");
    let m = image_manifest(&b.url, "team/app", &[b"tag layer"]).await;
    let r = put_manifest(&b.url, "team/app", ".INVALID_MANIFEST_NAME", OCI_MANIFEST, &m).await;
    assert_eq!(error_code(r, StatusCode::BAD_REQUEST).await, "TAG_INVALID");
    // An invalid repository name is still NAME_INVALID.
    let r = c.get(b.at("/v2/Team/app/manifests/1")).send().await.unwrap();
    assert_eq!(error_code(r, StatusCode::BAD_REQUEST).await, "NAME_INVALID");
}

fn htpasswd(dir: &Path) -> PathBuf {
    support::htpasswd(dir, &[("alice", "alice-pw")])
}

/// The realm of the Bearer challenge `/v2/` answers.
fn realm_of(r: &reqwest::Response) -> String {
    let challenge = header(r, "www-authenticate");
    let start = challenge.find("realm=\"").expect("a realm") + 7;
    challenge[start..].split('"').next().unwrap().to_owned()
}

#[tokio::test]
async fn over_http2_the_token_realm_names_the_real_host_and_port() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path());
    let b = Berth::start(&format!(
        "[server.tls]\ncert = \"{}\"\nkey = \"{}\"\n[auth]\nhtpasswd = \"{}\"\nscheme = \"token\"\n",
        ca.cert.display(),
        ca.key.display(),
        htpasswd(dir.path()).display()
    ));
    berth::install_crypto_provider();
    let cert = reqwest::Certificate::from_pem(&std::fs::read(&ca.ca).unwrap()).unwrap();
    let h2 = reqwest::Client::builder().tls_certs_only([cert]).build().unwrap();
    let r = h2.get(format!("https://{}/v2/", b.addr)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(r.version(), reqwest::Version::HTTP_2, "ALPN chose HTTP/2");
    let realm = realm_of(&r);
    assert_eq!(realm, format!("https://{}/token", b.addr));
    // The realm works: a token from it opens /v2/.
    let t: Value = h2
        .get(&realm)
        .basic_auth("alice", Some("alice-pw"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let r = h2
        .get(format!("https://{}/v2/", b.addr))
        .bearer_auth(t["token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn forwarded_host_and_proto_count_only_when_trusted_and_a_configured_realm_wins() {
    let dir = tempfile::tempdir().unwrap();
    let pw = htpasswd(dir.path());
    let auth = format!("[auth]\nhtpasswd = \"{}\"\n", pw.display());
    let forwarded = |r: reqwest::RequestBuilder| {
        r.header("x-forwarded-host", "registry.example.com")
            .header("x-forwarded-proto", "https")
    };
    let untrusted = App::start(&auth).await;
    let r = forwarded(client().get(untrusted.at("/v2/"))).send().await.unwrap();
    assert_eq!(realm_of(&r), format!("http://{}/token", untrusted.addr));

    let trusted = App::start(&format!("{auth}[server]\ntrust_forwarded_headers = true\n")).await;
    let r = forwarded(client().get(trusted.at("/v2/"))).send().await.unwrap();
    assert_eq!(realm_of(&r), "https://registry.example.com/token");
    let r = client().get(trusted.at("/v2/")).send().await.unwrap();
    assert_eq!(
        realm_of(&r),
        format!("http://{}/token", trusted.addr),
        "without the headers"
    );

    let fixed = App::start(&format!(
        "{auth}realm = \"https://auth.example.com/token\"\n[server]\ntrust_forwarded_headers = true\n"
    ))
    .await;
    let r = forwarded(client().get(fixed.at("/v2/"))).send().await.unwrap();
    assert_eq!(realm_of(&r), "https://auth.example.com/token");
}

#[tokio::test]
async fn the_startup_line_says_what_is_mirrored_where_the_ui_is_and_whether_auth_is_on() {
    let b = Berth::start("");
    let log = b.log();
    let line = log
        .lines()
        .find(|l| l.contains("berth serving"))
        .expect("a startup line");
    assert!(line.contains("mirrors nothing"), "{line}");
    assert!(line.contains(&format!("web UI at http://{}/ui", b.addr)), "{line}");
    assert!(line.contains("auth off"), "{line}");

    let dir = tempfile::tempdir().unwrap();
    let pw = htpasswd(dir.path());
    let b = Berth::start(&format!(
        "[auth]\nhtpasswd = \"{}\"\n[[upstream]]\nname = \"docker.io\"\nurl = \"http://127.0.0.1:9\"\n",
        pw.display()
    ));
    let log = b.log();
    let line = log
        .lines()
        .find(|l| l.contains("berth serving"))
        .expect("a startup line");
    assert!(line.contains("mirrors docker.io (http://127.0.0.1:9)"), "{line}");
    assert!(line.contains("auth on (token"), "{line}");
}

#[tokio::test]
async fn docker_push_in_read_only_mode_stops_at_once_with_the_message_while_docker_pull_works() {
    let dir = tempfile::tempdir().unwrap();
    let b = Berth::start("");
    let d = support::Dockerd::start(&[]);
    let image = format!("{}/team/app:1", b.addr);
    let tar = support::rootfs_tar(dir.path(), "read-only test");
    d.ok(&["import", tar.to_str().unwrap(), &image]);
    d.ok(&["push", &image]);

    switch_read_only(&b, true);
    wait_for_push_status(&b, StatusCode::METHOD_NOT_ALLOWED).await;
    // A new layer: the push fails at its first upload; docker does not retry an UNSUPPORTED.
    let other = format!("{}/team/other:1", b.addr);
    std::fs::write(dir.path().join("rootfs/etc/berth-test"), "another layer").unwrap();
    run(Command::new("tar")
        .arg("-cf")
        .arg(&tar)
        .arg("-C")
        .arg(dir.path().join("rootfs"))
        .arg("."));
    d.ok(&["import", tar.to_str().unwrap(), &other]);
    let started = Instant::now();
    let err = d
        .try_docker(&["push", &other])
        .expect_err("a push in read-only mode fails");
    assert!(err.contains("read-only mode"), "docker shows berth's message: {err}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "no retries: {:?}",
        started.elapsed()
    );
    d.ok(&["rmi", &image]);
    d.ok(&["pull", &image]);

    switch_read_only(&b, false);
    wait_for_push_status(&b, StatusCode::CREATED).await;
    d.ok(&["push", &other]);
}

#[tokio::test]
async fn the_web_ui_hides_delete_in_read_only_mode_and_refuses_a_form_sent_before() {
    let b = Berth::start("");
    push_image(&b.url, "team/app", "1", &[b"ui layer"]).await;
    let (cookie, csrf) = ui_delete_form(&b.url, "team/app").await;

    switch_read_only(&b, true);
    wait_for_push_status(&b, StatusCode::METHOD_NOT_ALLOWED).await;
    let r = client()
        .get(b.at("/ui/repo?name=team/app"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    let html = r.text().await.unwrap();
    assert!(
        html.contains("team/app") && !html.contains("/ui/delete"),
        "no delete button"
    );
    let r = ui_delete(&b.url, &cookie, &csrf, "team/app", "1").await;
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert!(r.text().await.unwrap().contains("read-only mode"));
    manifest_json(&b.url, "team/app", "1").await;
}
