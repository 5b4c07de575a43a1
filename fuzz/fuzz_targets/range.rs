//! A blob GET's `Range` header against a blob size. Input: the size in decimal, a newline, then
//! the header value. A satisfiable range lies within the blob.
#![no_main]

use berth::api::{RangeSpec, parse_range};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|s: &str| {
    let (size, header) = s.split_once('\n').unwrap_or(("1000", s));
    let Ok(size) = size.parse::<u64>() else {
        return;
    };
    match parse_range(Some(header), size) {
        RangeSpec::Part { start, end } => assert!(start <= end && end < size, "{start}-{end} of {size}"),
        RangeSpec::Whole | RangeSpec::Unsatisfiable => {}
    }
});
