//! berth: an OCI Distribution registry and pull-through mirror.
//!
//! Dependencies point one way, floor by floor:
//!
//! ```text
//! main | cli | lib | server | wiring | batched_log   the composition root: builds and wires
//!   api | ui                       HTTP edges (they see only the service, never a backend)
//!     auth                         who may do what
//!       service (and service::gc)  what the registry does
//!         store::{BlobStore, UploadStore, Meta} | coord::Coordinator | upstream::Remote | cache
//!           notify                 registry:2 event types and the webhook sender
//!             config               typed settings (durations and sizes parsed once, at load)
//!               oci                pure types: digests, names, manifests, media types, patterns
//!                 metrics | clock | sendfile   leaves any floor may use
//! ```
//!
//! A module imports only from floors below its own, never from a peer on its floor, and the
//! backends only from the service (and the root). `src/layering.rs` holds this table as code and
//! fails the unit tests on an import against it. ARCHITECTURE.md at the repository root draws the
//! same layers and describes each module, the traits and their contracts, the promises every
//! change keeps and the tests that prove them, and the on-disk layout.

pub mod api;
pub mod auth;
pub mod batched_log;
pub mod cache;
pub mod clock;
pub mod config;
pub mod coord;
#[cfg(test)]
mod layering;
pub mod metrics;
pub mod notify;
pub mod oci;
pub mod sendfile;
pub mod server;
pub mod service;
pub mod store;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod ui;
pub mod upstream;
pub mod wiring;

use axum::Router;

/// The whole HTTP application (registry API, operations endpoints and web UI); tests drive it
/// in-process or over a socket.
pub fn app(state: api::AppState) -> Router {
    let ui = ui::router(ui::Ui::new(state.services.clone(), state.auth.clone(), state.tls));
    api::router_with(state, ui)
}

/// Select rustls' `ring` provider for every TLS client and server in the process. `ring` builds
/// much faster than the default aws-lc-rs on small build machines. Idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
