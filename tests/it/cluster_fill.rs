//! One upstream fetch per blob across a cluster (issue 14): replicas sharing one PostgreSQL
//! database (metadata and fill leases) and one blob store, in front of the hub emulator. The
//! replica that claims a cold blob fetches it; the others stream it from that replica's internal
//! endpoint while it fills, and take the fill over, resuming from the upstream with `Range`,
//! when that replica dies.
//!
//! Each replica is berth's app on its own Tokio runtime, serving real HTTP on 127.0.0.1, with its
//! own PostgreSQL pool, coordinator and upstream client; killing one shuts its runtime down, which
//! drops everything it runs at once (its fills, its connections, its lease renewals), as a
//! SIGKILL would. The shared in-memory blob store stands in for S3.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth::api::AppState;
use berth::config::Config;
use berth::coord::postgres::PgCoordinator;
use berth::metrics::Metrics;
use berth::service::{ClusterPeers, Core, Services};
use berth::store::memory::{MemoryBlobs, MemoryUploads, UploadData};
use berth::store::{BlobStore, Store, UploadStore};
use berth::testing::engines::postgres::Postgres;
use berth::upstream::Upstream;
use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::json;

use crate::support::client::{client, count, oci_error};
use crate::support::{Hub, sha256, upstream};

const SECRET: &str = "cluster-test-secret";

/// What every replica shares: the database and the blob store.
struct Shared {
    db: String,
    blobs: Arc<dyn BlobStore>,
    uploads: Arc<dyn UploadStore>,
    hub: String,
}

impl Shared {
    async fn new(pg: &Postgres, hub: &Hub) -> Shared {
        let db = pg.database().await;
        let pool = berth::store::postgres::pool(&db, 2).unwrap();
        berth::store::postgres::migrate(&pool).await.expect("migrations");
        let blobs = MemoryBlobs::default();
        let uploads = Arc::new(MemoryUploads::new(UploadData::default(), blobs.clone()));
        Shared {
            db,
            blobs: Arc::new(blobs),
            uploads,
            hub: hub.url.clone(),
        }
    }
}

/// One berth replica on its own runtime.
struct Replica {
    url: String,
    metrics: Arc<Metrics>,
    /// Its coordinator, for the counts it keeps (a dead replica's stays readable).
    coord: Arc<PgCoordinator>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Replica {
    /// Start a replica whose fill leases last `lease`. Call outside any runtime.
    fn start(shared: &Shared, lease: &str) -> Replica {
        Replica::start_with(shared, lease, SECRET)
    }

    /// [`Replica::start`], with its own idea of the cluster secret.
    fn start_with(shared: &Shared, lease: &str, secret: &str) -> Replica {
        berth::install_crypto_provider();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (url, metrics, coord) = runtime.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}", listener.local_addr().unwrap());
            let toml = format!(
                "{}[cluster]\nadvertise = \"{url}\"\nlease = \"{lease}\"\nheartbeat = \"500ms\"\n",
                upstream(&shared.hub, None)
            );
            let config = Config::from_toml(&toml, std::iter::empty()).expect("config");
            let pool = berth::store::postgres::pool(&shared.db, 8).unwrap();
            let coord = PgCoordinator::new(pool.clone(), &shared.db, &config.cluster)
                .await
                .expect("join the cluster");
            let meta = Arc::new(berth::store::postgres::PgMeta::new(pool));
            let store = Store::new(shared.blobs.clone(), shared.uploads.clone(), meta);
            let upstreams = config
                .upstream_settings()
                .unwrap()
                .into_iter()
                .map(|s| Upstream::new(s).unwrap())
                .collect();
            let peers = ClusterPeers::new(secret.into(), config.cluster.lease).unwrap();
            let core = Core::new(store, upstreams, coord.clone()).with_cluster(peers);
            let metrics = core.metrics().clone();
            let app = berth::app(AppState::open(Services::new(core)));
            let service = app.into_make_service_with_connect_info::<SocketAddr>();
            tokio::spawn(async move { axum::serve(listener, service).await.expect("serve") });
            (url, metrics, coord)
        });
        Replica {
            url,
            metrics,
            coord,
            runtime: Some(runtime),
        }
    }

    /// Die at once: every task of the replica is dropped (its fill, its upstream connection,
    /// its lease renewal), as a SIGKILL would.
    fn kill(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }

    /// A counter or gauge from the replica's `/metrics` text (read in process, so a dead
    /// replica's counts stay readable).
    fn metric(&self, line_start: &str) -> u64 {
        let text = self.metrics.encode();
        text.lines()
            .find_map(|l| l.strip_prefix(line_start).and_then(|v| v.trim().parse::<f64>().ok()))
            .unwrap_or_else(|| panic!("no metric {line_start} in:\n{text}")) as u64
    }

    fn upstream_bytes(&self) -> u64 {
        self.metric("berth_upstream_received_bytes_total{upstream=\"docker.io\"}")
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What one client saw: when its first byte came, when its body ended, and the body's digest.
struct Pulled {
    first_byte: Instant,
    done: Instant,
    digest: String,
}

/// GET `digest` from `base`, reading the body to its end.
async fn pull(base: String, repo: &'static str, digest: String) -> Pulled {
    let url = format!("{base}/v2/{repo}/blobs/{digest}");
    let r = client().get(&url).send().await.expect("GET the blob");
    assert_eq!(r.status(), StatusCode::OK, "{url}");
    let mut body = r.bytes_stream();
    let mut bytes = Vec::new();
    let mut first_byte = None;
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(60), body.next())
        .await
        .expect("the body keeps coming")
    {
        let chunk = chunk.unwrap_or_else(|e| panic!("the body from {base} broke: {e}"));
        first_byte.get_or_insert_with(Instant::now);
        bytes.extend_from_slice(&chunk);
    }
    Pulled {
        first_byte: first_byte.expect("a non-empty body"),
        done: Instant::now(),
        digest: sha256(&bytes),
    }
}

