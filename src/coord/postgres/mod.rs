//! [`Coordinator`] through PostgreSQL, for replicas sharing one database (cluster mode).
//!
//! - Fill claims and task leads are lease rows (`leases`): claimed with `INSERT … ON CONFLICT`,
//!   an expiry and a generation; renewed while held; taken over once expired. Leases rather than
//!   session advisory locks: an advisory lock pins one pooled connection for as long as a GC
//!   runs and vanishes silently with it, while a lease row names its holder and its URL (which a
//!   follower needs to stream the fill from the owner), counts generations, and expires on its
//!   own when the holder dies.
//! - Within this process the coordinator answers as [`Local`](super::Local) does first: a
//!   follower of a fill led here gets the leader's in-process fill, and a second lead of a task
//!   held here is refused without asking the database.
//! - Change notices travel over LISTEN/NOTIFY (`notices`); membership is heartbeat rows
//!   (`members`).

mod checks;
mod leases;
mod members;
mod notices;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::Pool;
use parking_lot::Mutex;
use tokio::sync::{broadcast, mpsc, watch};

pub use members::Member;

use super::{
    Coordinator, Error, FillClaim, FillFollower, FillLease, LeaderGuard, LocalFill, Notice, Notices, Result, Task,
};
use crate::config::ClusterConfig;
use crate::oci::Digest;

/// Notices a slow subscriber may fall behind by before it is told it lagged.
const NOTICE_BACKLOG: usize = 1024;

/// How long [`PgCoordinator::new`] waits for its LISTEN to be in place.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long leaving waits for queued notices to go out (a database that does not answer must
/// not hold a shutdown).
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

fn db_err(e: tokio_postgres::Error) -> Error {
    Error(format!("postgres: {e}"))
}

fn pool_err(e: deadpool_postgres::PoolError) -> Error {
    Error(format!("postgres pool: {e}"))
}

/// Counters for `/metrics`' cluster gauges.
#[derive(Default, Debug)]
pub struct Stats {
    /// Fill leases this replica won.
    pub fills_owned: AtomicU64,
    /// Fill claims that found another replica leading.
    pub fills_joined_remotely: AtomicU64,
    /// Leases won from an expired holder that was another replica (it died or stalled).
    pub takeovers: AtomicU64,
    /// Notices received from other replicas.
    pub notices: AtomicU64,
}

/// What the coordinator and its background tasks share.
struct Shared {
    pool: Pool,
    /// This process's id in `members` and `leases.holder`.
    replica: String,
    url: String,
    lease: Duration,
    heartbeat: Duration,
    /// Fills led in this process: their generation and in-process fill.
    fills: Mutex<HashMap<Digest, (u64, LocalFill)>>,
    /// Tasks led in this process, with their lease generation (0 while being claimed).
    tasks: Mutex<HashMap<Task, u64>>,
    stats: Stats,
    /// Notices published and not yet sent (or given up on) by the publisher.
    unsent: AtomicUsize,
    /// A replica (a membership row, renewed every heartbeat), not a maintenance command.
    member: bool,
}

impl Shared {
    /// The lease keys this process holds, for renewal.
    fn held(&self) -> Vec<String> {
        let mut keys: Vec<String> = self.fills.lock().keys().map(fill_key).collect();
        keys.extend(self.tasks.lock().keys().map(task_key));
        keys
    }
}

fn fill_key(digest: &Digest) -> String {
    format!("fill/{digest}")
}

fn task_key(task: &Task) -> String {
    format!("task/{}", task.key())
}

