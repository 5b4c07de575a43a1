//! Typed setting values: durations, sizes and the free-space floor. Each is parsed once, when the
//! file (with its environment overrides) is deserialised, so nothing after `Config::load` parses
//! text again. The file form stays text (`"30s"`, `"10KiB"`, `"5%"`), and so does the form these
//! serialise back to, which is what tells `BERTH_*` overrides to take a string.
//!
//! A bad value is refused with the key it came from: the TOML deserialiser adds the key path
//! (e.g. ``in `gc.interval` ``) to the message these produce.

use std::time::Duration;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The longest duration any key takes. A century is "never" in practice, and a longer one could
/// overflow the clock arithmetic done with it (a deadline, a GC cut-off), which panics.
/// (Years of 365.25 days, as humantime counts them.)
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 31_557_600);

/// `"30s"`, `"5m"`, `"1h 30m"`: at most 100 years.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text)
        .map_err(|e| format!("{text:?} is not a duration like \"30s\" or \"5m\": {e}"))?;
    if d > MAX_DURATION {
        return Err(format!("{text:?} is longer than 100 years"));
    }
    Ok(d)
}

/// `"10KiB"`, `"50GiB"`, `"512"` (bytes).
pub fn parse_size(text: &str) -> Result<u64, String> {
    text.trim()
        .parse::<bytesize::ByteSize>()
        .map(|s| s.as_u64())
        .map_err(|e| format!("{text:?} is not a size like \"10KiB\": {e}"))
}

/// `#[serde(with = "value::duration")]`: a `Duration` written as `"30s"`.
pub mod duration {
    use super::*;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        parse_duration(&String::deserialize(d)?).map_err(D::Error::custom)
    }
}

/// `#[serde(with = "value::size")]`: a byte count written as `"10KiB"`.
pub mod size {
    use super::*;

    pub fn serialize<S: Serializer>(n: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&n.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        parse_size(&String::deserialize(d)?).map_err(D::Error::custom)
    }
}

/// `#[serde(with = "value::optional_size")]`: a byte count, or `""` for none.
pub mod optional_size {
    use super::*;

    pub fn serialize<S: Serializer>(n: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&n.map(|n| n.to_string()).unwrap_or_default())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        match String::deserialize(d)?.trim() {
            "" => Ok(None),
            text => parse_size(text).map(Some).map_err(D::Error::custom),
        }
    }
}

/// `#[serde(with = "value::address")]`: a socket address written as `"127.0.0.1:5000"`.
pub mod address {
    use std::net::SocketAddr;

    use super::*;

    pub fn serialize<S: Serializer>(a: &SocketAddr, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&a.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
        let text = String::deserialize(d)?;
        text.parse()
            .map_err(|_| D::Error::custom(format!("{text:?} is not an address:port")))
    }
}

/// How much free space the store wants to keep: below it, the registry reports itself not ready.
/// Written as a size (`"1GiB"`, `"0"` for no floor) or a percentage of the filesystem (`"5%"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MinFree {
    Bytes(u64),
    /// A percentage of the filesystem's size.
    Percent(u8),
}

impl MinFree {
    /// The minimum in bytes on a filesystem of `total` bytes.
    pub fn of(self, total: u64) -> u64 {
        match self {
            MinFree::Bytes(n) => n,
            MinFree::Percent(p) => (u128::from(total) * u128::from(p) / 100) as u64,
        }
    }
}

impl std::str::FromStr for MinFree {
    type Err = String;

    fn from_str(s: &str) -> Result<MinFree, String> {
        let text = s.trim();
        let bad = |e: &dyn std::fmt::Display| {
            format!("{text:?} is not a size like \"1GiB\" or a percentage like \"5%\": {e}")
        };
        match text.strip_suffix('%') {
            Some(p) => match p.trim().parse::<u8>() {
                Ok(p) if p <= 100 => Ok(MinFree::Percent(p)),
                Ok(p) => Err(bad(&format!("{p}% is over 100%"))),
                Err(e) => Err(bad(&e)),
            },
            None => Ok(MinFree::Bytes(
                text.parse::<bytesize::ByteSize>().map_err(|e| bad(&e))?.as_u64(),
            )),
        }
    }
}

impl Serialize for MinFree {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            MinFree::Bytes(n) => s.serialize_str(&n.to_string()),
            MinFree::Percent(p) => s.serialize_str(&format!("{p}%")),
        }
    }
}

impl<'de> Deserialize<'de> for MinFree {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<MinFree, D::Error> {
        String::deserialize(d)?.parse().map_err(D::Error::custom)
    }
}
