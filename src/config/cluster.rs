//! `[cluster]`: how replicas sharing one PostgreSQL database find and coordinate with each other
//! (issue 14). Read only when `[metadata] backend = "postgres"`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::value;

/// `[cluster]`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// This replica's URL as the other replicas reach it (`http://10.0.0.5:5000`): stored in its
    /// membership row and in the fill leases it holds, so a replica whose client waits for a
    /// blob another one is fetching streams it from there. Default `""` (required in a cluster).
    pub advertise: String,
    /// The environment variable holding the secret replicas authenticate each other's internal
    /// requests with. Default `"CLUSTER_SECRET"`.
    pub secret_env: String,
    /// How long a fill or task lease lasts without renewal. The holder renews it every third of
    /// this; a replica that dies loses its leases this long after its last renewal, and a waiter
    /// takes over then. Default `"10s"`.
    #[serde(with = "value::duration")]
    pub lease: Duration,
    /// How often a replica renews its membership row. A member silent for three intervals is
    /// counted gone. Default `"5s"`.
    #[serde(with = "value::duration")]
    pub heartbeat: Duration,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            advertise: String::new(),
            secret_env: "CLUSTER_SECRET".into(),
            lease: Duration::from_secs(10),
            heartbeat: Duration::from_secs(5),
        }
    }
}
