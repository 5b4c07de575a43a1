//! `mirror.toml`: the schema, its defaults, environment overrides, and validation into typed values.
//!
//! Every key can be overridden by `BERTH_<SECTION>_<KEY>` (e.g. `BERTH_SERVER_LISTEN`). An unknown
//! key, in the file or the environment, is a startup error that names it.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use toml::{Table, Value};

mod cluster;
mod metadata;
mod notifications;
mod prefetch;
mod storage;
mod upstream;
pub mod value;

pub use cluster::ClusterConfig;
pub use metadata::{MetadataBackend, MetadataConfig};
pub use notifications::{NotificationEndpoint, NotificationSettings};
pub use prefetch::{PrefetchEntry, PrefetchSettings, parse_image};
pub use storage::{S3Config, StorageBackend};
pub use upstream::{UpstreamConfig, UpstreamSettings};
pub use value::MinFree;

/// The documented default configuration, compiled in so `berth serve` runs with no file at all.
pub const DEFAULT_TOML: &str = include_str!("../mirror.toml");

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("invalid configuration: {0}")]
    Invalid(String),
    #[error("environment variable {0} does not name a configuration section and key")]
    UnknownEnv(String),
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: Server,
    pub storage: Storage,
    pub log: Log,
    /// `[[upstream]]` registries to pull through. The first is the default for unqualified names.
    #[serde(rename = "upstream")]
    pub upstreams: Vec<UpstreamConfig>,
    pub private: Private,
    pub auth: AuthConfig,
    pub limits: Limits,
    pub cache: CacheConfig,
    pub gc: GcConfig,
    // --- registry:2 compatibility (issue 12): notification endpoints ---
    /// `[[notifications]]` endpoints that receive registry:2-style event envelopes. Default none.
    pub notifications: Vec<NotificationEndpoint>,
    // --- issue 15: prefetch (pre-warm) lists ---
    /// `[[prefetch]]` lists of images the running server keeps cached; `berth prefetch` runs
    /// them now. Default none.
    pub prefetch: Vec<PrefetchEntry>,
    // --- issue 14: cluster mode ---
    /// `[metadata]`: redb (default) or PostgreSQL.
    pub metadata: MetadataConfig,
    /// `[cluster]`: replicas coordinating through PostgreSQL.
    pub cluster: ClusterConfig,
}

/// `[cache]`: how long cached content lives, and how much disk it may use.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Cached tags and manifests nobody pulled for this long are evicted. Default `"168h"`.
    #[serde(with = "value::duration")]
    pub ttl: Duration,
    /// Store size cap, e.g. `"50GiB"`; empty for no cap. Default `""`.
    #[serde(with = "value::optional_size")]
    pub max_size: Option<u64>,
    /// Above the cap, evict down to this percentage of it. Default `90`.
    pub low_water: u32,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            ttl: Duration::from_secs(168 * 3600),
            max_size: None,
            low_water: 90,
        }
    }
}

/// `[gc]`: online garbage collection.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct GcConfig {
    /// How often eviction and collection run while serving. Default `"1h"`.
    #[serde(with = "value::duration")]
    pub interval: Duration,
    /// Blobs younger than this are never collected (covers pushes in flight). Default `"1h"`.
    #[serde(with = "value::duration")]
    pub grace: Duration,
    /// Upload sessions older than this are purged. Default `"24h"`.
    #[serde(with = "value::duration")]
    pub upload_ttl: Duration,
    /// Also delete untagged manifests of private repositories. Default `false`.
    pub delete_untagged: bool,
}

impl Default for GcConfig {
    fn default() -> Self {
        GcConfig {
            interval: Duration::from_secs(3600),
            grace: Duration::from_secs(3600),
            upload_ttl: Duration::from_secs(24 * 3600),
            delete_untagged: false,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            server: Server::default(),
            storage: Storage::default(),
            log: Log::default(),
            upstreams: vec![UpstreamConfig::docker_hub()],
            private: Private::default(),
            auth: AuthConfig::default(),
            limits: Limits::default(),
            cache: CacheConfig::default(),
            gc: GcConfig::default(),
            notifications: Vec::new(),
            prefetch: Vec::new(),
            metadata: MetadataConfig::default(),
            cluster: ClusterConfig::default(),
        }
    }
}

