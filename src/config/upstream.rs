//! `[[upstream]]` entries: the file's schema and the typed settings they validate into.

use std::num::NonZeroU32;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Secret;

/// One `[[upstream]]` entry.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// The registry this upstream stands for, e.g. `"docker.io"`. containerd's `?ns=` and a path
    /// prefix (`/v2/<name>/...`) select it by this name.
    pub name: String,
    /// Base URL, e.g. `"https://registry-1.docker.io"`.
    pub url: String,
    /// Optional credentials for the upstream's token service (or Basic auth).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<Secret>,
    /// Name of an environment variable holding the password (keeps it out of the file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_env: Option<String>,
    /// How long a cached tag is answered without asking the upstream. Default `"5m"`.
    #[serde(default = "default_tag_ttl", with = "super::value::duration")]
    pub tag_ttl: Duration,
    /// Connect and read timeout for upstream requests. Default `"30s"`.
    #[serde(default = "default_timeout", with = "super::value::duration")]
    pub timeout: Duration,
    /// Request budget: sustained upstream requests per second. Default `20`.
    #[serde(default = "default_rps")]
    pub requests_per_second: u32,
    /// Request budget: burst size above the sustained rate. Default `100`.
    #[serde(default = "default_burst")]
    pub burst: u32,
    /// Longest pause a 429's `Retry-After` can impose on requests to this upstream (a larger
    /// value is cut to this). Default `"1h"`.
    #[serde(default = "default_max_retry_after", with = "super::value::duration")]
    pub max_retry_after: Duration,
    /// A cache fill must receive at least this many bytes per second, averaged over each
    /// `fill_rate_window`, or it is aborted (its clients' responses too) so that the next
    /// request starts afresh. Default `"10KiB"`.
    #[serde(default = "default_fill_min_rate", with = "super::value::size")]
    pub fill_min_rate: u64,
    /// The window over which `fill_min_rate` is measured. Default `"30s"`.
    #[serde(default = "default_fill_rate_window", with = "super::value::duration")]
    pub fill_rate_window: Duration,
    // --- issue 15: air-gapped sites (offline mode, a mirror of a mirror) ---
    /// Offline mode: berth never contacts this upstream; cached tags never expire and a miss
    /// answers 404 saying the upstream is offline. Re-read on SIGHUP. Default `false`.
    #[serde(default)]
    pub offline: bool,
    /// The upstream is itself a mirror (another berth): send this entry's `name` with every
    /// request as containerd's `?ns=`, so the next berth picks the same upstream. Default `false`.
    #[serde(default)]
    pub forward_ns: bool,
}

fn default_max_retry_after() -> Duration {
    Duration::from_secs(3600)
}
fn default_fill_min_rate() -> u64 {
    10 << 10
}
fn default_fill_rate_window() -> Duration {
    Duration::from_secs(30)
}

fn default_tag_ttl() -> Duration {
    Duration::from_secs(300)
}
fn default_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_rps() -> u32 {
    20
}
fn default_burst() -> u32 {
    100
}

impl UpstreamConfig {
    pub(super) fn docker_hub() -> Self {
        UpstreamConfig {
            name: "docker.io".into(),
            url: "https://registry-1.docker.io".into(),
            username: None,
            password: None,
            password_env: None,
            tag_ttl: default_tag_ttl(),
            timeout: default_timeout(),
            requests_per_second: default_rps(),
            burst: default_burst(),
            max_retry_after: default_max_retry_after(),
            fill_min_rate: default_fill_min_rate(),
            fill_rate_window: default_fill_rate_window(),
            offline: false,
            forward_ns: false,
        }
    }
}

/// An upstream entry validated into typed values.
#[derive(Clone, Debug)]
pub struct UpstreamSettings {
    pub name: String,
    pub url: reqwest::Url,
    pub credentials: Option<(String, Secret)>,
    pub tag_ttl: Duration,
    pub timeout: Duration,
    pub requests_per_second: NonZeroU32,
    pub burst: NonZeroU32,
    pub max_retry_after: Duration,
    /// Bytes per second a fill must average over `fill_rate_window`.
    pub fill_min_rate: u64,
    pub fill_rate_window: Duration,
    /// Offline at startup (switchable at runtime).
    pub offline: bool,
    /// Send `?ns=<name>` upstream.
    pub forward_ns: bool,
}
