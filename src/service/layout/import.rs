//! `berth import`: publish every blob of the layout after verifying it, then commit each image
//! in one transaction once all of it is in the store (see the module doc of `layout`).

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::tree::{Tree, walk};
use super::{Error, ImportOptions, LayoutProgress, REF_NAME, Result, Sink, ref_name};
use crate::oci::{Descriptor, Digest, RepoName, Tag};
use crate::service::Admin;
use crate::service::manifests::record_of;
use crate::store::{ImageRecords, Origin};

mod read;

/// What an import did.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ImportReport {
    /// `REPO:TAG` as stored, one per image.
    pub images: Vec<String>,
    pub referrers: usize,
    /// Blobs in the layout, and those of them the store did not have yet (with their bytes).
    pub blobs: usize,
    pub new_blobs: usize,
    pub new_bytes: u64,
    pub warnings: Vec<String>,
}

#[derive(Deserialize)]
struct Index {
    manifests: Vec<Descriptor>,
}

/// One image to commit.
struct Image {
    repo: RepoName,
    tag: Tag,
    /// The manifest the tag points at.
    root: Digest,
    tree: Tree,
    referrers: usize,
}

impl Admin {
    /// Import the layout at `opts.path` (see the module doc for the order that makes it safe).
    pub async fn import(&self, opts: &ImportOptions, sink: Sink, cancel: &CancellationToken) -> Result<ImportReport> {
        self.core.check_push()?;
        let origin = match &opts.upstream {
            None => Origin::Private,
            Some(name) => {
                if !self.core.upstreams.iter().any(|u| u.name() == name) {
                    let known: Vec<&str> = self.core.upstreams.iter().map(|u| u.name()).collect();
                    return Err(Error::Invalid(format!(
                        "--upstream {name} is not a configured upstream (configured: {})",
                        if known.is_empty() {
                            "none".to_owned()
                        } else {
                            known.join(", ")
                        }
                    )));
                }
                Origin::Proxied { upstream: name.clone() }
            }
        };
        let repository = opts
            .repository
            .as_deref()
            .map(|r| r.parse::<RepoName>())
            .transpose()
            .map_err(|e| Error::Invalid(format!("--repository: {e}")))?;
        let (blobs, meta, path, cancel2, sink2) = (
            self.core.store.blobs.clone(),
            self.core.store.meta.clone(),
            opts.path.clone(),
            cancel.clone(),
            sink.clone(),
        );
        let read =
            tokio::task::spawn_blocking(move || read::ingest(blobs.as_ref(), meta.as_ref(), &path, &sink2, &cancel2))
                .await
                .map_err(|e| Error::Invalid(format!("the import task failed: {e}")))??;
        let mut report = ImportReport {
            blobs: read.blobs,
            new_blobs: read.new_blobs,
            new_bytes: read.new_bytes,
            ..Default::default()
        };
        let index: Index = serde_json::from_slice(&read.index).map_err(|e| {
            Error::Invalid(format!(
                "{}: index.json is not an image index: {e}",
                opts.path.display()
            ))
        })?;
        let images = self
            .import_plan(&index, &origin, repository.as_ref(), opts.partial, &sink, &mut report)
            .await?;
        for image in images {
            if cancel.is_cancelled() {
                return Err(Error::Cancelled);
            }
            self.import_commit(&image, &origin).await?;
            let name = ref_name(&image.repo, &image.tag);
            sink(LayoutProgress::Imported(name.clone()));
            report.images.push(name);
            report.referrers += image.referrers;
        }
        Ok(report)
    }