/// `[private]`: repositories that take pushes and never reach an upstream.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Private {
    /// Repository patterns (`*` matches any run of characters, `/` included), e.g. `["team/*"]`.
    /// A repository that already holds pushed content is private too. Default `[]`.
    pub namespaces: Vec<String>,
    // --- issue 12: pushes on the default config ---
    /// A first push to a name nobody claimed yet makes it private, as registry:2 users expect
    /// (`docker push <berth>/my-alpine`). Upstreams' reserved namespaces (Docker Hub's
    /// `library/*`, `<upstream name>/*`) and names holding cached upstream content are never
    /// claimed. `false`: only `namespaces` take pushes. Default `true`.
    pub claim_on_push: bool,
}

impl Default for Private {
    fn default() -> Self {
        Private {
            namespaces: Vec::new(),
            claim_on_push: true,
        }
    }
}

/// `[auth]`: who may pull, push and delete.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// An htpasswd file with bcrypt entries (`htpasswd -B`). Empty: no authentication at all.
    /// Default `""`.
    pub htpasswd: String,
    /// `"token"`: Bearer challenges and the built-in `/token` endpoint (what docker, containerd and
    /// podman use for Docker Hub). `"basic"`: Basic challenges, as registry:2 with htpasswd.
    /// Default `"token"`.
    pub scheme: AuthScheme,
    /// File holding the secret that signs tokens. Empty: a random secret per start, so tokens
    /// end with a restart and clients fetch new ones. Default `""`.
    pub token_key: String,
    /// Lifetime of an issued token. Default `"5m"`.
    #[serde(with = "value::duration")]
    pub token_ttl: Duration,
    /// The `service` in challenges and tokens. Default `"berth"`.
    pub service: String,
    /// The token endpoint URL put in challenges. Empty: derived from the request's Host header.
    /// Default `""`.
    pub realm: String,
    /// Whether clients that did not log in may pull mirrored (proxied) content. Default `true`.
    pub anonymous_pull: bool,
    /// Groups of users: `[auth.groups] devs = ["alice", "bob"]`. Default none.
    pub groups: std::collections::BTreeMap<String, Vec<String>>,
    /// Access rules. Without any, every logged-in user may pull, push and delete everything.
    pub access: Vec<AccessRule>,

    // --- Login abuse: the failed-login throttle and bounded password checks ---
    /// Failed logins one client IP (for IPv6, its /64) may make within `login_failure_window`
    /// before its logins are refused unchecked (429 with `Retry-After`); the allowance refills
    /// steadily over the window. 0 turns the limit off. Default `10`.
    pub login_failures_per_ip: u32,
    /// The same, for one user name from any client. 0 turns the limit off. Default `20`.
    pub login_failures_per_user: u32,
    /// Time in which a throttled client's or user name's allowance refills completely. Default `"1m"`.
    #[serde(with = "value::duration")]
    pub login_failure_window: Duration,
    /// How long a verified (or refused) user and password are remembered, so a push does not pay
    /// bcrypt on every request. Only an HMAC of them is kept. Default `"1m"`.
    #[serde(with = "value::duration")]
    pub login_cache_ttl: Duration,
    /// Bcrypt checks run at once; more wait. 0: one per CPU core. Default `0`.
    pub password_checks: u32,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            htpasswd: String::new(),
            scheme: AuthScheme::Token,
            token_key: String::new(),
            token_ttl: Duration::from_secs(300),
            service: "berth".into(),
            realm: String::new(),
            anonymous_pull: true,
            groups: Default::default(),
            access: Vec::new(),
            login_failures_per_ip: 10,
            login_failures_per_user: 20,
            login_failure_window: Duration::from_secs(60),
            login_cache_ttl: Duration::from_secs(60),
            password_checks: 0,
        }
    }
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AuthScheme {
    Token,
    Basic,
}

