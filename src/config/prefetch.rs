//! `[[prefetch]]`: images the running server keeps warm for an offline or air-gapped site, and
//! their validation into typed settings.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Config, ConfigError};
use crate::oci::{Platform, Reference, RepoName};

/// One `[[prefetch]]` list.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PrefetchEntry {
    /// Images by tag or digest, named as a mirror client names them: `alpine:3.20` (the default
    /// upstream; Docker Hub adds `library/`), `ghcr.io/org/app:1.4` (the upstream named
    /// `ghcr.io`), `nginx@sha256:…`. Without a tag, `:latest`. Required.
    pub images: Vec<String>,
    /// Platforms of a multi-platform image to fetch, `os/arch` or `os/arch/variant`, e.g.
    /// `["linux/amd64", "linux/arm64"]`; empty for all. Default `[]`.
    #[serde(default)]
    pub platforms: Vec<String>,
    /// Also fetch the referrers (signatures, SBOMs, attestations) the upstream keeps under the
    /// tag schema (`sha256-<hex>` tags). Default `false`.
    #[serde(default)]
    pub referrers: bool,
    /// How often the running server fetches them again (tags are revalidated, new content is
    /// fetched); `"0s"`: only when `berth prefetch` runs. Default `"6h"`.
    #[serde(default = "default_interval", with = "super::value::duration")]
    pub interval: Duration,
    /// These images are never evicted by `[cache] max_size` (they still count towards it, so
    /// other cached images go first). The TTL still applies, but every run counts as a pull.
    /// Default `true`.
    #[serde(default = "default_exempt")]
    pub exempt_from_size_cap: bool,
}

fn default_interval() -> Duration {
    Duration::from_secs(6 * 3600)
}
fn default_exempt() -> bool {
    true
}

/// A `[[prefetch]]` entry validated into typed values.
#[derive(Clone, Debug)]
pub struct PrefetchSettings {
    /// As written in the file, for reports.
    pub images: Vec<String>,
    pub platforms: Vec<Platform>,
    pub referrers: bool,
    /// `None`: only on demand.
    pub interval: Option<Duration>,
    pub exempt_from_size_cap: bool,
}

/// Parse an image as `[[prefetch]]` and `berth prefetch` take it: a name with `:tag` or
/// `@digest`, `:latest` when it has neither (as `docker pull`).
pub fn parse_image(image: &str) -> Result<(RepoName, Reference), String> {
    let last = image.rsplit('/').next().unwrap_or(image);
    if image.contains('@') || last.contains(':') {
        crate::oci::parse_image_ref(image)
    } else {
        crate::oci::parse_image_ref(&format!("{image}:latest"))
    }
}

impl Config {
    /// The `[[prefetch]]` entries as typed settings.
    pub fn prefetch_settings(&self) -> Result<Vec<PrefetchSettings>, ConfigError> {
        self.prefetch
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let bad = |why: String| ConfigError::Invalid(format!("prefetch entry {}: {why}", i + 1));
                if p.images.is_empty() {
                    return Err(bad("images is empty".into()));
                }
                for image in &p.images {
                    parse_image(image).map_err(bad)?;
                }
                let platforms = p
                    .platforms
                    .iter()
                    .map(|s| s.parse::<Platform>().map_err(bad))
                    .collect::<Result<Vec<_>, _>>()?;
                let interval = p.interval;
                Ok(PrefetchSettings {
                    images: p.images.clone(),
                    platforms,
                    referrers: p.referrers,
                    interval: (!interval.is_zero()).then_some(interval),
                    exempt_from_size_cap: p.exempt_from_size_cap,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefetch_entries_parse_with_defaults_and_bad_ones_are_named() {
        let c = Config::from_toml(
            "[[prefetch]]\nimages = [\"alpine\", \"ghcr.io/org/app:1.4\"]\nplatforms = [\"linux/arm64/v8\"]\n",
            std::iter::empty(),
        )
        .unwrap();
        let p = &c.prefetch_settings().unwrap()[0];
        assert_eq!(p.interval, Some(Duration::from_secs(6 * 3600)));
        assert!(p.exempt_from_size_cap && !p.referrers);
        assert_eq!(p.platforms[0].to_string(), "linux/arm64/v8");
        assert_eq!(parse_image("alpine").unwrap().1.to_string(), "latest");
        let (name, tag) = parse_image("ghcr.io/org/app").unwrap();
        assert_eq!((name.as_str(), tag.to_string().as_str()), ("ghcr.io/org/app", "latest"));
        for bad in [
            "[[prefetch]]\nimages = []\n",
            "[[prefetch]]\nimages = [\"Alpine:1\"]\n",
            "[[prefetch]]\nimages = [\"alpine\"]\nplatforms = [\"amd64\"]\n",
            "[[prefetch]]\nimages = [\"alpine\"]\ninterval = \"soon\"\n",
        ] {
            let e = Config::from_toml(bad, std::iter::empty()).unwrap_err().to_string();
            assert!(e.contains("prefetch entry 1"), "{bad}: {e}");
        }
    }
}
