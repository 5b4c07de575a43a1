//! `[storage] backend` and `[storage.s3]`: where blobs live when several replicas share them (an
//! S3-compatible object store such as Garage), and the per-replica disk cache in front of it.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `[storage] backend`: which blob and upload store a server opens.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StorageBackend {
    /// Files under `[storage] root` (one host).
    #[default]
    Fs,
    /// An S3-compatible object store, `[storage.s3]` (a cluster of replicas).
    S3,
}

/// `[storage.s3]`: the bucket blobs and upload sessions live in, used when `[storage] backend =
/// "s3"`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct S3Config {
    /// The S3 endpoint, e.g. `"http://127.0.0.1:3900"`; `""` for AWS itself. Default `""`.
    pub endpoint: String,
    /// The bucket (it must exist). Default `"berth"`.
    pub bucket: String,
    /// The region requests are signed for (Garage's default is `"garage"`). Default `"us-east-1"`.
    pub region: String,
    /// The environment variable that holds the access key id. Default `"AWS_ACCESS_KEY_ID"`, the
    /// name every S3 tool reads (a `BERTH_` name would be taken for a config key override).
    pub access_key_id_env: String,
    /// The environment variable that holds the secret access key. Default
    /// `"AWS_SECRET_ACCESS_KEY"`.
    pub secret_access_key_env: String,
    /// Path-style URLs (`endpoint/bucket/key`), which Garage, SeaweedFS and MinIO on one host
    /// need; `false`: virtual-hosted style (`bucket.endpoint/key`). Default `true`.
    pub path_style: bool,
    /// This replica's disk cache of blobs read from the bucket, so warm GETs are served from a
    /// local file (with `sendfile`). `""`: `<[storage] root>/s3-cache`. Default `""`.
    pub cache_dir: PathBuf,
    /// How much the disk cache may hold; the least recently used blobs are dropped past it.
    /// Default `"10GiB"`.
    #[serde(with = "super::value::size")]
    pub cache_max_size: u64,
    /// Answer blob GETs with `307` to a presigned URL of the object instead of sending the bytes.
    /// Default `false`.
    pub redirect: bool,
    /// How long a presigned URL (`redirect`) stays valid. Default `"5m"`.
    #[serde(with = "super::value::duration")]
    pub redirect_expiry: Duration,
}

impl Default for S3Config {
    fn default() -> Self {
        S3Config {
            endpoint: String::new(),
            bucket: "berth".into(),
            region: "us-east-1".into(),
            access_key_id_env: "AWS_ACCESS_KEY_ID".into(),
            secret_access_key_env: "AWS_SECRET_ACCESS_KEY".into(),
            path_style: true,
            cache_dir: PathBuf::new(),
            cache_max_size: 10 << 30,
            redirect: false,
            redirect_expiry: Duration::from_secs(300),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn the_default_is_the_filesystem_and_s3_settings_parse_typed() {
        let c = Config::from_toml(crate::config::DEFAULT_TOML, std::iter::empty()).unwrap();
        assert_eq!(
            c.storage.backend,
            StorageBackend::Fs,
            "serve needs no object store by default"
        );
        assert_eq!(c.storage.s3.cache_max_size, 10 << 30);
        let text = r#"
[storage]
backend = "s3"
[storage.s3]
endpoint = "http://127.0.0.1:3900"
region = "garage"
cache_max_size = "2GiB"
redirect = true
redirect_expiry = "90s"
"#;
        let c = Config::from_toml(
            text,
            std::iter::once(("BERTH_STORAGE_S3_BUCKET".to_owned(), "layers".to_owned())),
        )
        .unwrap();
        let s3 = &c.storage.s3;
        assert_eq!(c.storage.backend, StorageBackend::S3);
        assert_eq!(
            (s3.endpoint.as_str(), s3.region.as_str()),
            ("http://127.0.0.1:3900", "garage")
        );
        assert_eq!(s3.bucket, "layers", "an environment override reaches [storage.s3]");
        assert_eq!(s3.cache_max_size, 2 << 30);
        assert!(s3.redirect && s3.path_style);
        assert_eq!(s3.redirect_expiry, Duration::from_secs(90));
        let bad = Config::from_toml("[storage.s3]\ncache_max_size = \"lots\"\n", std::iter::empty()).unwrap_err();
        assert!(bad.to_string().contains("cache_max_size"), "{bad}");
        let unknown = Config::from_toml("[storage]\nbackend = \"ftp\"\n", std::iter::empty()).unwrap_err();
        assert!(unknown.to_string().contains("backend"), "{unknown}");
    }

    #[test]
    fn the_default_secret_variables_can_be_set_beside_the_config() {
        // Every `BERTH_*` variable is a config override, and one naming no key is refused: a
        // default variable for a secret must not be such a name, or setting it as documented
        // would stop berth from starting.
        let c = Config::default();
        let secrets = [
            c.storage.s3.access_key_id_env.clone(),
            c.storage.s3.secret_access_key_env.clone(),
            c.metadata.url_env.clone(),
            c.cluster.secret_env.clone(),
        ];
        let env = secrets.iter().map(|name| (name.clone(), "value".to_owned()));
        let loaded = Config::from_toml(crate::config::DEFAULT_TOML, env);
        assert!(loaded.is_ok(), "{secrets:?}: {:?}", loaded.err());
    }
}
