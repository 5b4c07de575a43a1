//! Membership: one heartbeat row per running replica. A replica joins by writing its row and
//! leaves by deleting it (or by falling silent for three heartbeats); the others need no restart
//! and no configuration change. The same loop renews this replica's leases and sweeps rows that
//! expired long ago.

use std::sync::Arc;
use std::time::Duration;

use super::{Shared, db_err, leases, pool_err};
use crate::coord::Result;

/// A member silent for this many heartbeats is counted gone.
pub(super) const MISSED_BEATS: u32 = 3;

/// Released or expired leases older than this are deleted (their generations start over).
const LEASE_RETENTION: &str = "1 hour";

/// A running replica as its heartbeat row shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// A random id for this process's lifetime.
    pub id: String,
    /// Its `[cluster] advertise` URL.
    pub url: String,
}

/// Write (or renew) this replica's row.
pub(super) async fn beat(shared: &Shared) -> Result<()> {
    let client = shared.pool.get().await.map_err(pool_err)?;
    client
        .execute(
            "INSERT INTO members (id, url) VALUES ($1, $2)
             ON CONFLICT (id) DO UPDATE SET url = EXCLUDED.url, last_seen = now()",
            &[&shared.replica, &shared.url],
        )
        .await
        .map_err(db_err)?;
    Ok(())
}

/// The replicas whose heartbeat is recent, this one included, by id.
pub(super) async fn live(shared: &Shared) -> Result<Vec<Member>> {
    let client = shared.pool.get().await.map_err(pool_err)?;
    let silent = shared.heartbeat * MISSED_BEATS;
    let rows = client
        .query(
            "SELECT id, url FROM members
             WHERE last_seen > now() - $1::float8 * interval '1 millisecond' ORDER BY id",
            &[&(silent.as_secs_f64() * 1000.0)],
        )
        .await
        .map_err(db_err)?;
    Ok(rows
        .iter()
        .map(|r| Member {
            id: r.get(0),
            url: r.get(1),
        })
        .collect())
}

/// Delete this replica's row and end its leases (a graceful shutdown).
pub(super) async fn leave(shared: &Shared) -> Result<()> {
    let client = shared.pool.get().await.map_err(pool_err)?;
    client
        .execute("DELETE FROM members WHERE id = $1", &[&shared.replica])
        .await
        .map_err(db_err)?;
    client
        .execute(
            "UPDATE leases SET holder = '', expires = now() - interval '1 millisecond' WHERE holder = $1",
            &[&shared.replica],
        )
        .await
        .map_err(db_err)?;
    Ok(())
}

/// Renew the held leases every third of the lease, and the heartbeat every `heartbeat`, for as
/// long as the coordinator lives.
pub(super) async fn run(shared: Arc<Shared>) {
    let tick = (shared.lease / 3).min(shared.heartbeat).max(Duration::from_millis(50));
    let mut last_beat = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(tick).await;
        if let Err(e) = leases::renew(&shared.pool, &shared.replica, &shared.held(), shared.lease).await {
            tracing::warn!(error = %e, "lease renewal failed");
        }
        if last_beat.elapsed() >= shared.heartbeat {
            last_beat = tokio::time::Instant::now();
            if shared.member
                && let Err(e) = beat(&shared).await
            {
                tracing::warn!(error = %e, "membership heartbeat failed");
            }
            if let Err(e) = sweep(&shared).await {
                tracing::warn!(error = %e, "sweeping old membership and lease rows failed");
            }
        }
    }
}

/// Delete members long gone and leases long expired.
async fn sweep(shared: &Shared) -> Result<()> {
    let client = shared.pool.get().await.map_err(pool_err)?;
    let gone = shared.heartbeat * MISSED_BEATS * 10;
    client
        .execute(
            "DELETE FROM members WHERE last_seen < now() - $1::float8 * interval '1 millisecond'",
            &[&(gone.as_secs_f64() * 1000.0)],
        )
        .await
        .map_err(db_err)?;
    client
        .execute(
            &format!("DELETE FROM leases WHERE expires < now() - interval '{LEASE_RETENTION}'"),
            &[],
        )
        .await
        .map_err(db_err)?;
    client
        .execute("DELETE FROM checks WHERE until < now()", &[])
        .await
        .map_err(db_err)?;
    Ok(())
}
