//! Cache policy: when manifests were last pulled, and which cached images to evict (by TTL, and
//! least recently pulled first above the size cap). No I/O: pulls are kept in memory and handed
//! to the metadata store in batches, off the request path; eviction plans are pure functions.

use parking_lot::Mutex;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

use crate::oci::{Digest, Reference, RepoName};

/// What a garbage collection run may remove, from `[cache]` and `[gc]`.
#[derive(Clone, Debug)]
pub struct Policy {
    pub ttl: Duration,
    pub max_size: Option<u64>,
    /// Evict down to this percentage of `max_size`.
    pub low_water_percent: u64,
    pub grace: Duration,
    pub upload_ttl: Duration,
    pub delete_untagged: bool,
    /// Images of `[[prefetch]]` lists exempt from `max_size` (local repository names), with
    /// their child manifests and tag-schema referrers. Default none.
    pub pinned: Vec<(RepoName, Reference)>,
    /// Upstreams in offline mode: what is cached from them is not evicted by `ttl`, since it
    /// cannot be fetched again (`max_size` still applies). Read at each run.
    pub offline_upstreams: Vec<String>,
}

impl Policy {
    /// `[cache]` and `[gc]` of the configuration as a collection policy.
    pub fn from_config(config: &crate::config::Config) -> Policy {
        Policy {
            ttl: config.cache.ttl,
            max_size: config.cache.max_size,
            low_water_percent: config.cache.low_water.into(),
            grace: config.gc.grace,
            upload_ttl: config.gc.upload_ttl,
            delete_untagged: config.gc.delete_untagged,
            pinned: Vec::new(),
            offline_upstreams: config
                .upstreams
                .iter()
                .filter(|u| u.offline)
                .map(|u| u.name.clone())
                .collect(),
        }
    }
}

/// Pulls seen since the last flush.
#[derive(Default)]
pub struct Pulls {
    pending: Mutex<HashMap<(RepoName, Digest), u64>>,
}

impl Pulls {
    /// Note a pull of `digest` in `repo` at `now` (unix seconds). Cheap: one map insert.
    pub fn record(&self, repo: &RepoName, digest: &Digest, now: u64) {
        self.pending.lock().insert((repo.clone(), digest.clone()), now);
    }

    /// A pull noted since the last flush.
    pub fn get(&self, repo: &RepoName, digest: &Digest) -> Option<u64> {
        self.pending.lock().get(&(repo.clone(), digest.clone())).copied()
    }

    /// Take everything noted so far, for one batched write.
    pub fn drain(&self) -> Vec<(RepoName, Digest, u64)> {
        let pending = std::mem::take(&mut *self.pending.lock());
        pending.into_iter().map(|((r, d), t)| (r, d, t)).collect()
    }
}

/// A manifest as eviction sees it.
#[derive(Clone, Debug)]
pub struct Cached {
    pub repo: RepoName,
    pub digest: Digest,
    /// Only manifests of proxied repositories may be evicted.
    pub proxied: bool,
    /// Last pull, or when it was stored if never pulled (unix seconds).
    pub last_pulled: u64,
    /// Everything this manifest keeps alive: its own bytes, its blobs, its child manifests.
    pub refs: Vec<Digest>,
    /// Part of a `[[prefetch]]` list exempt from the size cap: `over_size` never picks it.
    pub pinned: bool,
    /// Cached from an upstream in offline mode, which cannot give it back: `expired` never picks
    /// it (the size cap still may, so the disk stays bounded).
    pub offline: bool,
}

/// Cached manifests nobody pulled since `cutoff`.
pub fn expired(manifests: &[Cached], cutoff: u64) -> Vec<(RepoName, Digest)> {
    manifests
        .iter()
        .filter(|m| m.proxied && !m.offline && m.last_pulled < cutoff)
        .map(|m| (m.repo.clone(), m.digest.clone()))
        .collect()
}

