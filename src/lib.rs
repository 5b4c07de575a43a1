//! berth: an OCI Distribution registry and pull-through mirror.
//!
//! Dependencies point one way: `api | ui | auth → service → {store, upstream, cache} → oci`, with
//! `metrics` a leaf that every layer counts into, `notify` a leaf that the API and the service send
//! events to, and `sendfile` a leaf that `store` registers mapped blob windows with and `server`
//! sends them through. `main` builds the concrete parts.
//!
//! ARCHITECTURE.md at the repository root describes each module, the promises every change keeps
//! and the tests that prove them, and the on-disk layout.

pub mod api;
pub mod auth;
pub mod batched_log;
pub mod cache;
pub mod config;
pub mod gc;
pub mod metrics;
pub mod notify;
pub mod oci;
pub mod sendfile;
pub mod server;
pub mod service;
pub mod store;
pub mod ui;
pub mod upstream;

use axum::Router;

/// The whole HTTP application (registry API, operations endpoints and web UI); tests drive it
/// in-process or over a socket.
pub fn app(state: api::AppState) -> Router {
    let ui = ui::router(ui::Ui::new(state.registry.clone(), state.auth.clone(), state.tls));
    api::router_with(state, ui)
}

/// Select rustls' `ring` provider for every TLS client and server in the process. `ring` builds
/// much faster than the default aws-lc-rs on small build machines. Idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
