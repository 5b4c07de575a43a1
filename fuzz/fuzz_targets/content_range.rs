//! A PATCH's `Content-Range`. A parsed range is ordered, and the chunk length the store computes
//! from it (`end + 1 - start`, unchecked) cannot overflow.
#![no_main]

use berth::api::parse_content_range;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|s: &str| {
    if let Some(r) = parse_content_range(s) {
        assert!(r.start <= r.end, "{r:?}");
        assert!(r.end.checked_add(1).is_some(), "{r:?}: its length overflows");
    }
});