/// Least recently pulled cached manifests to evict so that `usage` falls to `target` bytes.
/// A blob counts as freed only when no remaining manifest (private ones included) references it.
/// `already` are evicted anyway (by TTL) and are accounted first.
pub fn over_size(
    manifests: &[Cached],
    sizes: &HashMap<Digest, u64>,
    usage: u64,
    target: u64,
    already: &[(RepoName, Digest)],
) -> Vec<(RepoName, Digest)> {
    let mut refcount: HashMap<&Digest, usize> = HashMap::new();
    for m in manifests {
        for r in unique(&m.refs) {
            *refcount.entry(r).or_default() += 1;
        }
    }
    let mut freed = 0u64;
    // Drop one manifest's references; the bytes that become unreferenced.
    let release = |m: &Cached, refcount: &mut HashMap<&Digest, usize>| -> u64 {
        let mut bytes = 0;
        for r in unique(&m.refs) {
            let n = refcount.get_mut(r).expect("counted above");
            *n -= 1;
            if *n == 0 {
                bytes += sizes.get(r).copied().unwrap_or(0);
            }
        }
        bytes
    };
    let already: HashSet<&(RepoName, Digest)> = already.iter().collect();
    for m in manifests
        .iter()
        .filter(|m| already.contains(&(m.repo.clone(), m.digest.clone())))
    {
        freed += release(m, &mut refcount);
    }
    let mut order: Vec<&Cached> = manifests
        .iter()
        .filter(|m| m.proxied && !m.pinned && !already.contains(&(m.repo.clone(), m.digest.clone())))
        .collect();
    order.sort_by_key(|m| m.last_pulled);
    let mut evict = Vec::new();
    for m in order {
        if usage.saturating_sub(freed) <= target {
            break;
        }
        freed += release(m, &mut refcount);
        evict.push((m.repo.clone(), m.digest.clone()));
    }
    evict
}

fn unique(refs: &[Digest]) -> impl Iterator<Item = &Digest> {
    let mut seen = HashSet::new();
    refs.iter().filter(move |d| seen.insert(*d))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u8) -> Digest {
        Digest::sha256_of(&[n])
    }

    fn cached(repo: &str, n: u8, proxied: bool, last: u64, refs: &[u8]) -> Cached {
        Cached {
            repo: repo.parse().unwrap(),
            digest: d(n),
            proxied,
            last_pulled: last,
            refs: refs.iter().map(|&r| d(r)).collect(),
            pinned: false,
            offline: false,
        }
    }

    #[test]
    fn ttl_spares_what_an_offline_upstream_cannot_give_back_but_the_size_cap_does_not() {
        let mut offline = cached("library/a", 1, true, 1, &[1]);
        offline.offline = true;
        let ms = [offline, cached("library/b", 2, true, 1, &[2])];
        assert_eq!(expired(&ms, 10), vec![("library/b".parse().unwrap(), d(2))]);
        let sizes: HashMap<Digest, u64> = [(d(1), 100), (d(2), 100)].into();
        let evicted = over_size(&ms, &sizes, 200, 50, &[]);
        assert!(evicted.contains(&("library/a".parse().unwrap(), d(1))), "{evicted:?}");
    }

    #[test]
    fn ttl_never_touches_private_content() {
        let ms = [
            cached("library/a", 1, true, 10, &[1]),
            cached("team/b", 2, false, 10, &[2]),
            cached("library/c", 3, true, 100, &[3]),
        ];
        assert_eq!(expired(&ms, 50), vec![("library/a".parse().unwrap(), d(1))]);
    }

    #[test]
    fn size_cap_evicts_least_recently_pulled_and_counts_shared_layers_once() {
        // 10 is a layer shared by a and b; 20 belongs to a private image as well as c.
        let ms = [
            cached("library/a", 1, true, 1, &[1, 10]),
            cached("library/b", 2, true, 2, &[2, 10]),
            cached("library/c", 3, true, 3, &[3, 20]),
            cached("team/p", 4, false, 0, &[4, 20]),
        ];
        let sizes: HashMap<Digest, u64> =
            [(d(1), 1), (d(2), 1), (d(3), 1), (d(4), 1), (d(10), 100), (d(20), 100)].into();
        let usage = 204;
        // Evicting a frees only its manifest (the shared layer stays for b); then b frees the layer.
        let plan = over_size(&ms, &sizes, usage, 110, &[]);
        assert_eq!(
            plan,
            vec![
                ("library/a".parse().unwrap(), d(1)),
                ("library/b".parse().unwrap(), d(2))
            ]
        );
        // c's big layer is shared with private content: evicting c frees 1 byte, never 100.
        let plan = over_size(&ms, &sizes, usage, 0, &[]);
        assert_eq!(plan.len(), 3, "private team/p is never evicted");
    }

    #[test]
    fn size_cap_never_picks_pinned_prefetched_images_but_ttl_still_may() {
        let mut pinned = cached("library/a", 1, true, 1, &[1]);
        pinned.pinned = true;
        let ms = [pinned, cached("library/b", 2, true, 2, &[2])];
        let sizes: HashMap<Digest, u64> = [(d(1), 100), (d(2), 100)].into();
        // The oldest image is pinned: the cap takes the next one and stops short of its target.
        assert_eq!(
            over_size(&ms, &sizes, 200, 0, &[]),
            vec![("library/b".parse().unwrap(), d(2))]
        );
        assert_eq!(expired(&ms, 10).len(), 2, "pinning is about the cap, not the TTL");
    }
}
