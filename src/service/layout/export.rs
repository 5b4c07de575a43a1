//! `berth export`: select tags by pattern, walk each image (and with `--referrers` what refers to
//! it), then write the layout to `PATH.partial` and rename it to `PATH` once complete.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::tree::{Tree, walk};
use super::{Error, ExportOptions, LayoutProgress, Origins, REF_NAME, Result, Sink, io_at, ref_name};
use crate::oci::{Descriptor, Digest, RepoName, Tag, media};
use crate::service::Admin;
use crate::store::{BlobStore, ByteStream, Origin};

/// What an export wrote.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ExportReport {
    pub output: String,
    /// Ref names (`REPO:TAG`) in `index.json`.
    pub images: Vec<String>,
    pub referrers: usize,
    /// Files under `blobs/` (manifests included) and their bytes.
    pub blobs: usize,
    pub bytes: u64,
    pub warnings: Vec<String>,
}

/// A pattern split into repository and tag parts (a missing tag part takes every tag).
struct Pattern {
    repo: String,
    tag: String,
    text: String,
    matched: bool,
}

fn patterns(texts: &[String]) -> Vec<Pattern> {
    texts
        .iter()
        .map(|text| {
            // The tag follows the last ':' after the last '/'.
            let cut = text.rfind(':').filter(|&i| !text[i..].contains('/'));
            let (repo, tag) = match cut {
                Some(i) => (&text[..i], &text[i + 1..]),
                None => (text.as_str(), "*"),
            };
            Pattern {
                repo: repo.to_owned(),
                tag: tag.to_owned(),
                text: text.clone(),
                matched: false,
            }
        })
        .collect()
}

impl Admin {
    /// Write the images `opts` selects to `opts.output`.
    pub async fn export(&self, opts: &ExportOptions, sink: Sink, cancel: &CancellationToken) -> Result<ExportReport> {
        let output = &opts.output;
        if output.exists() {
            return Err(Error::Invalid(format!(
                "{} exists; berth export writes a new directory or tar and never overwrites",
                output.display()
            )));
        }
        if opts.patterns.is_empty() && !opts.all {
            return Err(Error::Invalid(
                "name what to export (REPO[:TAG] patterns) or give --all".into(),
            ));
        }
        let roots = self.export_selection(opts).await?;
        if roots.is_empty() {
            return Err(Error::Invalid(
                "nothing to export: the store holds no tagged image of that kind".into(),
            ));
        }
        let mut report = ExportReport {
            output: output.display().to_string(),
            ..Default::default()
        };
        let warn = |w: String, report: &mut ExportReport| {
            sink(LayoutProgress::Warning(w.clone()));
            report.warnings.push(w);
        };
        let (mut entries, mut files, mut problems) = (Vec::new(), BTreeMap::new(), Vec::new());
        let mut exported: Vec<(RepoName, Tree)> = Vec::new();
        for (repo, tag, digest, media_type) in roots {
            let name = ref_name(&repo, &tag);
            let size = self.core.store.blobs.size(&digest).await?.unwrap_or(0);
            let descriptor = descriptor(&media_type, &digest, size, None);
            let tree = match walk(self.core.store.blobs.as_ref(), &descriptor).await? {
                Ok(tree) => tree,
                Err(why) if opts.partial => {
                    warn(format!("{name} left out: {why}"), &mut report);
                    continue;
                }
                Err(why) => {
                    problems.push(format!("{name}: {why}"));
                    continue;
                }
            };
            if !tree.missing.is_empty() {
                let whole = tree.manifests.len() > 1;
                let missing = tree.missing.join(", ");
                if !opts.partial {
                    problems.push(format!("{name} lacks platforms {missing}"));
                    continue;
                }
                if !whole {
                    warn(
                        format!("{name} left out: none of its platforms is whole ({missing})"),
                        &mut report,
                    );
                    continue;
                }
                warn(format!("{name} exported without {missing}"), &mut report);
            }
            if matches!(media_type.as_str(), media::DOCKER_MANIFEST | media::DOCKER_LIST) {
                // Kept as it is (converting would change its digest), and said once per image:
                // skopeo's oci: transport (1.9, at least) skips entries that are not OCI-typed.
                warn(
                    format!(
                        "{name} is in Docker's manifest format, which berth import reads but skopeo's oci: transport does not"
                    ),
                    &mut report,
                );
            }
            let mut d = descriptor;
            d.annotations.insert(REF_NAME.into(), name.clone());
            entries.push(d);
            files.extend(tree.files().map(|(d, s)| (d.clone(), s)));
            report.images.push(name);
            exported.push((repo, tree));
        }
        if !problems.is_empty() {
            return Err(Error::Invalid(format!(
                "not exported, because the store does not hold all of it: {}. Pull the missing parts through berth first, or give --partial to export what is there (a multi-arch image then carries only the platforms it has)",
                problems.join("; ")
            )));
        }
        if opts.referrers {
            self.export_referrers(&exported, opts.partial, &mut entries, &mut files, &mut report)
                .await?;
        }
        if entries.is_empty() {
            return Err(Error::Invalid(
                "nothing to export: every selected image was left out".into(),
            ));
        }
        report.blobs = files.len();
        report.bytes = files.values().sum();
        sink(LayoutProgress::Plan {
            images: report.images.len(),
            blobs: report.blobs,
            bytes: report.bytes,
        });
        let index = serde_json::to_vec_pretty(&json!({
            "schemaVersion": 2,
            "mediaType": crate::oci::media::OCI_INDEX,
            "manifests": entries,
        }))
        .map_err(|e| Error::Invalid(e.to_string()))?;
        let (blobs, output, cancel) = (self.core.store.blobs.clone(), output.clone(), cancel.clone());
        tokio::task::spawn_blocking(move || write(blobs.as_ref(), &files, &index, &output, &sink, &cancel))
            .await
            .map_err(|e| Error::Invalid(format!("the export task failed: {e}")))??;
        Ok(report)
    }

