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

use super::{Core, Error, Result};
use crate::oci::RepoName;
use crate::store::Origin;
use crate::upstream::Remote;

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
    pub upstream: Arc<dyn Remote>,
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

/// Which of `upstreams` (by name, the first the default) serves `name` as requested (with
/// containerd's `ns`), as `(index, remote name, local name)`; `None` without upstreams. Pure, so
/// `[[prefetch]]` lists resolve the same way before a registry exists.
pub fn resolve(upstreams: &[&str], name: &str, ns: Option<&str>) -> Option<(usize, String, String)> {
    let position = |n: &str| upstreams.iter().position(|u| *u == n);
    let (index, remote) = match ns.and_then(position) {
        Some(i) => (i, name),
        None => match name
            .split_once('/')
            .and_then(|(first, rest)| position(first).map(|i| (i, rest)))
        {
            Some(picked) => picked,
            None if !upstreams.is_empty() => (0, name),
            None => return None,
        },
    };
    let remote = if upstreams[index] == "docker.io" && !remote.contains('/') {
        format!("library/{remote}")
    } else {
        remote.to_owned()
    };
    let local = if index == 0 {
        remote.clone()
    } else {
        format!("{}/{remote}", upstreams[index])
    };
    Some((index, remote, local))
}

impl Core {
    fn upstream_named(&self, name: &str) -> Option<(usize, &Arc<dyn Remote>)> {
        self.upstreams.iter().enumerate().find(|(_, u)| u.name() == name)
    }

    /// Route a read of `requested`, with containerd's `ns` query parameter if sent.
    pub async fn route(&self, requested: &RepoName, ns: Option<&str>) -> Result<Route> {
        if self.is_private(requested).await? {
            return Ok(Route::Private(requested.clone()));
        }
        let names: Vec<&str> = self.upstreams.iter().map(|u| u.name()).collect();
        let Some((index, remote, local)) = resolve(&names, requested.as_str(), ns) else {
            return Ok(Route::Private(requested.clone()));
        };
        let upstream = &self.upstreams[index];
        let local: RepoName = local.parse()?;
        if self.is_private(&local).await? {
            return Ok(Route::Private(local));
        }
        Ok(Route::Proxied(Proxied {
            local,
            remote,
            upstream: upstream.clone(),
        }))
    }

    /// Route a write. Private repositories take pushes; an unclaimed name is claimed as private
    /// by its first push (unless `[private] claim_on_push` is off). Never claimed, so a push can
    /// never replace what mirror clients get from an upstream:
    /// - an upstream's reserved namespace: Docker Hub's `library/…` (what `registry-mirrors`
    ///   clients ask for on `docker pull alpine`) and names that pick an upstream by prefix
    ///   (`ghcr.io/…` when `ghcr.io` is configured);
    /// - a name whose repository holds cached upstream content.
    ///
    /// A pushed `alpine` is the repository `alpine`, distinct from the cache `library/alpine`:
    /// mirror clients keep getting Docker Hub's image, while `docker pull <berth>/alpine` gets
    /// the pushed one. Every refusal names a fix that works for that very name.
    pub async fn route_push(&self, requested: &RepoName) -> Result<RepoName> {
        if self.is_private(requested).await? {
            return Ok(requested.clone());
        }
        let Route::Proxied(p) = self.route(requested, None).await? else {
            return Ok(requested.clone());
        };
        let name = requested.as_str();
        let upstream = p.upstream.name();
        let add_pattern = format!("add \"{name}\" to [private] namespaces in mirror.toml");
        if let Some(reason) = self.reserved(name) {
            let rest = name.split_once('/').map_or(name, |(_, rest)| rest);
            return Err(Error::Denied(format!(
                "{name} is {reason}, so berth keeps it a mirror and refuses pushes to it; push it as {rest} instead, or, to serve your own {name} instead of {upstream}'s to every client, {add_pattern}"
            )));
        }
        if let Some(Origin::Proxied { upstream }) = self.origin(requested).await? {
            return Err(Error::Denied(format!(
                "{name} holds content cached from upstream {upstream}, so it stays a mirror and refuses pushes; push under another name, or remove the cached copy with `berth delete --repository {name}` and push again (or {add_pattern})"
            )));
        }
        if !self.claim_on_push {
            let namespace = match name.split_once('/') {
                Some((first, _)) => format!(" (or \"{first}/*\" for the whole namespace)"),
                None => String::new(),
            };
            return Err(Error::Denied(format!(
                "{name} is mirrored from upstream {upstream} and this registry takes pushes only under [private] namespaces ([private] claim_on_push = false); to push here, {add_pattern}{namespace}"
            )));
        }
        Ok(requested.clone())
    }

    /// Why `name` belongs to an upstream whatever is stored, if it does.
    fn reserved(&self, name: &str) -> Option<String> {
        let first = name.split('/').next().unwrap_or(name);
        if let Some((_, u)) = self.upstream_named(first) {
            return Some(format!("in the namespace that selects upstream {}", u.name()));
        }
        let default_is_hub = self.upstreams.first().is_some_and(|u| u.name() == "docker.io");
        (default_is_hub && first == "library" && name.contains('/')).then(|| {
            "in Docker Hub's official-images namespace (what `docker pull alpine` asks a registry mirror for)"
                .to_owned()
        })
    }

    /// Private: it matches a `[private] namespaces` pattern, or holds pushed content.
    pub(super) async fn is_private(&self, repo: &RepoName) -> Result<bool> {
        if self
            .private
            .iter()
            .any(|p| crate::oci::pattern::matches(p, repo.as_str()))
        {
            return Ok(true);
        }
        Ok(self.origin(repo).await? == Some(Origin::Private))
    }

    /// A repository's origin, if it exists; from memory on the hot path.
    async fn origin(&self, repo: &RepoName) -> Result<Option<Origin>> {
        if let Some(origin) = self.memo.origin(repo) {
            return Ok(Some(origin));
        }
        let origin = self.store.meta.repo(repo).await?.map(|info| info.origin);
        if let Some(origin) = &origin {
            self.memo.put_origin(repo, origin.clone());
        }
        Ok(origin)
    }
}

#[cfg(test)]
mod tests {
    use super::resolve;

    #[test]
    fn names_resolve_to_an_upstream_its_remote_name_and_the_local_cache_name() {
        let both = ["docker.io", "ghcr.io"];
        let r = |name: &str, ns: Option<&str>| resolve(&both, name, ns).unwrap();
        let owned = |i: usize, remote: &str, local: &str| (i, remote.to_owned(), local.to_owned());
        assert_eq!(r("alpine", None), owned(0, "library/alpine", "library/alpine"));
        assert_eq!(
            r("docker.io/alpine", None),
            owned(0, "library/alpine", "library/alpine")
        );
        assert_eq!(r("myorg/tool", None), owned(0, "myorg/tool", "myorg/tool"));
        assert_eq!(r("ghcr.io/org/app", None), owned(1, "org/app", "ghcr.io/org/app"));
        assert_eq!(r("org/app", Some("ghcr.io")), owned(1, "org/app", "ghcr.io/org/app"));
        assert_eq!(r("org/app", Some("unknown.io")), owned(0, "org/app", "org/app"));
        assert_eq!(resolve(&["quay.io"], "app", None).unwrap(), owned(0, "app", "app"));
        assert_eq!(resolve(&[], "app", None), None);
    }
}
