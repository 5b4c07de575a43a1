//! What people coming from `registry:2` do, run as they write it against berth's default config
//! (Docker Hub as the upstream, played by the project's hub emulator; no `[private]` namespaces):
//! `docker push` to fresh names, the v2 API with curl, delete by digest, garbage collection,
//! removing a repository, and the delete script of one of their write-ups, kept verbatim in
//! `tests/fixtures/registry-image-delete.sh`. Also: which pushes stay refused and why, and the
//! maintenance commands with nothing but the config file.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, SystemTime};

use crate::support;
use crate::support::client::{client, header, push_image};
use crate::support::tls::TestCa;
use crate::support::{Berth, Dockerd, Hub, run, store_layout};
use reqwest::StatusCode;
use serde_json::{Value, json};

const SCHEMA2: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// The default config, with Docker Hub's address pointed at the emulator.
fn default_config(hub: &Hub, extra: &str) -> Berth {
    Berth::start(&format!(
        "[[upstream]]\nname = \"docker.io\"\nurl = \"{}\"\ntimeout = \"5s\"\n{extra}",
        hub.url
    ))
}

fn curl(args: &[&str]) -> String {
    support::require("curl");
    run(Command::new("curl").args(args))
}

/// The status code of `curl -X METHOD URL` with `extra` options.
fn curl_status(method: &str, url: &str, extra: &[&str]) -> String {
    let mut args = vec!["-sS", "-o", "/dev/null", "-w", "%{http_code}", "-X", method, url];
    args.extend_from_slice(extra);
    curl(&args)
}

/// A response header's value from `curl -I` output.
fn header_of(curl_head: &str, name: &str) -> String {
    curl_head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
        .unwrap_or_else(|| panic!("no {name} in:\n{curl_head}"))
}

fn json_of(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// The digests on report lines starting with `prefix` (e.g. `blob deleted: `).
fn listed(report: &str, prefix: &str) -> BTreeSet<String> {
    report
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with("sha256:")))
        .map(str::to_owned)
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// The config and layer digests of a schema2 manifest JSON.
fn parts(manifest: &Value) -> (String, String) {
    (
        manifest["config"]["digest"].as_str().unwrap().to_owned(),
        manifest["layers"][0]["digest"].as_str().unwrap().to_owned(),
    )
}

/// Run the seed's delete script verbatim; its exit code and stdout. A person copies what it
/// prints from a terminal, where the `\r` that `curl -I` leaves on the digest does not show.
fn delete_script(args: &[&str]) -> (i32, String) {
    support::require("jq");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/registry-image-delete.sh");
    let out = Command::new("bash").arg(script).args(args).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).replace('\r', "");
    (out.status.code().unwrap_or(-1), stdout)
}

