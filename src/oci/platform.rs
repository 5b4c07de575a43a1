//! Platforms (`os/arch[/variant]`, as `docker pull --platform` writes them) and matching them
//! against an image index's `platform` objects.

use std::fmt;
use std::str::FromStr;

/// A platform filter such as `linux/amd64` or `linux/arm64/v8`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    /// Without one, every variant of the architecture matches.
    pub variant: Option<String>,
}

impl FromStr for Platform {
    type Err = String;

    fn from_str(s: &str) -> Result<Platform, String> {
        let parts: Vec<&str> = s.split('/').collect();
        let valid = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.');
        if !(2..=3).contains(&parts.len()) || !parts.iter().all(|p| valid(p)) {
            return Err(format!(
                "{s:?} is not a platform like \"linux/amd64\" or \"linux/arm64/v8\""
            ));
        }
        Ok(Platform {
            os: parts[0].to_ascii_lowercase(),
            architecture: parts[1].to_ascii_lowercase(),
            variant: parts.get(2).map(|v| v.to_ascii_lowercase()),
        })
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

impl Platform {
    /// Whether an index entry's `platform` object is this platform. An arm64 entry without a
    /// variant is `v8`, as containerd treats it.
    pub fn matches(&self, platform: &serde_json::Value) -> bool {
        let field = |k: &str| platform.get(k).and_then(|v| v.as_str()).unwrap_or("");
        if field("os") != self.os || field("architecture") != self.architecture {
            return false;
        }
        let Some(want) = &self.variant else {
            return true;
        };
        let have = match field("variant") {
            "" if self.architecture == "arm64" => "v8",
            v => v,
        };
        have == want
    }

    /// `os/arch[/variant]` of an index entry's `platform` object, for messages.
    pub fn describe(platform: &serde_json::Value) -> String {
        let field = |k: &str| platform.get(k).and_then(|v| v.as_str()).unwrap_or("");
        match field("variant") {
            "" => format!("{}/{}", field("os"), field("architecture")),
            v => format!("{}/{}/{v}", field("os"), field("architecture")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn platforms_parse_and_match_index_entries() {
        let arm: Platform = "linux/arm64".parse().unwrap();
        let arm_v8: Platform = "linux/arm64/v8".parse().unwrap();
        let amd: Platform = "linux/amd64".parse().unwrap();
        let entry = json!({"os": "linux", "architecture": "arm64", "variant": "v8"});
        assert!(arm.matches(&entry) && arm_v8.matches(&entry) && !amd.matches(&entry));
        assert!(arm_v8.matches(&json!({"os": "linux", "architecture": "arm64"})));
        assert!(!arm_v8.matches(&json!({"os": "linux", "architecture": "arm64", "variant": "v7"})));
        assert_eq!(arm_v8.to_string(), "linux/arm64/v8");
        for bad in ["linux", "linux/", "a/b/c/d", "linux/amd 64"] {
            assert!(bad.parse::<Platform>().is_err(), "{bad}");
        }
    }
}
