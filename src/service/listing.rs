//! Listings: the catalog, tags of a repository, and referrers of a manifest.

use serde_json::json;

use super::route::Route;
use super::{Browse, Error, Manifests, Result};
use crate::oci::{Descriptor, Digest, RepoName, media};

/// A page of names, and the cursor for the next page when there is one.
#[derive(Debug)]
pub struct Page {
    pub items: Vec<String>,
    pub next: Option<String>,
}

/// Answer at most this many names in one listing, whatever `n` asks for.
pub const MAX_PAGE: usize = 10_000;

/// The page size used when a listing request does not give `n`.
pub fn listing_limit() -> usize {
    MAX_PAGE
}

fn paginate(mut items: Vec<String>, n: usize) -> Page {
    let next = (items.len() > n).then(|| {
        items.truncate(n);
        items.last().cloned().unwrap_or_default()
    });
    Page { items, next }
}

impl Browse {
    /// Repository names after `last`, `n` at most.
    pub async fn catalog(&self, last: Option<&str>, n: usize) -> Result<Page> {
        let n = n.min(MAX_PAGE);
        let names = self.core.store.meta.repos(last, n + 1).await?;
        Ok(paginate(names.into_iter().map(|(r, _)| r.to_string()).collect(), n))
    }

    /// Repository names after `last` that `visible` lets through, `n` at most. `visible` gets a
    /// name and whether the repository caches an upstream. The cursor of the next page is the
    /// last name shown, so filtering never skips or repeats a name.
    pub async fn catalog_filtered(
        &self,
        last: Option<&str>,
        n: usize,
        visible: impl Fn(&str, bool) -> bool,
    ) -> Result<Page> {
        let list = self
            .repos("", last, n.min(MAX_PAGE), |r| visible(&r.name, !r.private))
            .await?;
        Ok(Page {
            items: list.repos.into_iter().map(|r| r.name).collect(),
            next: list.next,
        })
    }
}

impl Manifests {
    /// Tags of the routed repository: the upstream's list for a proxied one (the cached tags when
    /// the upstream cannot answer).
    pub async fn tags(&self, route: &Route, last: Option<&str>, n: usize) -> Result<Page> {
        let n = n.min(MAX_PAGE);
        if let Route::Proxied(p) = route
            && let Some(all) = self.core.proxied_tags(p).await
        {
            let after = all
                .into_iter()
                .filter(|t| last.is_none_or(|l| t.as_str() > l))
                .take(n + 1)
                .collect();
            return Ok(paginate(after, n));
        }
        let repo = route.local();
        let tags = self
            .core
            .store
            .meta
            .tags(repo, last, n + 1)
            .await?
            .ok_or_else(|| Error::NameUnknown(repo.clone()))?;
        Ok(paginate(tags, n))
    }

    /// The referrers index of `subject` in a private repository (stored referrers only) as JSON
    /// bytes, filtered by `artifact_type` when given; see [`Manifests::referrers_of`].
    pub(super) async fn stored_referrers(
        &self,
        repo: &RepoName,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Vec<u8>> {
        let manifests: Vec<Descriptor> = self
            .core
            .store
            .meta
            .referrers(repo, subject)
            .await?
            .into_iter()
            .filter(|(_, r)| artifact_type.is_none() || r.artifact_type.as_deref() == artifact_type)
            .map(|(digest, r)| Descriptor {
                media_type: r.media_type,
                digest,
                size: r.size,
                artifact_type: r.artifact_type,
                annotations: r.annotations,
                platform: None,
            })
            .collect();
        let index = json!({ "schemaVersion": 2, "mediaType": media::OCI_INDEX, "manifests": manifests });
        Ok(serde_json::to_vec(&index).expect("JSON of plain values"))
    }
}