    /// Check every entry of `index` against the store; any problem fails the whole import
    /// before anything becomes visible.
    async fn import_plan(
        &self,
        index: &Index,
        origin: &Origin,
        repository: Option<&RepoName>,
        partial: bool,
        sink: &Sink,
        report: &mut ImportReport,
    ) -> Result<Vec<Image>> {
        let (mut images, mut problems, mut unnamed) = (Vec::new(), Vec::new(), Vec::new());
        for entry in &index.manifests {
            let Some(name) = entry.annotations.get(REF_NAME) else {
                unnamed.push(entry);
                continue;
            };
            let (repo, tag) = match parse_ref_name(name, repository) {
                Ok(rt) => rt,
                Err(why) => {
                    problems.push(why);
                    continue;
                }
            };
            let repo = match self.import_repo(&repo, origin).await {
                Ok(r) => r,
                Err(why) => {
                    problems.push(why);
                    continue;
                }
            };
            match walk(self.core.store.blobs.as_ref(), entry).await? {
                Err(why) => problems.push(format!("{name}: {why} (neither in the layout nor in the store)")),
                Ok(tree) if !tree.missing.is_empty() && tree.manifests.len() == 1 => problems.push(format!(
                    "{name}: none of its platforms is whole in the layout ({})",
                    tree.missing.join(", ")
                )),
                Ok(tree) if !tree.missing.is_empty() && !partial => problems.push(format!(
                    "{name} is a multi-arch image that lacks {} in the layout; give --partial to import the platforms it has",
                    tree.missing.join(", ")
                )),
                Ok(tree) => {
                    if !tree.missing.is_empty() {
                        let w = format!("{name} imported without {}", tree.missing.join(", "));
                        sink(LayoutProgress::Warning(w.clone()));
                        report.warnings.push(w);
                    }
                    images.push(Image {
                        repo,
                        tag,
                        root: entry.digest.clone(),
                        tree,
                        referrers: 0,
                    });
                }
            }
        }
        // Referrers join the images that hold their subject; a referrer of a referrer needs
        // another round.
        loop {
            let before = unnamed.len();
            let mut left = Vec::new();
            for entry in unnamed {
                let tree = match walk(self.core.store.blobs.as_ref(), entry).await? {
                    Ok(t) => t,
                    Err(why) => {
                        problems.push(format!("entry {} of index.json: {why}", entry.digest));
                        continue;
                    }
                };
                let subject = tree.manifests.last().and_then(|n| n.manifest.subject.clone());
                let holders: Vec<&mut Image> = images
                    .iter_mut()
                    .filter(|i| subject.as_ref().is_some_and(|s| i.tree.holds(&s.digest)))
                    .collect();
                if holders.is_empty() {
                    left.push(entry);
                    continue;
                }
                for image in holders {
                    image.tree.blobs.extend(tree.blobs.clone());
                    for n in &tree.manifests {
                        image.tree.manifests.push(super::tree::Node {
                            digest: n.digest.clone(),
                            manifest: n.manifest.clone(),
                            size: n.size,
                        });
                    }
                    image.referrers += 1;
                }
            }
            unnamed = left;
            if unnamed.is_empty() || unnamed.len() == before {
                break;
            }
        }
        for entry in unnamed {
            problems.push(format!(
                "entry {} of index.json has no {REF_NAME} annotation and refers to no image of the layout; name it (skopeo copy … oci:DIR:REPO:TAG)",
                entry.digest
            ));
        }
        if !problems.is_empty() {
            return Err(Error::Invalid(format!(
                "nothing imported: {}. The blobs read so far are kept (invisible until an image uses them), so a run with a fixed layout goes faster",
                problems.join("; ")
            )));
        }
        Ok(images)
    }

