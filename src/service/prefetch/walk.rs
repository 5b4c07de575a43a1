//! One image's walk from its top manifest: the chosen children of an index, every blob of an
//! image, and (with `referrers`) the tag-schema referrers of each manifest.

use futures_util::{StreamExt, stream};

use super::{BLOBS_AT_ONCE, Event, Fetched, ImageReport, MAX_DEPTH, Prefetch};
use crate::oci::{Digest, Manifest, Platform, Reference, Tag};
use crate::service::route::Route;

/// One image's manifests, walked from the top.
pub(super) struct Walk<'a> {
    pub(super) route: &'a Route,
    pub(super) image: &'a str,
    pub(super) platforms: &'a [Platform],
    pub(super) referrers: bool,
    pub(super) progress: &'a (dyn Fn(Event) + Send + Sync),
}

impl Walk<'_> {
    /// A fetched manifest: an index's chosen children, or an image's blobs; then its referrers.
    pub(super) async fn manifest(
        &self,
        reg: &Prefetch,
        fetched: Fetched,
        report: &mut ImageReport,
        depth: usize,
    ) -> Result<(), String> {
        let Fetched { digest, manifest } = fetched;
        if manifest.manifests.is_empty() {
            self.blobs(reg, &manifest, report).await?;
        } else {
            if depth >= MAX_DEPTH {
                return Err(format!("{digest} nests indexes deeper than {MAX_DEPTH}"));
            }
            let chosen = self.choose(&manifest);
            if chosen.is_empty() {
                let offered: Vec<String> = manifest
                    .manifests
                    .iter()
                    .filter_map(|m| m.platform.as_ref().map(Platform::describe))
                    .collect();
                let wanted: Vec<String> = self.platforms.iter().map(ToString::to_string).collect();
                return Err(format!(
                    "{digest} has no manifest for {} (it has {})",
                    wanted.join(", "),
                    offered.join(", ")
                ));
            }
            for child in chosen {
                let fetched = reg
                    .fetch(self.route, &Reference::Digest(child.clone()), report, false)
                    .await?
                    .ok_or_else(|| format!("{child}, listed in {digest}, is not known to the upstream"))?;
                Box::pin(self.manifest(reg, fetched, report, depth + 1)).await?;
            }
        }
        if self.referrers && depth < MAX_DEPTH {
            self.referrers_of(reg, &digest, report, depth).await?;
        }
        Ok(())
    }

    /// The children of an index that match the platforms (all without a filter). With
    /// `referrers`, a buildx attestation manifest comes along with the image it describes.
    fn choose(&self, index: &Manifest) -> Vec<Digest> {
        if self.platforms.is_empty() {
            return index.manifests.iter().map(|m| m.digest.clone()).collect();
        }
        let chosen: Vec<&Digest> = index
            .manifests
            .iter()
            .filter(|m| {
                m.platform
                    .as_ref()
                    .is_some_and(|p| self.platforms.iter().any(|want| want.matches(p)))
            })
            .map(|m| &m.digest)
            .collect();
        let attestations = index.manifests.iter().filter(|m| {
            self.referrers
                && m.annotations
                    .get("vnd.docker.reference.digest")
                    .is_some_and(|d| chosen.iter().any(|c| c.to_string() == *d))
        });
        let mut out: Vec<Digest> = chosen.iter().map(|d| (*d).clone()).collect();
        out.extend(attestations.map(|m| m.digest.clone()));
        out
    }

    /// Every blob of an image manifest, a few at once.
    async fn blobs(&self, reg: &Prefetch, manifest: &Manifest, report: &mut ImageReport) -> Result<(), String> {
        let digests: Vec<Digest> = manifest.blob_refs().cloned().collect();
        let mut results = stream::iter(digests)
            .map(|d| async move {
                let r = reg.fetch_blob(self.route, &d).await;
                (d, r)
            })
            .buffer_unordered(BLOBS_AT_ONCE);
        let mut first_error = None;
        while let Some((digest, result)) = results.next().await {
            match result {
                Ok((size, cached)) => {
                    report.blobs += 1;
                    report.bytes += size;
                    if !cached {
                        report.blobs_fetched += 1;
                        report.bytes_fetched += size;
                    }
                    (self.progress)(Event::Blob {
                        image: self.image.to_owned(),
                        digest: digest.to_string(),
                        size,
                        cached,
                    });
                }
                Err(e) => {
                    first_error.get_or_insert_with(|| format!("blob {digest}: {e}"));
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// The tag-schema referrers of `subject`: the `sha256-<hex>` index, if the upstream has
    /// one, and every artifact it lists.
    async fn referrers_of(
        &self,
        reg: &Prefetch,
        subject: &Digest,
        report: &mut ImageReport,
        depth: usize,
    ) -> Result<(), String> {
        let tag: Tag = format!("{}-{}", subject.algorithm().as_str(), subject.hex())
            .parse()
            .map_err(|e: crate::oci::NameError| e.to_string())?;
        let index = match reg.fetch(self.route, &Reference::Tag(tag), report, false).await {
            Ok(Some(index)) => index,
            // No referrers is the common case, not a failure.
            Ok(None) => return Ok(()),
            Err(e) => return Err(format!("referrers of {subject}: {e}")),
        };
        for artifact in &index.manifest.manifests {
            let fetched = reg
                .fetch(self.route, &Reference::Digest(artifact.digest.clone()), report, false)
                .await
                .map_err(|e| format!("referrer {}: {e}", artifact.digest))?
                .ok_or_else(|| format!("referrer {} is not known to the upstream", artifact.digest))?;
            report.referrers += 1;
            let walk = Walk {
                platforms: &[],
                referrers: false,
                ..*self
            };
            Box::pin(walk.manifest(reg, fetched, report, depth + 1)).await?;
        }
        Ok(())
    }
}
