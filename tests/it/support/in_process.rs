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

use berth::api::AppState;
use berth::config::Config;
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
        let state = state(&config, addr).await;
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

/// The application state `berth serve` builds from `config`, through the same wiring.
async fn state(config: &Config, addr: SocketAddr) -> AppState {
    let backends = berth::wiring::open(config).await.expect("open the backends");
    let services =
        berth::wiring::services(config, &backends, format!("berth-test:{}", addr.port())).expect("the services");
    berth::wiring::app_state(config, services, false).expect("the app state")
}

impl Drop for App {
    fn drop(&mut self) {
        self.server.abort();
    }
}
