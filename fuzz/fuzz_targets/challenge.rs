//! `WWW-Authenticate` challenges as upstream registries send them (untrusted: any upstream, or
//! anyone between berth and it over plain HTTP). A Bearer challenge re-rendered with every value
//! quoted parses back to itself.
#![no_main]

use berth::upstream::{Challenge, parse_challenge};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|s: &str| {
    let Some(Challenge::Bearer { realm, service, scope }) = parse_challenge(s) else {
        return;
    };
    let values = [Some(&realm), service.as_ref(), scope.as_ref()];
    // A quote cannot be written inside a quoted value (no escapes on this path), so skip those.
    if values.iter().flatten().any(|v| v.contains('"')) {
        return;
    }
    let mut header = format!("Bearer realm=\"{realm}\"");
    for (key, value) in [("service", &service), ("scope", &scope)] {
        if let Some(v) = value {
            header.push_str(&format!(",{key}=\"{v}\""));
        }
    }
    assert_eq!(
        parse_challenge(&header),
        Some(Challenge::Bearer { realm, service, scope }),
        "{s:?} re-rendered as {header:?}"
    );
});
