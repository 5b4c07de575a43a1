//! Private registry security: TLS with docker login/push/pull, access control, skopeo and token
//! flow clients, client rate limits, and hostile input that must get a clean 4xx and change
//! nothing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::support;
use crate::support::client::{client, client_from, error_code, header, raw_request};
use crate::support::in_process::App;
use crate::support::tls::{TestCa, served_serial};
use crate::support::{Berth, Dockerd, Hub, Server, htpasswd, run, sha256, upstream};
use reqwest::StatusCode;
use serde_json::Value;

const USERS: [(&str, &str); 3] = [("alice", "alice-pw"), ("bob", "bob-pw"), ("carol", "carol-pw")];

/// alice may do anything in team/*, bob (group readers) may pull there, carol nothing.
fn auth_toml(htpasswd: &Path, scheme: &str, anonymous_pull: bool) -> String {
    format!(
        r#"
[private]
namespaces = ["team/*"]
[auth]
htpasswd = "{}"
scheme = "{scheme}"
anonymous_pull = {anonymous_pull}
[auth.groups]
readers = ["bob"]
[[auth.access]]
repository = "team/*"
users = ["alice"]
actions = ["pull", "push", "delete"]
[[auth.access]]
repository = "team/*"
groups = ["readers"]
actions = ["pull"]
"#,
        htpasswd.display()
    )
}

#[tokio::test]
async fn docker_logs_in_pushes_and_pulls_over_tls_with_basic_and_token_auth() {
    for scheme in ["basic", "token"] {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new(dir.path());
        let pw = htpasswd(dir.path(), &USERS);
        let tls = format!(
            "[server.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
            ca.cert.display(),
            ca.key.display()
        );
        let b = Berth::start(&(tls + &auth_toml(&pw, scheme, true)));
        let mut d = Dockerd::start(&[]);
        d.trust_ca(&b.addr, &ca.ca);

        assert!(
            d.try_docker(&["login", "-u", "alice", "-p", "wrong", &b.addr]).is_err(),
            "{scheme}: a wrong password is refused"
        );
        d.ok(&["login", "-u", "alice", "-p", "alice-pw", &b.addr]);
        let image = format!("{}/team/app:1", b.addr);
        d.ok(&[
            "import",
            support::rootfs_tar(dir.path(), "private image").to_str().unwrap(),
            &image,
        ]);
        d.ok(&["push", &image]);
        d.ok(&["rmi", &image]);
        d.ok(&["pull", &image]);
        d.ok(&["logout", &b.addr]);
        d.ok(&["rmi", &image]);
        assert!(
            d.try_docker(&["pull", &image]).is_err(),
            "{scheme}: a private image needs a login"
        );
    }
}

fn tls_client(ca: &Path) -> reqwest::Client {
    berth::install_crypto_provider();
    let ca = reqwest::Certificate::from_pem(&std::fs::read(ca).unwrap()).unwrap();
    reqwest::Client::builder().tls_certs_only([ca]).build().unwrap()
}

#[tokio::test]
async fn tls_speaks_http2_and_reloads_the_certificate_on_sighup_and_on_change() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path());
    let b = Berth::start(&format!(
        "[server.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        ca.cert.display(),
        ca.key.display()
    ));
    let r = tls_client(&ca.ca)
        .get(format!("https://{}/v2/", b.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.version(), reqwest::Version::HTTP_2, "HTTP/2 over TLS");

    let first = served_serial(&b.addr, &ca.ca);
    assert!(!first.is_empty());
    let renewed = ca.issue();
    assert_ne!(renewed, first);
    run(Command::new("kill").args(["-HUP", &b.pid().to_string()]));
    assert!(
        wait_for(|| served_serial(&b.addr, &ca.ca) == renewed, 5),
        "SIGHUP reloads the certificate"
    );

    // A renewal that only replaces the files (certbot) is picked up without a signal.
    let again = ca.issue();
    assert!(
        wait_for(|| served_serial(&b.addr, &ca.ca) == again, 25),
        "a changed certificate file is reloaded"
    );
    assert!(b.log().contains("TLS certificate reloaded"));
}

fn wait_for(mut f: impl FnMut() -> bool, seconds: u64) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(seconds);
    while std::time::Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    false
}

async fn token(b: &Berth, user: Option<(&str, &str)>, scope: &str) -> reqwest::Response {
    let mut r = client().get(b.at(&format!("/token?service=berth&scope={scope}")));
    if let Some((u, p)) = user {
        r = r.basic_auth(u, Some(p));
    }
    r.send().await.unwrap()
}