    /// The local repository an image of the layout goes to, refused when it would clash with
    /// what the registry holds or routes there.
    async fn import_repo(&self, repo: &RepoName, origin: &Origin) -> Result<RepoName, String> {
        let Origin::Proxied { upstream } = origin else {
            // Private content follows the rules of a push.
            return self.core.route_push(repo).await.map_err(|e| format!("{repo}: {e}"));
        };
        // Cached content is stored under the name the mirror uses for it: without the upstream's
        // prefix for the default upstream, with it for the others.
        let first = self.core.upstreams.first().is_some_and(|u| u.name() == upstream);
        let remote = repo
            .as_str()
            .strip_prefix(&format!("{upstream}/"))
            .unwrap_or(repo.as_str());
        let remote = if upstream == "docker.io" && !remote.contains('/') {
            format!("library/{remote}")
        } else {
            remote.to_owned()
        };
        let local = if first { remote } else { format!("{upstream}/{remote}") };
        let local: RepoName = local.parse().map_err(|e| format!("{repo}: {e}"))?;
        if self.core.is_private(&local).await.map_err(|e| e.to_string())? {
            return Err(format!(
                "{local} is private here (pushed content or [private] namespaces), so it cannot hold content cached from {upstream}; import without --upstream"
            ));
        }
        Ok(local)
    }

    /// Make one image visible, in one transaction that checks its blobs are registered and not
    /// being swept (the GC invariant), after checking that all of it is still in the store.
    async fn import_commit(&self, image: &Image, origin: &Origin) -> Result<()> {
        self.core.check_push()?;
        let mut seen = BTreeSet::new();
        let mut records = ImageRecords::default();
        for (digest, _) in image.tree.files() {
            if self.core.store.blobs.size(digest).await?.is_none() {
                return Err(Error::Invalid(format!(
                    "{digest} left the store during the import (garbage collection?); run the import again"
                )));
            }
        }
        for n in &image.tree.manifests {
            if seen.insert(n.digest.clone()) {
                records
                    .manifests
                    .push((n.digest.clone(), record_of(&n.manifest, n.size)));
            }
        }
        records.blobs = image.tree.blobs.keys().cloned().collect();
        records.tag = Some((image.tag.clone(), image.root.clone()));
        self.core
            .store
            .meta
            .put_image(&image.repo, origin.clone(), &records)
            .await
            .map_err(|e| match e {
                crate::store::Error::BlobUnregistered(d) | crate::store::Error::BlobDeleting(d) => Error::Invalid(
                    format!("{d} left the store during the import (garbage collection?); run the import again"),
                ),
                other => other.into(),
            })?;
        self.core.memo.changed(crate::coord::Notice::ManifestsChanged);
        Ok(())
    }
}

/// `REPO:TAG`, or a bare `TAG` with `repository` given.
fn parse_ref_name(name: &str, repository: Option<&RepoName>) -> Result<(RepoName, Tag), String> {
    let cut = name.rfind(':').filter(|&i| !name[i..].contains('/'));
    let (repo, tag) = match (cut, repository) {
        (Some(i), _) => (name[..i].to_owned(), &name[i + 1..]),
        (None, Some(r)) if !name.contains('/') => (r.to_string(), name),
        (None, None) if !name.contains('/') => {
            return Err(format!(
                "ref name {name:?} is a bare tag with no repository; give --repository REPO for it"
            ));
        }
        (None, _) => {
            return Err(format!(
                "ref name {name:?} names no tag; berth writes and reads REPO:TAG"
            ));
        }
    };
    let repo = repo
        .parse::<RepoName>()
        .map_err(|e| format!("ref name {name:?}: {e}"))?;
    let tag = tag.parse::<Tag>().map_err(|e| format!("ref name {name:?}: {e}"))?;
    Ok((repo, tag))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ref_names_carry_the_repository_or_take_it_from_the_option() {
        let (r, t) = parse_ref_name("library/alpine:3.20", None).unwrap();
        assert_eq!((r.as_str(), t.as_str()), ("library/alpine", "3.20"));
        let team: RepoName = "team/app".parse().unwrap();
        let (r, t) = parse_ref_name("1.0", Some(&team)).unwrap();
        assert_eq!((r.as_str(), t.as_str()), ("team/app", "1.0"));
        assert!(parse_ref_name("latest", None).unwrap_err().contains("--repository"));
        assert!(
            parse_ref_name("library/alpine", None)
                .unwrap_err()
                .contains("names no tag")
        );
        assert!(parse_ref_name("Bad Repo:1", None).is_err());
    }
}
