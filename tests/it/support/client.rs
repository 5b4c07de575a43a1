//! Small raw-HTTP helpers for driving the registry API in tests.

use reqwest::{Client, Response, StatusCode};
use serde_json::{Value, json};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

pub fn client() -> Client {
    berth::install_crypto_provider();
    Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// A client whose requests come from `127.0.0.<last>`: another address on the loopback network,
/// as another machine's client.
pub fn client_from(last: u8) -> Client {
    berth::install_crypto_provider();
    Client::builder()
        .local_address(std::net::IpAddr::from([127, 0, 0, last]))
        .build()
        .unwrap()
}

/// The OCI error code of an error response, asserting its status.
pub async fn error_code(r: Response, status: StatusCode) -> String {
    assert_eq!(r.status(), status, "unexpected status for {}", r.url());
    let body: Value = r.json().await.expect("OCI error JSON body");
    body["errors"][0]["code"].as_str().expect("errors[0].code").to_owned()
}

/// An OCI error response: its status, `errors[0].code` and `errors[0].message`.
pub async fn oci_error(r: Response) -> (StatusCode, String, String) {
    let status = r.status();
    let body: Value = r.json().await.expect("OCI error JSON");
    let e = &body["errors"][0];
    let code = e["code"].as_str().expect("errors[0].code").to_owned();
    (
        status,
        code,
        e["message"].as_str().expect("errors[0].message").to_owned(),
    )
}

/// The value of one series (name and labels exactly as exposed) in `base`'s `/metrics`.
pub async fn metric(base: &str, series: &str) -> Option<f64> {
    let text = get_text(format!("{base}/metrics")).await;
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// [`metric`], 0 for a series not exposed yet (a counter nothing has counted).
pub async fn metric_or_zero(base: &str, series: &str) -> f64 {
    metric(base, series).await.unwrap_or(0.0)
}

/// A counter of `/stats` JSON (`stats[section][key]`), 0 when absent.
pub fn count(stats: &Value, section: &str, key: &str) -> u64 {
    stats[section][key].as_u64().unwrap_or(0)
}

pub fn header(r: &Response, name: &str) -> String {
    r.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

/// Monolithic upload of `bytes` to `repo`; returns the digest.
pub async fn push_blob(base: &str, repo: &str, bytes: &[u8]) -> String {
    let digest = super::sha256(bytes);
    let r = client()
        .post(format!("{base}/v2/{repo}/blobs/uploads/?digest={digest}"))
        .body(bytes.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED, "push blob");
    assert_eq!(header(&r, "docker-content-digest"), digest);
    digest
}

pub async fn put_manifest(base: &str, repo: &str, reference: &str, media_type: &str, body: &[u8]) -> Response {
    client()
        .put(format!("{base}/v2/{repo}/manifests/{reference}"))
        .header("content-type", media_type)
        .body(body.to_vec())
        .send()
        .await
        .unwrap()
}

/// A descriptor JSON value.
pub fn descriptor(media_type: &str, digest: &str, size: usize) -> Value {
    json!({ "mediaType": media_type, "digest": digest, "size": size })
}

/// Push a config and layers to `repo` and return an OCI image manifest over them (not pushed).
pub async fn image_manifest(base: &str, repo: &str, layers: &[&[u8]]) -> Vec<u8> {
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":[]}},"n":{}}}"#,
        layers.len()
    );
    let config_digest = push_blob(base, repo, config.as_bytes()).await;
    let mut descs = Vec::new();
    for l in layers {
        let d = push_blob(base, repo, l).await;
        descs.push(descriptor("application/vnd.oci.image.layer.v1.tar", &d, l.len()));
    }
    let m = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor("application/vnd.oci.image.config.v1+json", &config_digest, config.len()),
        "layers": descs,
    });
    serde_json::to_vec_pretty(&m).unwrap()
}

/// Push an image (config + layers + manifest) tagged `tag`; returns the manifest digest.
pub async fn push_image(base: &str, repo: &str, tag: &str, layers: &[&[u8]]) -> String {
    let m = image_manifest(base, repo, layers).await;
    let r = put_manifest(base, repo, tag, OCI_MANIFEST, &m).await;
    assert_eq!(r.status(), StatusCode::CREATED, "push manifest");
    header(&r, "docker-content-digest")
}

/// Send `request` verbatim over TCP and return the status and the raw response text. For paths an
/// HTTP client would normalise (`..`, `%2e%2e`) and for deliberately malformed requests.
pub fn raw_request(addr: &str, request: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, text)
}

/// GET a blob that the store must serve itself (`X-Berth-Cache: hit`, the upstream not asked); the
/// digest of the bytes that came.
pub async fn cached_blob_digest(base: &str, repo: &str, digest: &str) -> String {
    let r = client()
        .get(format!("{base}/v2/{repo}/blobs/{digest}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{repo}@{digest}");
    assert_eq!(
        header(&r, "x-berth-cache"),
        "hit",
        "{repo}@{digest} is served from the store"
    );
    super::sha256(&r.bytes().await.unwrap())
}

/// GET `url` and return its body as text.
pub async fn get_text(url: impl reqwest::IntoUrl) -> String {
    client().get(url).send().await.unwrap().text().await.unwrap()
}

/// GET `url` and decode its JSON body.
pub async fn get_json(url: impl reqwest::IntoUrl) -> serde_json::Value {
    client().get(url).send().await.unwrap().json().await.unwrap()
}

/// GET a manifest that must exist: its digest and its JSON.
pub async fn manifest_json(base: &str, repo: &str, reference: &str) -> (String, serde_json::Value) {
    let r = client()
        .get(format!("{base}/v2/{repo}/manifests/{reference}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{repo}:{reference}");
    (header(&r, "docker-content-digest"), r.json().await.unwrap())
}

/// Open the web UI's page of `repo` as a browser would: the session cookie and the delete form's
/// CSRF token (panics when the page offers no delete form).
pub async fn ui_delete_form(base: &str, repo: &str) -> (String, String) {
    let r = client()
        .get(format!("{base}/ui/repo?name={repo}"))
        .send()
        .await
        .unwrap();
    let cookie = header(&r, "set-cookie").split(';').next().unwrap().to_owned();
    let html = r.text().await.unwrap();
    assert!(html.contains("action=\"/ui/delete\""), "the page offers a delete form");
    let at = html.find("name=\"csrf\" value=\"").expect("a csrf field") + 19;
    let csrf = html[at..].split('"').next().unwrap().to_owned();
    (cookie, csrf)
}

/// Submit the web UI's delete form for `repo:tag`.
pub async fn ui_delete(base: &str, cookie: &str, csrf: &str, repo: &str, tag: &str) -> Response {
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs([("repo", repo), ("tag", tag), ("csrf", csrf)])
        .finish();
    client()
        .post(format!("{base}/ui/delete"))
        .header("origin", base)
        .header("cookie", cookie)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap()
}
