//! The application wired from `mirror.toml`, in one place: `berth serve` and the in-process test
//! app build their services and state here, so a test sees what a user of the binary sees. Only
//! the backends are left to the caller (it opens the store), since they name concrete types.

use std::sync::Arc;

use crate::api::{AppState, ClientLimits};
use crate::auth::Auth;
use crate::config::Config;
use crate::coord;
use crate::service::{Core, Services};
use crate::store::Store;
use crate::upstream::Upstream;

/// The services `berth serve` runs over `store`, as `config` says: upstreams, private
/// namespaces, upload session limit, free-space floor, notifications and switches. `node` names
/// this process in notification events (`host:port`). Starts the notification delivery tasks, so
/// it must run inside the Tokio runtime.
pub fn services(config: &Config, store: Store, node: String) -> Result<Services, String> {
    let upstreams = config
        .upstream_settings()
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|settings| Upstream::new(settings).map_err(|e| format!("building an upstream client: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    // Single node: one process owns the store (cluster mode puts PostgreSQL here).
    let core = Core::new(store, upstreams, coord::Local::shared())
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
