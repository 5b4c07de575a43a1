//! The one wall clock: seconds (and milliseconds) since the Unix epoch, as stored in metadata and
//! tokens. A leaf any floor may use (see ARCHITECTURE.md, "Layers").

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch; 0 for a clock set before 1970 rather than a panic.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Milliseconds since the Unix epoch (the blob registry's clock: GC grace periods of a few
/// seconds must not round to a whole second either way).
pub fn unix_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
