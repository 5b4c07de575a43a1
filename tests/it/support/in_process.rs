//! berth's application served inside the test process: [`berth::app`] over a fresh store, on
//! 127.0.0.1:0. For tests that need no process of their own (no SIGKILL, signal, restart, CLI,
//! descriptor limit or connection-level timeout): they start in milliseconds and a failure's
//! backtrace reaches into the handler.
//!
//! The state is wired from the same `mirror.toml` keys `berth serve` reads, with the same
//! defaults, so a test sees what a user of the binary sees. The process-only parts of `serve`
//! (signal handling, the admin socket, background flushes) are left out.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use berth::api::{AppState, ClientLimits};
use berth::auth::Auth;
use berth::config::Config;
use berth::service::Registry;
use tempfile::TempDir;

/// A berth app serving on a loopback port of this process; stopped when dropped.
pub struct App {
    /// `127.0.0.1:PORT`
    pub addr: String,
    /// `http://127.0.0.1:PORT`
    pub url: String,
    /// Store root, for the few checks that look at disk (see `store_layout`).
    pub root: PathBuf,
    server: tokio::task::JoinHandle<()>,
    _dir: TempDir,
}

impl App {
    /// A fresh app with an empty store and no upstream; `extra` is `mirror.toml` text merged in
    /// (e.g. `[private]` or `[auth]` sections), as for [`super::Berth::start`].
    pub async fn start(extra: &str) -> App {
        berth::install_crypto_provider();
        let dir = tempfile::Builder::new().prefix("berth-app-").tempdir().unwrap();
        let root = dir.path().join("data");
        let text = format!("upstream = []\n[storage]\nroot = {:?}\n", root.display().to_string());
        let mut table: toml::Table = text.parse().unwrap();
        super::berth::merge(&mut table, extra.parse().expect("extra TOML parses"));
        let config = Config::from_toml(&table.to_string(), std::iter::empty()).expect("config");

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = state(&config, addr);
        let service = berth::app(state).into_make_service_with_connect_info::<SocketAddr>();
        let server = tokio::spawn(async move {
            axum::serve(listener, service).await.expect("serve");
        });
        App {
            addr: addr.to_string(),
            url: format!("http://{addr}"),
            root,
            server,
            _dir: dir,
        }
    }
}

/// The application state `berth serve` builds from `config`.
fn state(config: &Config, addr: SocketAddr) -> AppState {
    let store = berth::store::fs::open(&config.storage.root).expect("open the store");
    let upstreams = config
        .upstream_settings()
        .expect("upstream settings")
        .into_iter()
        .map(|settings| berth::upstream::Upstream::new(settings).expect("an upstream client"))
        .collect();
    let registry = Registry::new(store, upstreams)
        .with_private_namespaces(config.private.namespaces.clone())
        .with_claim_on_push(config.private.claim_on_push)
        .with_upload_session_limit(config.limits.max_upload_sessions)
        .with_min_free(config.storage.min_free)
        .with_notifications(
            config.notification_settings().expect("notification settings"),
            format!("berth-test:{}", addr.port()),
        );
    registry.apply_switches(&config.storage);
    let auth = Auth::with_metrics(&config.auth, registry.metrics().clone()).expect("auth");
    AppState {
        registry,
        auth: Arc::new(auth),
        limits: Arc::new(ClientLimits::new(&config.limits)),
        tls: false,
        trust_forwarded: config.server.trust_forwarded_headers,
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.server.abort();
    }
}
