//! Cluster mode's gauges and counters: the members this replica sees, and what its coordinator
//! counted. The coordinator keeps its own atomics (it sits below the metrics registry's users);
//! a periodic task copies them here with [`ClusterMetrics::update`].

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// What one reading of the coordinator gives.
#[derive(Clone, Copy, Debug, Default)]
pub struct ClusterReading {
    pub members: u64,
    pub fills_owned: u64,
    pub fills_joined_remotely: u64,
    pub takeovers: u64,
    pub notices: u64,
}

#[derive(Debug, Default)]
pub struct ClusterMetrics {
    members: Gauge,
    fills_owned: Counter,
    fills_joined_remotely: Counter,
    takeovers: Counter,
    notices: Counter,
    /// The totals already added, so an update adds only what is new.
    seen: [AtomicU64; 4],
}

impl ClusterMetrics {
    pub(super) fn register(r: &mut Registry) -> ClusterMetrics {
        let m = ClusterMetrics::default();
        r.register(
            "cluster_members",
            "Replicas with a live heartbeat in the cluster, this one included (0 on a single node)",
            m.members.clone(),
        );
        r.register(
            "cluster_fills_owned",
            "Blob fill leases this replica won (it fetched from the upstream)",
            m.fills_owned.clone(),
        );
        r.register(
            "cluster_fills_joined_remotely",
            "Blob fills another replica led when this one needed the blob",
            m.fills_joined_remotely.clone(),
        );
        r.register(
            "cluster_lease_takeovers",
            "Leases this replica took over from a replica that died or stalled",
            m.takeovers.clone(),
        );
        r.register(
            "cluster_notices",
            "Change notices received from other replicas",
            m.notices.clone(),
        );
        m
    }

    /// Bring the metrics to `reading` (totals only grow; a smaller one is ignored).
    pub fn update(&self, reading: ClusterReading) {
        self.members.set(i64::try_from(reading.members).unwrap_or(i64::MAX));
        let totals = [
            (&self.fills_owned, reading.fills_owned),
            (&self.fills_joined_remotely, reading.fills_joined_remotely),
            (&self.takeovers, reading.takeovers),
            (&self.notices, reading.notices),
        ];
        for ((counter, total), seen) in totals.into_iter().zip(&self.seen) {
            let before = seen.fetch_max(total, Ordering::Relaxed);
            if total > before {
                counter.inc_by(total - before);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn updates_add_only_what_is_new_and_the_gauge_follows_the_members() {
        let mut r = Registry::default();
        let m = ClusterMetrics::register(&mut r);
        let reading = |members, owned| ClusterReading {
            members,
            fills_owned: owned,
            ..ClusterReading::default()
        };
        m.update(reading(3, 5));
        m.update(reading(2, 7));
        m.update(reading(2, 6));
        assert_eq!(m.members.get(), 2);
        assert_eq!(m.fills_owned.get(), 7);
    }
}
