//! Unit tests of config loading, defaults, environment overrides and validation.

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
    assert_eq!(c.server.listen.to_string(), "127.0.0.1:5000");
    assert_eq!(c.storage.root, PathBuf::from("./data"));
    let upstreams = c.upstream_settings().unwrap();
    assert_eq!(upstreams.len(), 1);
    assert_eq!(upstreams[0].name, "docker.io");
    assert_eq!(upstreams[0].url.as_str(), "https://registry-1.docker.io/");
    assert_eq!(upstreams[0].tag_ttl, Duration::from_secs(300));
    assert_eq!(c.server.drain_timeout, Duration::from_secs(30));
}

#[test]
fn drain_timeout_comes_from_file_or_environment_and_is_validated() {
    let c = Config::from_toml("[server]\ndrain_timeout = \"2s\"\n", env(&[])).unwrap();
    assert_eq!(c.server.drain_timeout, Duration::from_secs(2));
    let c = Config::from_toml("", env(&[("BERTH_SERVER_DRAIN_TIMEOUT", "1m")])).unwrap();
    assert_eq!(c.server.drain_timeout, Duration::from_secs(60));
    assert!(Config::from_toml("[server]\ndrain_timeout = \"soon\"\n", env(&[])).is_err());
}

#[test]
fn connection_limits_have_defaults_and_refuse_zero() {
    let c = Config::from_toml(DEFAULT_TOML, env(&[])).unwrap();
    let l = c.connection_limits();
    assert_eq!(l.header_timeout, Duration::from_secs(30));
    assert_eq!(l.idle_timeout, Duration::from_secs(60));
    assert_eq!(l.body_timeout, Duration::from_secs(60));
    assert_eq!((l.max_connections, l.max_streams), (4096, 100));
    assert_eq!(
        Config::default().connection_limits(),
        l,
        "mirror.toml documents the compiled-in defaults"
    );
    let c = Config::from_toml("", env(&[("BERTH_SERVER_MAX_CONNECTIONS", "10")])).unwrap();
    assert_eq!(c.connection_limits().max_connections, 10);
    for bad in ["header_timeout = \"0s\"", "body_timeout = \"soon\"", "max_streams = 0"] {
        assert!(
            Config::from_toml(&format!("[server]\n{bad}\n"), env(&[])).is_err(),
            "{bad}"
        );
    }
}

