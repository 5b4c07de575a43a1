//! [`PgMeta`]: the [`Meta`] methods as SQL. Each method is one statement or one transaction;
//! lists page in the database (`ORDER BY … LIMIT`), never by loading a table.

use async_trait::async_trait;
use deadpool_postgres::GenericClient;
use deadpool_postgres::{Object, Pool};
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use super::manifests::{ensure_repo, put_tag, remove_manifests_in, store_manifest};
use super::{Failure, db_err, int, json_err, parse_digest, pool_err, registry, uint, uploads};
use crate::oci::{Digest, RepoName, Tag};
use crate::store::meta::{
    BlobRecord, ImageRecords, ManifestRecord, ManifestRow, Meta, Origin, OriginUsage, RepoInfo, UploadRecord, unix_now,
};
use crate::store::{Error, Result};

/// How often a transaction PostgreSQL aborted to break a deadlock is run again.
const RETRIES: u32 = 3;

/// Run `$body` (an expression using the transaction `$tx`, whose errors convert into
/// [`Failure`]) in a transaction and commit it; run it again when PostgreSQL aborted it to break
/// a deadlock or a serialization conflict. Dropping an uncommitted transaction rolls it back.
macro_rules! transaction {
    ($meta:expr, |$tx:ident| $body:expr) => {{
        let mut attempt = 0;
        loop {
            let mut client = $meta.client().await?;
            let $tx = client.transaction().await.map_err(db_err)?;
            let outcome: Result<_, Failure> = async { $body }.await;
            let outcome = match outcome {
                Ok(v) => $tx.commit().await.map(|()| v).map_err(Failure::from),
                Err(e) => Err(e),
            };
            match outcome {
                Ok(v) => break Ok(v),
                Err(f) if f.retryable() && attempt < RETRIES => attempt += 1,
                Err(f) => break Err(Error::from(f)),
            }
        }
    }};
}

/// The metadata store in a PostgreSQL database, shared by every replica that connects to it.
pub struct PgMeta {
    pool: Pool,
}

impl PgMeta {
    /// A store on `pool`, whose database [`migrate`](super::migrate) brought up to date.
    pub fn new(pool: Pool) -> PgMeta {
        PgMeta { pool }
    }

    /// The pool, for the cluster coordinator to share.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    async fn client(&self) -> Result<Object> {
        self.pool.get().await.map_err(pool_err)
    }

    /// One row by key, through a statement prepared once per connection: the pull path's point
    /// reads (repository, tag, manifest, link) cost one round trip instead of two.
    async fn point(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Option<Row>> {
        let client = self.client().await?;
        let statement = client.prepare_cached(sql).await.map_err(db_err)?;
        client.query_opt(&statement, params).await.map_err(db_err)
    }

    /// Run one read statement outside a transaction.
    async fn read<T>(&self, f: impl AsyncFnOnce(&Object) -> Result<T, Failure>) -> Result<T> {
        let client = self.client().await?;
        Ok(f(&client).await?)
    }
}

fn manifest_of(text: &str) -> Result<ManifestRecord> {
    serde_json::from_str(text).map_err(json_err)
}

#[async_trait]
impl Meta for PgMeta {
    async fn repo(&self, repo: &RepoName) -> Result<Option<RepoInfo>> {
        let row = self
            .point("SELECT info FROM repos WHERE name = $1", &[&repo.as_str()])
            .await?;
        row.map(|r| serde_json::from_str(r.get(0)).map_err(json_err))
            .transpose()
    }

    async fn repos(&self, last: Option<&str>, n: usize) -> Result<Vec<(RepoName, RepoInfo)>> {
        self.read(async |db| {
            let rows = db
                .query(
                    // Every name sorts after "": one statement that pages along the index.
                    "SELECT name, info FROM repos WHERE name > $1 ORDER BY name LIMIT $2",
                    &[&last.unwrap_or(""), &int(n as u64)],
                )
                .await?;
            let mut out = Vec::with_capacity(rows.len());
            for row in rows {
                let Ok(repo) = row.get::<_, &str>(0).parse() else {
                    continue;
                };
                out.push((repo, serde_json::from_str(row.get(1)).map_err(json_err)?));
            }
            Ok(out)
        })
        .await
    }