async fn bearer(b: &Berth, user: (&str, &str), scope: &str) -> String {
    let r = token(b, Some(user), scope).await;
    assert_eq!(r.status(), StatusCode::OK);
    r.json::<Value>().await.unwrap()["token"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn access_control_challenges_refuses_and_allows_as_configured() {
    let hub = Hub::start();
    hub.seed(0);
    let dir = tempfile::tempdir().unwrap();
    let pw = htpasswd(dir.path(), &USERS);
    let b = Berth::start(&(auth_toml(&pw, "token", true) + &upstream(&hub.url, None)));
    let c = client();

    // Anonymous push: 401 with a Bearer challenge naming the scope.
    let r = c.post(b.at("/v2/team/app/blobs/uploads/")).send().await.unwrap();
    let challenge = header(&r, "www-authenticate");
    assert_eq!(error_code(r, StatusCode::UNAUTHORIZED).await, "UNAUTHORIZED");
    assert!(
        challenge.starts_with(&format!("Bearer realm=\"http://{}/token\"", b.addr)),
        "{challenge}"
    );
    assert!(
        challenge.contains("scope=\"repository:team/app:pull,push\""),
        "{challenge}"
    );

    // Wrong password: 401 at the login check and at the token endpoint.
    let r = c
        .get(b.at("/v2/"))
        .basic_auth("alice", Some("nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r, StatusCode::UNAUTHORIZED).await, "UNAUTHORIZED");
    assert_eq!(
        token(&b, Some(("alice", "nope")), "repository:team/app:pull,push")
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        c.get(b.at("/v2/"))
            .basic_auth("alice", Some("alice-pw"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );

    // alice pushes with a token.
    let alice = bearer(&b, ("alice", "alice-pw"), "repository:team/app:pull,push").await;
    let data = b"private layer";
    let digest = sha256(data);
    let r = c
        .post(b.at(&format!("/v2/team/app/blobs/uploads/?digest={digest}")))
        .bearer_auth(&alice)
        .body(data.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);

    // bob may pull but not push: his token grants pull only, and a push is forbidden.
    let bob = bearer(&b, ("bob", "bob-pw"), "repository:team/app:pull,push").await;
    let r = c
        .get(b.at(&format!("/v2/team/app/blobs/{digest}")))
        .bearer_auth(&bob)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = c
        .post(b.at("/v2/team/app/blobs/uploads/"))
        .bearer_auth(&bob)
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r, StatusCode::FORBIDDEN).await, "DENIED");
    let r = c
        .post(b.at("/v2/team/app/blobs/uploads/"))
        .basic_auth("bob", Some("bob-pw"))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r, StatusCode::FORBIDDEN).await, "DENIED");

    // carol may not read the private repository; anonymous clients are challenged.
    let r = c
        .get(b.at(&format!("/v2/team/app/blobs/{digest}")))
        .basic_auth("carol", Some("carol-pw"))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r, StatusCode::FORBIDDEN).await, "DENIED");
    let r = c
        .get(b.at(&format!("/v2/team/app/blobs/{digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    // Mirrored content: anonymous pulls work, and so do pulls carrying foreign (Docker Hub)
    // credentials, which a mirror client sends along.
    let r = c.get(b.at("/v2/library/alpine/manifests/latest")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = c
        .get(b.at("/v2/library/alpine/manifests/latest"))
        .basic_auth("hubuser", Some("hubpass"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        token(&b, Some(("hubuser", "hubpass")), "repository:library/alpine:pull")
            .await
            .status(),
        StatusCode::OK
    );

    // A push into a mirrored name: 403 with a message that says how to make it private.
    let alice_lib = bearer(&b, ("alice", "alice-pw"), "repository:library/alpine:pull,push").await;
    let r = c
        .post(b.at("/v2/library/alpine/blobs/uploads/"))
        .bearer_auth(&alice_lib)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "DENIED");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("[private] namespaces"),
        "{body}"
    );

    // A private repository never reaches the upstream, even for names the upstream might have.
    hub.reset_stats().await;
    let r = c
        .get(b.at("/v2/team/unknown/manifests/latest"))
        .basic_auth("alice", Some("alice-pw"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let stats = hub.stats().await;
    assert!(
        stats["requests"].as_object().unwrap().is_empty(),
        "no upstream request for a private name: {stats}"
    );

    // With anonymous_pull = false, mirrored content needs a login too.
    let closed = Berth::start(&(auth_toml(&pw, "token", false) + &upstream(&hub.url, None)));
    let r = c
        .get(closed.at("/v2/library/alpine/manifests/latest"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = c
        .get(closed.at("/v2/library/alpine/manifests/latest"))
        .basic_auth("carol", Some("carol-pw"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "logged-in users pull mirrored content");
    assert!(
        !b.log().contains("alice-pw") && !b.log().contains("hubpass"),
        "no password in the log"
    );
}

#[tokio::test]
async fn skopeo_with_creds_and_an_oci_client_token_flow() {
    support::require("skopeo");
    let hub = Hub::start_with(&["--cdn-host", "localhost"]);
    hub.seed(0);
    let dir = tempfile::tempdir().unwrap();
    let pw = htpasswd(dir.path(), &USERS);
    let b = Berth::start(&auth_toml(&pw, "token", true));
    let source = format!("docker://{}/library/alpine:latest", hub.addr());
    let dest = format!("docker://{}/team/alpine:1", b.addr);
    let skopeo = |args: &[&str]| Command::new("skopeo").args(args).output().unwrap();
    let denied = skopeo(&[
        "copy",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        "--dest-creds",
        "bob:bob-pw",
        &source,
        &dest,
    ]);
    assert!(!denied.status.success(), "bob may not push");
    run(Command::new("skopeo").args([
        "copy",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        "--dest-creds",
        "alice:alice-pw",
        &source,
        &dest,
    ]));
    let raw =
        run(Command::new("skopeo").args(["inspect", "--raw", "--tls-verify=false", "--creds", "bob:bob-pw", &dest]));
    assert!(raw.contains("schemaVersion"));
    assert!(
        !skopeo(&["inspect", "--tls-verify=false", &dest]).status.success(),
        "anonymous inspect of a private image fails"
    );

    // oci-client performs the Bearer token flow with the user's credentials.
    use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
    use oci_client::secrets::RegistryAuth;
    berth::install_crypto_provider();
    let oci = oci_client::Client::new(ClientConfig {
        protocol: ClientProtocol::Http,
        ..Default::default()
    });
    let reference: oci_client::Reference = format!("{}/team/tool:2", b.addr).parse().unwrap();
    let layers = vec![ImageLayer::new(
        b"tool layer".to_vec(),
        "application/vnd.oci.image.layer.v1.tar".into(),
        None,
    )];
    let config = Config::new(b"{}".to_vec(), "application/vnd.oci.image.config.v1+json".into(), None);
    let alice = RegistryAuth::Basic("alice".into(), "alice-pw".into());
    oci.push(&reference, &layers, config, &alice, None)
        .await
        .expect("push with a token");
    let fresh = oci_client::Client::new(ClientConfig {
        protocol: ClientProtocol::Http,
        ..Default::default()
    });
    let image = fresh
        .pull(
            &reference,
            &RegistryAuth::Basic("bob".into(), "bob-pw".into()),
            vec!["application/vnd.oci.image.layer.v1.tar"],
        )
        .await
        .expect("pull");
    assert_eq!(image.layers[0].data.as_ref(), b"tool layer");
}

#[tokio::test]
async fn a_burst_over_the_rate_limit_gets_429_and_other_clients_are_not_affected() {
    let b = App::start("[limits]\nrequests_per_second = 2\nburst = 5\n").await;
    let noisy = client();
    let mut limited = 0;
    for _ in 0..30 {
        let r = noisy.get(b.at("/v2/")).send().await.unwrap();
        if r.status() == StatusCode::TOO_MANY_REQUESTS {
            let retry_after: u64 = header(&r, "retry-after").parse().expect("Retry-After");
            assert!(retry_after >= 1);
            assert_eq!(error_code(r, StatusCode::TOO_MANY_REQUESTS).await, "TOOMANYREQUESTS");
            limited += 1;
        }
    }
    assert!(limited >= 20, "most of the burst is refused: {limited}");
    // Another client address on the loopback network is not affected.
    let other = client_from(2);
    for _ in 0..5 {
        assert_eq!(other.get(b.at("/v2/")).send().await.unwrap().status(), StatusCode::OK);
    }
}

/// Every file under the store root with its size (the metadata file aside), and the catalog.
async fn snapshot(b: &Berth, alice: &str) -> (Vec<(PathBuf, u64)>, String) {
    let files = support::store_layout::files_with_sizes(&b.root);
    let catalog = client()
        .get(b.at("/v2/_catalog"))
        .bearer_auth(alice)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    (files, catalog)
}

#[tokio::test]
async fn hostile_requests_get_a_clean_4xx_and_leave_the_store_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let pw = htpasswd(dir.path(), &USERS);
    let b = Berth::start(&auth_toml(&pw, "token", true));
    let c = client();
    let alice = bearer(
        &b,
        ("alice", "alice-pw"),
        "repository:team/app:pull,push registry:catalog:*",
    )
    .await;
    let digest = {
        let data = b"committed layer";
        let d = sha256(data);
        let r = c
            .post(b.at(&format!("/v2/team/app/blobs/uploads/?digest={d}")))
            .bearer_auth(&alice)
            .body(data.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        d
    };
    let r = c
        .post(b.at("/v2/team/app/blobs/uploads/"))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    let session = header(&r, "location");
    let r = c
        .patch(b.at(&session))
        .bearer_auth(&alice)
        .header("content-range", "0-9")
        .body(vec![1u8; 10])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let before = snapshot(&b, &alice).await;

    let auth = format!("Authorization: Bearer {alice}\r\n");
    let raw = |method: &str, path: &str, extra: &str| {
        raw_request(
            &b.addr,
            &format!(
                "{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}{extra}Connection: close\r\nContent-Length: 0\r\n\r\n"
            ),
        )
    };
    let long_name = "a".repeat(300);
    for (method, path) in [
        ("GET", "/v2/../../etc/passwd/manifests/latest".to_owned()),
        ("GET", "/v2/%2e%2e/%2e%2e/etc/manifests/passwd".to_owned()),
        ("PUT", "/v2/team/%2e%2e/x/manifests/latest".to_owned()),
        ("GET", "/v2//etc/passwd/manifests/latest".to_owned()),
        ("POST", "/v2/team/../../tmp/blobs/uploads/".to_owned()),
        ("GET", format!("/v2/team/{long_name}/tags/list")),
        ("GET", "/v2/team/app/blobs/sha256:../../../../etc/passwd".to_owned()),
        ("GET", "/v2/team/app/manifests/sha256:abc".to_owned()),
        (
            "PUT",
            "/v2/team/app/blobs/uploads/../../../meta.redb?digest=sha256:00".to_owned(),
        ),
    ] {
        let (status, text) = raw(method, &path, "");
        assert!((400..500).contains(&status), "{method} {path}: {status}\n{text}");
        assert!(
            text.contains("\"errors\"") || status == 404,
            "{method} {path}: OCI error JSON\n{text}"
        );
    }
    let r = c
        .post(b.at("/v2/team/app/blobs/uploads/?digest=sha256:zzz"))
        .bearer_auth(&alice)
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r, StatusCode::BAD_REQUEST).await, "DIGEST_INVALID");

    // Huge headers.
    let (status, _) = raw("GET", "/v2/", &format!("X-Junk: {}\r\n", "j".repeat(1 << 20)));
    assert!((400..500).contains(&status), "huge header: {status}");
    // A huge manifest.
    let huge = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","annotations":{{"x":"{}"}}}}"#,
        "m".repeat(5 << 20)
    );
    let r = c
        .put(b.at("/v2/team/app/manifests/huge"))
        .bearer_auth(&alice)
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    // A chunk longer than its declared range.
    let r = c
        .patch(b.at(&session))
        .bearer_auth(&alice)
        .header("content-range", "10-19")
        .body(vec![2u8; 100])
        .send()
        .await
        .unwrap();
    assert!(r.status().is_client_error(), "{}", r.status());
    // A blob upload to a repository the user may not write (bob reads team/*).
    let bob = bearer(&b, ("bob", "bob-pw"), "repository:team/app:pull,push").await;
    let r = c
        .post(b.at(&format!("/v2/team/app/blobs/uploads/?digest={}", sha256(b"bob"))))
        .bearer_auth(&bob)
        .body("bob")
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r, StatusCode::FORBIDDEN).await, "DENIED");

    assert_eq!(snapshot(&b, &alice).await, before, "the store is unchanged");
    let r = c
        .get(b.at(&format!("/v2/team/app/blobs/{digest}")))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(sha256(&r.bytes().await.unwrap()), digest);
}
