//! The config file with `BERTH_*` overrides. Input: the TOML text, then optionally a NUL and the
//! overrides as `KEY=VALUE` lines. A config that validates yields every derived setting, each of its
//! durations can be added to and taken from a clock, and its auth section (without files) builds
//! and issues a token.
#![no_main]

use std::time::{Instant, SystemTime};

use berth::auth::Auth;
use berth::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|s: &str| {
    let (toml, env) = s.split_once('\0').unwrap_or((s, ""));
    let env = env
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
    let Ok(config) = Config::from_toml(toml, env) else {
        return;
    };
    // Validation already derived these once; they must not fail afterwards.
    let policy = berth::cache::Policy::from_config(&config);
    let mut durations = vec![
        config.server.drain_timeout,
        config.gc.interval,
        config.auth.token_ttl,
        config.auth.login_failure_window,
        config.auth.login_cache_ttl,
        policy.ttl,
        policy.grace,
        policy.upload_ttl,
    ];
    for u in config.upstream_settings().unwrap() {
        durations.extend([u.tag_ttl, u.timeout]);
    }
    // berth adds these to clocks (deadlines) and takes them from clocks (ages, grace cut-offs),
    // where an overflow panics: every configured duration must fit both ways.
    for d in durations {
        let fits = Instant::now().checked_add(d).is_some() && SystemTime::now().checked_sub(d).is_some();
        assert!(fits, "{d:?} overflows a clock");
    }
    if config.auth.htpasswd.is_empty() && config.auth.token_key.is_empty() {
        if let Ok(auth) = Auth::new(&config.auth) {
            let _ = auth.issue(None, vec![]);
        }
    }
});