#[test]
fn upstream_entries_are_validated_and_secrets_stay_out_of_debug() {
    let toml = "[[upstream]]\nname = \"hub\"\nurl = \"http://127.0.0.1:1\"\nusername = \"u\"\npassword = \"hunter2\"\ntag_ttl = \"2s\"\n";
    let c = Config::from_toml(toml, env(&[])).unwrap();
    assert!(!format!("{c:?}").contains("hunter2"));
    assert_eq!(c.upstream_settings().unwrap()[0].tag_ttl, Duration::from_secs(2));
    for bad in [
        "tag_ttl = \"soon\"",
        "url = \"ftp://x\"",
        "username = \"only\"",
        "requests_per_second = 0",
    ] {
        let toml = format!("[[upstream]]\nname = \"hub\"\nurl = \"http://127.0.0.1:1\"\n{bad}\n")
            .replace("url = \"http://127.0.0.1:1\"\nurl", "url");
        assert!(Config::from_toml(&toml, env(&[])).is_err(), "{bad} should be refused");
    }
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
    assert_eq!(c.server.listen.to_string(), "127.0.0.1:6000");
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
fn nested_tables_and_typed_values_come_from_the_environment() {
    let c = Config::from_toml(
        DEFAULT_TOML,
        env(&[
            ("BERTH_SERVER_TLS_CERT", "/etc/berth/cert.pem"),
            ("BERTH_AUTH_ANONYMOUS_PULL", "false"),
            ("BERTH_LIMITS_REQUESTS_PER_SECOND", "7"),
            ("BERTH_PRIVATE_NAMESPACES", "team/*"),
        ]),
    );
    let err = c.unwrap_err().to_string();
    assert!(
        err.contains("BERTH_PRIVATE_NAMESPACES"),
        "a list cannot come from the environment: {err}"
    );
    let c = Config::from_toml(
        DEFAULT_TOML,
        env(&[
            ("BERTH_SERVER_TLS_CERT", "/c.pem"),
            ("BERTH_AUTH_ANONYMOUS_PULL", "false"),
            ("BERTH_LIMITS_REQUESTS_PER_SECOND", "7"),
        ]),
    )
    .unwrap();
    assert_eq!(c.server.tls.cert, "/c.pem");
    assert!(!c.auth.anonymous_pull);
    assert_eq!(c.limits.requests_per_second, 7);
    assert!(Config::from_toml(DEFAULT_TOML, env(&[("BERTH_LIMITS_BURST", "many")])).is_err());
}

#[test]
fn min_free_is_a_size_or_a_percentage() {
    let c = |v: &str| Config::from_toml(&format!("[storage]\nmin_free = {v:?}\n"), env(&[]));
    assert_eq!(Config::default().storage.min_free, MinFree::Bytes(1 << 30));
    assert_eq!(c("512MiB").unwrap().storage.min_free, MinFree::Bytes(512 << 20));
    assert_eq!(c("5%").unwrap().storage.min_free, MinFree::Percent(5));
    assert_eq!(c("0").unwrap().storage.min_free, MinFree::Bytes(0));
    assert_eq!(MinFree::Percent(5).of(1000), 50);
    for bad in ["lots", "101%", "-1%"] {
        let e = c(bad).unwrap_err().to_string();
        assert!(e.contains("storage.min_free"), "{bad}: {e}");
    }
}

#[test]
fn registry2_switches_default_as_documented_and_come_from_the_environment() {
    let c = Config::from_toml(DEFAULT_TOML, env(&[])).unwrap();
    assert!(c.storage.delete && !c.storage.read_only && !c.server.trust_forwarded_headers);
    assert!(c.notifications.is_empty());
    let c = Config::from_toml(
        DEFAULT_TOML,
        env(&[
            ("BERTH_STORAGE_READ_ONLY", "true"),
            ("BERTH_STORAGE_DELETE", "false"),
            ("BERTH_SERVER_TRUST_FORWARDED_HEADERS", "true"),
        ]),
    )
    .unwrap();
    assert!(!c.storage.delete && c.storage.read_only && c.server.trust_forwarded_headers);
}

#[test]
fn bad_listen_address_is_refused() {
    let err = Config::from_toml("[server]\nlisten = \"nowhere\"\n", env(&[]))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("server.listen") && err.contains("not an address:port"),
        "{err}"
    );
}

#[test]
fn loading_needs_no_upstream_secret_and_serving_does() {
    let text = "[[upstream]]\nname = \"docker.io\"\nurl = \"https://registry-1.docker.io\"\n\
                username = \"me\"\npassword_env = \"BERTH_CONFIG_TEST_UNSET_PASSWORD\"\n";
    let c = Config::from_toml(text, env(&[])).expect("gc/du/delete load the file without the secret");
    let err = c.upstream_settings().unwrap_err().to_string();
    assert!(err.contains("BERTH_CONFIG_TEST_UNSET_PASSWORD is not set"), "{err}");
    assert!(c.private.claim_on_push, "claiming on push is the default");
}

