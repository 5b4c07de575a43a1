//! Cluster mode (issue 14) with real processes: berth replicas sharing PostgreSQL and a 3-node
//! Garage, behind the documented nginx round robin (`support::cluster`), mirroring the hub
//! emulator. Each test asserts what a user of the cluster would notice.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use reqwest::{Client, StatusCode};
use serde_json::Value;
use tokio::sync::Mutex;

use crate::support::client::{self, DOCKER_MANIFEST, count, header};
use crate::support::cluster::Cluster;
use crate::support::traffic::{PullLoop, pull, push, upload};
use crate::support::{Berth, Dockerd, pseudo_random, sha256, skopeo};

/// The seeded image `name`'s manifest digest.
fn seeded(cluster: &Cluster, name: &str) -> String {
    cluster.seed["images"][name]["digest"]
        .as_str()
        .expect("a seeded image")
        .to_owned()
}

/// Wait until every replica's `/metrics` counts `n` members.
async fn wait_for_members(cluster: &Cluster, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    for b in &cluster.replicas {
        loop {
            let members = client::metric(&b.url, "berth_cluster_members").await;
            if members == Some(n as f64) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} counts {members:?} members, not {n}",
                b.url
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

#[tokio::test]
async fn cluster_mode_refuses_to_start_without_a_token_key() {
    let dir = tempfile::tempdir().unwrap();
    let b = Berth::configure(
        dir.path(),
        "[metadata]\nbackend = \"postgres\"\n[cluster]\nadvertise = \"http://127.0.0.1:1\"\n",
        &[
            ("DATABASE_URL", "postgres://postgres@127.0.0.1:1/berth"),
            ("CLUSTER_SECRET", "s3cret"),
        ],
    );
    let out = b.cli(&["serve"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "berth started without a token key: {stderr}");
    assert!(
        stderr
            .lines()
            .any(|l| l.contains("cluster mode") && l.contains("[auth] token_key")),
        "one line says what is missing: {stderr}"
    );
}

#[tokio::test]
async fn a_token_issued_by_one_replica_is_accepted_by_every_other() {
    let dir = tempfile::tempdir().unwrap();
    let users = crate::support::htpasswd(dir.path(), &[("alice", "wonderland")]);
    let cluster = Cluster::start(3, &format!("[auth]\nhtpasswd = \"{}\"\n", users.display()));
    let c = client::client();
    let refused = c
        .post(cluster.replicas[1].at("/v2/team/app/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED, "a push needs a login");
    let login = c
        .get(cluster.replicas[0].at("/token?service=berth&scope=repository:team/app:push,pull"))
        .basic_auth("alice", Some("wonderland"))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), StatusCode::OK);
    let token = login.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("authorization", format!("Bearer {token}").parse().unwrap());
    let alice = Client::builder().default_headers(headers).build().unwrap();
    // Replica 0 signed it; replica 1 takes the push and replica 2 serves the pull.
    let digest = push(&alice, &cluster.replicas[1].url, "team/app", "1", 2, 64 << 10, 4).await;
    let digest = digest.expect("the push with replica 0's token");
    assert_eq!(
        pull(&alice, &cluster.replicas[2].url, "team/app", "1").await,
        Ok(digest)
    );
    let anonymous = pull(&c, &cluster.replicas[2].url, "team/app", "1").await;
    assert!(
        anonymous.is_err_and(|e| e.contains("401")),
        "a private image needs the login"
    );
}

#[tokio::test]
async fn berth_delete_du_and_prefetch_work_against_the_cluster() {
    let cluster = Cluster::start(3, "");
    let c = client::client();
    let digest = push(&c, &cluster.replicas[0].url, "team/app", "1", 2, 64 << 10, 5).await;
    let digest = digest.unwrap();
    for b in &cluster.replicas {
        assert_eq!(pull(&c, &b.url, "team/app", "1").await, Ok(digest.clone()));
    }
    // A command run with any replica's config works on the cluster's database and bucket.
    cluster.replicas[1].cli_ok(&["prefetch", "alpine:3.20"]);
    let du = cluster.replicas[2].cli_ok(&["du"]);
    assert!(du.contains("team/app") && du.contains("library/alpine"), "{du}");
    cluster.hub.reset_stats().await;
    let (seeded_digest, alpine) = (seeded(&cluster, "library/alpine:3.20"), "library/alpine");
    assert_eq!(
        pull(&c, &cluster.replicas[0].url, alpine, "3.20").await,
        Ok(seeded_digest)
    );
    let stats = cluster.hub.stats().await;
    assert_eq!(
        count(&stats, "requests", "GET manifest"),
        0,
        "prefetched into the cluster: {stats}"
    );
    assert!(stats["blob_gets"].as_object().is_none_or(|m| m.is_empty()), "{stats}");

    // Deleted by a command: no replica serves the tag any more, at once (every one had it
    // memoized from the pulls above).
    cluster.replicas[0].cli_ok(&["delete", "team/app:1"]);
    for b in &cluster.replicas {
        let r = c.get(b.at("/v2/team/app/manifests/1")).send().await.unwrap();
        assert_eq!(
            r.status(),
            StatusCode::NOT_FOUND,
            "{} still serves a deleted tag",
            b.url
        );
    }
}

#[tokio::test]
async fn readiness_fails_with_a_reason_when_postgres_stops_and_metrics_count_the_members() {
    let mut cluster = Cluster::start(3, "");
    wait_for_members(&cluster, 3).await;
    let c = client::client();
    for b in &cluster.replicas {
        let r = c.get(b.at("/readyz")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
    }
    cluster.stop_postgres();
    for b in &cluster.replicas {
        let started = Instant::now();
        let r = c.get(b.at("/readyz")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body: Value = r.json().await.unwrap();
        let reason = body["reason"].as_str().unwrap_or_default();
        assert!(
            reason.contains("metadata store"),
            "the reason names the database: {body}"
        );
        assert!(started.elapsed() < Duration::from_secs(10), "answered promptly");
    }
}

#[tokio::test]
async fn twenty_clients_on_each_of_three_replicas_after_the_tag_ttl_cause_one_upstream_head() {
    let cluster = Cluster::start_with_ttl(3, "2s", "");
    let digest = seeded(&cluster, "library/alpine:latest");
    let c = client::client();
    for b in &cluster.replicas {
        assert_eq!(pull(&c, &b.url, "library/alpine", "latest").await, Ok(digest.clone()));
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    cluster.hub.reset_stats().await;
    let gets = cluster.replicas.iter().flat_map(|b| {
        (0..20).map(|_| {
            let (c, url) = (c.clone(), b.at("/v2/library/alpine/manifests/latest"));
            tokio::spawn(async move {
                let r = c.get(&url).header("accept", DOCKER_MANIFEST).send().await.unwrap();
                (r.status(), header(&r, "docker-content-digest"))
            })
        })
    });
    for get in gets.collect::<Vec<_>>() {
        assert_eq!(get.await.unwrap(), (StatusCode::OK, digest.clone()));
    }
    let stats = cluster.hub.stats().await;
    // A replica that has not reached the hub yet (replicas 1 and 2 found the tag in the shared
    // metadata) holds no token: its HEAD is first answered by the token challenge (401), as any
    // client's. That is the auth handshake, not a revalidation; every other HEAD is one.
    let challenges = count(&stats, "responses", "HEAD manifest 401");
    assert!(challenges <= 1, "{stats}");
    assert_eq!(
        count(&stats, "requests", "HEAD manifest") - challenges,
        1,
        "60 pulls on 3 replicas after the TTL revalidate once: {stats}"
    );
    assert_eq!(count(&stats, "manifest_heads", "library/alpine:latest"), 1, "{stats}");
    assert_eq!(count(&stats, "requests", "GET manifest"), 0, "{stats}");
}

#[tokio::test]
async fn an_image_pushed_through_the_balancer_is_pulled_complete_from_every_replica() {
    let cluster = Cluster::start(3, "");
    let d = Dockerd::start(&[]);
    // A three-layer image, built offline with the classic builder.
    let context = tempfile::tempdir().unwrap();
    let mut dockerfile = String::from("FROM scratch\n");
    for i in 0..3u64 {
        std::fs::write(context.path().join(format!("layer{i}")), pseudo_random(1 << 20, 7 + i)).unwrap();
        dockerfile += &format!("COPY layer{i} /layer{i}\n");
    }
    std::fs::write(context.path().join("Dockerfile"), dockerfile).unwrap();
    let image = format!("{}/team/app:1", cluster.addr);
    let build = d
        .docker()
        .env("DOCKER_BUILDKIT", "0")
        .args(["build", "--network", "none", "-t", &image])
        .arg(context.path())
        .output()
        .unwrap();
    assert!(build.status.success(), "{}", String::from_utf8_lossy(&build.stderr));
    let pushed = d.ok(&["push", &image]);
    let digest = pushed
        .split_whitespace()
        .find(|w| w.starts_with("sha256:"))
        .expect("push prints the digest")
        .to_owned();
    for i in 0..cluster.replicas.len() {
        let served = cluster
            .log(i)
            .lines()
            .filter(|l| l.contains("path=/v2/team/app/"))
            .count();
        assert!(served > 0, "replica {i} served none of the push's requests");
    }
    let c = client::client();
    for b in &cluster.replicas {
        let pulled = pull(&c, &b.url, "team/app", "1").await;
        assert_eq!(pulled, Ok(digest.clone()), "from {}", b.url);
        let m = client::manifest_json(&b.url, "team/app", "1").await.1;
        assert_eq!(m["layers"].as_array().map(Vec::len), Some(3), "{m}");
    }

    // skopeo: in through the balancer from the hub, out of every replica, identical digests.
    let hub_image = format!("docker://{}/library/busybox:latest", cluster.hub.addr());
    let original = seeded(&cluster, "library/busybox:latest");
    let into = format!("docker://{}/team/busybox:latest", cluster.addr);
    let work = tempfile::tempdir().unwrap();
    let digest_file = work.path().join("in.digest");
    skopeo(&[
        "copy",
        "--all",
        "--preserve-digests",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        "--digestfile",
        digest_file.to_str().unwrap(),
        &hub_image,
        &into,
    ]);
    assert_eq!(std::fs::read_to_string(&digest_file).unwrap().trim(), original);
    for (i, b) in cluster.replicas.iter().enumerate() {
        let dir = work.path().join(format!("out{i}"));
        skopeo(&[
            "copy",
            "--all",
            "--preserve-digests",
            "--src-tls-verify=false",
            &format!("docker://{}/team/busybox:latest", b.addr),
            &format!("dir:{}", dir.display()),
        ]);
        assert_eq!(
            crate::support::sha256_file(&dir.join("manifest.json")),
            original,
            "copied out of replica {i} unchanged"
        );
    }
}

#[tokio::test]
async fn dockerd_with_the_balancer_as_its_registry_mirror_pulls_the_hub_images() {
    let cluster = Cluster::start(3, "");
    let d = Dockerd::start(&[&cluster.url]);
    cluster.hub.reset_stats().await;
    for image in ["alpine", "busybox", "multilayer"] {
        d.ok(&["pull", image]);
        let id = d.ok(&["image", "inspect", "--format", "{{.Id}}", image]);
        // For a single-platform image the image ID is its config's digest: the hub's image.
        if let Some(config) = cluster.seed["images"][format!("library/{image}:latest")]["config"]["digest"].as_str() {
            assert_eq!(id.trim(), config, "{image} is the hub's image");
        } else {
            assert!(id.trim().starts_with("sha256:"), "{image}: {id}");
        }
    }
    let stats = cluster.hub.stats().await;
    for image in ["alpine", "busybox", "multilayer"] {
        assert!(
            count(&stats, "manifest_heads", &format!("library/{image}:latest")) >= 1,
            "{image} came from the hub through the mirror: {stats}"
        );
    }
    let served: usize = (0..3).filter(|&i| cluster.log(i).contains("path=/v2/library/")).count();
    assert!(served >= 2, "the balancer spread the pulls over the replicas");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_fails_no_pull_through_the_balancer() {
    let mut cluster = Cluster::start(3, "");
    let c = client::client();
    let private = push(&c, &cluster.url, "team/rolling", "1", 3, 256 << 10, 1)
        .await
        .unwrap();
    assert_eq!(pull(&c, &cluster.url, "team/rolling", "1").await, Ok(private));
    let images = [
        ("library/alpine", "latest"),
        ("library/multilayer", "latest"),
        ("team/rolling", "1"),
    ];
    let pulls = PullLoop::start(&cluster.url, &images, 4);
    for i in 0..cluster.replicas.len() {
        tokio::time::sleep(Duration::from_millis(700)).await;
        let status = tokio::task::block_in_place(|| cluster.terminate(i));
        assert!(
            status.is_some_and(|s| s.success()),
            "replica {i} drained and exited cleanly: {status:?}"
        );
        // Down for a moment, as a host being upgraded: the balancer must route around it.
        tokio::time::sleep(Duration::from_millis(500)).await;
        tokio::task::block_in_place(|| cluster.restart(i));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    pulls.finish(10).await;
    assert!(
        cluster.front_log().contains("Connection refused"),
        "pulls reached a stopped replica and were sent to another: {}",
        cluster.front_log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garage_node_killed_during_pulls_fails_no_pull() {
    // A disk cache too small for most layers: blob reads go to the object store during the loss.
    let mut cluster = Cluster::start(3, "[storage.s3]\ncache_max_size = \"1MiB\"\n");
    let c = client::client();
    push(&c, &cluster.url, "team/stored", "1", 3, 2 << 20, 2).await.unwrap();
    let images = [
        ("library/multilayer", "latest"),
        ("team/stored", "1"),
        ("library/alpine", "latest"),
    ];
    let pulls = PullLoop::start(&cluster.url, &images, 4);
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.kill_garage_node(1);
    // Cold content after the loss: fills write to the two nodes left.
    let cold = cluster.hub.push_blob("library/cold", 4, 11);
    let r = c
        .get(cluster.at(&format!("/v2/library/cold/blobs/{cold}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(sha256(&r.bytes().await.unwrap()), cold);
    push(&c, &cluster.url, "team/after", "1", 2, 512 << 10, 3)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    pulls.finish(10).await;
    assert!(
        cluster.s3_front_log().contains("Connection refused"),
        "requests reached the dead node and were sent to another: {}",
        cluster.s3_front_log()
    );
    for b in &cluster.replicas {
        assert!(pull(&c, &b.url, "team/after", "1").await.is_ok(), "{}", b.url);
    }
}

/// The GC test's heartbeat: long enough to tell a member that left from one that fell silent.
const HEARTBEAT: Duration = Duration::from_secs(3);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_on_one_replica_under_load_fails_nothing_and_two_at_once_give_one_run() {
    let cluster = Cluster::start(3, &format!("[cluster]\nheartbeat = \"{}s\"\n", HEARTBEAT.as_secs()));
    wait_for_members(&cluster, 3).await;
    let c = client::client();
    let base_image = push(&c, &cluster.url, "team/base", "1", 3, 256 << 10, 10)
        .await
        .unwrap();
    // Garbage: blobs no manifest references, older than the grace period when GC runs.
    for i in 0..20 {
        upload(&c, &cluster.url, "team/garbage", &pseudo_random(4096, 1000 + i))
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Load on replicas 1 and 2: pushes of fresh images and pulls, while replica 0's config runs GC.
    let stop = Arc::new(AtomicBool::new(false));
    let pushed = Arc::new(Mutex::new(Vec::new()));
    let push_failures = Arc::new(Mutex::new(Vec::new()));
    let pushers: Vec<_> = (1..3)
        .map(|r| {
            let (url, stop, pushed, failures) = (
                cluster.replicas[r].url.clone(),
                stop.clone(),
                pushed.clone(),
                push_failures.clone(),
            );
            tokio::spawn(async move {
                let c = client::client();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let tag = format!("{r}-{n}");
                    match push(&c, &url, "team/load", &tag, 2, 64 << 10, 100 * r as u64 + n).await {
                        Ok(digest) => pushed.lock().await.push((tag, digest)),
                        Err(e) => failures.lock().await.push(e),
                    }
                    n += 1;
                }
            })
        })
        .collect();
    let images = [("team/base", "1"), ("library/alpine", "latest")];
    let pulls: Vec<_> = (1..3)
        .map(|r| PullLoop::start(&cluster.replicas[r].url, &images, 2))
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let gc = tokio::task::block_in_place(|| cluster.replicas[0].cli(&["gc", "--grace", "2s"]));
    let exited = Instant::now();
    let report = String::from_utf8_lossy(&gc.stdout).into_owned();
    assert!(
        gc.status.success(),
        "gc: {report}\n{}",
        String::from_utf8_lossy(&gc.stderr)
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    for p in pushers {
        p.await.unwrap();
    }
    for p in pulls {
        p.finish(1).await;
    }
    let push_failures = push_failures.lock().await.clone();
    assert!(push_failures.is_empty(), "pushes failed during GC: {push_failures:#?}");

    // The command joined the cluster to work on it and left when it was done: from one heartbeat
    // on (the gauge is read every heartbeat) it counts 3 members. A member that just fell silent
    // would still count for two heartbeats at least (three after its last beat, at most one
    // before it exited).
    assert!(exited.elapsed() < HEARTBEAT * 3 / 2, "the load stopped in time to look");
    tokio::time::sleep((HEARTBEAT * 3 / 2).saturating_sub(exited.elapsed())).await;
    while exited.elapsed() < HEARTBEAT * 2 {
        let members = client::metric(&cluster.replicas[1].url, "berth_cluster_members").await;
        assert_eq!(members, Some(3.0), "berth gc counts as a member after it exited");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let deleted = report.lines().filter(|l| l.starts_with("blob deleted")).count();
    assert!(deleted >= 20, "the garbage was collected: {report}");

    // Every manifest's blobs are still there, from every replica.
    let pushed = pushed.lock().await.clone();
    assert!(pushed.len() >= 2, "pushes ran during GC");
    for b in &cluster.replicas {
        assert_eq!(pull(&c, &b.url, "team/base", "1").await, Ok(base_image.clone()));
        for (tag, digest) in &pushed {
            assert_eq!(
                pull(&c, &b.url, "team/load", tag).await,
                Ok(digest.clone()),
                "{}",
                b.url
            );
        }
    }

    // Two replicas told to collect at once: one runs, the other says another is running. The
    // run is kept busy with many blobs to delete, so the second surely asks during it.
    let mut uploads = tokio::task::JoinSet::new();
    for i in 0..300 {
        let (c, url) = (c.clone(), cluster.url.clone());
        uploads.spawn(async move { upload(&c, &url, "team/garbage", &pseudo_random(1024, 5000 + i)).await });
        if uploads.len() >= 16 {
            uploads.join_next().await.unwrap().unwrap().unwrap();
        }
    }
    while let Some(done) = uploads.join_next().await {
        done.unwrap().unwrap();
    }
    let runs = tokio::task::block_in_place(|| {
        std::thread::scope(|s| {
            let gcs: Vec<_> = [1, 2]
                .map(|r| {
                    let replica = &cluster.replicas[r];
                    s.spawn(move || replica.cli(&["gc", "--grace", "0s"]))
                })
                .into_iter()
                .collect();
            gcs.into_iter().map(|g| g.join().unwrap()).collect::<Vec<_>>()
        })
    });
    let text = |o: &std::process::Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };
    let (ran, refused): (Vec<_>, Vec<_>) = runs.iter().partition(|o| o.status.success());
    assert_eq!(
        (ran.len(), refused.len()),
        (1, 1),
        "one run, one refusal: {:#?}",
        runs.iter().map(text).collect::<Vec<_>>()
    );
    assert!(
        text(refused[0]).contains("another garbage collection is running"),
        "{}",
        text(refused[0])
    );
    let deleted = text(ran[0]).lines().filter(|l| l.starts_with("blob deleted")).count();
    assert!(deleted >= 300, "the one run collected everything: {}", text(ran[0]));
}

/// One client's GET of a blob: when its first byte and its last arrived, and the digest of what
/// it received (hashed as it streams: 48 copies of 256 MiB do not fit in memory).
struct Fetched {
    first_byte: Instant,
    done: Instant,
    digest: String,
}

async fn fetch_blob(base: String, repo: &'static str, digest: String) -> Result<Fetched, String> {
    use futures_util::StreamExt;
    use sha2::Digest as _;
    let r = client::client()
        .get(format!("{base}/v2/{repo}/blobs/{digest}"))
        .send()
        .await
        .map_err(|e| format!("{base}: {e}"))?;
    if r.status() != StatusCode::OK {
        return Err(format!("{base}: {}", r.status()));
    }
    let mut body = r.bytes_stream();
    let mut hasher = sha2::Sha256::new();
    let mut first_byte = None;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| format!("{base}: the body broke: {e}"))?;
        first_byte.get_or_insert_with(Instant::now);
        hasher.update(&chunk);
    }
    Ok(Fetched {
        first_byte: first_byte.ok_or_else(|| format!("{base}: an empty body"))?,
        done: Instant::now(),
        digest: format!("sha256:{}", hex::encode(hasher.finalize())),
    })
}

/// A replica's count of bytes received from the hub.
async fn upstream_bytes(base: &str) -> u64 {
    client::metric(base, "berth_upstream_received_bytes_total{upstream=\"docker.io\"}")
        .await
        .unwrap_or(0.0) as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forty_eight_clients_over_three_replicas_get_a_cold_256_mib_blob_from_one_upstream_fetch() {
    let cluster = Cluster::start(3, "");
    let digest = cluster.hub.push_blob("library/herd", 256, 48);
    // About 3 s for the whole blob from the hub, so the fill is still running while the herd
    // arrives everywhere.
    cluster.hub.reset_stats().await;
    cluster.hub.fault(serde_json::json!({"bandwidth_mbps": 700})).await;
    let started = Instant::now();
    let clients: Vec<_> = (0..48)
        .map(|i| {
            let base = cluster.replicas[i % 3].url.clone();
            tokio::spawn(fetch_blob(base, "library/herd", digest.clone()))
        })
        .collect();
    let mut fetched = Vec::new();
    for c in clients {
        fetched.push(c.await.unwrap().expect("every client gets the blob"));
    }
    for f in &fetched {
        assert_eq!(f.digest, digest, "every body verifies");
    }
    let stats = cluster.hub.stats().await;
    assert_eq!(
        count(&stats, "cdn_gets", &digest),
        1,
        "one upstream fetch cluster-wide: {stats}"
    );
    // The last byte is held until the digest verified, so no client finishes before the fill
    // has every byte: whoever got a first byte before the earliest finish streamed from the
    // fill (its own replica's, or the owner's through the internal endpoint) while it ran.
    let earliest_done = fetched.iter().map(|f| f.done).min().unwrap();
    let late: Vec<_> = fetched
        .iter()
        .enumerate()
        .filter(|(_, f)| f.first_byte >= earliest_done)
        .map(|(i, f)| {
            format!(
                "client {i} on replica {}: first byte at {:?}",
                i % 3,
                f.first_byte - started
            )
        })
        .collect();
    assert!(
        late.is_empty(),
        "clients waited for the whole fill before their first byte (earliest finish at {:?}): {late:?}",
        earliest_done - started
    );
    let owned: Vec<f64> = futures_util::future::join_all(
        cluster
            .replicas
            .iter()
            .map(|b| client::metric_or_zero(&b.url, "berth_cluster_fills_owned_total")),
    )
    .await;
    assert_eq!(owned.iter().sum::<f64>(), 1.0, "one replica owned the fill: {owned:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_the_owner_mid_fill_leaves_every_survivor_client_with_the_right_blob() {
    let mut cluster = Cluster::start(3, "");
    let mib = 64;
    let size = (mib as u64) << 20;
    let digest = cluster.hub.push_blob("library/orphan", mib, 49);
    cluster.hub.reset_stats().await;
    // About 7 s for the whole blob.
    cluster.hub.fault(serde_json::json!({"bandwidth_mbps": 80})).await;
    let owner = cluster.replicas[0].url.clone();
    // The owner's own client, which dies with it.
    let _doomed = tokio::spawn(fetch_blob(owner.clone(), "library/orphan", digest.clone()));
    let deadline = Instant::now() + Duration::from_secs(30);
    while upstream_bytes(&owner).await == 0 {
        assert!(Instant::now() < deadline, "the owner never started its fill");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let survivors: Vec<_> = (0..4)
        .map(|i| {
            tokio::spawn(fetch_blob(
                cluster.replicas[1 + i % 2].url.clone(),
                "library/orphan",
                digest.clone(),
            ))
        })
        .collect();
    let mut owner_bytes = 0;
    while owner_bytes < size / 2 {
        assert!(
            Instant::now() < deadline,
            "the owner's fill stalled at {owner_bytes} bytes"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        owner_bytes = upstream_bytes(&owner).await;
    }
    cluster.replicas[0].kill();
    for s in survivors {
        let f = s
            .await
            .unwrap()
            .expect("a survivor's client finishes: a pause, not an error");
        assert_eq!(f.digest, digest, "a survivor's client gets the whole, right blob");
    }
    let survivors_bytes =
        upstream_bytes(&cluster.replicas[1].url).await + upstream_bytes(&cluster.replicas[2].url).await;
    // The owner's count was read just before the SIGKILL: the bytes it took after are a few
    // milliseconds' worth at this rate.
    let total = owner_bytes + survivors_bytes;
    assert!(
        total * 10 <= size * 11,
        "upstream bytes {total} (owner {owner_bytes}, survivors {survivors_bytes}) exceed 1.1x the blob ({size})"
    );
    let stats = cluster.hub.stats().await;
    assert_eq!(
        count(&stats, "cdn_range_gets", &digest),
        1,
        "the survivor resumed with a Range: {stats}"
    );
}
