//! `[[notifications]]`: registry:2's `notifications.endpoints`, one table per endpoint, and their
//! validation into typed settings.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Config, ConfigError, Secret};

/// Actions an endpoint may ignore (every action berth reports).
pub const ACTIONS: [&str; 4] = ["push", "pull", "delete", "fill"];

/// One `[[notifications]]` endpoint.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NotificationEndpoint {
    /// A name for logs and for the `endpoint` label of the metrics. Required.
    pub name: String,
    /// Where event envelopes are POSTed (http or https). Required.
    pub url: String,
    /// Extra request headers, e.g. `{ Authorization = "Bearer …" }`; never logged. Default none.
    #[serde(default)]
    pub headers: BTreeMap<String, Secret>,
    /// Time allowed for one delivery attempt (connect to response). Default `"2s"`.
    #[serde(default = "default_timeout", with = "super::value::duration")]
    pub timeout: Duration,
    /// Further attempts after a failed one; then the events count as failed. Default `3`.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Wait before the first retry; doubled for each further one (at most 1 min). Default `"1s"`.
    #[serde(default = "default_backoff", with = "super::value::duration")]
    pub backoff: Duration,
    /// Actions not sent to this endpoint: any of `"push"`, `"pull"`, `"delete"`, `"fill"`.
    /// Default `[]`.
    #[serde(default)]
    pub ignored_actions: Vec<String>,
    /// Target media types not sent to this endpoint, e.g. `["application/octet-stream"]` (blobs).
    /// Default `[]`.
    #[serde(default)]
    pub ignored_media_types: Vec<String>,
    /// Events waiting for delivery at most; past it the oldest are dropped (and counted).
    /// Default `1000`.
    #[serde(default = "default_queue")]
    pub queue: u32,
}

fn default_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_retries() -> u32 {
    3
}
fn default_backoff() -> Duration {
    Duration::from_secs(1)
}
fn default_queue() -> u32 {
    1000
}

/// A `[[notifications]]` entry validated into typed values.
#[derive(Clone, Debug)]
pub struct NotificationSettings {
    pub name: String,
    pub url: reqwest::Url,
    pub headers: Vec<(String, Secret)>,
    pub timeout: Duration,
    pub retries: u32,
    pub backoff: Duration,
    pub ignored_actions: Vec<String>,
    pub ignored_media_types: Vec<String>,
    pub queue: usize,
}

impl Config {
    /// The `[[notifications]]` entries as typed settings.
    pub fn notification_settings(&self) -> Result<Vec<NotificationSettings>, ConfigError> {
        let mut seen = std::collections::HashSet::new();
        self.notifications
            .iter()
            .map(|n| {
                let key = |k: &str| format!("notifications {:?}: {k}", n.name);
                let bad = |k: &str, why: String| ConfigError::Invalid(format!("{}: {why}", key(k)));
                if n.name.is_empty() || !seen.insert(n.name.as_str()) {
                    return Err(ConfigError::Invalid(format!(
                        "notifications {:?}: each endpoint needs a name of its own",
                        n.name
                    )));
                }
                let url = reqwest::Url::parse(&n.url).map_err(|e| bad("url", e.to_string()))?;
                if !matches!(url.scheme(), "http" | "https") {
                    return Err(bad("url", "must be http or https".into()));
                }
                for (header, value) in &n.headers {
                    let valid = reqwest::header::HeaderName::from_bytes(header.as_bytes()).is_ok()
                        && reqwest::header::HeaderValue::from_str(&value.0).is_ok();
                    if !valid {
                        return Err(bad("headers", format!("{header:?} is not a valid header")));
                    }
                }
                if let Some(a) = n.ignored_actions.iter().find(|a| !ACTIONS.contains(&a.as_str())) {
                    return Err(bad("ignored_actions", format!("{a:?} is not one of {ACTIONS:?}")));
                }
                if n.queue == 0 {
                    return Err(bad("queue", "must be above 0".into()));
                }
                Ok(NotificationSettings {
                    name: n.name.clone(),
                    url,
                    headers: n.headers.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                    timeout: n.timeout,
                    retries: n.retries,
                    backoff: n.backoff,
                    ignored_actions: n.ignored_actions.clone(),
                    ignored_media_types: n.ignored_media_types.clone(),
                    queue: n.queue as usize,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_validated_and_headers_stay_out_of_debug() {
        let ok = "[[notifications]]\nname = \"hook\"\nurl = \"http://127.0.0.1:9/events\"\nheaders = { Authorization = \"Bearer s3cret\" }\nignored_actions = [\"pull\"]\n";
        let c = Config::from_toml(ok, std::iter::empty()).unwrap();
        assert!(!format!("{c:?}").contains("s3cret"));
        let n = &c.notification_settings().unwrap()[0];
        assert_eq!((n.retries, n.queue), (3, 1000));
        assert_eq!(n.timeout, Duration::from_secs(2));
        for bad in [
            "ignored_actions = [\"pul\"]",
            "url = \"ftp://x\"",
            "timeout = \"soon\"",
            "queue = 0",
            "headers = { \"a b\" = \"x\" }",
        ] {
            let toml = format!("[[notifications]]\nname = \"hook\"\n{bad}\n");
            let toml = if bad.starts_with("url") {
                toml
            } else {
                toml + "url = \"http://127.0.0.1:9/\"\n"
            };
            assert!(
                Config::from_toml(&toml, std::iter::empty()).is_err(),
                "{bad} should be refused"
            );
        }
    }
}