/// Found with the config fuzz target's clock invariant: `grace = "500000000000years"` parsed,
/// then panicked every GC run (`SystemTime::now() - grace`).
#[test]
fn durations_past_a_century_are_refused() {
    let err = Config::from_toml("[gc]\ngrace = \"500000000000years\"\n", env(&[]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("gc.grace") && err.contains("100 years"), "{err}");
    let c = Config::from_toml("[gc]\ngrace = \"100years\"\n", env(&[])).unwrap();
    assert!(
        std::time::SystemTime::now()
            .checked_sub(crate::cache::Policy::from_config(&c).grace)
            .is_some()
    );
}

/// Durations and sizes are parsed once, at load: a bad one fails `from_toml` (file or
/// environment) and the error names its key, so nothing after loading has to parse it again.
#[test]
fn a_bad_duration_or_size_fails_at_load_naming_its_key() {
    for (toml, vars, key) in [
        ("[gc]\ninterval = \"soon\"\n", &[][..], "gc.interval"),
        ("[auth]\ntoken_ttl = \"5 fortnights\"\n", &[], "auth.token_ttl"),
        ("[cache]\nmax_size = \"huge\"\n", &[], "cache.max_size"),
        ("", &[("BERTH_SERVER_IDLE_TIMEOUT", "later")], "server.idle_timeout"),
        ("", &[("BERTH_CACHE_MAX_SIZE", "12 bananas")], "cache.max_size"),
        (
            "[[upstream]]\nname = \"hub\"\nurl = \"http://127.0.0.1:1\"\nfill_min_rate = \"fast\"\n",
            &[],
            "fill_min_rate",
        ),
        (
            "[[upstream]]\nname = \"hub\"\nurl = \"http://127.0.0.1:1\"\ntag_ttl = \"soon\"\n",
            &[],
            "upstream \"hub\"",
        ),
        (
            "[[prefetch]]\nimages = [\"alpine\"]\ninterval = \"often\"\n",
            &[],
            "interval",
        ),
    ] {
        let err = Config::from_toml(toml, env(vars)).unwrap_err().to_string();
        assert!(err.contains(key), "{toml}{vars:?}: {err}");
    }
    let c = Config::from_toml(
        "[cache]\nttl = \"2h\"\nmax_size = \"50GiB\"\n[auth]\ntoken_ttl = \"90s\"\n",
        env(&[("BERTH_GC_INTERVAL", "10m")]),
    )
    .unwrap();
    assert_eq!(c.cache.ttl, Duration::from_secs(7200));
    assert_eq!(c.cache.max_size, Some(50 << 30));
    assert_eq!(c.auth.token_ttl, Duration::from_secs(90));
    assert_eq!(c.gc.interval, Duration::from_secs(600));
    assert_eq!(Config::default().cache.max_size, None, "an empty max_size is no cap");
}

#[test]
fn metadata_and_cluster_default_to_redb_and_take_typed_values() {
    use super::{MetadataBackend, MetadataConfig};
    let c = Config::from_toml(DEFAULT_TOML, env(&[])).unwrap();
    assert_eq!(c.metadata.backend, MetadataBackend::Redb, "no database by default");
    assert_eq!(c.metadata.url_env, "DATABASE_URL");
    assert_eq!(
        (c.cluster.lease, c.cluster.heartbeat),
        (Duration::from_secs(10), Duration::from_secs(5))
    );
    let c = Config::from_toml(
        "[metadata]\nbackend = \"postgres\"\nurl_env = \"PG_URL\"\n[cluster]\nlease = \"3s\"\n",
        env(&[("BERTH_CLUSTER_ADVERTISE", "http://10.0.0.5:5000")]),
    )
    .unwrap();
    assert_eq!(c.metadata.backend, MetadataBackend::Postgres);
    assert_eq!(c.cluster.lease, Duration::from_secs(3));
    assert_eq!(c.cluster.advertise, "http://10.0.0.5:5000");
    assert!(Config::from_toml("[metadata]\nbackend = \"mysql\"\n", env(&[])).is_err());
    assert!(Config::from_toml("[cluster]\nlease = \"soon\"\n", env(&[])).is_err());
    let missing = MetadataConfig {
        url_env: "BERTH_TEST_NO_SUCH_VARIABLE".into(),
        ..MetadataConfig::default()
    };
    assert!(missing.url().unwrap_err().contains("BERTH_TEST_NO_SUCH_VARIABLE"));
}

#[test]
fn the_cluster_examples_replica_config_is_cluster_mode_on_s3_and_takes_its_advertise_url_from_the_environment() {
    let text = include_str!("../../docker/cluster/replica.toml");
    let c = Config::from_toml(
        text,
        env(&[
            ("BERTH_CLUSTER_ADVERTISE", "http://berth2:5000"),
            ("AWS_ACCESS_KEY_ID", "ignored"),
        ]),
    )
    .unwrap();
    assert_eq!(c.storage.backend, StorageBackend::S3);
    assert_eq!(c.metadata.backend, MetadataBackend::Postgres);
    assert_eq!(c.cluster.advertise, "http://berth2:5000");
    assert_eq!(c.auth.token_key, "/etc/berth/token.key");
    // The credentials' variables are not BERTH_* names, which would be read as config keys.
    for name in [
        &c.storage.s3.access_key_id_env,
        &c.storage.s3.secret_access_key_env,
        &c.metadata.url_env,
        &c.cluster.secret_env,
    ] {
        assert!(!name.starts_with("BERTH_"), "{name}");
    }
    let defaults = Config::default();
    for name in [
        &defaults.storage.s3.access_key_id_env,
        &defaults.storage.s3.secret_access_key_env,
    ] {
        assert!(!name.starts_with("BERTH_"), "{name}");
    }
}