    /// The tags `opts` selects: `(repo, tag, digest, media type)`.
    async fn export_selection(&self, opts: &ExportOptions) -> Result<Vec<(RepoName, Tag, Digest, String)>> {
        let mut pats = patterns(&opts.patterns);
        let mut out = Vec::new();
        for (repo, info) in crate::service::all_repos(&self.core.store).await? {
            let wanted = match (opts.origins, &info.origin) {
                (Origins::Both, _) => true,
                (Origins::Private, o) => *o == Origin::Private,
                (Origins::Cached, o) => *o != Origin::Private,
            };
            if !wanted {
                continue;
            }
            for (tag, digest) in self.core.store.meta.tag_targets(&repo).await? {
                let mut take = opts.all;
                for p in pats.iter_mut() {
                    if crate::oci::pattern::matches(&p.repo, repo.as_str())
                        && crate::oci::pattern::matches(&p.tag, &tag)
                    {
                        p.matched = true;
                        take = true;
                    }
                }
                let Ok(tag) = tag.parse::<Tag>() else { continue };
                if take && let Some(record) = self.core.store.meta.manifest(&repo, &digest).await? {
                    out.push((repo.clone(), tag, digest, record.media_type));
                }
            }
        }
        let unmatched: Vec<&str> = pats.iter().filter(|p| !p.matched).map(|p| p.text.as_str()).collect();
        if !unmatched.is_empty() {
            return Err(Error::Invalid(format!(
                "nothing in the store matches {} (patterns are REPO or REPO:TAG, `*` matches anything; `berth du` lists the repositories)",
                unmatched.join(", ")
            )));
        }
        Ok(out)
    }