/// Coordination of replicas through one PostgreSQL database.
pub struct PgCoordinator {
    shared: Arc<Shared>,
    /// Serialises fill claims in this process, so concurrent claims of one digest find the
    /// first one's in-process fill instead of racing to the database.
    claiming: tokio::sync::Mutex<()>,
    notices: broadcast::Sender<Notice>,
    outbox: mpsc::UnboundedSender<Notice>,
    /// The heartbeat and renewal loop, the notice publisher and the listener.
    background: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl PgCoordinator {
    /// Join the cluster on the database of `pool` (migrated by `store::postgres::migrate`):
    /// write this replica's membership row and start listening for notices. `url` is the same
    /// database's connection URL, for the listening connection (a pooled connection drops
    /// notifications). `cfg.advertise` is this replica's URL for its peers.
    pub async fn new(pool: Pool, url: &str, cfg: &ClusterConfig) -> Result<Arc<PgCoordinator>> {
        if cfg.advertise.is_empty() {
            return Err(Error(
                "[cluster] advertise is required: the URL other replicas reach this one at".into(),
            ));
        }
        PgCoordinator::start(pool, url, cfg, true).await
    }

    /// Coordinate a maintenance command (`berth gc`, `delete`, `prefetch`, …) with the replicas:
    /// its leases and notices count as any replica's, but it is no member (the gauge counts
    /// replicas) and its leases name no URL, since no replica can stream a fill from a command.
    pub async fn for_tool(pool: Pool, url: &str, cfg: &ClusterConfig) -> Result<Arc<PgCoordinator>> {
        let cfg = ClusterConfig {
            advertise: String::new(),
            ..cfg.clone()
        };
        PgCoordinator::start(pool, url, &cfg, false).await
    }

    async fn start(pool: Pool, url: &str, cfg: &ClusterConfig, member: bool) -> Result<Arc<PgCoordinator>> {
        let config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| Error(format!("the PostgreSQL URL does not parse: {e}")))?;
        let shared = Arc::new(Shared {
            pool,
            replica: uuid::Uuid::new_v4().to_string(),
            url: cfg.advertise.clone(),
            lease: cfg.lease,
            heartbeat: cfg.heartbeat,
            fills: Mutex::default(),
            tasks: Mutex::default(),
            stats: Stats::default(),
            unsent: AtomicUsize::new(0),
            member,
        });
        if member {
            members::beat(&shared).await?;
        }
        let notices = broadcast::channel(NOTICE_BACKLOG).0;
        let (outbox, queue) = mpsc::unbounded_channel();
        let (listening, mut ready) = watch::channel(false);
        let background = vec![
            tokio::spawn(members::run(shared.clone())),
            tokio::spawn(notices::publish(shared.clone(), queue)),
            tokio::spawn(notices::listen(shared.clone(), config, notices.clone(), listening)),
        ];
        let coordinator = Arc::new(PgCoordinator {
            shared,
            claiming: tokio::sync::Mutex::new(()),
            notices,
            outbox,
            background: Mutex::new(background),
        });
        tokio::time::timeout(LISTEN_TIMEOUT, ready.wait_for(|l| *l))
            .await
            .map_err(|_| Error("LISTEN on PostgreSQL did not succeed within 10 s".into()))?
            .map_err(|_| Error("the notice listener stopped".into()))?;
        Ok(coordinator)
    }

    /// This replica's id (its membership row, and the holder of its leases).
    pub fn replica(&self) -> &str {
        &self.shared.replica
    }

    /// The live members of the cluster, this replica included (the `/metrics` members gauge).
    pub async fn members(&self) -> Result<Vec<Member>> {
        members::live(&self.shared).await
    }

    /// Counters for the cluster gauges.
    pub fn stats(&self) -> &Stats {
        &self.shared.stats
    }

