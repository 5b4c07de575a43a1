//! The `Range` header of a blob GET, parsed by `http-range-header` (RFC 9110 syntax) and reduced
//! to what berth serves: the whole blob, one part, or a 416.

use http_range_header::{RangeUnsatisfiableError, parse_range_header};

/// A single byte range `start..=end` of a blob of known size, or why there is none.
#[derive(Debug, PartialEq, Eq)]
pub enum RangeSpec {
    Whole,
    Part { start: u64, end: u64 },
    Unsatisfiable,
}

/// Parse `Range: bytes=a-b | a- | -n` against `size`. Multiple ranges and malformed headers are
/// ignored (RFC 9110 lets a server answer 200 with the whole body); a range wholly past the end
/// is unsatisfiable, and one running past the end is cut to it.
pub fn parse_range(value: Option<&str>, size: u64) -> RangeSpec {
    let Some(parsed) = value.and_then(|v| parse_range_header(v.trim()).ok()) else {
        return RangeSpec::Whole;
    };
    if parsed.len() != 1 {
        return RangeSpec::Whole;
    }
    match parsed.validate(size).as_deref() {
        Ok([range]) => RangeSpec::Part {
            start: *range.start(),
            end: *range.end(),
        },
        // An empty blob has no byte a range could select (the crate returns no range then).
        Ok(_) | Err(RangeUnsatisfiableError::Unsatisfiable) => RangeSpec::Unsatisfiable,
        Err(_) => RangeSpec::Whole,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range(None, 10), RangeSpec::Whole);
        assert_eq!(parse_range(Some("bytes=0-3"), 10), RangeSpec::Part { start: 0, end: 3 });
        assert_eq!(parse_range(Some("bytes=5-"), 10), RangeSpec::Part { start: 5, end: 9 });
        assert_eq!(parse_range(Some("bytes=-4"), 10), RangeSpec::Part { start: 6, end: 9 });
        assert_eq!(
            parse_range(Some("bytes=8-100"), 10),
            RangeSpec::Part { start: 8, end: 9 }
        );
        assert_eq!(parse_range(Some("bytes=10-"), 10), RangeSpec::Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=0-1,3-4"), 10), RangeSpec::Whole);
        assert_eq!(parse_range(Some("items=0-1"), 10), RangeSpec::Whole);
    }

    #[test]
    fn edge_ranges() {
        // A suffix longer than the blob selects all of it (RFC 9110 14.1.2).
        assert_eq!(parse_range(Some("bytes=-40"), 10), RangeSpec::Part { start: 0, end: 9 });
        assert_eq!(parse_range(Some("bytes=10-20"), 10), RangeSpec::Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=0-"), 0), RangeSpec::Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=-5"), 0), RangeSpec::Unsatisfiable);
        // Reversed, garbled and signed ranges are ignored, not refused.
        for ignored in ["bytes=5-3", "bytes=a-b", "bytes=", "bytes=+1-2", "bytes=0-1,0-2"] {
            assert_eq!(parse_range(Some(ignored), 10), RangeSpec::Whole, "{ignored}");
        }
    }
}
