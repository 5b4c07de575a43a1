//! [`Meta`](super::Meta) on PostgreSQL, for cluster mode: every replica shares one database.
//!
//! - `schema`: the embedded migrations, applied at startup under an advisory lock.
//! - `meta`: [`PgMeta`] and the [`Meta`](super::Meta) methods on repositories, tags, manifests and
//!   manifest pages; `manifests`: the writes they share inside a transaction; `registry`: the blob registry and the GC invariant's row locks; `uploads`:
//!   upload sessions.
//!
//! The client is tokio-postgres with a deadpool pool (Cargo.toml says why). Transactions run at
//! READ COMMITTED; where that is not enough (the GC invariant between replicas) the rows are
//! locked explicitly, in one order, as `registry` explains. No TLS: see `[metadata]` in mirror.toml.

mod manifests;
mod meta;
mod registry;
mod schema;
mod uploads;

use std::sync::Arc;

pub use deadpool_postgres::Pool;
pub use meta::PgMeta;
pub use schema::migrate;

use super::{Error, Result};
use crate::config::MetadataConfig;

/// How long a request waits for a pooled connection, or for a new one to connect.
const POOL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Connect to the database `[metadata] url_env` names, apply the migrations, and open the store.
pub async fn connect(cfg: &MetadataConfig) -> Result<Arc<PgMeta>> {
    let url = cfg.url().map_err(Error::Meta)?;
    let pool = pool(&url, cfg.pool_size as usize)?;
    migrate(&pool).await?;
    Ok(Arc::new(PgMeta::new(pool)))
}

/// A pool of at most `size` connections to `url` (`postgres://…` or `host=… user=…`). Nothing is
/// connected until first use.
pub fn pool(url: &str, size: usize) -> Result<Pool> {
    let config: tokio_postgres::Config = url
        .parse()
        .map_err(|e| Error::Meta(format!("the PostgreSQL URL does not parse: {e}")))?;
    let manager = deadpool_postgres::Manager::from_config(
        config,
        tokio_postgres::NoTls,
        deadpool_postgres::ManagerConfig {
            // A broken connection shows itself on its next query, which then fails once; a
            // checked recycle would cost a round trip per checkout.
            recycling_method: deadpool_postgres::RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(size.max(1))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        // A database that is down or unreachable fails a request (and /readyz) within seconds
        // instead of holding it.
        .wait_timeout(Some(POOL_TIMEOUT))
        .create_timeout(Some(POOL_TIMEOUT))
        .build()
        .map_err(|e| Error::Meta(format!("PostgreSQL pool: {e}")))
}

/// A failure inside a transaction: the database's own (kept whole, so a serialization failure
/// or a deadlock can be retried) or the store's (a refused reference).
pub(crate) enum Failure {
    Db(tokio_postgres::Error),
    Store(Error),
}

impl From<tokio_postgres::Error> for Failure {
    fn from(e: tokio_postgres::Error) -> Failure {
        Failure::Db(e)
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        Failure::Store(e)
    }
}

impl From<Failure> for Error {
    fn from(f: Failure) -> Error {
        match f {
            Failure::Db(e) => db_err(e),
            Failure::Store(e) => e,
        }
    }
}

impl Failure {
    /// Whether running the transaction again may succeed: PostgreSQL aborted it to break a
    /// deadlock or a serialization conflict with another one.
    fn retryable(&self) -> bool {
        use tokio_postgres::error::SqlState;
        matches!(self, Failure::Db(e) if e.code().is_some_and(|c| *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED))
    }
}

pub(crate) fn db_err(e: tokio_postgres::Error) -> Error {
    Error::Meta(format!("postgres: {e}"))
}

fn pool_err(e: deadpool_postgres::PoolError) -> Error {
    Error::Meta(format!("postgres pool: {e}"))
}

fn json_err(e: serde_json::Error) -> Error {
    Error::Meta(format!("corrupt record: {e}"))
}

/// A `u64` (size, time, count) as PostgreSQL's BIGINT, saturating: "no limit" (`u64::MAX`) stays
/// the largest value rather than wrapping negative.
fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A BIGINT read back as the `u64` it was stored from.
fn uint(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn parse_digest(text: &str) -> Result<crate::oci::Digest> {
    text.parse()
        .map_err(|e| Error::Meta(format!("corrupt digest {text:?}: {e}")))
}

#[cfg(test)]
mod tests;