/// One `[[auth.access]]` rule: these users and groups may do these actions on matching repositories.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AccessRule {
    /// Repository pattern; `*` matches any run of characters.
    pub repository: String,
    /// User names; `"*"` is any logged-in user, `"anonymous"` a client that did not log in.
    #[serde(default)]
    pub users: Vec<String>,
    #[serde(default)]
    pub groups: Vec<String>,
    /// Any of `"pull"`, `"push"`, `"delete"`.
    pub actions: Vec<String>,
}

/// `[limits]`: protection against a single client.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Requests per second per client IP; 0 turns the limit off. Default `0`.
    pub requests_per_second: u32,
    /// Requests per second per logged-in user; 0 turns the limit off. Default `0`.
    pub user_requests_per_second: u32,
    /// Burst allowed above either rate. Default `100`.
    pub burst: u32,
    /// Take the client IP from `X-Forwarded-For` (only behind a proxy you trust). Default `false`.
    pub trust_forwarded_for: bool,
    /// Upload sessions one client may hold open at once. Default `64`.
    pub max_upload_sessions: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            requests_per_second: 0,
            user_requests_per_second: 0,
            burst: 100,
            trust_forwarded_for: false,
            max_upload_sessions: 64,
        }
    }
}

/// A secret string: never printed by `Debug`, so a logged config cannot leak it.
#[derive(Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"<redacted>\"")
    }
}

/// A duration that must not be zero.
fn positive(key: &str, d: Duration) -> Result<Duration, ConfigError> {
    if d.is_zero() {
        return Err(ConfigError::Invalid(format!("{key} must be above 0")));
    }
    Ok(d)
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Server {
    /// Address to listen on. Default `"127.0.0.1:5000"`.
    #[serde(with = "value::address")]
    pub listen: SocketAddr,
    /// How long transfers in flight may take to finish after SIGTERM before their connections
    /// are closed. Default `"30s"`.
    #[serde(with = "value::duration")]
    pub drain_timeout: Duration,
    /// `[server.tls]`: serve HTTPS (HTTP/2 and HTTP/1.1) with these PEM files.
    pub tls: Tls,
    // --- registry:2 compatibility (issue 12) ---
    /// Take the host and scheme of berth's own URLs (the token realm, notification target URLs)
    /// from `X-Forwarded-Host` and `X-Forwarded-Proto`. Only behind a reverse proxy you trust,
    /// which sets them. Default `false`.
    pub trust_forwarded_headers: bool,
    // --- Connection limits and timeouts (issue 11 item 3) ---
    /// Time a client has to send a request's headers. On a kept-alive HTTP/1.1 connection the
    /// wait for the next request counts too; it also bounds a new connection's first request
    /// (HTTP/2 included). Default `"30s"`.
    #[serde(with = "value::duration")]
    pub header_timeout: Duration,
    /// A connection with no request in flight and no bytes moving for this long is closed.
    /// Default `"60s"`.
    #[serde(with = "value::duration")]
    pub idle_timeout: Duration,
    /// A request body that sends nothing for this long is cut off (an upload chunk then leaves
    /// its session as it was). Default `"60s"`.
    #[serde(with = "value::duration")]
    pub body_timeout: Duration,
    /// Connections served at once. Further connections wait up to `header_timeout` for a slot,
    /// then are closed. Default `4096`.
    pub max_connections: u32,
    /// Concurrent HTTP/2 streams (requests) per connection. Default `100`.
    pub max_streams: u32,
}

impl Default for Server {
    fn default() -> Self {
        Server {
            listen: SocketAddr::from(([127, 0, 0, 1], 5000)),
            drain_timeout: Duration::from_secs(30),
            tls: Tls::default(),
            trust_forwarded_headers: false,
            header_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(60),
            max_connections: 4096,
            max_streams: 100,
        }
    }
}

/// `[server]` connection limits and timeouts, validated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub body_timeout: Duration,
    pub max_connections: usize,
    pub max_streams: u32,
}