    /// Leave the cluster now (a graceful shutdown): stop the heartbeat, renewals and notices,
    /// delete the membership row and end this replica's leases, so the others take over without
    /// waiting for them to expire. The coordinator is of no further use.
    pub async fn leave(&self) -> Result<()> {
        // Notices still queued go out first: a command such as `berth delete` publishes one
        // and leaves at once, and the replicas that memoized the tag must hear of it.
        let flushed = tokio::time::timeout(FLUSH_TIMEOUT, async {
            while self.shared.unsent.load(Ordering::Acquire) > 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        if flushed.await.is_err() {
            tracing::warn!(
                "change notices were still unsent on leaving; other replicas' memo entries expire on their own"
            );
        }
        self.stop();
        members::leave(&self.shared).await
    }

    fn stop(&self) {
        for task in self.background.lock().drain(..) {
            task.abort();
        }
    }

    /// Count a won lease that an expired other replica held before.
    fn count_takeover(&self, before: Option<&str>) {
        // A released lease has no holder left (see `leases`).
        if before.is_some_and(|b| !b.is_empty() && b != self.shared.replica) {
            self.shared.stats.takeovers.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Drop for PgCoordinator {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Ends a fill lease on drop: the in-process entry at once, the row from a spawned task.
struct FillRelease {
    shared: Arc<Shared>,
    digest: Digest,
    generation: u64,
}

impl Drop for FillRelease {
    fn drop(&mut self) {
        {
            let mut fills = self.shared.fills.lock();
            if fills.get(&self.digest).is_some_and(|(g, _)| *g == self.generation) {
                fills.remove(&self.digest);
            }
        }
        leases::release_later(
            self.shared.pool.clone(),
            fill_key(&self.digest),
            self.shared.replica.clone(),
            self.generation,
        );
    }
}

struct LeadRelease {
    shared: Arc<Shared>,
    task: Task,
    generation: u64,
}

impl Drop for LeadRelease {
    fn drop(&mut self) {
        self.shared.tasks.lock().remove(&self.task);
        leases::release_later(
            self.shared.pool.clone(),
            task_key(&self.task),
            self.shared.replica.clone(),
            self.generation,
        );
    }
}

#[async_trait]
impl Coordinator for PgCoordinator {
    async fn claim_fill(&self, digest: &Digest, mine: LocalFill) -> Result<FillClaim> {
        let _one_at_a_time = self.claiming.lock().await;
        if let Some((generation, leader)) = self.shared.fills.lock().get(digest) {
            return Ok(FillClaim::Follow(FillFollower {
                generation: *generation,
                local: Some(leader.clone()),
                leader_url: None,
            }));
        }
        let key = fill_key(digest);
        let s = &self.shared;
        match leases::claim(&s.pool, &key, &s.replica, &s.url, s.lease).await? {
            leases::Claimed::Won(generation, before) => {
                self.count_takeover(before.as_deref());
                s.stats.fills_owned.fetch_add(1, Ordering::Relaxed);
                s.fills.lock().insert(digest.clone(), (generation, mine));
                let release = FillRelease {
                    shared: s.clone(),
                    digest: digest.clone(),
                    generation,
                };
                Ok(FillClaim::Lead(FillLease::new(generation, release)))
            }
            leases::Claimed::Held(holder) => {
                s.stats.fills_joined_remotely.fetch_add(1, Ordering::Relaxed);
                Ok(FillClaim::Follow(FillFollower {
                    generation: holder.generation,
                    local: None,
                    // A maintenance command leads with no URL: fetch, as without a peer.
                    leader_url: Some(holder.url).filter(|url| !url.is_empty()),
                }))
            }
        }
    }

    async fn lead(&self, task: &Task) -> Result<Option<LeaderGuard>> {
        {
            let mut tasks = self.shared.tasks.lock();
            if tasks.contains_key(task) {
                return Ok(None);
            }
            tasks.insert(task.clone(), 0);
        }
        let s = &self.shared;
        let claimed = leases::claim(&s.pool, &task_key(task), &s.replica, &s.url, s.lease).await;
        match claimed {
            Ok(leases::Claimed::Won(generation, before)) => {
                self.count_takeover(before.as_deref());
                s.tasks.lock().insert(task.clone(), generation);
                let release = LeadRelease {
                    shared: s.clone(),
                    task: task.clone(),
                    generation,
                };
                Ok(Some(LeaderGuard::new(task.clone(), release)))
            }
            other => {
                s.tasks.lock().remove(task);
                other.map(|_| None)
            }
        }
    }

    async fn claim_check(&self, key: &str, window: Duration) -> Result<bool> {
        checks::claim(&self.shared.pool, key, window).await
    }

    async fn release_check(&self, key: &str) -> Result<()> {
        checks::release(&self.shared.pool, key).await
    }

    fn publish(&self, notice: Notice) {
        // This process's subscribers hear it at once; the others through NOTIFY.
        let _ = self.notices.send(notice.clone());
        self.shared.unsent.fetch_add(1, Ordering::AcqRel);
        if self.outbox.send(notice).is_err() {
            self.shared.unsent.fetch_sub(1, Ordering::AcqRel);
        }
    }

    fn subscribe(&self) -> Notices {
        self.notices.subscribe()
    }
}

#[cfg(test)]
mod tests;
