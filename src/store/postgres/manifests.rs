//! The writes a manifest put, a tag, a deletion and an image import share, each inside the
//! caller's transaction.

use deadpool_postgres::GenericClient;

use super::{Failure, json_err, registry};
use crate::oci::{Digest, RepoName, Tag};
use crate::store::meta::{ManifestRecord, Origin, RepoInfo, unix_now};

/// The repository's info, creating it with `origin` if it is new.
pub(super) async fn ensure_repo(tx: &impl GenericClient, repo: &RepoName, origin: Origin) -> Result<RepoInfo, Failure> {
    let info = RepoInfo {
        origin,
        created: unix_now(),
    };
    let text = serde_json::to_string(&info).map_err(json_err)?;
    tx.execute(
        "INSERT INTO repos (name, info, private) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING",
        &[&repo.as_str(), &text, &(info.origin == Origin::Private)],
    )
    .await?;
    let row = tx
        .query_one("SELECT info FROM repos WHERE name = $1", &[&repo.as_str()])
        .await?;
    Ok(serde_json::from_str(row.get(0)).map_err(json_err)?)
}

/// Store one manifest record whose references [`registry::check_and_renew`] passed.
pub(super) async fn store_manifest(
    tx: &impl GenericClient,
    repo: &RepoName,
    digest: &Digest,
    record: &ManifestRecord,
) -> Result<(), Failure> {
    registry::reference(tx, repo, digest, record).await?;
    let text = serde_json::to_string(record).map_err(json_err)?;
    tx.execute(
        "INSERT INTO manifests (repo, digest, record, subject) VALUES ($1, $2, $3, $4)
         ON CONFLICT (repo, digest) DO UPDATE SET record = EXCLUDED.record, subject = EXCLUDED.subject",
        &[
            &repo.as_str(),
            &digest.to_string(),
            &text,
            &record.subject.as_ref().map(|s| s.to_string()),
        ],
    )
    .await?;
    Ok(())
}

pub(super) async fn put_tag(
    tx: &impl GenericClient,
    repo: &RepoName,
    tag: &Tag,
    digest: &Digest,
) -> Result<(), Failure> {
    tx.execute(
        "INSERT INTO tags (repo, tag, digest) VALUES ($1, $2, $3)
         ON CONFLICT (repo, tag) DO UPDATE SET digest = EXCLUDED.digest",
        &[&repo.as_str(), &tag.as_str(), &digest.to_string()],
    )
    .await?;
    Ok(())
}

/// Remove manifests with their references, tags and pull times; how many existed.
pub(super) async fn remove_manifests_in(
    tx: &impl GenericClient,
    manifests: &[(RepoName, Digest)],
) -> Result<u64, Failure> {
    let repos: Vec<&str> = manifests.iter().map(|(r, _)| r.as_str()).collect();
    let digests: Vec<String> = manifests.iter().map(|(_, d)| d.to_string()).collect();
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&repos, &digests];
    let removed = tx
        .execute(
            "DELETE FROM manifests m USING unnest($1::text[], $2::text[]) AS d(repo, digest)
             WHERE m.repo = d.repo AND m.digest = d.digest",
            &params,
        )
        .await?;
    for (table, column) in [("blob_refs", "manifest"), ("tags", "digest"), ("pulls", "digest")] {
        tx.execute(
            &format!(
                "DELETE FROM {table} t USING unnest($1::text[], $2::text[]) AS d(repo, digest)
                 WHERE t.repo = d.repo AND t.{column} = d.digest"
            ),
            &params,
        )
        .await?;
    }
    Ok(removed)
}