#[tokio::test]
async fn the_registry2_seed_workflows_run_as_written_on_the_default_config() {
    let hub = Hub::start(); // an empty Docker Hub: nothing of these names is upstream
    let b = default_config(&hub, "");
    let d = Dockerd::start(&[]);
    let (host, uri) = (b.addr.as_str(), b.url.as_str()); // the seeds' localhost:5000
    // `docker pull alpine` and `alpine:3.13`, made locally (no Docker Hub here).
    let work = tempfile::tempdir().unwrap();
    for (tag, marker) in [("alpine:latest", "alpine latest"), ("alpine:3.13", "alpine 3.13")] {
        let dir = work.path().join(marker.replace(' ', "-"));
        std::fs::create_dir_all(&dir).unwrap();
        let tar = support::rootfs_tar(&dir, marker);
        d.ok(&["import", tar.to_str().unwrap(), tag]);
    }
    let image = |name: &str| format!("{host}/{name}");

    // --- Seed 000: a quick push, the API, delete by digest, gc, remove the repository. ---
    d.ok(&["tag", "alpine:latest", &image("my-alpine")]);
    let pushed = d.ok(&["push", &image("my-alpine")]);
    d.ok(&["rmi", &image("my-alpine")]);
    d.ok(&["pull", &image("my-alpine")]);
    assert_eq!(json_of(&curl(&["-sS", &format!("{uri}/v2/")])), json!({}));
    assert_eq!(
        json_of(&curl(&["-sS", &format!("{uri}/v2/my-alpine/tags/list")])),
        json!({"name": "my-alpine", "tags": ["latest"]})
    );
    assert_eq!(
        json_of(&curl(&["-sS", &format!("{uri}/v2/_catalog")])),
        json!({"repositories": ["my-alpine"]})
    );
    let accept = format!("Accept: {SCHEMA2}");
    let manifest = json_of(&curl(&[
        "-sS",
        "-H",
        &accept,
        &format!("{uri}/v2/my-alpine/manifests/latest"),
    ]));
    assert_eq!(manifest["mediaType"], SCHEMA2, "{manifest}");
    let (config, layer) = parts(&manifest);
    let head = curl(&[
        "-sS",
        "-I",
        "-H",
        &accept,
        &format!("{uri}/v2/my-alpine/manifests/latest"),
    ]);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(header_of(&head, "Content-Type"), SCHEMA2);
    let digest = header_of(&head, "Docker-Content-Digest");
    assert!(
        pushed.contains(&format!("digest: {digest}")),
        "docker push printed it:\n{pushed}"
    );
    let status = |method: &str, path: &str| curl_status(method, &format!("{uri}{path}"), &[]);
    assert_eq!(status("DELETE", &format!("/v2/my-alpine/manifests/{digest}")), "202");
    let tags = json_of(&curl(&["-sS", &format!("{uri}/v2/my-alpine/tags/list")]));
    assert!(!tags.to_string().contains("latest"), "{tags}");
    let config_json = json_of(&curl(&["-sS", &format!("{uri}/v2/my-alpine/blobs/{config}")]));
    assert_eq!(config_json["rootfs"]["type"], "layers", "{config_json}");
    assert_eq!(status("DELETE", &format!("/v2/my-alpine/blobs/{config}")), "202");
    // It was just served (from memory, for a small blob); deleted, it is gone at once.
    assert_eq!(status("GET", &format!("/v2/my-alpine/blobs/{config}")), "404");
    assert_eq!(status("DELETE", &format!("/v2/my-alpine/blobs/{layer}")), "202");

    // The default grace period holds the garbage back, and the dry run says until when.
    let garbage = set(&[&digest, &config, &layer]);
    let dry = b.cli_ok(&["gc", "--dry-run"]);
    assert!(dry.contains("0 blobs marked, 0 blobs eligible for deletion"), "{dry}");
    assert_eq!(listed(&dry, "blob eligible for deletion: "), BTreeSet::new(), "{dry}");
    assert_eq!(listed(&dry, "blob held back until "), garbage, "{dry}");
    for line in dry.lines().filter(|l| l.starts_with("blob held back until ")) {
        let at = line["blob held back until ".len()..].split(' ').next().unwrap();
        let at = humantime::parse_rfc3339(at).unwrap_or_else(|e| panic!("{e}: {line}"));
        let wait = at.duration_since(SystemTime::now()).unwrap_or_default();
        assert!(
            wait > Duration::from_secs(50 * 60) && wait <= Duration::from_secs(3600),
            "eligible one hour after the delete: {line}"
        );
    }
    assert!(dry.contains("--grace 0s"), "the way out is named:\n{dry}");
    // `--grace 0s` for one run, done by the running server.
    let dry = b.cli_ok(&["gc", "--dry-run", "--grace", "0s"]);
    assert!(dry.contains("0 blobs marked, 3 blobs eligible for deletion"), "{dry}");
    assert_eq!(listed(&dry, "blob eligible for deletion: "), garbage, "{dry}");
    assert!(store_layout::has_blob(&b.root, &layer), "a dry run removes nothing");
    let real = b.cli_ok(&["gc", "--grace", "0s"]);
    assert_eq!(listed(&real, "blob deleted: "), garbage, "{real}");
    for d in &garbage {
        assert!(!store_layout::has_blob(&b.root, d), "{d} is gone from the disk");
    }
    // "Deleting un-wanted repository", without stopping the registry or touching its files.
    let out = b.cli_ok(&["delete", "--repository", "my-alpine"]);
    assert!(out.contains("removed repository my-alpine"), "{out}");
    assert_eq!(
        json_of(&curl(&["-sS", &format!("{uri}/v2/_catalog")])),
        json!({"repositories": []})
    );
    let ui = curl(&["-sS", &format!("{uri}/ui")]);
    assert!(!ui.contains("my-alpine"), "gone from the UI:\n{ui}");
    assert!(
        d.try_docker(&["pull", &image("my-alpine")]).is_err(),
        "the name is a mirror of Docker Hub again, which has no my-alpine"
    );

    // --- Seed 003: push alpine, search the catalog. ---
    d.ok(&["tag", "alpine", &image("alpine")]);
    d.ok(&["push", &image("alpine")]);
    assert_eq!(
        json_of(&curl(&["-sS", &format!("{uri}/v2/_catalog")])),
        json!({"repositories": ["alpine"]})
    );
    assert_eq!(
        json_of(&curl(&["-sS", &format!("{uri}/v2/alpine/tags/list")])),
        json!({"name": "alpine", "tags": ["latest"]})
    );

    // --- Seed 004: cdecl/alpine:3.13 and :latest, delete by digest, the delete script. ---
    d.ok(&["tag", "alpine", &image("cdecl/alpine:latest")]);
    d.ok(&["tag", "alpine:3.13", &image("cdecl/alpine:3.13")]);
    d.ok(&["push", &image("cdecl/alpine:3.13")]);
    d.ok(&["push", &image("cdecl/alpine:latest")]);
    assert_eq!(
        json_of(&curl(&["-s", &format!("{uri}/v2/_catalog")])),
        json!({"repositories": ["alpine", "cdecl/alpine"]})
    );
    let tags = json_of(&curl(&["-s", &format!("{uri}/v2/cdecl/alpine/tags/list")]));
    assert_eq!(tags["name"], "cdecl/alpine");
    let names: BTreeSet<String> = tags["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, set(&["3.13", "latest"]));
    let pulled = d.ok(&["pull", &image("cdecl/alpine")]);
    let head = curl(&[
        "-s",
        "-I",
        "-H",
        &accept,
        &format!("{uri}/v2/cdecl/alpine/manifests/latest"),
    ]);
    let latest = header_of(&head, "Docker-Content-Digest");
    assert!(pulled.contains(&latest), "{pulled}");
    let get = |tag: &str| {
        json_of(&curl(&[
            "-s",
            "-H",
            &accept,
            &format!("{uri}/v2/cdecl/alpine/manifests/{tag}"),
        ]))
    };
    let ((latest_config, latest_layer), (old_config, old_layer)) = (parts(&get("latest")), parts(&get("3.13")));
    let old = header_of(
        &curl(&[
            "-s",
            "-I",
            "-H",
            &accept,
            &format!("{uri}/v2/cdecl/alpine/manifests/3.13"),
        ]),
        "Docker-Content-Digest",
    );
    curl(&["-s", "-XDELETE", &format!("{uri}/v2/cdecl/alpine/manifests/{latest}")]);
    assert_eq!(
        json_of(&curl(&["-s", &format!("{uri}/v2/cdecl/alpine/tags/list")])),
        json!({"name": "cdecl/alpine", "tags": ["3.13"]})
    );
    // Instead of `rm -rf .../repositories/cdecl` in the registry's container:
    b.cli_ok(&["delete", "--repository", "cdecl/alpine"]);

    // The script, as its author wrote it: list repositories, list tags, print the delete.
    let (code, out) = delete_script(&[uri]);
    assert_eq!(
        (code, out.lines().filter(|l| !l.is_empty()).skip(1).collect::<Vec<_>>()),
        (255, vec!["alpine"]),
        "{out}"
    );
    let (code, out) = delete_script(&[uri, "alpine"]);
    assert_eq!((code, out.contains("\nlatest\n")), (255, true), "{out}");
    let (code, out) = delete_script(&[uri, "cdecl/alpine", "3.13"]);
    assert_eq!(code, 255, "{out}");
    assert!(
        out.contains("No manifest found for cdecl/alpine:3.13"),
        "the removed repository is gone:\n{out}"
    );
    let (code, out) = delete_script(&[uri, "alpine", "latest"]);
    assert_eq!(code, 0, "{out}");
    let command = format!("curl -sS -XDELETE {uri}/v2/alpine/manifests/{latest}");
    assert!(
        out.starts_with(&format!("{latest}\n")) && out.contains(&command),
        "{out}"
    );
    run(Command::new("bash").args(["-c", &command]));
    let tags = json_of(&curl(&["-s", &format!("{uri}/v2/alpine/tags/list")]));
    assert!(!tags.to_string().contains("latest"), "{tags}");

    // Nothing references any image now: gc lists all six blobs, then removes exactly those.
    let garbage = set(&[&latest, &latest_config, &latest_layer, &old, &old_config, &old_layer]);
    let dry = b.cli_ok(&["gc", "--dry-run", "--grace", "0s"]);
    assert_eq!(listed(&dry, "blob eligible for deletion: "), garbage, "{dry}");
    let real = b.cli_ok(&["gc", "--grace", "0s"]);
    assert_eq!(listed(&real, "blob deleted: "), garbage, "{real}");
    assert_eq!(store_layout::blob_files(&b.root), 0, "no blob file is left");
}

/// The message of a refused push (403 DENIED) to `repo`.
async fn refused_push(b: &Berth, repo: &str) -> String {
    let r = client()
        .post(b.at(&format!("/v2/{repo}/blobs/uploads/")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN, "a push to {repo} is refused");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "DENIED", "{body}");
    body["errors"][0]["message"].as_str().unwrap().to_owned()
}

/// A manifest GET's status and digest.
async fn manifest_digest(b: &Berth, repo: &str, tag: &str) -> (StatusCode, String) {
    let r = client()
        .get(b.at(&format!("/v2/{repo}/manifests/{tag}")))
        .header("accept", SCHEMA2)
        .send()
        .await
        .unwrap();
    (r.status(), header(&r, "docker-content-digest"))
}

#[tokio::test]
async fn pushes_never_take_over_what_mirror_clients_get_and_each_refusal_names_a_working_fix() {
    let hub = Hub::start();
    hub.seed(0);
    let b = default_config(&hub, "");
    // Mirror clients fill the cache: `docker pull alpine` asks for library/alpine.
    let (status, hub_alpine) = manifest_digest(&b, "library/alpine", "latest").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(manifest_digest(&b, "myorg/tool", "1.0").await.0, StatusCode::OK);

    // Docker Hub's official-images namespace is never claimed, cached or not.
    for repo in ["library/alpine", "library/never-pulled"] {
        let message = refused_push(&b, repo).await;
        let rest = repo.trim_start_matches("library/");
        assert!(
            message.contains("official-images") && message.contains(&format!("push it as {rest} instead")),
            "{message}"
        );
        assert!(
            message.contains(&format!("add \"{repo}\" to [private] namespaces")),
            "{message}"
        );
    }
    let r = support::client::put_manifest(&b.url, "library/alpine", "latest", SCHEMA2, b"{}").await;
    assert_eq!(
        r.status(),
        StatusCode::FORBIDDEN,
        "nor may a manifest replace the cached one"
    );

    // A name holding cached content stays a mirror; the fix the message names works.
    let message = refused_push(&b, "myorg/tool").await;
    assert!(
        message.contains("cached from upstream docker.io") && message.contains("berth delete --repository myorg/tool"),
        "{message}"
    );
    b.cli_ok(&["delete", "--repository", "myorg/tool"]);
    push_image(&b.url, "myorg/tool", "mine", &[b"our own tool"]).await;

    // A pushed `alpine` is its own repository: mirror clients still get Docker Hub's.
    push_image(&b.url, "alpine", "mine", &[b"our own alpine"]).await;
    assert_eq!(manifest_digest(&b, "alpine", "mine").await.0, StatusCode::OK);
    assert_eq!(
        manifest_digest(&b, "library/alpine", "latest").await,
        (StatusCode::OK, hub_alpine.clone()),
        "what `docker pull alpine` through the mirror gets is unchanged"
    );
    assert_eq!(
        manifest_digest(&b, "alpine", "latest").await.0,
        StatusCode::NOT_FOUND,
        "<berth>/alpine is the pushed repository now, which has no :latest"
    );
    // Removed, the private name is a mirror again.
    b.cli_ok(&["delete", "--repository", "alpine"]);
    assert_eq!(
        manifest_digest(&b, "alpine", "latest").await,
        (StatusCode::OK, hub_alpine),
        "Docker Hub's alpine again"
    );
}

#[tokio::test]
async fn with_claiming_off_only_namespaces_take_pushes_and_the_suggested_pattern_works() {
    let hub = Hub::start();
    for (repo, expected) in [("my-alpine", "\"my-alpine\""), ("cdecl/alpine", "\"cdecl/alpine\"")] {
        let b = default_config(&hub, "[private]\nclaim_on_push = false\n");
        let message = refused_push(&b, repo).await;
        assert!(message.contains("claim_on_push = false"), "{message}");
        assert!(
            !message.contains("my-alpine/*"),
            "a pattern that would not match: {message}"
        );
        // Take the pattern the message suggests, literally, and use it.
        let pattern = message
            .split("add ")
            .nth(1)
            .and_then(|s| s.split(' ').next())
            .unwrap_or_else(|| panic!("{message}"));
        assert_eq!(pattern, expected);
        drop(b);
        let b = default_config(
            &hub,
            &format!("[private]\nclaim_on_push = false\nnamespaces = [{pattern}]\n"),
        );
        push_image(&b.url, repo, "1", &[b"layer"]).await;
        let other = refused_push(&b, "someone-else").await;
        assert!(other.contains("add \"someone-else\""), "{other}");
    }
}

/// `berth ARGS` with nothing but the config path: an empty environment (no upstream password,
/// no TLS variables) and a working directory of its own.
fn berth_alone(config: &Path, args: &[&str]) -> Output {
    let elsewhere = tempfile::tempdir().unwrap();
    Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(args)
        .arg("--config")
        .arg(config)
        .env_clear()
        .current_dir(elsewhere.path())
        .output()
        .unwrap()
}

fn alone_ok(config: &Path, args: &[&str]) -> String {
    support::succeeded(&berth_alone(config, args), args)
}

/// Its stderr, asserting it failed with a sentence rather than JSON.
fn alone_err(config: &Path, args: &[&str]) -> String {
    let out = berth_alone(config, args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "berth {args:?} should fail");
    assert!(!stderr.contains('{'), "a sentence, not JSON: {stderr}");
    stderr
}

#[tokio::test]
async fn gc_du_and_delete_need_only_the_config_file_against_a_tls_server_and_a_stopped_store() {
    let secret = ("TEST_HUB_PASSWORD", "s3cret");
    let b = Berth::start_with_env(
        "[[upstream]]\nname = \"docker.io\"\nurl = \"http://127.0.0.1:9\"\nusername = \"me\"\npassword_env = \"TEST_HUB_PASSWORD\"\n",
        &[secret],
    );
    push_image(&b.url, "team/app", "1", &[b"shared", b"only in 1"]).await;
    push_image(&b.url, "team/app", "2", &[b"shared", b"only in 2"]).await;
    push_image(&b.url, "team/other", "1", &[b"other"]).await;
    // The server now terminates TLS with settings from its environment only.
    let tls_dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(tls_dir.path());
    let (cert, key) = (ca.cert.to_str().unwrap(), ca.key.to_str().unwrap());
    let mut b = b;
    b.restart_with_env(&[secret, ("BERTH_SERVER_TLS_CERT", cert), ("BERTH_SERVER_TLS_KEY", key)]);
    let v2 = curl(&[
        "-sS",
        "--cacert",
        ca.ca.to_str().unwrap(),
        &format!("https://{}/v2/", b.addr),
    ]);
    assert_eq!(json_of(&v2), json!({}), "the server speaks TLS");
    let cacert = ["--cacert", ca.ca.to_str().unwrap()];
    let over_http = curl_status("POST", &format!("https://{}/_berth/gc", b.addr), &cacert);
    assert_eq!(over_http, "404", "administration is not on the network listener");
    let socket = b.root.join("admin.sock");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&socket).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "the admin socket is owner-only");

    let du = alone_ok(&b.config, &["du"]);
    assert!(du.contains("team/app") && du.contains("private"), "{du}");
    let bare = alone_err(&b.config, &["delete", "team/app"]);
    assert!(
        bare.contains("no tag or digest") && bare.contains("team/app:TAG"),
        "{bare}"
    );
    let unknown = alone_err(&b.config, &["delete", "team/app:9"]);
    assert!(unknown.contains("manifest 9 is not known"), "{unknown}");
    alone_ok(&b.config, &["delete", "team/app:1"]);
    let only_in_1 = support::sha256(b"only in 1");
    let dry = alone_ok(&b.config, &["gc", "--dry-run", "--grace", "0s"]);
    assert!(
        listed(&dry, "blob eligible for deletion: ").contains(&only_in_1),
        "{dry}"
    );
    let real = alone_ok(&b.config, &["gc", "--grace", "0s"]);
    assert!(listed(&real, "blob deleted: ").contains(&only_in_1), "{real}");
    assert!(!store_layout::has_blob(&b.root, &only_in_1));

    // Stopped: the same commands open the store directly.
    b.stop();
    assert!(!socket.exists(), "the socket goes with the server");
    let du = alone_ok(&b.config, &["du"]);
    assert!(du.contains("team/other"), "{du}");
    let out = alone_ok(&b.config, &["delete", "--repository", "team/app"]);
    assert!(out.contains("removed repository team/app"), "{out}");
    let gone = alone_err(&b.config, &["delete", "--repository", "team/app"]);
    assert!(gone.contains("repository team/app is not known"), "{gone}");
    let real = alone_ok(&b.config, &["gc", "--grace", "0s"]);
    assert!(
        listed(&real, "blob deleted: ").contains(&support::sha256(b"shared")),
        "{real}"
    );
    // A relative root in the file means beside the file, from any working directory.
    let relative = b.config.with_file_name("relative.toml");
    std::fs::write(&relative, "upstream = []\n[storage]\nroot = \"data\"\n").unwrap();
    assert!(alone_ok(&relative, &["du"]).contains("team/other"));

    // A config whose store does not exist: a clear error, and no empty store made.
    let missing = tls_dir.path().join("nowhere");
    let config = tls_dir.path().join("missing.toml");
    std::fs::write(&config, format!("[storage]\nroot = \"{}\"\n", missing.display())).unwrap();
    for args in [&["gc"][..], &["du"], &["delete", "team/app:1"]] {
        let err = alone_err(&config, args);
        assert!(
            err.contains("no berth store at") && err.contains("nowhere"),
            "{args:?}: {err}"
        );
    }
    assert!(!missing.exists(), "nothing was created");
}

