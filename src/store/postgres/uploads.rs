//! Upload sessions as rows: whichever replica a POST, PATCH or PUT of one upload lands on reads
//! and renews the same record, and the per-client session limit counts every replica's sessions.

use deadpool_postgres::GenericClient;

use super::{Failure, int, json_err, uint};
use crate::store::meta::UploadRecord;

pub(super) async fn put(db: &impl GenericClient, id: &str, record: &UploadRecord) -> Result<(), Failure> {
    let text = serde_json::to_string(record).map_err(json_err)?;
    db.execute(
        "INSERT INTO uploads (id, owner, started, record) VALUES ($1, $2, $3, $4)
         ON CONFLICT (id) DO UPDATE SET owner = EXCLUDED.owner, started = EXCLUDED.started,
             record = EXCLUDED.record",
        &[&id, &record.owner, &int(record.started), &text],
    )
    .await?;
    Ok(())
}

pub(super) async fn get(db: &impl GenericClient, id: &str) -> Result<Option<UploadRecord>, Failure> {
    let row = db.query_opt("SELECT record FROM uploads WHERE id = $1", &[&id]).await?;
    Ok(row
        .map(|r| serde_json::from_str(r.get(0)).map_err(json_err))
        .transpose()?)
}

pub(super) async fn delete(db: &impl GenericClient, id: &str) -> Result<(), Failure> {
    db.execute("DELETE FROM uploads WHERE id = $1", &[&id]).await?;
    Ok(())
}

pub(super) async fn started_before(db: &impl GenericClient, before: u64) -> Result<Vec<String>, Failure> {
    let rows = db
        .query("SELECT id FROM uploads WHERE started < $1 ORDER BY id", &[&int(before)])
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Sessions `owner` has open on every replica (the per-client session limit is cluster-wide).
pub(super) async fn count(db: &impl GenericClient, owner: &str) -> Result<usize, Failure> {
    let row = db
        .query_one("SELECT COUNT(*) FROM uploads WHERE owner = $1", &[&owner])
        .await?;
    Ok(uint(row.get(0)) as usize)
}
