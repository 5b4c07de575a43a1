//! Prefetch (pre-warm) lists: fetch images into the cache before anyone pulls them, so a site
//! keeps working when its upstream is gone.
//!
//! A prefetch pulls the way a client does, through the registry's own pull path: the manifest by
//! tag (revalidated with the upstream), the child manifests of the platforms asked for, then
//! every blob through the single-flight fills. So verification, caching, the upstream's request
//! budget and the pull times that keep an image from TTL eviction all work as for any pull, and a
//! second run finds everything cached and fetches nothing. With `referrers`, the tag-schema index
//! of each fetched manifest (`sha256-<hex>`) and the artifacts it lists come along when the
//! upstream has them. The OCI referrers API is not asked: the tag schema works on every registry
//! (distribution 2.8 has no API); `Walk::referrers_of` is the one place to ask the API first once
//! the pull path offers it for mirrored repositories.

use std::time::Duration;

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use std::sync::Arc;

use super::route::{Route, resolve};

mod walk;

use super::{BlobBody, Blobs, CacheResult, Core, Error, Manifests, Result};
use crate::config::{PrefetchSettings, parse_image};
use crate::oci::{Digest, Manifest, Platform, Reference, RepoName, media};
use walk::Walk;

/// Blobs of one image fetched at once; the upstream budget paces them further.
const BLOBS_AT_ONCE: usize = 4;
/// Index nesting followed at most (an index of indexes is rare; deeper is refused).
const MAX_DEPTH: usize = 3;
/// Every manifest type berth stores, so the upstream answers with what a client would get.
const ACCEPT: [&str; 4] = [
    media::OCI_INDEX,
    media::DOCKER_LIST,
    media::OCI_MANIFEST,
    media::DOCKER_MANIFEST,
];

/// One image to prefetch.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Job {
    /// As the user wrote it: `alpine:3.20`, `ghcr.io/org/app:1.4`, `nginx@sha256:…`.
    pub image: String,
    /// `os/arch[/variant]` of a multi-platform image; empty for all.
    #[serde(default)]
    pub platforms: Vec<String>,
    #[serde(default)]
    pub referrers: bool,
}

impl Job {
    /// The jobs of configured `[[prefetch]]` lists; `platforms`, when not empty, replace each
    /// list's own.
    pub fn from_settings(lists: &[PrefetchSettings], platforms: &[String]) -> Vec<Job> {
        lists
            .iter()
            .flat_map(|list| {
                list.images.iter().map(move |image| Job {
                    image: image.clone(),
                    platforms: if platforms.is_empty() {
                        list.platforms.iter().map(ToString::to_string).collect()
                    } else {
                        platforms.to_vec()
                    },
                    referrers: list.referrers,
                })
            })
            .collect()
    }
}

/// What happened to one image.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ImageReport {
    pub image: String,
    /// `repository@digest` in the store, once the top manifest resolved.
    #[serde(default)]
    pub resolved: Option<String>,
    /// Manifests (the image's, its platforms', its referrers') and how many were fetched.
    pub manifests: usize,
    pub manifests_fetched: usize,
    pub blobs: usize,
    pub blobs_fetched: usize,
    /// Bytes of all its blobs, and of those fetched now.
    pub bytes: u64,
    pub bytes_fetched: u64,
    /// Referrer artifacts (signatures, SBOMs) found.
    pub referrers: usize,
    /// Why it failed, if it did; what was fetched before stays cached.
    #[serde(default)]
    pub error: Option<String>,
}

/// Progress of a run, for a display.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// Image `n` of `of` starts.
    Image { image: String, n: usize, of: usize },
    /// A blob is in the store (`cached`: it already was).
    Blob {
        image: String,
        digest: String,
        size: u64,
        cached: bool,
    },
    /// The image is done, well or not.
    Done { report: ImageReport },
}

/// Local names and references of the `[[prefetch]]` images exempt from the size cap, resolved
/// as the mirror routes them (`upstreams`: the configured upstream names, default first).
pub fn pins(lists: &[PrefetchSettings], upstreams: &[&str]) -> Vec<(RepoName, Reference)> {
    lists
        .iter()
        .filter(|l| l.exempt_from_size_cap)
        .flat_map(|l| l.images.iter())
        .filter_map(|image| {
            let (name, reference) = parse_image(image).ok()?;
            let (_, _, local) = resolve(upstreams, name.as_str(), None)?;
            Some((local.parse().ok()?, reference))
        })
        .collect()
}

/// What a manifest fetch reported.
struct Fetched {
    digest: Digest,
    manifest: Manifest,
}

/// Prefetch lists run through the pull path of [`Manifests`] and [`Blobs`].
#[derive(Clone)]
pub struct Prefetch {
    pub(super) core: Arc<Core>,
    pub(super) manifests: Manifests,
    pub(super) blobs: Blobs,
}

impl Prefetch {
    /// Prefetch `jobs` one image after another; `progress` sees each step. Failures are
    /// reported per image and never stop the run.
    pub async fn run(&self, jobs: &[Job], progress: &(dyn Fn(Event) + Send + Sync)) -> Vec<ImageReport> {
        let mut reports = Vec::with_capacity(jobs.len());
        for (i, job) in jobs.iter().enumerate() {
            progress(Event::Image {
                image: job.image.clone(),
                n: i + 1,
                of: jobs.len(),
            });
            let mut report = ImageReport {
                image: job.image.clone(),
                ..Default::default()
            };
            if let Err(e) = self.prefetch_image(job, &mut report, progress).await {
                report.error = Some(e);
            }
            progress(Event::Done { report: report.clone() });
            reports.push(report);
        }
        reports
    }