#[tokio::test]
async fn the_web_ui_removes_a_repository_for_its_admins_only_and_gc_reclaims_its_blobs() {
    use support::htpasswd;
    use support::ui::{form, input_value, session_cookie};
    let dir = tempfile::tempdir().unwrap();
    let pw = htpasswd(dir.path(), &[("admin", "admin-pass"), ("viewer", "viewer-pass")]);
    let mut b = Berth::start(
        "[auth]\nscheme = \"basic\"\n\
         [[auth.access]]\nrepository = \"team/*\"\nusers = [\"admin\"]\nactions = [\"pull\", \"push\", \"delete\"]\n\
         [[auth.access]]\nrepository = \"team/*\"\nusers = [\"viewer\"]\nactions = [\"pull\"]\n",
    );
    push_image(&b.url, "team/app", "1", &[b"only team/app has this"]).await;
    push_image(&b.url, "team/keep", "1", &[b"team/keep's layer"]).await;
    b.restart_with_env(&[("BERTH_AUTH_HTPASSWD", pw.to_str().unwrap())]);

    let c = client();
    let page = b.at("/ui/repo?name=team/app");
    let open = |user: &'static str, password: &'static str| c.get(&page).basic_auth(user, Some(password)).send();
    let r = open("viewer", "viewer-pass").await.unwrap();
    let viewer_cookie = session_cookie(&r);
    assert!(
        !r.text().await.unwrap().contains("/ui/remove"),
        "a viewer gets no remove form"
    );
    let r = open("admin", "admin-pass").await.unwrap();
    let admin_cookie = session_cookie(&r);
    let html = r.text().await.unwrap();
    assert!(html.contains("action=\"/ui/remove\""), "the admin gets the remove form");
    let csrf = input_value(&html, "csrf").unwrap();

    let remove = |user: &'static str, password: &'static str, cookie: &str, origin: &str, confirm: &str| {
        c.post(b.at("/ui/remove"))
            .basic_auth(user, Some(password))
            .header("origin", origin.to_owned())
            .header("cookie", cookie.to_owned())
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form(&[("repo", "team/app"), ("csrf", &csrf), ("confirm", confirm)]))
            .send()
    };
    let tags = || {
        c.get(b.at("/v2/team/app/tags/list"))
            .basic_auth("admin", Some("admin-pass"))
            .send()
    };
    for (user, password, cookie, origin, confirm, status) in [
        (
            "viewer",
            "viewer-pass",
            &viewer_cookie,
            b.url.as_str(),
            "team/app",
            StatusCode::FORBIDDEN,
        ),
        (
            "viewer",
            "viewer-pass",
            &admin_cookie,
            b.url.as_str(),
            "team/app",
            StatusCode::FORBIDDEN,
        ),
        (
            "admin",
            "admin-pass",
            &admin_cookie,
            "http://evil.example",
            "team/app",
            StatusCode::FORBIDDEN,
        ),
        (
            "admin",
            "admin-pass",
            &admin_cookie,
            b.url.as_str(),
            "team/ap",
            StatusCode::BAD_REQUEST,
        ),
    ] {
        let r = remove(user, password, cookie, origin, confirm).await.unwrap();
        assert_eq!(r.status(), status, "{user} from {origin} typing {confirm}");
        assert_eq!(
            tags().await.unwrap().status(),
            StatusCode::OK,
            "team/app is still there"
        );
    }
    let r = remove("admin", "admin-pass", &admin_cookie, &b.url, "team/app")
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.text().await.unwrap().contains("Removed team/app"));
    assert_eq!(
        tags().await.unwrap().status(),
        StatusCode::NOT_FOUND,
        "gone from the API"
    );
    let as_admin = |path: &str| c.get(b.at(path)).basic_auth("admin", Some("admin-pass")).send();
    let catalog: Value = as_admin("/v2/_catalog").await.unwrap().json().await.unwrap();
    assert_eq!(catalog, json!({"repositories": ["team/keep"]}));
    let home = as_admin("/ui").await.unwrap().text().await.unwrap();
    assert!(
        home.contains("team/keep") && !home.contains("team/app"),
        "gone from the UI:\n{home}"
    );
    assert!(b.log().contains("repository removed in the web UI"));

    let real = b.cli_ok(&["gc", "--grace", "0s"]);
    let deleted = listed(&real, "blob deleted: ");
    assert!(deleted.contains(&support::sha256(b"only team/app has this")), "{real}");
    assert!(!deleted.contains(&support::sha256(b"team/keep's layer")), "{real}");
}
