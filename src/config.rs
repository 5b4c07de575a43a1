//! `mirror.toml`: the schema, its defaults, environment overrides, and validation into typed values.
//!
//! Every key can be overridden by `BERTH_<SECTION>_<KEY>` (e.g. `BERTH_SERVER_LISTEN`). An unknown
//! key, in the file or the environment, is a startup error that names it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use toml::{Table, Value};

/// The documented default configuration, compiled in so `berth serve` runs with no file at all.
pub const DEFAULT_TOML: &str = include_str!("../mirror.toml");

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid configuration: {0}")]
    Invalid(String),
    #[error("environment variable {0} does not name a configuration section and key")]
    UnknownEnv(String),
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: Server,
    pub storage: Storage,
    pub log: Log,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Server {
    /// Address to listen on. Default `"127.0.0.1:5000"`.
    pub listen: String,
}

impl Default for Server {
    fn default() -> Self {
        Server {
            listen: "127.0.0.1:5000".into(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Storage {
    /// Directory of the blob store and metadata. Default `"./data"`.
    pub root: PathBuf,
}

impl Default for Storage {
    fn default() -> Self {
        Storage {
            root: PathBuf::from("./data"),
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
        let text = match path {
            Some(p) => read(p)?,
            None if default_path.exists() => read(default_path)?,
            None => DEFAULT_TOML.to_owned(),
        };
        Config::from_toml(&text, std::env::vars())
    }

    /// Parse `text` with the overrides in `env` applied.
    pub fn from_toml(
        text: &str,
        env: impl Iterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut table: Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigError::Invalid(e.to_string()))?;
        apply_env(&mut table, env)?;
        let config: Config = table
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Invalid(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.listen_addr()?;
        Ok(())
    }

    pub fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.server.listen.parse().map_err(|_| {
            ConfigError::Invalid(format!(
                "server.listen: {:?} is not an address:port",
                self.server.listen
            ))
        })
    }
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Apply `BERTH_<SECTION>_<KEY>=value`. The section is the longest known section name that
/// prefixes the rest; the value takes the type of the key's default (bool, integer, or string).
fn apply_env(
    table: &mut Table,
    env: impl Iterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    let defaults = Table::try_from(Config::default()).expect("defaults serialise");
    for (name, raw) in env {
        let Some(rest) = name.strip_prefix("BERTH_") else {
            continue;
        };
        let rest = rest.to_ascii_lowercase();
        let section = defaults
            .keys()
            .filter(|s| {
                rest.strip_prefix(s.as_str())
                    .is_some_and(|r| r.starts_with('_'))
            })
            .max_by_key(|s| s.len())
            .ok_or_else(|| ConfigError::UnknownEnv(name.clone()))?;
        let key = &rest[section.len() + 1..];
        let bad =
            |what: &str| ConfigError::Invalid(format!("{name}: expected {what}, got {raw:?}"));
        let value = match defaults[section].get(key) {
            Some(Value::Boolean(_)) => {
                Value::Boolean(raw.parse().map_err(|_| bad("true or false"))?)
            }
            Some(Value::Integer(_)) => Value::Integer(raw.parse().map_err(|_| bad("an integer"))?),
            _ => Value::String(raw.clone()),
        };
        let section_table = table
            .entry(section.clone())
            .or_insert_with(|| Value::Table(Table::new()));
        let Value::Table(section_table) = section_table else {
            return Err(ConfigError::Invalid(format!("{section} is not a table")));
        };
        section_table.insert(key.to_owned(), value);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Iterator<Item = (String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<Vec<_>>()
            .into_iter()
    }

    #[test]
    fn embedded_default_parses_to_the_documented_defaults() {
        let c = Config::from_toml(DEFAULT_TOML, env(&[])).unwrap();
        assert_eq!(c.server.listen, "127.0.0.1:5000");
        assert_eq!(c.storage.root, PathBuf::from("./data"));
    }

    #[test]
    fn environment_overrides_file() {
        let c = Config::from_toml(
            DEFAULT_TOML,
            env(&[
                ("BERTH_SERVER_LISTEN", "127.0.0.1:6000"),
                ("BERTH_STORAGE_ROOT", "/tmp/x"),
                ("OTHER", "1"),
            ]),
        )
        .unwrap();
        assert_eq!(c.server.listen, "127.0.0.1:6000");
        assert_eq!(c.storage.root, PathBuf::from("/tmp/x"));
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = Config::from_toml("[server]\nlisen = \"x\"\n", env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("lisen"), "{err}");
        let err = Config::from_toml("", env(&[("BERTH_SERVER_PORT", "1")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("port"), "{err}");
        let err = Config::from_toml("", env(&[("BERTH_NOPE_X", "1")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("BERTH_NOPE_X"), "{err}");
    }

    #[test]
    fn bad_listen_address_is_refused() {
        assert!(Config::from_toml("[server]\nlisten = \"nowhere\"\n", env(&[])).is_err());
    }
}
