//! `WWW-Authenticate` challenges as upstream registries send them (untrusted: any upstream, or
//! anyone between berth and it over plain HTTP). A Bearer challenge re-rendered with every value
//! quoted (backslash and quote escaped, as RFC 9110's quoted-pair says) parses back to itself.
#![no_main]

use berth::upstream::{Challenge, parse_challenge};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|s: &str| {
    let Some(Challenge::Bearer { realm, service, scope }) = parse_challenge(s) else {
        return;
    };
    let quoted = |v: &str| format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""));
    let mut header = format!("Bearer realm={}", quoted(&realm));
    for (key, value) in [("service", &service), ("scope", &scope)] {
        if let Some(v) = value {
            header.push_str(&format!(",{key}={}", quoted(v)));
        }
    }
    assert_eq!(
        parse_challenge(&header),
        Some(Challenge::Bearer { realm, service, scope }),
        "{s:?} re-rendered as {header:?}"
    );
});
