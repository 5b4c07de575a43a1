//! Leases in the `leases` table: a fill (`fill/<digest>`) or a periodic task (`task/<name>`)
//! held by one replica until an expiry on the database's clock (so replicas' clocks need not
//! agree). The holder renews its leases while it holds them; a replica that dies stops renewing,
//! and the next claim after the expiry takes the lease over with a higher generation.
//!
//! A released lease is expired rather than deleted, so its generation keeps counting up, and its
//! holder is cleared, so the next claim is not counted as a takeover; rows expired long ago are
//! swept by the membership loop.

use std::time::Duration;

use deadpool_postgres::Pool;

use super::{db_err, pool_err};
use crate::coord::Result;

/// Who holds a lease the caller did not get.
pub(super) struct Holder {
    pub generation: u64,
    pub url: String,
}

/// The answer to [`claim`].
pub(super) enum Claimed {
    /// The caller holds the lease now, with this generation; the replica whose lease expired
    /// unreleased before, if any (a takeover when it is another one).
    Won(u64, Option<String>),
    Held(Holder),
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Claim `key` for `replica` (advertised at `url`) for `lease`: free keys, expired leases and the
/// replica's own stale rows (released, but the release not yet written) are taken.
pub(super) async fn claim(pool: &Pool, key: &str, replica: &str, url: &str, lease: Duration) -> Result<Claimed> {
    let client = pool.get().await.map_err(pool_err)?;
    // A lease released between the two statements reads as gone: claim again.
    for _ in 0..3 {
        let won = client
            .query_opt(
                "WITH before AS (SELECT holder FROM leases WHERE key = $1)
                 INSERT INTO leases (key, holder, url, generation, expires)
                 VALUES ($1, $2, $3, 1, now() + $4::float8 * interval '1 millisecond')
                 ON CONFLICT (key) DO UPDATE
                    SET holder = EXCLUDED.holder, url = EXCLUDED.url,
                        generation = leases.generation + 1, expires = EXCLUDED.expires
                    WHERE leases.expires < now() OR leases.holder = EXCLUDED.holder
                 RETURNING generation, (SELECT holder FROM before)",
                &[&key, &replica, &url, &millis(lease)],
            )
            .await
            .map_err(db_err)?;
        if let Some(row) = won {
            return Ok(Claimed::Won(row.get::<_, i64>(0) as u64, row.get(1)));
        }
        let held = client
            .query_opt("SELECT generation, url FROM leases WHERE key = $1", &[&key])
            .await
            .map_err(db_err)?;
        if let Some(row) = held {
            return Ok(Claimed::Held(Holder {
                generation: row.get::<_, i64>(0) as u64,
                url: row.get(1),
            }));
        }
    }
    Err(crate::coord::Error(format!(
        "the lease {key} changed hands three times in a row"
    )))
}

/// Extend the leases `keys` that `replica` still holds.
pub(super) async fn renew(pool: &Pool, replica: &str, keys: &[String], lease: Duration) -> Result<()> {
    if keys.is_empty() {
        return Ok(());
    }
    let client = pool.get().await.map_err(pool_err)?;
    let renewed = client
        .execute(
            "UPDATE leases SET expires = now() + $3::float8 * interval '1 millisecond'
             WHERE holder = $1 AND key = ANY($2)",
            &[&replica, &keys, &millis(lease)],
        )
        .await
        .map_err(db_err)?;
    if renewed < keys.len() as u64 {
        // Expired and taken over while this replica could not renew (a stall longer than the
        // lease): the new holder leads now; this one finishes its own work regardless.
        tracing::warn!(held = keys.len(), renewed, "some leases were taken over before renewal");
    }
    Ok(())
}

/// End one generation of a lease, if this replica still holds it.
pub(super) async fn release(pool: &Pool, key: &str, replica: &str, generation: u64) -> Result<()> {
    let client = pool.get().await.map_err(pool_err)?;
    client
        .execute(
            "UPDATE leases SET holder = '', expires = now() - interval '1 millisecond'
             WHERE key = $1 AND holder = $2 AND generation = $3",
            &[&key, &replica, &(generation as i64)],
        )
        .await
        .map_err(db_err)?;
    Ok(())
}

/// Release on drop, from a spawned task (a drop cannot wait); without a runtime the lease simply
/// expires.
pub(super) fn release_later(pool: Pool, key: String, replica: String, generation: u64) {
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(async move {
            if let Err(e) = release(&pool, &key, &replica, generation).await {
                tracing::warn!(%key, error = %e, "lease release failed; it expires instead");
            }
        });
    }
}
