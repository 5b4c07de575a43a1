//! Coordination: the decisions that are process-local today and must become cluster-wide in
//! cluster mode (issue 14), behind one trait so the service never knows which it has.
//!
//! - **Fill claims** (single-flight): the first claimer of a digest leads the upstream fetch;
//!   everyone else follows it. The in-process fan-out (the fill's window and readers) stays in
//!   `service::fill`; the coordinator only decides who leads and hands a follower in the same
//!   process the leader's in-process fill.
//! - **Periodic task leadership** (GC, the usage walk, prefetch refreshes): one leader at a time.
//! - **Change notices** for the manifest memo (a tag moved, a manifest was deleted, a repository
//!   was removed), so every memo drops what a write elsewhere made stale.
//!
//! Not here, on purpose:
//! - the per-client upload session count is counted from the upload sessions in metadata
//!   (`Meta::uploads`), which is already shared once metadata is (PostgreSQL in cluster mode);
//! - the token and CSRF keys are process-local random keys unless `auth.token_key` is set
//!   (see `auth::ProcessLocalKey`); cluster mode requires `auth.token_key` and derives both from it.
//!
//! [`Local`] is the in-process implementation: single node, one process.

mod local;
pub mod postgres;

#[cfg(test)]
pub(crate) mod conformance;

use std::any::Any;
use std::sync::Arc;

use async_trait::async_trait;

use crate::oci::{Digest, RepoName, Tag};

pub use local::Local;

/// How coordination failed (a lost database connection, in cluster mode). The local
/// implementation never fails.
#[derive(Debug, Clone, thiserror::Error)]
#[error("coordination unavailable: {0}")]
pub struct Error(pub String);

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A claimer's in-process fill, opaque to the coordinator: it is handed as-is to followers in the
/// same process so they join its window and readers instead of fetching again.
pub type LocalFill = Arc<dyn Any + Send + Sync>;

/// The answer to [`Coordinator::claim_fill`].
pub enum FillClaim {
    /// The caller leads: it fetches the blob once and publishes it. Dropping the lease releases
    /// the claim (success or failure alike); the next claim of the digest leads again.
    Lead(FillLease),
    /// Someone else leads this digest.
    Follow(FillFollower),
}

/// Held by the leader of a fill for as long as it fetches. Dropping it releases the claim.
pub struct FillLease {
    generation: u64,
    _release: Box<dyn Send + Sync>,
}

impl FillLease {
    /// A lease of `generation`; `release` is dropped when the lease is (an implementation's
    /// drop guard: removes the local entry, or ends the database lease).
    pub fn new(generation: u64, release: impl Send + Sync + 'static) -> FillLease {
        FillLease {
            generation,
            _release: Box::new(release),
        }
    }

    /// Which claim of this digest this is; a takeover after the owner's death gets a higher one.
    pub fn generation(&self) -> u64 {
        self.generation
    }
}

impl std::fmt::Debug for FillLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FillLease")
            .field("generation", &self.generation)
            .finish()
    }
}

/// What a follower learns about the leader.
#[derive(Clone)]
pub struct FillFollower {
    /// The leader's claim generation.
    pub generation: u64,
    /// The leader's in-process fill, when it runs in this process: join it. `None` when the
    /// leader is another replica (cluster mode streams from it instead).
    pub local: Option<LocalFill>,
    /// The leading replica's advertised URL (`[cluster] advertise`) when it is another replica:
    /// where to stream the blob from while it fills. `None` in one process.
    pub leader_url: Option<String>,
}

/// A periodic job that one process at a time should run.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Task {
    /// Eviction and garbage collection (`[gc] interval`, `berth gc`, the admin endpoint).
    Gc,
    /// The walk that measures storage usage for `/metrics` and the UI.
    UsageWalk,
    /// The refresh of one `[[prefetch]]` list, named by its position and images.
    Prefetch(String),
}

impl Task {
    /// A stable name, usable as a lease key in a database.
    pub fn key(&self) -> String {
        match self {
            Task::Gc => "gc".to_owned(),
            Task::UsageWalk => "usage-walk".to_owned(),
            Task::Prefetch(list) => format!("prefetch/{list}"),
        }
    }
}

