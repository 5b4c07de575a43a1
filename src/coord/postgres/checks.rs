//! Revalidation claims in the `checks` table: the first replica to claim a key inside its window
//! gets the row (`INSERT … ON CONFLICT … WHERE until < now()`, one statement, so two replicas
//! asking at once cannot both win); a failed check deletes it. Expired rows are swept by the
//! membership loop.

use std::time::Duration;

use deadpool_postgres::Pool;

use super::{db_err, pool_err};
use crate::coord::Result;

pub(super) async fn claim(pool: &Pool, key: &str, window: Duration) -> Result<bool> {
    let client = pool.get().await.map_err(pool_err)?;
    let won = client
        .query_opt(
            "INSERT INTO checks (key, until) VALUES ($1, now() + $2::float8 * interval '1 millisecond')
             ON CONFLICT (key) DO UPDATE SET until = EXCLUDED.until WHERE checks.until < now()
             RETURNING key",
            &[&key, &(window.as_secs_f64() * 1000.0)],
        )
        .await
        .map_err(db_err)?;
    Ok(won.is_some())
}

pub(super) async fn release(pool: &Pool, key: &str) -> Result<()> {
    let client = pool.get().await.map_err(pool_err)?;
    client
        .execute("DELETE FROM checks WHERE key = $1", &[&key])
        .await
        .map_err(db_err)?;
    Ok(())
}
