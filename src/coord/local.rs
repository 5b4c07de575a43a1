//! The in-process [`Coordinator`]: one berth process owns its store, so a map and a broadcast
//! channel decide everything. Nothing here survives a restart, and nothing needs to.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::sync::broadcast;

use super::{Coordinator, FillClaim, FillFollower, FillLease, LeaderGuard, LocalFill, Notice, Notices, Result, Task};
use crate::oci::Digest;

/// Notices a slow subscriber may fall behind by before it is told it lagged.
const NOTICE_BACKLOG: usize = 1024;

/// Check claims kept before the expired ones are swept (one per proxied tag in use).
const CHECKS_SWEPT_PAST: usize = 10_000;

/// Coordination inside one process.
pub struct Local {
    fills: Arc<Mutex<HashMap<Digest, (u64, LocalFill)>>>,
    generations: AtomicU64,
    leaders: Arc<Mutex<HashSet<Task>>>,
    /// Claimed checks and when their window ends.
    checks: Mutex<HashMap<String, Instant>>,
    notices: broadcast::Sender<Notice>,
}

impl Default for Local {
    fn default() -> Self {
        Local {
            fills: Arc::default(),
            generations: AtomicU64::new(0),
            leaders: Arc::default(),
            checks: Mutex::default(),
            notices: broadcast::channel(NOTICE_BACKLOG).0,
        }
    }
}

impl Local {
    /// A fresh coordinator, ready to share.
    pub fn shared() -> Arc<dyn Coordinator> {
        Arc::new(Local::default())
    }
}

/// Removes a fill claim on drop, unless a newer claim replaced it.
struct FillRelease {
    fills: Arc<Mutex<HashMap<Digest, (u64, LocalFill)>>>,
    digest: Digest,
    generation: u64,
}

impl Drop for FillRelease {
    fn drop(&mut self) {
        let mut fills = self.fills.lock();
        if fills.get(&self.digest).is_some_and(|(g, _)| *g == self.generation) {
            fills.remove(&self.digest);
        }
    }
}

struct LeadRelease {
    leaders: Arc<Mutex<HashSet<Task>>>,
    task: Task,
}

impl Drop for LeadRelease {
    fn drop(&mut self) {
        self.leaders.lock().remove(&self.task);
    }
}

#[async_trait]
impl Coordinator for Local {
    async fn claim_fill(&self, digest: &Digest, mine: LocalFill) -> Result<FillClaim> {
        let mut fills = self.fills.lock();
        if let Some((generation, leader)) = fills.get(digest) {
            return Ok(FillClaim::Follow(FillFollower {
                generation: *generation,
                local: Some(leader.clone()),
                leader_url: None,
            }));
        }
        let generation = self.generations.fetch_add(1, Ordering::Relaxed) + 1;
        fills.insert(digest.clone(), (generation, mine));
        let release = FillRelease {
            fills: self.fills.clone(),
            digest: digest.clone(),
            generation,
        };
        Ok(FillClaim::Lead(FillLease::new(generation, release)))
    }

    async fn lead(&self, task: &Task) -> Result<Option<LeaderGuard>> {
        if !self.leaders.lock().insert(task.clone()) {
            return Ok(None);
        }
        let release = LeadRelease {
            leaders: self.leaders.clone(),
            task: task.clone(),
        };
        Ok(Some(LeaderGuard::new(task.clone(), release)))
    }

    async fn claim_check(&self, key: &str, window: Duration) -> Result<bool> {
        let now = Instant::now();
        let mut checks = self.checks.lock();
        if checks.get(key).is_some_and(|until| *until > now) {
            return Ok(false);
        }
        if checks.len() >= CHECKS_SWEPT_PAST {
            checks.retain(|_, until| *until > now);
        }
        checks.insert(key.to_owned(), now + window);
        Ok(true)
    }

    async fn release_check(&self, key: &str) -> Result<()> {
        self.checks.lock().remove(key);
        Ok(())
    }

    fn publish(&self, notice: Notice) {
        // No subscriber is not an error: nothing is memoized yet.
        let _ = self.notices.send(notice);
    }

    fn subscribe(&self) -> Notices {
        self.notices.subscribe()
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn local_passes_the_coordinator_conformance_suite() {
        super::super::conformance::run(super::Local::shared).await;
    }
}
