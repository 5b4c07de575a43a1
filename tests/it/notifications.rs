//! `[[notifications]]`: registry:2-style event envelopes for push, pull, delete and cache fill,
//! sent to a real HTTP receiver on 127.0.0.1; per-endpoint headers and ignore lists; and a dead
//! or hung endpoint that never slows a pull, with the delivered, failed and dropped counters.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support;
use crate::support::client::*;
use crate::support::in_process::App;
use crate::support::{Berth, Hub, Server, sha256};
use axum::body::Bytes;
use axum::http::HeaderMap;
use reqwest::StatusCode;
use serde_json::Value;

const ENVELOPE: &str = "application/vnd.docker.distribution.events.v1+json";

/// One POST the receiver got, per path.
#[derive(Clone, Debug)]
struct Delivery {
    path: String,
    content_type: String,
    authorization: String,
    body: Value,
}

/// A tiny event receiver (axum on 127.0.0.1) that keeps every POST. The first POST to a path
/// under `/flaky` gets a 500 (and is not kept), as from a receiver that restarts.
struct Receiver {
    url: String,
    got: Arc<Mutex<Vec<Delivery>>>,
}

impl Receiver {
    async fn start() -> Receiver {
        let got: Arc<Mutex<Vec<Delivery>>> = Arc::default();
        let keep = got.clone();
        let app = axum::Router::new().fallback(move |uri: axum::http::Uri, h: HeaderMap, body: Bytes| {
            let keep = keep.clone();
            async move {
                if uri.path().starts_with("/flaky") && !keep.lock().unwrap().iter().any(|d| d.path == "/flaky-refused")
                {
                    keep.lock().unwrap().push(Delivery {
                        path: "/flaky-refused".into(),
                        content_type: String::new(),
                        authorization: String::new(),
                        body: Value::Null,
                    });
                    return StatusCode::INTERNAL_SERVER_ERROR;
                }
                let text = |k: &str| h.get(k).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
                keep.lock().unwrap().push(Delivery {
                    path: uri.path().to_owned(),
                    content_type: text("content-type"),
                    authorization: text("authorization"),
                    body: serde_json::from_slice(&body).unwrap_or(Value::Null),
                });
                StatusCode::OK
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Receiver { url, got }
    }

    /// Every event delivered to `path`.
    fn events(&self, path: &str) -> Vec<Value> {
        let got = self.got.lock().unwrap();
        got.iter()
            .filter(|d| d.path == path)
            .flat_map(|d| d.body["events"].as_array().cloned().unwrap_or_default())
            .collect()
    }

    /// Wait until `ok` holds for the events at `path` (delivery is asynchronous).
    async fn wait(&self, path: &str, ok: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let events = self.events(path);
            if ok(&events) || Instant::now() > deadline {
                return events;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn find<'a>(events: &'a [Value], action: &str, pred: impl Fn(&Value) -> bool) -> Option<&'a Value> {
    events.iter().find(|e| e["action"] == action && pred(&e["target"]))
}

#[tokio::test]
async fn push_pull_delete_and_fill_events_arrive_in_the_registry2_envelope() {
    let hub = Hub::start();
    hub.seed(0);
    let rx = Receiver::start().await;
    let b = Berth::start(&format!(
        r#"
[private]
namespaces = ["team/*"]
[[upstream]]
name = "docker.io"
url = "{hub}"
timeout = "5s"
[[notifications]]
name = "all"
url = "{rx}/all"
headers = {{ Authorization = "Bearer hook-secret" }}
[[notifications]]
name = "quiet"
url = "{rx}/quiet"
ignored_actions = ["pull"]
ignored_media_types = ["application/octet-stream"]
"#,
        hub = hub.url,
        rx = rx.url
    ));
    let manifest = image_manifest(&b.url, "team/app", &[b"notified layer"]).await;
    let r = put_manifest(&b.url, "team/app", "1", OCI_MANIFEST, &manifest).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let digest = sha256(&manifest);
    let layer = sha256(b"notified layer");
    berth::install_crypto_provider();
    let c = reqwest::Client::builder()
        .user_agent("notify-test/1.0")
        .build()
        .unwrap();
    let r = c
        .get(b.at("/v2/team/app/manifests/1"))
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = c
        .get(b.at(&format!("/v2/team/app/blobs/{layer}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.bytes().await.unwrap().as_ref(), b"notified layer");
    // A cold pull of mirrored content: the manifest and a blob are filled from the hub.
    let (alpine, m) = manifest_json(&b.url, "library/alpine", "latest").await;
    let alpine_layer = m["layers"][0]["digest"]
        .as_str()
        .or(m["manifests"][0]["digest"].as_str())
        .unwrap()
        .to_owned();
    let kind = if m["layers"].is_array() { "blobs" } else { "manifests" };
    let r = c
        .get(b.at(&format!("/v2/library/alpine/{kind}/{alpine_layer}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    r.bytes().await.unwrap();
    let r = c.delete(b.at("/v2/team/app/manifests/1")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);

    let events = rx
        .wait("/all", |e| {
            find(e, "delete", |_| true).is_some() && e.iter().filter(|e| e["action"] == "fill").count() >= 2
        })
        .await;
    let deliveries = rx.got.lock().unwrap().clone();
    for d in deliveries.iter().filter(|d| d.path == "/all") {
        assert_eq!(d.content_type, ENVELOPE);
        assert_eq!(d.authorization, "Bearer hook-secret", "the endpoint's headers are sent");
    }

    let push = find(&events, "push", |t| t["digest"] == digest.as_str()).unwrap_or_else(|| panic!("{events:#?}"));
    let t = &push["target"];
    assert_eq!(t["mediaType"], OCI_MANIFEST);
    assert_eq!(t["size"], manifest.len());
    assert_eq!(t["length"], manifest.len());
    assert_eq!(t["repository"], "team/app");
    assert_eq!(t["tag"], "1");
    assert_eq!(t["url"], format!("{}/v2/team/app/manifests/{digest}", b.url));
    assert_eq!(push["request"]["method"], "PUT");
    assert_eq!(push["request"]["addr"], "127.0.0.1");
    assert_eq!(push["request"]["host"], b.addr.as_str());
    assert!(!push["request"]["id"].as_str().unwrap().is_empty());
    assert!(!push["id"].as_str().unwrap().is_empty());
    let ts = push["timestamp"].as_str().unwrap();
    assert!(ts.len() > 20 && ts.ends_with('Z') && ts.contains('T'), "RFC 3339: {ts}");
    assert!(!push["source"]["instanceID"].as_str().unwrap().is_empty());
    assert!(
        push["source"]["addr"]
            .as_str()
            .unwrap()
            .ends_with(&format!(":{}", b.addr.rsplit(':').next().unwrap()))
    );

    let blob_push = find(&events, "push", |t| t["digest"] == layer.as_str()).expect("blob push");
    assert_eq!(blob_push["target"]["mediaType"], "application/octet-stream");
    assert_eq!(blob_push["target"]["size"], b"notified layer".len());

    let pull = find(&events, "pull", |t| t["digest"] == digest.as_str()).expect("manifest pull");
    assert_eq!(pull["target"]["tag"], "1");
    assert_eq!(pull["request"]["method"], "GET");
    assert_eq!(pull["request"]["useragent"], "notify-test/1.0");
    assert!(
        find(&events, "pull", |t| t["digest"] == layer.as_str()).is_some(),
        "blob pull"
    );

    let fill = find(&events, "fill", |t| t["digest"] == alpine.as_str()).unwrap_or_else(|| panic!("{events:#?}"));
    assert_eq!(fill["target"]["repository"], "library/alpine");
    assert!(
        find(&events, "fill", |t| t["digest"] == alpine_layer.as_str()).is_some(),
        "{events:#?}"
    );

    let delete = find(&events, "delete", |_| true).unwrap();
    assert_eq!(delete["target"]["repository"], "team/app");
    assert_eq!(delete["target"]["tag"], "1");

    // A tag deleted in the web UI is a delete too.
    let r = put_manifest(&b.url, "team/app", "2", OCI_MANIFEST, &manifest).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let (cookie, csrf) = ui_delete_form(&b.url, "team/app").await;
    let r = ui_delete(&b.url, &cookie, &csrf, "team/app", "2").await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let events = rx
        .wait("/all", |e| find(e, "delete", |t| t["tag"] == "2").is_some())
        .await;
    let ui_delete = find(&events, "delete", |t| t["tag"] == "2").unwrap_or_else(|| panic!("{events:#?}"));
    assert_eq!(ui_delete["target"]["repository"], "team/app");
    assert_eq!(ui_delete["request"]["method"], "POST");

    // The quiet endpoint ignores pulls and blobs.
    let quiet = rx.wait("/quiet", |e| find(e, "delete", |_| true).is_some()).await;
    assert!(
        find(&quiet, "push", |t| t["digest"] == digest.as_str()).is_some(),
        "{quiet:#?}"
    );
    assert!(quiet.iter().all(|e| e["action"] != "pull"), "{quiet:#?}");
    assert!(
        quiet
            .iter()
            .all(|e| e["target"]["mediaType"] != "application/octet-stream"),
        "{quiet:#?}"
    );
}

/// The value of `berth_notification_events_total{endpoint,result}`.
async fn events_metric(b: &impl Server, endpoint: &str, result: &str) -> f64 {
    let series = format!("berth_notification_events_total{{endpoint=\"{endpoint}\",result=\"{result}\"}}");
    crate::support::client::metric(b.url(), &series)
        .await
        .unwrap_or_else(|| panic!("no {series} in /metrics"))
}

async fn wait_metric(b: &impl Server, endpoint: &str, result: &str, at_least: f64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let v = events_metric(b, endpoint, result).await;
        if v >= at_least || Instant::now() > deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_hung_or_closed_endpoint_never_slows_pulls_and_the_counters_move() {
    let rx = Receiver::start().await;
    // Accepts connections (the kernel completes them) but never reads or answers.
    let hung = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed = support::free_port();
    let b = App::start(&format!(
        r#"
[[notifications]]
name = "hung"
url = "http://{hung}/"
timeout = "5s"
retries = 1
backoff = "100ms"
queue = 5
[[notifications]]
name = "closed"
url = "http://127.0.0.1:{closed}/"
retries = 1
backoff = "50ms"
[[notifications]]
name = "live"
url = "{rx}/live"
"#,
        hung = hung.local_addr().unwrap(),
        rx = rx.url
    ))
    .await;
    push_image(&b.url, "team/app", "1", &[b"pulled often"]).await;
    let c = client();
    const PULLS: usize = 100;
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    for _ in 0..PULLS {
        let t = Instant::now();
        let r = c.get(b.at("/v2/team/app/manifests/1")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        r.bytes().await.unwrap();
        slowest = slowest.max(t.elapsed());
    }
    // Waiting for the hung endpoint even once would take its 5 s timeout.
    assert!(slowest < Duration::from_secs(3), "a pull took {slowest:?}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{PULLS} pulls took {:?}",
        started.elapsed()
    );

    assert!(wait_metric(&b, "live", "delivered", PULLS as f64).await >= PULLS as f64);
    assert!(rx.events("/live").iter().filter(|e| e["action"] == "pull").count() >= PULLS);
    let dropped = wait_metric(&b, "hung", "dropped", 50.0).await;
    assert!(
        dropped >= 50.0,
        "the hung endpoint's queue of 5 drops the oldest: {dropped}"
    );
    assert_eq!(events_metric(&b, "hung", "delivered").await, 0.0);
    assert!(
        wait_metric(&b, "closed", "failed", 1.0).await >= 1.0,
        "refused deliveries fail after the retry"
    );
    assert_eq!(events_metric(&b, "closed", "delivered").await, 0.0);
    drop(hung);
}

#[tokio::test]
async fn events_still_queued_at_sigterm_are_sent_before_berth_exits() {
    let rx = Receiver::start().await;
    let b = Berth::start(&format!(
        "[[notifications]]\nname = \"flaky\"\nurl = \"{}/flaky\"\nretries = 1\nbackoff = \"1s\"\n",
        rx.url
    ));
    let digest = push_image(&b.url, "team/app", "1", &[b"last push"]).await;
    // The first delivery is refused, so the events wait out the 1 s backoff while berth stops.
    // Stopped off the runtime's thread: the receiver runs on it and must keep answering.
    let status = tokio::task::spawn_blocking(move || {
        let mut b = b;
        b.stop()
    })
    .await
    .unwrap()
    .expect("berth exits");
    assert!(status.success(), "{status}");
    let events = rx.events("/flaky");
    assert!(
        find(&events, "push", |t| t["digest"] == digest.as_str()).is_some(),
        "the push event reached the receiver before the exit: {events:#?}"
    );
}
