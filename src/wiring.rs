//! The application wired from `mirror.toml`, in one place: `berth serve`, the maintenance
//! commands and the in-process test app build their backends, services and state here, so a test
//! sees what a user of the binary sees. This and `main`/`cli` are the only places that name
//! concrete backends.

use std::sync::Arc;

use crate::api::{AppState, ClientLimits};
use crate::auth::Auth;
use crate::config::Config;
use crate::config::{MetadataBackend, StorageBackend};
use crate::coord::{self, Coordinator, postgres::PgCoordinator};
use crate::service::{ClusterPeers, Core, Services};
use crate::store::{self, Meta, Store};
use crate::upstream::Upstream;

/// How long a replica trusts a memoized tag without hearing of a change: notices cross the
/// network in cluster mode, and one lost while the listener reconnects must not pin a moved tag.
const CLUSTER_MEMO_TAG_TTL: std::time::Duration = std::time::Duration::from_secs(5);

/// The storage and coordination backends `config` names, opened.
pub struct Backends {
    pub store: Store,
    pub coord: Arc<dyn Coordinator>,
    /// Cluster mode's coordinator (`[metadata] backend = "postgres"`), for the membership gauge
    /// and a graceful leave; `None` on a single node.
    pub cluster: Option<Arc<PgCoordinator>>,
}

impl Backends {
    /// A single-node store with the in-process coordinator.
    pub fn local(store: Store) -> Backends {
        Backends {
            store,
            coord: coord::Local::shared(),
            cluster: None,
        }
    }

    /// Leave the cluster if this process joined one (a server stopping, a maintenance command
    /// done): the replicas stop counting it as a member now rather than three heartbeats later,
    /// and its leases end. A failure is only logged: the row and leases then expire on their own.
    pub async fn leave(&self) {
        if let Some(cluster) = &self.cluster
            && let Err(e) = cluster.leave().await
        {
            tracing::warn!(error = %e, "could not leave the cluster; its leases expire on their own");
        }
    }
}

/// Open the backends `config` names. The default (`[metadata] backend = "redb"`, `[storage]
/// backend = "fs"`) is one process on one disk: the filesystem store and redb under `[storage]
/// root`, and the in-process coordinator. `[storage] backend = "s3"` puts blobs and uploads in an
/// object store (with a disk cache under the root). `[metadata] backend = "postgres"` is cluster
/// mode: metadata and coordination in PostgreSQL, which other replicas may share, so it first
/// checks what every replica must agree on.
pub async fn open(config: &Config) -> Result<Backends, String> {
    open_as(config, true).await
}

/// [`open`] for a maintenance command (`berth gc`, `du`, `delete`, `prefetch`, …): in cluster
/// mode it coordinates with the replicas (GC's lead, fill leases, notices) without counting as a
/// member or offering fills to stream, and needs none of a serving replica's settings.
pub async fn open_for_tool(config: &Config) -> Result<Backends, String> {
    open_as(config, false).await
}

async fn open_as(config: &Config, replica: bool) -> Result<Backends, String> {
    let root = &config.storage.root;
    let opening = |e: store::Error| format!("opening the store at {}: {e}", root.display());
    let (meta, coord, cluster): (Arc<dyn Meta>, Arc<dyn Coordinator>, _) = match config.metadata.backend {
        MetadataBackend::Redb if config.storage.backend == StorageBackend::Fs => {
            return Ok(Backends::local(store::fs::open(root).map_err(opening)?));
        }
        MetadataBackend::Redb => {
            std::fs::create_dir_all(root).map_err(|e| opening(e.into()))?;
            let meta = store::RedbMeta::open(&root.join("meta.redb")).map_err(opening)?;
            (Arc::new(meta), coord::Local::shared(), None)
        }
        MetadataBackend::Postgres => {
            if replica {
                check_cluster(config)?;
            }
            let url = config.metadata.url()?;
            let meta = store::postgres::connect(&config.metadata)
                .await
                .map_err(|e| format!("opening the PostgreSQL metadata store: {e}"))?;
            let pool = meta.pool().clone();
            let cluster = if replica {
                PgCoordinator::new(pool, &url, &config.cluster).await
            } else {
                PgCoordinator::for_tool(pool, &url, &config.cluster).await
            }
            .map_err(|e| format!("joining the cluster: {e}"))?;
            (meta, cluster.clone(), Some(cluster))
        }
    };
    let store = match config.storage.backend {
        StorageBackend::Fs => store::fs::open_with_meta(root, meta).map_err(opening)?,
        StorageBackend::S3 => {
            let (blobs, uploads) =
                store::s3::open(&config.storage, meta.clone()).map_err(|e| format!("opening the S3 store: {e}"))?;
            Store::new(blobs, uploads, meta)
        }
    };
    Ok(Backends { store, coord, cluster })
}

