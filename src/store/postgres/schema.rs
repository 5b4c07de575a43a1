//! The embedded migrations: SQL files compiled in, applied in order at startup, each recorded in
//! `schema_migrations`. One transaction holds a transaction-level advisory lock while it checks
//! and applies them, so replicas starting together apply each migration once (the others wait,
//! then find it done), and a failed migration leaves nothing half-applied.

use deadpool_postgres::Pool;

use super::{db_err, pool_err};
use crate::store::Result;

/// `(version, SQL)`, in order. A released migration is never edited; a change is a new file.
pub(super) const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("migrations/0001_metadata.sql")),
    (2, include_str!("migrations/0002_cluster.sql")),
    (3, include_str!("migrations/0003_checks.sql")),
];

/// The advisory lock key migrations run under (any constant; "berth" in ASCII).
const MIGRATION_LOCK: i64 = 0x0062_6572_7468;

/// Apply the migrations the database has not had yet; returns how many ran.
pub async fn migrate(pool: &Pool) -> Result<usize> {
    let mut client = pool.get().await.map_err(pool_err)?;
    let tx = client.transaction().await.map_err(db_err)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(db_err)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version INTEGER PRIMARY KEY,
             applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
         )",
    )
    .await
    .map_err(db_err)?;
    let applied: Vec<i32> = tx
        .query("SELECT version FROM schema_migrations", &[])
        .await
        .map_err(db_err)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut ran = 0;
    for (version, sql) in MIGRATIONS {
        if applied.contains(version) {
            continue;
        }
        tx.batch_execute(sql).await.map_err(db_err)?;
        tx.execute("INSERT INTO schema_migrations (version) VALUES ($1)", &[version])
            .await
            .map_err(db_err)?;
        ran += 1;
    }
    tx.commit().await.map_err(db_err)?;
    if ran > 0 {
        tracing::info!(migrations = ran, "PostgreSQL schema migrated");
    }
    Ok(ran)
}
