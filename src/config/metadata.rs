//! `[metadata]`: where repositories, tags, manifest records, upload sessions and the blob
//! registry live: the embedded redb file (one host) or PostgreSQL (cluster mode, issue 14).

use serde::{Deserialize, Serialize};

/// Which metadata store berth uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MetadataBackend {
    /// `meta.redb` under `[storage] root`: one process owns it.
    #[default]
    Redb,
    /// A PostgreSQL database shared by every replica.
    Postgres,
}

/// `[metadata]`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetadataConfig {
    /// `"redb"` or `"postgres"`. Default `"redb"`.
    pub backend: MetadataBackend,
    /// The environment variable that holds the PostgreSQL connection URL
    /// (`postgres://user:password@host:5432/berth`), kept out of the file because it carries a
    /// password. Default `"DATABASE_URL"`.
    pub url_env: String,
    /// Connections each replica keeps to PostgreSQL (LISTEN/NOTIFY uses one more). Default `8`.
    pub pool_size: u32,
}

impl Default for MetadataConfig {
    fn default() -> Self {
        MetadataConfig {
            backend: MetadataBackend::Redb,
            url_env: "DATABASE_URL".into(),
            pool_size: 8,
        }
    }
}

impl MetadataConfig {
    /// The connection URL from the environment variable `url_env` names.
    pub fn url(&self) -> Result<String, String> {
        std::env::var(&self.url_env).map_err(|_| {
            format!(
                "[metadata] backend = \"postgres\" needs the connection URL in ${} ([metadata] url_env)",
                self.url_env
            )
        })
    }
}