/// What cluster mode needs before a replica joins: tokens and UI forms must verify on every
/// replica (so one configured key), peers must reach this one (`advertise`), and their internal
/// requests carry the shared secret.
fn check_cluster(config: &Config) -> Result<(), String> {
    if config.auth.token_key.is_empty() {
        return Err(
            "cluster mode ([metadata] backend = \"postgres\") needs [auth] token_key: a token signed by one replica must verify on every other".into(),
        );
    }
    if config.cluster.advertise.is_empty() {
        return Err("cluster mode needs [cluster] advertise: the URL the other replicas reach this one at".into());
    }
    cluster_secret(config).map(drop)
}

/// The replicas' shared secret, from the variable `[cluster] secret_env` names.
fn cluster_secret(config: &Config) -> Result<String, String> {
    match std::env::var(&config.cluster.secret_env) {
        Ok(secret) if !secret.is_empty() => Ok(secret),
        _ => Err(format!(
            "cluster mode needs the replicas' shared secret in ${} ([cluster] secret_env)",
            config.cluster.secret_env
        )),
    }
}

/// The services `berth serve` runs over `store`, as `config` says: upstreams, private
/// namespaces, upload session limit, free-space floor, notifications and switches. `node` names
/// this process in notification events (`host:port`). Starts the notification delivery tasks, so
/// it must run inside the Tokio runtime.
pub fn services(config: &Config, backends: &Backends, node: String) -> Result<Services, String> {
    let upstreams = config
        .upstream_settings()
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|settings| Upstream::new(settings).map_err(|e| format!("building an upstream client: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    let mut core = Core::new(backends.store.clone(), upstreams, backends.coord.clone());
    if backends.cluster.is_some() {
        // Checked by `open` already; read here so the secret lives only where it is used.
        let secret = cluster_secret(config)?;
        core = core
            .with_memo_tag_ttl(CLUSTER_MEMO_TAG_TTL)
            .with_cluster(ClusterPeers::new(secret, config.cluster.lease)?);
    }
    let core = core
        .with_private_namespaces(config.private.namespaces.clone())
        .with_claim_on_push(config.private.claim_on_push)
        .with_upload_session_limit(config.limits.max_upload_sessions)
        .with_min_free(config.storage.min_free)
        .with_notifications(config.notification_settings().map_err(|e| e.to_string())?, node);
    let services = Services::new(core);
    services.admin.apply_switches(&config.storage);
    Ok(services)
}

/// What every request handler gets: `services`, with authentication and client limits as
/// `config` says. `tls`: whether berth itself terminates TLS.
pub fn app_state(config: &Config, services: Services, tls: bool) -> Result<AppState, String> {
    let auth = Auth::with_metrics(&config.auth, services.core.metrics().clone())?;
    Ok(AppState {
        services,
        auth: Arc::new(auth),
        limits: Arc::new(ClientLimits::new(&config.limits)),
        tls,
        trust_forwarded: config.server.trust_forwarded_headers,
    })
}