    async fn prefetch_image(
        &self,
        job: &Job,
        report: &mut ImageReport,
        progress: &(dyn Fn(Event) + Send + Sync),
    ) -> Result<(), String> {
        let (name, reference) = parse_image(&job.image)?;
        let platforms = job
            .platforms
            .iter()
            .map(|p| p.parse::<Platform>())
            .collect::<Result<Vec<_>, _>>()?;
        let route = self.core.route(&name, None).await.map_err(|e| e.to_string())?;
        let upstream = match &route {
            Route::Proxied(p) => p.upstream.name().to_owned(),
            Route::Private(repo) => {
                return Err(format!(
                    "{repo} is a private repository here (or no upstream is configured); prefetch warms mirrored images only"
                ));
            }
        };
        let Some(top) = self.fetch(&route, &reference, report, true).await? else {
            return Err(format!("{} is not known to upstream {upstream}", job.image));
        };
        report.resolved = Some(format!("{}@{}", route.local(), top.digest));
        let walk = Walk {
            route: &route,
            image: &job.image,
            platforms: &platforms,
            referrers: job.referrers,
            progress,
        };
        walk.manifest(self, top, report, 0).await
    }

    /// Fetch one manifest through the pull path (a tag is revalidated with the upstream first,
    /// whatever its `tag_ttl`: keeping it fresh is the point), counting it in `report`. `None`:
    /// the upstream does not have it.
    async fn fetch(
        &self,
        route: &Route,
        reference: &Reference,
        report: &mut ImageReport,
        must_revalidate: bool,
    ) -> Result<Option<Fetched>, String> {
        let Route::Proxied(p) = route else {
            unreachable!("checked by the caller");
        };
        if let Reference::Tag(tag) = reference {
            self.core.release_tag_check(p, tag).await;
        }
        let accept: Vec<String> = ACCEPT.iter().map(|s| s.to_string()).collect();
        let body = match self.manifests.get(route, reference, &accept).await {
            Ok(body) => body,
            Err(Error::ManifestUnknown(_) | Error::NameUnknown(_)) => return Ok(None),
            Err(e) => return Err(e.to_string()),
        };
        report.manifests += 1;
        match body.head.cache {
            Some(CacheResult::Miss) => report.manifests_fetched += 1,
            Some(CacheResult::Stale) if must_revalidate => {
                return Err(format!(
                    "upstream {} did not answer for {}:{reference} (the server log says why); the cached {} stays",
                    p.upstream.name(),
                    p.remote,
                    body.head.digest
                ));
            }
            _ => {}
        }
        let manifest = Manifest::parse(&body.bytes, Some(&body.head.media_type)).map_err(|e| {
            format!(
                "{}@{} is a manifest berth does not cache ({e})",
                p.remote, body.head.digest
            )
        })?;
        Ok(Some(Fetched {
            digest: body.head.digest,
            manifest,
        }))
    }

    /// Make sure a blob is in the store (through a fill when it is not); `(size, was cached)`.
    async fn fetch_blob(&self, route: &Route, digest: &Digest) -> Result<(u64, bool)> {
        match self.blobs.get(route, digest, true).await? {
            BlobBody::Stored(blob, cache) => Ok((blob.size(), cache == Some(CacheResult::Hit))),
            // `whole` waits for the fill to publish; a stream is not expected, but its bytes
            // arrive all the same once it is read to the end.
            BlobBody::Stream { mut stream, .. } => {
                let mut size = 0u64;
                while let Some(chunk) = stream.next().await {
                    size += chunk.map_err(crate::store::Error::Io)?.len() as u64;
                }
                Ok((size, false))
            }
        }
    }

    /// Run `lists` every `interval` until `stop`, starting now; each run is logged per image.
    pub async fn every(self, jobs: Vec<Job>, interval: Duration, stop: CancellationToken) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let reports = tokio::select! {
                _ = stop.cancelled() => return,
                r = self.run(&jobs, &|_: Event| {}) => r,
            };
            for r in &reports {
                match &r.error {
                    None => tracing::info!(
                        image = %r.image,
                        resolved = r.resolved.as_deref().unwrap_or(""),
                        blobs = r.blobs,
                        blobs_fetched = r.blobs_fetched,
                        bytes_fetched = r.bytes_fetched,
                        "prefetch: image up to date"
                    ),
                    Some(e) => {
                        tracing::warn!(image = %r.image, error = %e, "prefetch: image failed; next try in one interval")
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(images: &[&str], exempt: bool) -> PrefetchSettings {
        PrefetchSettings {
            images: images.iter().map(|s| s.to_string()).collect(),
            platforms: vec!["linux/arm64".parse().unwrap()],
            referrers: true,
            interval: None,
            exempt_from_size_cap: exempt,
        }
    }

    #[test]
    fn pins_are_the_exempt_lists_images_under_their_local_names() {
        let lists = [
            list(&["alpine", "ghcr.io/org/app:1.4"], true),
            list(&["busybox"], false),
        ];
        let pins: Vec<String> = pins(&lists, &["docker.io", "ghcr.io"])
            .iter()
            .map(|(r, t)| format!("{r}:{t}"))
            .collect();
        assert_eq!(pins, ["library/alpine:latest", "ghcr.io/org/app:1.4"]);
        let jobs = Job::from_settings(&lists, &["linux/s390x".into()]);
        assert_eq!(jobs.len(), 3);
        assert!(jobs.iter().all(|j| j.platforms == ["linux/s390x"] && j.referrers));
    }
}