    async fn remove_repo(&self, repo: &RepoName) -> Result<bool> {
        transaction!(self, |tx| {
            let existed = tx
                .execute("DELETE FROM repos WHERE name = $1", &[&repo.as_str()])
                .await?
                > 0;
            // Exact names: a nested repository (`repo/sub`) keeps its rows.
            for table in ["blob_refs", "tags", "manifests", "blob_links", "pulls"] {
                tx.execute(&format!("DELETE FROM {table} WHERE repo = $1"), &[&repo.as_str()])
                    .await?;
            }
            Ok(existed)
        })
    }

    async fn link_blob(&self, repo: &RepoName, digest: &Digest, origin: Origin) -> Result<()> {
        transaction!(self, |tx| {
            ensure_repo(&tx, repo, origin.clone()).await?;
            registry::check_and_renew(&tx, &[(digest, false)]).await?;
            tx.execute(
                "INSERT INTO blob_links (repo, digest) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                &[&repo.as_str(), &digest.to_string()],
            )
            .await?;
            Ok(())
        })
    }

    async fn blob_linked(&self, repo: &RepoName, digest: &Digest) -> Result<bool> {
        let row = self
            .point(
                "SELECT 1 FROM blob_links WHERE repo = $1 AND digest = $2",
                &[&repo.as_str(), &digest.to_string()],
            )
            .await?;
        Ok(row.is_some())
    }

    async fn unlink_blob(&self, repo: &RepoName, digest: &Digest) -> Result<bool> {
        self.read(async |db| {
            Ok(db
                .execute(
                    "DELETE FROM blob_links WHERE repo = $1 AND digest = $2",
                    &[&repo.as_str(), &digest.to_string()],
                )
                .await?
                > 0)
        })
        .await
    }

    async fn put_manifest(
        &self,
        repo: &RepoName,
        digest: &Digest,
        record: &ManifestRecord,
        tag: Option<&Tag>,
        origin: Origin,
    ) -> Result<()> {
        transaction!(self, |tx| {
            let info = ensure_repo(&tx, repo, origin.clone()).await?;
            let lazy = info.origin != Origin::Private;
            let wanted: Vec<_> = registry::refs_of(digest, record, lazy)
                .map(|(d, _, ok)| (d, ok))
                .collect();
            registry::check_and_renew(&tx, &wanted).await?;
            store_manifest(&tx, repo, digest, record).await?;
            if let Some(tag) = tag {
                put_tag(&tx, repo, tag, digest).await?;
            }
            Ok(())
        })
    }

    async fn manifest(&self, repo: &RepoName, digest: &Digest) -> Result<Option<ManifestRecord>> {
        let row = self
            .point(
                "SELECT record FROM manifests WHERE repo = $1 AND digest = $2",
                &[&repo.as_str(), &digest.to_string()],
            )
            .await?;
        row.map(|r| manifest_of(r.get(0))).transpose()
    }

    async fn delete_manifest(&self, repo: &RepoName, digest: &Digest) -> Result<bool> {
        let one = [(repo.clone(), digest.clone())];
        transaction!(self, |tx| Ok(remove_manifests_in(&tx, &one).await? > 0))
    }

    async fn referrers(&self, repo: &RepoName, subject: &Digest) -> Result<Vec<(Digest, ManifestRecord)>> {
        self.read(async |db| {
            let rows = db
                .query(
                    "SELECT digest, record FROM manifests WHERE repo = $1 AND subject = $2 ORDER BY digest",
                    &[&repo.as_str(), &subject.to_string()],
                )
                .await?;
            let mut out = Vec::with_capacity(rows.len());
            for row in rows {
                out.push((parse_digest(row.get(0))?, manifest_of(row.get(1))?));
            }
            Ok(out)
        })
        .await
    }

    async fn parents(&self, repo: &RepoName, digest: &Digest) -> Result<Vec<Digest>> {
        self.read(async |db| {
            let rows = db
                .query(
                    "SELECT manifest FROM blob_refs WHERE blob = $1 AND repo = $2 AND kind = 2 ORDER BY manifest",
                    &[&digest.to_string(), &repo.as_str()],
                )
                .await?;
            Ok(rows.iter().filter_map(|r| r.get::<_, &str>(0).parse().ok()).collect())
        })
        .await
    }

    async fn tag(&self, repo: &RepoName, tag: &Tag) -> Result<Option<Digest>> {
        let row = self
            .point(
                "SELECT digest FROM tags WHERE repo = $1 AND tag = $2",
                &[&repo.as_str(), &tag.as_str()],
            )
            .await?;
        row.map(|r| parse_digest(r.get(0))).transpose()
    }

