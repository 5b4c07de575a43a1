//! Which repositories are private and which belong to an upstream, and under which local name
//! cached content is stored.
//!
//! A repository is private when it holds pushed content. Everything else maps to an upstream:
//! containerd's `?ns=<name>` or a leading path component equal to an upstream's name picks that
//! upstream; otherwise the default (first) one. Docker Hub's single-component names gain
//! `library/`. Cached content of the default upstream is stored under the upstream name
//! (`library/alpine`), of others under `<upstream>/<name>`, so `?ns=ghcr.io` + `owner/app` and the
//! prefix form `ghcr.io/owner/app` share one cache.

use std::sync::Arc;

use super::{Error, Registry, Result};
use crate::oci::RepoName;
use crate::store::Origin;
use crate::upstream::Upstream;

/// Where a request for a repository goes.
#[derive(Debug, Clone)]
pub enum Route {
    /// Served from the store alone.
    Private(RepoName),
    Proxied(Proxied),
}

#[derive(Debug, Clone)]
pub struct Proxied {
    /// The name the cache uses in the store.
    pub local: RepoName,
    /// The repository name at the upstream.
    pub remote: String,
    pub upstream: Arc<Upstream>,
}

impl Route {
    /// The repository name in the local store.
    pub fn local(&self) -> &RepoName {
        match self {
            Route::Private(r) => r,
            Route::Proxied(p) => &p.local,
        }
    }
}

impl Registry {
    fn upstream_named(&self, name: &str) -> Option<(usize, &Arc<Upstream>)> {
        self.upstreams.iter().enumerate().find(|(_, u)| u.name() == name)
    }

    /// Route a read of `requested`, with containerd's `ns` query parameter if sent.
    pub fn route(&self, requested: &RepoName, ns: Option<&str>) -> Result<Route> {
        if self.is_private(requested)? {
            return Ok(Route::Private(requested.clone()));
        }
        let name = requested.as_str();
        let picked = match ns.and_then(|ns| self.upstream_named(ns)) {
            Some((i, u)) => Some((i, u, name)),
            None => name
                .split_once('/')
                .and_then(|(first, rest)| self.upstream_named(first).map(|(i, u)| (i, u, rest)))
                .or_else(|| self.upstreams.first().map(|u| (0, u, name))),
        };
        let Some((index, upstream, remote)) = picked else {
            return Ok(Route::Private(requested.clone()));
        };
        let remote = if upstream.name() == "docker.io" && !remote.contains('/') {
            format!("library/{remote}")
        } else {
            remote.to_owned()
        };
        let local = if index == 0 {
            remote.clone()
        } else {
            format!("{}/{remote}", upstream.name())
        };
        let local: RepoName = local.parse()?;
        if self.is_private(&local)? {
            return Ok(Route::Private(local));
        }
        Ok(Route::Proxied(Proxied {
            local,
            remote,
            upstream: upstream.clone(),
        }))
    }

    /// Route a write: only private repositories take pushes. A name that would be served from an
    /// upstream is refused with a message that says how to make it private.
    pub fn route_push(&self, requested: &RepoName) -> Result<RepoName> {
        if self.is_private(requested)? {
            return Ok(requested.clone());
        }
        match self.route(requested, None)? {
            Route::Private(_) => Ok(requested.clone()),
            Route::Proxied(p) => {
                let first = requested.as_str().split('/').next().unwrap_or("team");
                Err(Error::Denied(format!(
                    "{requested} is mirrored from upstream {}, so it does not accept pushes; to push here, add a pattern such as \"{first}/*\" to [private] namespaces in mirror.toml",
                    p.upstream.name()
                )))
            }
        }
    }

    /// Private: it matches a `[private] namespaces` pattern, or holds pushed content.
    fn is_private(&self, repo: &RepoName) -> Result<bool> {
        if self.private.iter().any(|p| crate::auth::matches(p, repo.as_str())) {
            return Ok(true);
        }
        Ok(self.origin(repo)? == Some(Origin::Private))
    }

    /// A repository's origin, if it exists; from memory on the hot path.
    fn origin(&self, repo: &RepoName) -> Result<Option<Origin>> {
        if let Some(origin) = self.store.memo.origin(repo) {
            return Ok(Some(origin));
        }
        let origin = self.store.meta.repo(repo)?.map(|info| info.origin);
        if let Some(origin) = &origin {
            self.store.memo.put_origin(repo, origin.clone());
        }
        Ok(origin)
    }
}