/// `[server.tls]`. Both empty: plain HTTP. The files are re-read when they change or on SIGHUP.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Tls {
    /// Certificate chain (PEM). Default `""`.
    pub cert: String,
    /// Private key (PEM). Default `""`.
    pub key: String,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Storage {
    /// Directory of the blob store and metadata; a relative path in a file is relative to that
    /// file's directory. Default `"./data"`.
    pub root: PathBuf,
    // --- full disk (issue 11) ---
    /// Below this much free space on the store's filesystem `/readyz` answers 503: a size such as
    /// `"1GiB"`, or a percentage of the filesystem such as `"5%"`; `"0"` turns the check off.
    /// Default `"1GiB"`.
    pub min_free: MinFree,
    // --- registry:2 compatibility (issue 12): switches, re-read on SIGHUP ---
    /// Whether manifests, tags and blobs may be deleted (registry:2's `storage.delete.enabled`,
    /// but on by default). Off: every delete answers 405 UNSUPPORTED. Default `true`.
    pub delete: bool,
    /// Maintenance mode: pushes and deletes are refused with 405 UNSUPPORTED while pulls (and
    /// cache fills) go on (registry:2's `storage.maintenance.readonly.enabled`). Default `false`.
    pub read_only: bool,
    // --- cluster mode (issue 14): the object store backend, see config/storage.rs ---
    /// `"fs"` (files under `root`) or `"s3"` (`[storage.s3]`). Default `"fs"`.
    pub backend: StorageBackend,
    /// `[storage.s3]`, used when `backend = "s3"`.
    pub s3: S3Config,
}