    async fn delete_tag(&self, repo: &RepoName, tag: &Tag) -> Result<bool> {
        self.read(async |db| {
            Ok(db
                .execute(
                    "DELETE FROM tags WHERE repo = $1 AND tag = $2",
                    &[&repo.as_str(), &tag.as_str()],
                )
                .await?
                > 0)
        })
        .await
    }

    async fn tags(&self, repo: &RepoName, last: Option<&str>, n: usize) -> Result<Option<Vec<String>>> {
        self.read(async |db| {
            // One statement, so the repository and its tags come from one snapshot.
            let row = db
                .query_one(
                    "SELECT EXISTS (SELECT 1 FROM repos WHERE name = $1),
                            ARRAY(SELECT tag FROM tags WHERE repo = $1 AND tag > $2 ORDER BY tag LIMIT $3)",
                    &[&repo.as_str(), &last.unwrap_or(""), &int(n as u64)],
                )
                .await?;
            Ok(row.get::<_, bool>(0).then(|| row.get(1)))
        })
        .await
    }

    async fn tag_targets(&self, repo: &RepoName) -> Result<Vec<(String, Digest)>> {
        self.read(async |db| {
            let rows = db
                .query(
                    "SELECT tag, digest FROM tags WHERE repo = $1 ORDER BY tag",
                    &[&repo.as_str()],
                )
                .await?;
            Ok(rows
                .iter()
                .filter_map(|r| Some((r.get(0), r.get::<_, &str>(1).parse().ok()?)))
                .collect())
        })
        .await
    }

    async fn put_upload(&self, id: &str, record: &UploadRecord) -> Result<()> {
        self.read(async |db| uploads::put(db, id, record).await).await
    }