/// Wait until `replica`'s metric reaches `at_least`.
async fn until(replica: &Replica, metric: &str, at_least: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while replica.metric(metric) < at_least {
        assert!(Instant::now() < deadline, "{metric} never reached {at_least}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn a_cold_blob_herd_over_three_replicas_makes_one_upstream_fetch_and_non_owners_stream_early() {
    let pg = Postgres::start();
    let hub = Hub::start();
    let driver = tokio::runtime::Runtime::new().unwrap();
    let mib = 12;
    let digest = hub.push_blob("library/herd", mib, 14);
    let shared = driver.block_on(Shared::new(&pg, &hub));
    let replicas: Vec<Replica> = (0..3).map(|_| Replica::start(&shared, "10s")).collect();
    driver.block_on(async {
        hub.reset_stats().await;
        // About 2 s for the blob, so the fill is still running when the others ask.
        hub.fault(json!({"bandwidth_mbps": 48})).await;
        // The first client makes replica 0 the owner: it claims the fill before anyone else asks.
        let owner = tokio::spawn(pull(replicas[0].url.clone(), "library/herd", digest.clone()));
        until(
            &replicas[0],
            "berth_upstream_received_bytes_total{upstream=\"docker.io\"}",
            1,
        )
        .await;
        let mut herd = Vec::new();
        for i in 0..8 {
            let base = replicas[i % 3].url.clone();
            herd.push((i % 3, tokio::spawn(pull(base, "library/herd", digest.clone()))));
        }
        let owner = owner.await.unwrap();
        assert_eq!(owner.digest, digest, "the owner's client's body verifies");
        for (replica, pulled) in herd {
            let pulled = pulled.await.unwrap();
            assert_eq!(pulled.digest, digest, "a body from replica {replica} verifies");
            if replica != 0 {
                assert!(
                    pulled.first_byte < owner.done,
                    "a client of replica {replica} got its first byte only after the owner's fill completed"
                );
            }
        }
        let stats = hub.stats().await;
        assert_eq!(count(&stats, "blob_gets", &digest), 1, "one upstream blob GET: {stats}");
        assert_eq!(count(&stats, "cdn_gets", &digest), 1, "one upstream body: {stats}");
    });
    let size = (mib as u64) << 20;
    let upstream: u64 = replicas.iter().map(Replica::upstream_bytes).sum();
    assert_eq!(upstream, size, "the cluster read the blob from the upstream once");
    for follower in &replicas[1..] {
        assert_eq!(
            follower.metric("berth_cluster_fills_from_peers_total"),
            1,
            "a non-owner streamed from the owner"
        );
    }
    assert!(replicas[0].metric("berth_cluster_fills_served_to_peers_total") >= 2);
}

#[test]
fn when_the_owner_dies_mid_fill_the_survivor_takes_over_and_resumes_with_a_range() {
    let pg = Postgres::start();
    let hub = Hub::start();
    let driver = tokio::runtime::Runtime::new().unwrap();
    let mib = 16;
    let digest = hub.push_blob("library/orphan", mib, 15);
    let size = (mib as u64) << 20;
    let shared = driver.block_on(Shared::new(&pg, &hub));
    // A short lease, so the takeover comes about a second after the owner's death.
    let mut owner = Replica::start(&shared, "1s");
    let survivor = Replica::start(&shared, "1s");
    driver.block_on(async {
        hub.reset_stats().await;
        // About 3.5 s for the whole blob.
        hub.fault(json!({"bandwidth_mbps": 40})).await;
        // The owner's own client, which dies with it.
        let _doomed = tokio::spawn(pull(owner.url.clone(), "library/orphan", digest.clone()));
        until(&owner, "berth_upstream_received_bytes_total{upstream=\"docker.io\"}", 1).await;
        let clients: Vec<_> = (0..3)
            .map(|_| tokio::spawn(pull(survivor.url.clone(), "library/orphan", digest.clone())))
            .collect();
        // Kill the owner about halfway through.
        until(
            &owner,
            "berth_upstream_received_bytes_total{upstream=\"docker.io\"}",
            size / 2,
        )
        .await;
        until(&owner, "berth_cluster_fills_served_to_peers_total", 1).await;
        owner.kill();
        for client in clients {
            let pulled = client.await.expect("a survivor's client finishes");
            assert_eq!(pulled.digest, digest, "a survivor's client gets the whole, right blob");
        }
        let stats = hub.stats().await;
        assert_eq!(
            count(&stats, "cdn_gets", &digest),
            2,
            "the owner's GET and the resume: {stats}"
        );
        assert_eq!(
            count(&stats, "cdn_range_gets", &digest),
            1,
            "the resume is ranged: {stats}"
        );
    });
    let upstream = owner.upstream_bytes() + survivor.upstream_bytes();
    assert!(
        upstream * 10 <= size * 11,
        "upstream bytes {upstream} exceed 1.1x the blob ({size})"
    );
    assert_eq!(survivor.metric("berth_cluster_fills_resumed_upstream_total"), 1);
    assert_eq!(
        survivor
            .coord
            .stats()
            .takeovers
            .load(std::sync::atomic::Ordering::Relaxed),
        1,
        "the survivor won the lease once it expired: the dead owner never released it"
    );
}

#[test]
fn the_internal_endpoint_refuses_a_missing_or_wrong_secret_and_serves_the_right_one() {
    let pg = Postgres::start();
    let hub = Hub::start();
    let driver = tokio::runtime::Runtime::new().unwrap();
    let digest = hub.push_blob("library/internal", 1, 16);
    let shared = driver.block_on(Shared::new(&pg, &hub));
    let replica = Replica::start(&shared, "10s");
    driver.block_on(async {
        let url = format!("{}/_berth/cluster/blobs/{digest}?repo=library/internal", replica.url);
        for secret in [None, Some("wrong"), Some("cluster-test-secre")] {
            let mut request = client().get(&url);
            if let Some(secret) = secret {
                request = request.header("x-berth-cluster-secret", secret);
            }
            let (status, code, _) = oci_error(request.send().await.unwrap()).await;
            assert_eq!(
                (status, code.as_str()),
                (StatusCode::UNAUTHORIZED, "UNAUTHORIZED"),
                "{secret:?}"
            );
        }
        let r = client()
            .get(&url)
            .header("x-berth-cluster-secret", SECRET)
            .header("range", "bytes=1000-")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
        let rest = r.bytes().await.unwrap();
        assert_eq!(rest.len(), (1 << 20) - 1000, "the bytes from 1000 on");
        let r = client()
            .get(&url)
            .header("x-berth-cluster-secret", SECRET)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let whole = r.bytes().await.unwrap();
        assert_eq!(sha256(&whole), digest);
        assert!(whole[1000..] == rest[..], "the resumed part is the blob's tail");

        // Without cluster mode the endpoint does not exist.
        let single = crate::support::in_process::App::start("").await;
        let r = client()
            .get(format!(
                "{}/_berth/cluster/blobs/{digest}?repo=library/internal",
                single.url
            ))
            .header("x-berth-cluster-secret", SECRET)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
    });
}

#[test]
fn a_replica_with_another_secret_serves_its_clients_from_the_upstream_instead_of_waiting() {
    let pg = Postgres::start();
    let hub = Hub::start();
    let driver = tokio::runtime::Runtime::new().unwrap();
    let digest = hub.push_blob("library/misconfigured", 4, 17);
    let shared = driver.block_on(Shared::new(&pg, &hub));
    let owner = Replica::start(&shared, "10s");
    let odd = Replica::start_with(&shared, "10s", "not-the-cluster-secret");
    driver.block_on(async {
        hub.reset_stats().await;
        hub.fault(json!({"bandwidth_mbps": 16})).await;
        let first = tokio::spawn(pull(owner.url.clone(), "library/misconfigured", digest.clone()));
        until(&owner, "berth_upstream_received_bytes_total{upstream=\"docker.io\"}", 1).await;
        let started = Instant::now();
        let pulled = pull(odd.url.clone(), "library/misconfigured", digest.clone()).await;
        assert_eq!(pulled.digest, digest);
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the refused replica waited out the owner's lease instead of fetching: {:?}",
            started.elapsed()
        );
        assert_eq!(first.await.unwrap().digest, digest);
        let stats = hub.stats().await;
        assert_eq!(
            count(&stats, "cdn_gets", &digest),
            2,
            "not single-flight, but served: {stats}"
        );
    });
    assert_eq!(odd.metric("berth_cluster_fills_from_peers_total"), 0);
    assert_eq!(
        odd.metric("berth_cluster_fills_resumed_upstream_total"),
        0,
        "it fetched at once, not after waiting for the owner's lease to end"
    );
}