/// Leadership of a [`Task`]; dropping it lets the next [`Coordinator::lead`] win.
pub struct LeaderGuard {
    task: Task,
    _release: Box<dyn Send + Sync>,
}

impl LeaderGuard {
    pub fn new(task: Task, release: impl Send + Sync + 'static) -> LeaderGuard {
        LeaderGuard {
            task,
            _release: Box::new(release),
        }
    }

    pub fn task(&self) -> &Task {
        &self.task
    }
}

impl std::fmt::Debug for LeaderGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaderGuard").field("task", &self.task).finish()
    }
}

/// A committed change that makes memoized manifest answers stale.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notice {
    /// A tag was set, moved or removed.
    TagMoved { repo: RepoName, tag: Tag },
    /// A manifest (and any tags on it) was deleted.
    ManifestDeleted { repo: RepoName, digest: Digest },
    /// A repository was removed; its name may come back with another origin.
    RepoRemoved { repo: RepoName },
    /// Many manifests changed at once (GC eviction, an import).
    ManifestsChanged,
    /// Blobs were unlinked from a repository or deleted (a blob `DELETE`, a GC sweep).
    BlobsChanged,
}

/// Receives every [`Notice`] published after it subscribed, in order. A receiver that falls too
/// far behind gets `Lagged` and must treat everything as changed.
pub type Notices = tokio::sync::broadcast::Receiver<Notice>;

/// The coordination of berth processes sharing one store.
///
/// Contract (the conformance suite in `coord::conformance` checks it for every implementation):
/// - [`claim_fill`](Coordinator::claim_fill) is single-flight per digest: while a lease is held,
///   every other claim of that digest (concurrent or later) follows, and a follower in the same
///   process gets the leader's `LocalFill`. Dropping the lease releases it; the next claim leads
///   with a higher generation. A leader that dies (its process, in cluster mode) loses the lease
///   once it expires, so a follower's next claim takes over.
/// - [`lead`](Coordinator::lead) grants at most one [`LeaderGuard`] per task at a time and
///   `None` to the others; dropping the guard lets the next call win. It never waits.
/// - [`claim_check`](Coordinator::claim_check) grants a key to one caller per `window`: every
///   other claim of the key inside the window gets `false`, until the window ends or the holder
///   calls [`release_check`](Coordinator::release_check) (a check that failed), after which the
///   next claim wins.
/// - [`publish`](Coordinator::publish) delivers a notice to every receiver from
///   [`subscribe`](Coordinator::subscribe) (in this process and, in cluster mode, in the others),
///   in order per publisher. It never blocks: a write must not wait on its notice. The publisher
///   applies its own change to its memo itself, before answering, so it reads its own writes.
#[async_trait]
pub trait Coordinator: Send + Sync {
    /// Claim the fill of `digest`. `mine` is the caller's in-process fill, handed to followers in
    /// this process if the caller leads.
    async fn claim_fill(&self, digest: &Digest, mine: LocalFill) -> Result<FillClaim>;

    /// Lead `task`, unless someone else does right now (then `None`).
    async fn lead(&self, task: &Task) -> Result<Option<LeaderGuard>>;

    /// Claim the check of `key` (a proxied tag's revalidation) for `window`: `true` when the
    /// caller is the one to check now, `false` when someone checked or is checking within the
    /// window (the caller then takes what is cached as fresh). So a tag costs one upstream `HEAD`
    /// per TTL window, however many clients and replicas ask.
    async fn claim_check(&self, key: &str, window: std::time::Duration) -> Result<bool>;

    /// Give up a claimed check that failed (the upstream did not answer), so the next request
    /// checks again instead of trusting the cache for a whole window.
    async fn release_check(&self, key: &str) -> Result<()>;

    /// Announce a committed change.
    fn publish(&self, notice: Notice);

    /// Receive the notices published from now on.
    fn subscribe(&self) -> Notices;
}
