//! Read-only views of the store for the web UI: repositories, a repository's tags, and a
//! manifest's platforms and layers. Everything comes from the store alone; browsing never asks an
//! upstream.

use serde_json::Value;

use std::sync::Arc;

use super::{Core, Result};
use crate::oci::{Descriptor, Digest, Manifest, Reference, RepoName, Tag};
use crate::store::{ManifestRecord, Origin};

/// The web UI's read-only views of the store, and the catalog listings.
#[derive(Clone)]
pub struct Browse {
    pub(super) core: Arc<Core>,
}

/// Repository names read from the metadata store per step of a filtered listing.
const SCAN_STEP: usize = 500;

/// One repository in a listing.
#[derive(Clone, Debug)]
pub struct RepoSummary {
    pub name: String,
    /// Pushed here (never evicted), as opposed to cached from an upstream.
    pub private: bool,
    /// The upstream a cached repository comes from.
    pub upstream: Option<String>,
    /// Unix time the repository appeared.
    pub created: u64,
}

/// A page of repositories and the cursor of the next one.
#[derive(Debug)]
pub struct RepoList {
    pub repos: Vec<RepoSummary>,
    pub next: Option<String>,
}

/// One tag of a repository.
#[derive(Clone, Debug)]
pub struct TagRow {
    pub tag: String,
    pub digest: Digest,
    pub media_type: String,
    /// Config and layers of an image; `None` for an index (see `platforms`).
    pub size: Option<u64>,
    /// `os/arch[/variant]` of each manifest of an index; empty for an image.
    pub platforms: Vec<String>,
    /// Unix time, see [`Browse::last_pulled`].
    pub last_pulled: u64,
}

/// A repository with a page of its tags.
#[derive(Debug)]
pub struct RepoView {
    pub repo: RepoSummary,
    pub tags: Vec<TagRow>,
    pub next: Option<String>,
}

/// A descriptor as the UI shows it, with whether its bytes are in the store.
#[derive(Clone, Debug)]
pub struct Item {
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
    /// `os/arch[/variant]`, for an index's manifests.
    pub platform: Option<String>,
    pub stored: bool,
}

/// A manifest: an index's platforms, or an image's config and layers.
#[derive(Debug)]
pub struct ManifestView {
    pub repo: RepoSummary,
    pub digest: Digest,
    pub media_type: String,
    /// Bytes of the manifest itself.
    pub size: u64,
    pub artifact_type: Option<String>,
    pub subject: Option<Digest>,
    pub stored_at: u64,
    pub last_pulled: u64,
    pub platforms: Vec<Item>,
    pub config: Option<Item>,
    pub layers: Vec<Item>,
}

impl ManifestView {
    /// Config plus layers: what pulling the image downloads.
    pub fn image_size(&self) -> u64 {
        self.config.iter().chain(&self.layers).map(|i| i.size).sum()
    }
}

impl Browse {
    /// When a manifest was last pulled: a pull noted in memory, else the recorded one, else
    /// when it was stored (never pulled since).
    pub async fn last_pulled(&self, repo: &RepoName, digest: &Digest, record: &ManifestRecord) -> Result<u64> {
        if let Some(at) = self.core.pulls.get(repo, digest) {
            return Ok(at);
        }
        Ok(self
            .core
            .store
            .meta
            .last_pull(repo, digest)
            .await?
            .unwrap_or(record.stored_at))
    }
}

/// `os/arch[/variant]` of a descriptor's `platform`.
fn platform_of(d: &Descriptor) -> String {
    let Some(p) = &d.platform else {
        return "unknown".into();
    };
    let field = |k: &str| p.get(k).and_then(Value::as_str).unwrap_or("");
    let mut out = format!("{}/{}", field("os"), field("architecture"));
    if !field("variant").is_empty() {
        out.push('/');
        out.push_str(field("variant"));
    }
    out
}

impl Browse {
    /// A repository's summary; `None` when it is unknown.
    pub async fn repo_summary(&self, name: &str) -> Result<Option<RepoSummary>> {
        let Ok(repo) = name.parse::<RepoName>() else {
            return Ok(None);
        };
        Ok(self.core.store.meta.repo(&repo).await?.map(|info| RepoSummary {
            name: name.to_owned(),
            private: info.origin == Origin::Private,
            upstream: match info.origin {
                Origin::Private => None,
                Origin::Proxied { upstream } => Some(upstream),
            },
            created: info.created,
        }))
    }