    async fn open_upload(&self, id: &str, record: &UploadRecord, limit: u32) -> Result<()> {
        let admitted = transaction!(self, |tx| {
            // One owner's admissions wait for each other, whichever replica they land on, until
            // this transaction ends: the count and the insert are one step cluster-wide.
            tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&record.owner])
                .await?;
            if uploads::count(&tx, &record.owner).await? >= limit as usize {
                return Ok(false);
            }
            uploads::put(&tx, id, record).await?;
            Ok(true)
        })?;
        if admitted {
            Ok(())
        } else {
            Err(Error::SessionLimit { limit })
        }
    }

    async fn upload(&self, id: &str) -> Result<Option<UploadRecord>> {
        self.read(async |db| uploads::get(db, id).await).await
    }

    async fn delete_upload(&self, id: &str) -> Result<()> {
        self.read(async |db| uploads::delete(db, id).await).await
    }

    async fn uploads_started_before(&self, before: u64) -> Result<Vec<String>> {
        self.read(async |db| uploads::started_before(db, before).await).await
    }

    async fn upload_count(&self, owner: &str) -> Result<usize> {
        self.read(async |db| uploads::count(db, owner).await).await
    }

    async fn manifest_page(&self, after: Option<(&RepoName, &Digest)>, n: usize) -> Result<Vec<ManifestRow>> {
        // Every key sorts after ("", ""): one statement that pages along the primary key.
        let (repo, digest) = match after {
            Some((r, d)) => (r.as_str(), d.to_string()),
            None => ("", String::new()),
        };
        self.read(async |db| {
            let rows = db
                .query(
                    "SELECT m.repo, m.digest, m.record, p.at FROM manifests m
                     LEFT JOIN pulls p ON p.repo = m.repo AND p.digest = m.digest
                     WHERE (m.repo, m.digest) > ($1, $2)
                     ORDER BY m.repo, m.digest LIMIT $3",
                    &[&repo, &digest, &int(n as u64)],
                )
                .await?;
            let mut out = Vec::with_capacity(rows.len());
            for row in rows {
                let (Ok(repo), Ok(digest)) = (row.get::<_, &str>(0).parse(), row.get::<_, &str>(1).parse()) else {
                    continue;
                };
                out.push(ManifestRow {
                    repo,
                    digest,
                    record: manifest_of(row.get(2))?,
                    last_pull: row.get::<_, Option<i64>>(3).map(uint),
                });
            }
            Ok(out)
        })
        .await
    }

    async fn record_pulls(&self, pulls: &[(RepoName, Digest, u64)]) -> Result<()> {
        if pulls.is_empty() {
            return Ok(());
        }
        // One row per manifest (an upsert may not touch a row twice), the newest time of each.
        let mut newest = std::collections::BTreeMap::new();
        for (repo, digest, at) in pulls {
            let t = newest.entry((repo.as_str(), digest.to_string())).or_insert(*at);
            *t = (*t).max(*at);
        }
        let mut repos = Vec::with_capacity(newest.len());
        let mut digests = Vec::with_capacity(newest.len());
        let mut times = Vec::with_capacity(newest.len());
        for ((repo, digest), at) in newest {
            repos.push(repo);
            digests.push(digest);
            times.push(int(at));
        }
        self.read(async |db| {
            // A batch flushed late must not move a newer pull time back.
            db.execute(
                "INSERT INTO pulls (repo, digest, at) SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[])
                 ON CONFLICT (repo, digest) DO UPDATE SET at = GREATEST(pulls.at, EXCLUDED.at)",
                &[&repos, &digests, &times],
            )
            .await?;
            Ok(())
        })
        .await
    }

    async fn last_pull(&self, repo: &RepoName, digest: &Digest) -> Result<Option<u64>> {
        self.read(async |db| {
            let row = db
                .query_opt(
                    "SELECT at FROM pulls WHERE repo = $1 AND digest = $2",
                    &[&repo.as_str(), &digest.to_string()],
                )
                .await?;
            Ok(row.map(|r| uint(r.get(0))))
        })
        .await
    }

    async fn remove_manifests(&self, manifests: &[(RepoName, Digest)]) -> Result<()> {
        if manifests.is_empty() {
            return Ok(());
        }
        transaction!(self, |tx| remove_manifests_in(&tx, manifests).await.map(drop))
    }

    async fn register_blob(&self, digest: &Digest, size: u64) -> Result<()> {
        self.read(async |db| registry::register(db, digest, size).await).await
    }

    async fn blob(&self, digest: &Digest) -> Result<Option<BlobRecord>> {
        self.read(async |db| registry::blob(db, digest).await).await
    }

    async fn unreferenced(&self) -> Result<Vec<BlobRecord>> {
        self.read(async |db| registry::unreferenced(db).await).await
    }

    async fn mark_unreferenced(&self, before_ms: u64, n: usize) -> Result<Vec<BlobRecord>> {
        transaction!(self, |tx| registry::mark(&tx, before_ms, n).await)
    }

    async fn forget_blobs(&self, digests: &[Digest]) -> Result<()> {
        if digests.is_empty() {
            return Ok(());
        }
        transaction!(self, |tx| registry::forget(&tx, digests).await)
    }

    async fn usage(&self) -> Result<OriginUsage> {
        self.read(async |db| registry::usage(db).await).await
    }

    async fn probe(&self) -> Result<()> {
        self.read(async |db| {
            db.execute(
                "INSERT INTO probe (id, at) VALUES (1, $1) ON CONFLICT (id) DO UPDATE SET at = EXCLUDED.at",
                &[&int(unix_now())],
            )
            .await?;
            Ok(())
        })
        .await
    }

    async fn put_image(&self, repo: &RepoName, origin: Origin, image: &ImageRecords) -> Result<()> {
        transaction!(self, |tx| {
            let info = ensure_repo(&tx, repo, origin.clone()).await?;
            let lazy = info.origin != Origin::Private;
            // Every blob and manifest of the image is locked in one statement (one lock order).
            let mut wanted: Vec<_> = image.blobs.iter().map(|d| (d, false)).collect();
            for (digest, record) in &image.manifests {
                wanted.extend(registry::refs_of(digest, record, lazy).map(|(d, _, ok)| (d, ok)));
            }
            registry::check_and_renew(&tx, &wanted).await?;
            let blobs: Vec<String> = image.blobs.iter().map(|d| d.to_string()).collect();
            tx.execute(
                "INSERT INTO blob_links (repo, digest) SELECT $1, d FROM unnest($2::text[]) AS d
                 ON CONFLICT DO NOTHING",
                &[&repo.as_str(), &blobs],
            )
            .await?;
            for (digest, record) in &image.manifests {
                store_manifest(&tx, repo, digest, record).await?;
            }
            if let Some((tag, digest)) = &image.tag {
                put_tag(&tx, repo, tag, digest).await?;
            }
            Ok(())
        })
    }
}