impl Default for Storage {
    fn default() -> Self {
        Storage {
            root: PathBuf::from("./data"),
            min_free: MinFree::Bytes(1 << 30),
            delete: true,
            read_only: false,
            backend: StorageBackend::Fs,
            s3: S3Config::default(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Log {
    /// `"text"` or `"json"`. Default `"text"`.
    pub format: LogFormat,
    /// A tracing filter such as `"info"` or `"berth=debug"`; `RUST_LOG` wins when set. Default `"info"`.
    pub level: String,
}

impl Default for Log {
    fn default() -> Self {
        Log {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

impl Config {
    /// Load `path`; without one, `./mirror.toml` if it exists, else the embedded default. Then apply
    /// `BERTH_*` environment overrides and validate.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let default_path = Path::new("mirror.toml");
        let (text, file) = match path {
            Some(p) => (read(p)?, Some(p)),
            None if default_path.exists() => (read(default_path)?, Some(default_path)),
            None => (DEFAULT_TOML.to_owned(), None),
        };
        let mut config = Config::from_toml(&text, std::env::vars())?;
        // A relative `root` in a file means beside that file, so `berth gc --config
        // /etc/berth/mirror.toml` finds the same store from any working directory. An
        // environment override stays relative to the working directory, as a shell user expects.
        if let Some(dir) = file.and_then(Path::parent)
            && config.storage.root.is_relative()
            && std::env::var_os("BERTH_STORAGE_ROOT").is_none()
        {
            config.storage.root = dir.join(&config.storage.root);
        }
        Ok(config)
    }

    /// Parse `text` with the overrides in `env` applied.
    pub fn from_toml(text: &str, env: impl Iterator<Item = (String, String)>) -> Result<Config, ConfigError> {
        let mut table: Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigError::Invalid(e.to_string()))?;
        apply_env(&mut table, env)?;
        // Array entries are deserialised one by one, so that a bad value names its entry
        // (`upstream "hub"`, `prefetch entry 2`) and not only its key.
        let upstreams = table.remove("upstream");
        let notifications = table.remove("notifications");
        let prefetch = table.remove("prefetch");
        let mut config: Config = table
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Invalid(e.to_string()))?;
        let named = |kind: &'static str| {
            move |i: usize, entry: &Table| match entry.get("name").and_then(Value::as_str) {
                Some(name) => format!("{kind} {name:?}"),
                None => format!("{kind} entry {}", i + 1),
            }
        };
        if let Some(v) = upstreams {
            config.upstreams = entries(v, "upstream", named("upstream"))?;
        }
        if let Some(v) = notifications {
            config.notifications = entries(v, "notifications", named("notifications"))?;
        }
        if let Some(v) = prefetch {
            config.prefetch = entries(v, "prefetch", |i, _| format!("prefetch entry {}", i + 1))?;
        }
        config.validate()?;
        Ok(config)
    }

    /// Checks that need more than one value's type: durations and sizes were parsed (once) when
    /// the file was deserialised; here only their ranges and the settings built from several
    /// keys are checked, each error naming its key.
    fn validate(&self) -> Result<(), ConfigError> {
        let s = &self.server;
        positive("server.header_timeout", s.header_timeout)?;
        positive("server.idle_timeout", s.idle_timeout)?;
        positive("server.body_timeout", s.body_timeout)?;
        for (key, n) in [
            ("server.max_connections", s.max_connections),
            ("server.max_streams", s.max_streams),
        ] {
            if n == 0 {
                return Err(ConfigError::Invalid(format!("{key} must be above 0")));
            }
        }
        self.upstream_settings_with(false)?;
        if !(1..=100).contains(&self.cache.low_water) {
            return Err(ConfigError::Invalid(
                "cache.low_water must be a percentage from 1 to 100".into(),
            ));
        }
        positive("gc.interval", self.gc.interval)?;
        self.notification_settings()?;
        self.prefetch_settings()?;
        Ok(())
    }

    /// The `[[upstream]]` entries as typed settings; reads `password_env` variables.
    pub fn upstream_settings(&self) -> Result<Vec<UpstreamSettings>, ConfigError> {
        self.upstream_settings_with(true)
    }

    /// With `read_secrets` false, `password_env` is not read (an empty placeholder stands in):
    /// loading the file must not need the server's secrets, which `berth gc` never uses.
    fn upstream_settings_with(&self, read_secrets: bool) -> Result<Vec<UpstreamSettings>, ConfigError> {
        let mut seen = std::collections::HashSet::new();
        self.upstreams
            .iter()
            .map(|u| {
                let key = |k: &str| format!("upstream {:?}: {k}", u.name);
                if !seen.insert(u.name.as_str()) {
                    return Err(ConfigError::Invalid(format!(
                        "upstream {:?} is configured twice",
                        u.name
                    )));
                }
                let url =
                    reqwest::Url::parse(&u.url).map_err(|e| ConfigError::Invalid(format!("{}: {e}", key("url"))))?;
                if !matches!(url.scheme(), "http" | "https") {
                    return Err(ConfigError::Invalid(format!("{}: must be http or https", key("url"))));
                }
                let password =
                    match (&u.password, &u.password_env) {
                        (Some(p), _) => Some(p.clone()),
                        (None, Some(_)) if !read_secrets => Some(Secret(String::new())),
                        (None, Some(var)) => Some(Secret(std::env::var(var).map_err(|_| {
                            ConfigError::Invalid(format!("{}: {var} is not set", key("password_env")))
                        })?)),
                        (None, None) => None,
                    };
                let credentials = match (&u.username, password) {
                    (Some(user), Some(p)) => Some((user.clone(), p)),
                    (None, None) => None,
                    _ => {
                        return Err(ConfigError::Invalid(format!(
                            "{}: username and password go together",
                            key("username")
                        )));
                    }
                };
                let nonzero = |k: &str, v: u32| {
                    NonZeroU32::new(v).ok_or_else(|| ConfigError::Invalid(format!("{} must be above 0", key(k))))
                };
                Ok(UpstreamSettings {
                    name: u.name.clone(),
                    url,
                    credentials,
                    tag_ttl: u.tag_ttl,
                    timeout: u.timeout,
                    requests_per_second: nonzero("requests_per_second", u.requests_per_second)?,
                    burst: nonzero("burst", u.burst)?,
                    max_retry_after: u.max_retry_after,
                    fill_min_rate: u.fill_min_rate,
                    fill_rate_window: u.fill_rate_window.max(Duration::from_secs(1)),
                    offline: u.offline,
                    forward_ns: u.forward_ns,
                })
            })
            .collect()
    }

    /// `[server]` connection limits and timeouts (checked at load).
    pub fn connection_limits(&self) -> ConnectionLimits {
        let s = &self.server;
        ConnectionLimits {
            header_timeout: s.header_timeout,
            idle_timeout: s.idle_timeout,
            body_timeout: s.body_timeout,
            max_connections: s.max_connections as usize,
            max_streams: s.max_streams,
        }
    }
}

/// The entries of an array of tables (`[[key]]`), each error prefixed with `label(index, entry)`.
fn entries<T: serde::de::DeserializeOwned>(
    value: Value,
    key: &str,
    label: impl Fn(usize, &Table) -> String,
) -> Result<Vec<T>, ConfigError> {
    let Value::Array(items) = value else {
        return Err(ConfigError::Invalid(format!(
            "{key}: expected an array of tables ([[{key}]])"
        )));
    };
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            let Value::Table(entry) = item else {
                return Err(ConfigError::Invalid(format!("{key} entry {}: expected a table", i + 1)));
            };
            let label = label(i, &entry);
            entry
                .try_into()
                .map_err(|e: toml::de::Error| ConfigError::Invalid(format!("{label}: {e}")))
        })
        .collect()
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Apply `BERTH_<SECTION>_<KEY>=value` (nested tables too: `BERTH_SERVER_TLS_CERT` sets
/// `[server.tls] cert`). The path is resolved against the defaults: at each level the longest table
/// name that prefixes the rest is taken. The value takes the type of the key's default (bool,
/// integer, or string).
fn apply_env(table: &mut Table, env: impl Iterator<Item = (String, String)>) -> Result<(), ConfigError> {
    let defaults = Table::try_from(Config::default()).expect("defaults serialise");
    for (name, raw) in env {
        let Some(rest) = name.strip_prefix("BERTH_") else {
            continue;
        };
        let path =
            resolve(&defaults, &rest.to_ascii_lowercase()).ok_or_else(|| ConfigError::UnknownEnv(name.clone()))?;
        if path.len() < 2 {
            return Err(ConfigError::UnknownEnv(name.clone())); // names no [section]
        }
        let (key, tables) = path.split_last().expect("resolve returns a key");
        let mut default = &defaults;
        let mut target = &mut *table;
        for t in tables {
            default = default[t.as_str()].as_table().expect("resolved through tables");
            let entry = target.entry(t.clone()).or_insert_with(|| Value::Table(Table::new()));
            target = entry
                .as_table_mut()
                .ok_or_else(|| ConfigError::Invalid(format!("{name}: {t} is not a table")))?;
        }
        let bad = |what: &str| ConfigError::Invalid(format!("{name}: expected {what}, got {raw:?}"));
        let value = match default.get(key.as_str()) {
            Some(Value::Boolean(_)) => Value::Boolean(raw.parse().map_err(|_| bad("true or false"))?),
            Some(Value::Integer(_)) => Value::Integer(raw.parse().map_err(|_| bad("an integer"))?),
            Some(Value::Array(_)) | Some(Value::Table(_)) => {
                return Err(ConfigError::Invalid(format!(
                    "{name}: {key} cannot be set from the environment (use password_env for secrets)"
                )));
            }
            _ => Value::String(raw.clone()),
        };
        target.insert(key.clone(), value);
    }
    Ok(())
}

/// Split `rest` (e.g. `server_tls_cert`) into a path of table names and a final key, guided by
/// the tables in `defaults`. A final key that is not in the defaults is kept, so that
/// `deny_unknown_fields` reports it by name.
fn resolve(defaults: &Table, rest: &str) -> Option<Vec<String>> {
    let table_prefix = defaults
        .iter()
        .filter(|(k, v)| v.is_table() && rest.strip_prefix(k.as_str()).is_some_and(|r| r.starts_with('_')))
        .max_by_key(|(k, _)| k.len());
    match table_prefix {
        Some((k, Value::Table(inner))) => {
            let mut path = vec![k.clone()];
            path.extend(resolve(inner, &rest[k.len() + 1..])?);
            Some(path)
        }
        _ if defaults.contains_key(rest) || !rest.is_empty() => Some(vec![rest.to_owned()]),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