    /// Add the manifests whose subject is an exported manifest, and theirs in turn, as entries
    /// without a ref name.
    async fn export_referrers(
        &self,
        exported: &[(RepoName, Tree)],
        partial: bool,
        entries: &mut Vec<Descriptor>,
        files: &mut BTreeMap<Digest, u64>,
        report: &mut ExportReport,
    ) -> Result<()> {
        let mut seen: BTreeSet<Digest> = BTreeSet::new();
        for (repo, tree) in exported {
            let mut queue: Vec<Digest> = tree.manifests.iter().map(|n| n.digest.clone()).collect();
            while let Some(subject) = queue.pop() {
                for (digest, record) in self.core.store.meta.referrers(repo, &subject).await? {
                    if !seen.insert(digest.clone()) {
                        continue;
                    }
                    let size = record.size;
                    let d = descriptor(&record.media_type, &digest, size, record.artifact_type.clone());
                    match walk(self.core.store.blobs.as_ref(), &d).await? {
                        Ok(t) if t.missing.is_empty() => {
                            files.extend(t.files().map(|(d, s)| (d.clone(), s)));
                            entries.push(d);
                            report.referrers += 1;
                            queue.push(digest);
                        }
                        Ok(_) | Err(_) if partial => {
                            let w = format!(
                                "referrer {digest} of {repo}@{subject} left out: not all of it is in the store"
                            );
                            report.warnings.push(w);
                        }
                        Ok(t) => {
                            return Err(Error::Invalid(format!(
                                "referrer {digest} of {repo}@{subject} lacks {}; give --partial to leave it out",
                                t.missing.join(", ")
                            )));
                        }
                        Err(why) => {
                            return Err(Error::Invalid(format!(
                                "referrer {digest} of {repo}@{subject}: {why}; give --partial to leave it out"
                            )));
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

fn descriptor(media_type: &str, digest: &Digest, size: u64, artifact_type: Option<String>) -> Descriptor {
    Descriptor {
        media_type: media_type.to_owned(),
        digest: digest.clone(),
        size,
        artifact_type,
        annotations: Default::default(),
        platform: None,
    }
}

/// Removes a half-written export when the export fails or is cut off.
struct Partial(PathBuf);

impl Drop for Partial {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0).or_else(|_| std::fs::remove_file(&self.0));
    }
}

const LAYOUT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;

/// A stored blob as `std::io::Read`, for the blocking writer of the layout.
struct BlobRead {
    runtime: tokio::runtime::Handle,
    stream: ByteStream,
    chunk: bytes::Bytes,
}

impl BlobRead {
    fn open(blobs: &dyn BlobStore, digest: &Digest) -> Result<BlobRead> {
        let runtime = tokio::runtime::Handle::current();
        let missing = || Error::Invalid(format!("blob {digest} left the store during the export"));
        let stored = runtime.block_on(blobs.open(digest))?.ok_or_else(missing)?;
        let size = stored.size();
        let stream = stored.range(0, size).ok_or_else(|| {
            Error::Invalid(format!(
                "the store serves {digest} only by redirect; export needs its bytes"
            ))
        })?;
        Ok(BlobRead {
            runtime,
            stream,
            chunk: bytes::Bytes::new(),
        })
    }
}

impl std::io::Read for BlobRead {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use bytes::Buf;
        use futures_util::StreamExt;
        while self.chunk.is_empty() {
            match self.runtime.block_on(self.stream.next()) {
                Some(chunk) => self.chunk = chunk?,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk[..n]);
        self.chunk.advance(n);
        Ok(n)
    }
}

/// Write the layout (blocking). A tar when `output` ends in `.tar`, else a directory.
fn write(
    blobs: &dyn BlobStore,
    files: &BTreeMap<Digest, u64>,
    index: &[u8],
    output: &Path,
    sink: &Sink,
    cancel: &CancellationToken,
) -> Result<()> {
    let staging = PathBuf::from(format!("{}.partial", output.display()));
    if staging.exists() {
        return Err(Error::Invalid(format!(
            "{} exists (left by an export that was cut off?); remove it and run the export again",
            staging.display()
        )));
    }
    let guard = Partial(staging.clone());
    let tar = output.extension().is_some_and(|e| e == "tar");
    let mut done = (0usize, 0u64);
    let mut step = |size: u64| -> Result<()> {
        if cancel.is_cancelled() {
            return Err(Error::Cancelled);
        }
        done = (done.0 + 1, done.1 + size);
        if done.0.is_multiple_of(16) || done.0 == files.len() {
            sink(LayoutProgress::Blobs {
                done: done.0,
                bytes: done.1,
            });
        }
        Ok(())
    };
    if tar {
        let file = File::create(&staging).map_err(io_at(&staging))?;
        let mut builder = tar::Builder::new(BufWriter::with_capacity(1 << 20, file));
        let add = |builder: &mut tar::Builder<_>, path: &str, size: u64, data: &mut dyn std::io::Read| {
            let mut header = tar::Header::new_gnu();
            header.set_size(size);
            header.set_mode(0o644);
            header.set_entry_type(tar::EntryType::Regular);
            builder.append_data(&mut header, path, data).map_err(io_at(&staging))
        };
        add(&mut builder, "oci-layout", LAYOUT.len() as u64, &mut &LAYOUT[..])?;
        add(&mut builder, "index.json", index.len() as u64, &mut &index[..])?;
        for dir in ["blobs/", "blobs/sha256/", "blobs/sha512/"] {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(tar::EntryType::Directory);
            header.set_mode(0o755);
            header.set_size(0);
            builder
                .append_data(&mut header, dir, std::io::empty())
                .map_err(io_at(&staging))?;
        }
        for (digest, size) in files {
            let mut f = BlobRead::open(blobs, digest)?;
            let path = format!("blobs/{}/{}", digest.algorithm().as_str(), digest.hex());
            add(&mut builder, &path, *size, &mut f)?;
            step(*size)?;
        }
        let mut out = builder.into_inner().map_err(io_at(&staging))?;
        out.flush().map_err(io_at(&staging))?;
        out.get_ref().sync_all().map_err(io_at(&staging))?;
    } else {
        for alg in ["sha256", "sha512"] {
            let dir = staging.join("blobs").join(alg);
            std::fs::create_dir_all(&dir).map_err(io_at(&dir))?;
        }
        let at = |name: &str| staging.join(name);
        std::fs::write(at("oci-layout"), LAYOUT).map_err(io_at(&at("oci-layout")))?;
        std::fs::write(at("index.json"), index).map_err(io_at(&at("index.json")))?;
        for (digest, size) in files {
            let dest = staging
                .join("blobs")
                .join(digest.algorithm().as_str())
                .join(digest.hex());
            let mut out = File::create(&dest).map_err(io_at(&dest))?;
            std::io::copy(&mut BlobRead::open(blobs, digest)?, &mut out).map_err(io_at(&dest))?;
            step(*size)?;
        }
    }
    std::fs::rename(&staging, output).map_err(io_at(output))?;
    std::mem::forget(guard);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pattern_without_a_tag_takes_every_tag() {
        let p = patterns(&["team/*".into(), "library/alpine:3.*".into(), "a:b/c".into()]);
        let parts: Vec<(&str, &str)> = p.iter().map(|p| (p.repo.as_str(), p.tag.as_str())).collect();
        assert_eq!(
            parts,
            [("team/*", "*"), ("library/alpine", "3.*"), ("a:b/c", "*")],
            "the tag follows the last ':' after the last '/'"
        );
    }
}