    /// Repositories whose name contains `query` (ignoring case) and that `visible` lets through,
    /// after `last`, at most `n`.
    pub async fn repos(
        &self,
        query: &str,
        last: Option<&str>,
        n: usize,
        visible: impl Fn(&RepoSummary) -> bool,
    ) -> Result<RepoList> {
        let query = query.trim().to_ascii_lowercase();
        let mut cursor = last.map(str::to_owned);
        let mut repos = Vec::new();
        loop {
            let names: Vec<String> = self
                .core
                .store
                .meta
                .repos(cursor.as_deref(), SCAN_STEP)
                .await?
                .into_iter()
                .map(|(r, _)| r.to_string())
                .collect();
            for name in &names {
                if !name.contains(&query) {
                    continue;
                }
                if let Some(summary) = self.repo_summary(name).await?.filter(&visible) {
                    repos.push(summary);
                    if repos.len() > n {
                        repos.truncate(n);
                        let next = repos.last().map(|r| r.name.clone());
                        return Ok(RepoList { repos, next });
                    }
                }
            }
            if names.len() < SCAN_STEP {
                return Ok(RepoList { repos, next: None });
            }
            cursor = names.last().cloned();
        }
    }

    /// A repository and its tags after `last`, at most `n`; `None` when it is unknown.
    pub async fn repo(&self, repo: &RepoName, last: Option<&str>, n: usize) -> Result<Option<RepoView>> {
        let Some(summary) = self.repo_summary(repo.as_str()).await? else {
            return Ok(None);
        };
        let mut names = self.core.store.meta.tags(repo, last, n + 1).await?.unwrap_or_default();
        let next = (names.len() > n).then(|| {
            names.truncate(n);
            names.last().cloned().unwrap_or_default()
        });
        let mut tags = Vec::with_capacity(names.len());
        for name in names {
            let Ok(tag) = name.parse::<Tag>() else {
                continue;
            };
            let Some(digest) = self.core.store.meta.tag(repo, &tag).await? else {
                continue; // deleted meanwhile
            };
            let Some(record) = self.core.store.meta.manifest(repo, &digest).await? else {
                continue;
            };
            let parsed = self.parsed(&digest, &record).await?;
            let (size, platforms) = match &parsed {
                Some(m) if !m.manifests.is_empty() => (None, m.manifests.iter().map(platform_of).collect()),
                Some(m) => (Some(m.config.iter().chain(&m.layers).map(|d| d.size).sum()), Vec::new()),
                None => (None, Vec::new()),
            };
            tags.push(TagRow {
                tag: name,
                last_pulled: self.last_pulled(repo, &digest, &record).await?,
                media_type: record.media_type,
                digest,
                size,
                platforms,
            });
        }
        Ok(Some(RepoView {
            repo: summary,
            tags,
            next,
        }))
    }

    /// The stored manifest `reference` names in `repo`; `None` when there is none.
    pub async fn manifest(&self, repo: &RepoName, reference: &Reference) -> Result<Option<ManifestView>> {
        let Some(summary) = self.repo_summary(repo.as_str()).await? else {
            return Ok(None);
        };
        let digest = match reference {
            Reference::Digest(d) => d.clone(),
            Reference::Tag(t) => match self.core.store.meta.tag(repo, t).await? {
                Some(d) => d,
                None => return Ok(None),
            },
        };
        let Some(record) = self.core.store.meta.manifest(repo, &digest).await? else {
            return Ok(None);
        };
        let parsed = self.parsed(&digest, &record).await?;
        let mut view = ManifestView {
            repo: summary,
            media_type: record.media_type.clone(),
            size: record.size,
            artifact_type: record.artifact_type.clone(),
            subject: record.subject.clone(),
            stored_at: record.stored_at,
            last_pulled: self.last_pulled(repo, &digest, &record).await?,
            digest,
            platforms: Vec::new(),
            config: None,
            layers: Vec::new(),
        };
        if let Some(m) = parsed {
            for d in &m.manifests {
                let mut item = self.item(d).await?;
                item.stored = self.core.store.meta.manifest(repo, &d.digest).await?.is_some();
                item.platform = Some(platform_of(d));
                view.platforms.push(item);
            }
            if let Some(c) = &m.config {
                view.config = Some(self.item(c).await?);
            }
            for d in &m.layers {
                view.layers.push(self.item(d).await?);
            }
        }
        Ok(Some(view))
    }

    async fn item(&self, d: &Descriptor) -> Result<Item> {
        Ok(Item {
            digest: d.digest.clone(),
            media_type: d.media_type.clone(),
            size: d.size,
            platform: None,
            stored: self.core.store.blobs.size(&d.digest).await?.is_some(),
        })
    }

    /// The stored manifest bytes, parsed; `None` when they are missing or unreadable.
    async fn parsed(&self, digest: &Digest, record: &ManifestRecord) -> Result<Option<Manifest>> {
        let Some(bytes) = self.core.store.blobs.read(digest).await? else {
            return Ok(None);
        };
        Ok(Manifest::parse(&bytes, Some(&record.media_type)).ok())
    }
}
