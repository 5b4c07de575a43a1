//! The operator's service: the read-only and delete switches, upstream modes, disk usage and
//! readiness (`usage.rs`, `switches.rs`), garbage collection (`gc`), export and import (`layout`).

use std::sync::Arc;

use super::Core;

/// Maintenance of the whole registry, for the admin socket, the CLI and the web UI's front page.
#[derive(Clone)]
pub struct Admin {
    pub(super) core: Arc<Core>,
}
