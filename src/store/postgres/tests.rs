//! PgMeta against a real PostgreSQL 15 (`testing::engines::postgres`): the `Meta` conformance
//! suite, and what only a shared database has: two replicas on one database, the GC invariant
//! between them, and migrations run twice or at once.

use std::sync::Arc;

use super::{PgMeta, migrate, pool};
use crate::oci::Digest;
use crate::store::{Error, ManifestRecord, Meta, Origin};
use crate::testing::engines::postgres::Postgres;

/// A migrated store on a fresh database of `pg`.
pub(crate) async fn fresh(pg: &Postgres) -> Arc<PgMeta> {
    let pool = pool(&pg.database().await, 4).unwrap();
    migrate(&pool).await.unwrap();
    Arc::new(PgMeta::new(pool))
}

/// A second replica's store on the same database as `url`.
async fn replica(url: &str) -> Arc<PgMeta> {
    let pool = pool(url, 4).unwrap();
    migrate(&pool).await.unwrap();
    Arc::new(PgMeta::new(pool))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_meta_passes_the_meta_conformance_suite() {
    let pg = Postgres::start();
    crate::meta_conformance_tests!(sequential async { (fresh(&pg).await as Arc<dyn Meta>, ()) });
}

fn manifest(blobs: &[&Digest]) -> ManifestRecord {
    ManifestRecord {
        media_type: "application/vnd.oci.image.manifest.v1+json".into(),
        size: 2,
        blobs: blobs.iter().map(|d| (*d).clone()).collect(),
        children: Vec::new(),
        subject: None,
        artifact_type: None,
        annotations: Default::default(),
        stored_at: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_one_database_see_each_others_writes() {
    let pg = Postgres::start();
    let url = pg.database().await;
    let (one, two) = (replica(&url).await, replica(&url).await);
    let (repo, layer, m) = (
        "team/app".parse().unwrap(),
        Digest::sha256_of(b"l"),
        Digest::sha256_of(b"m"),
    );
    one.register_blob(&layer, 5).await.unwrap();
    one.register_blob(&m, 2).await.unwrap();
    two.put_manifest(
        &repo,
        &m,
        &manifest(&[&layer]),
        Some(&"v1".parse().unwrap()),
        Origin::Private,
    )
    .await
    .unwrap();
    assert_eq!(one.tag(&repo, &"v1".parse().unwrap()).await.unwrap(), Some(m.clone()));
    // Upload sessions count per owner across replicas (the per-client session limit).
    for (i, meta) in [&one, &two].into_iter().enumerate() {
        let record = crate::store::UploadRecord {
            repo: repo.clone(),
            started: 1,
            owner: "alice".into(),
            state: None,
            handle: None,
        };
        meta.put_upload(&format!("u{i}"), &record).await.unwrap();
    }
    assert_eq!(one.upload_count("alice").await.unwrap(), 2);
    assert_eq!(two.upload_count("alice").await.unwrap(), 2);
    // Admissions racing on both replicas never exceed the limit (bob may hold 3).
    let start = Arc::new(tokio::sync::Barrier::new(40));
    let attempts: Vec<_> = (0..40)
        .map(|i| {
            let meta = if i % 2 == 0 { one.clone() } else { two.clone() };
            let start = start.clone();
            let record = crate::store::UploadRecord {
                repo: repo.clone(),
                started: 1,
                owner: "bob".into(),
                state: None,
                handle: None,
            };
            tokio::spawn(async move {
                start.wait().await;
                meta.open_upload(&format!("b{i}"), &record, 3).await
            })
        })
        .collect();
    let mut admitted = 0;
    for a in attempts {
        match a.await.unwrap() {
            Ok(()) => admitted += 1,
            Err(Error::SessionLimit { limit: 3 }) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(admitted, 3, "the session limit holds across replicas admitting at once");
    assert_eq!(one.upload_count("bob").await.unwrap(), 3);
    // A mark on one replica refuses a link on the other.
    let loose = Digest::sha256_of(b"loose");
    two.register_blob(&loose, 1).await.unwrap();
    assert_eq!(one.mark_unreferenced(u64::MAX, 10).await.unwrap().len(), 1);
    assert!(matches!(
        two.link_blob(&repo, &loose, Origin::Private).await,
        Err(Error::BlobDeleting(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_push_and_sweep_on_two_replicas_never_leave_a_manifest_naming_a_swept_blob() {
    let pg = Postgres::start();
    let url = pg.database().await;
    let (pusher, sweeper) = (replica(&url).await, replica(&url).await);
    let repo: crate::oci::RepoName = "team/app".parse().unwrap();
    for round in 0..40u32 {
        let layer = Digest::sha256_of(format!("layer {round}").as_bytes());
        let m = Digest::sha256_of(format!("manifest {round}").as_bytes());
        pusher.register_blob(&layer, 10).await.unwrap();
        pusher.register_blob(&m, 2).await.unwrap();
        let push = {
            let (pusher, repo, layer, m) = (pusher.clone(), repo.clone(), layer.clone(), m.clone());
            tokio::spawn(async move {
                pusher
                    .put_manifest(&repo, &m, &manifest(&[&layer]), None, Origin::Private)
                    .await
            })
        };
        // Everything is due: the cut-off is in the future, as a zero grace period would make it.
        let sweep = {
            let sweeper = sweeper.clone();
            tokio::spawn(async move { sweeper.mark_unreferenced(u64::MAX, 100).await })
        };
        let (pushed, marked) = (push.await.unwrap(), sweep.await.unwrap().unwrap());
        let swept: Vec<Digest> = marked.iter().map(|b| b.digest.clone()).collect();
        sweeper.forget_blobs(&swept).await.unwrap();
        match pushed {
            Ok(()) => {
                assert!(
                    !swept.contains(&layer) && !swept.contains(&m),
                    "round {round}: a stored manifest's blob was swept"
                );
                assert!(pusher.blob(&layer).await.unwrap().is_some(), "round {round}");
            }
            Err(Error::BlobDeleting(_)) => {
                assert!(
                    pusher.manifest(&repo, &m).await.unwrap().is_none(),
                    "round {round}: refused but stored"
                );
            }
            Err(e) => panic!("round {round}: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_applied_twice_or_at_once_apply_each_version_once() {
    let pg = Postgres::start();
    let url = pg.database().await;
    let pools: Vec<_> = (0..4).map(|_| pool(&url, 2).unwrap()).collect();
    let runs = pools.iter().map(|p| {
        let p = p.clone();
        tokio::spawn(async move { migrate(&p).await })
    });
    let mut applied = 0;
    for run in runs.collect::<Vec<_>>() {
        applied += run.await.unwrap().expect("a concurrent migration succeeds");
    }
    assert_eq!(
        applied,
        super::schema::MIGRATIONS.len(),
        "each migration ran exactly once"
    );
    assert_eq!(migrate(&pools[0]).await.unwrap(), 0, "a second start applies nothing");
    let client = pools[0].get().await.unwrap();
    let versions: i64 = client
        .query_one("SELECT COUNT(*) FROM schema_migrations", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(versions as usize, super::schema::MIGRATIONS.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_database_fails_the_readiness_probe_at_once() {
    let pg = Postgres::start();
    let meta = fresh(&pg).await;
    meta.probe().await.expect("ready while the database runs");
    drop(pg);
    let started = std::time::Instant::now();
    let probe = tokio::time::timeout(std::time::Duration::from_secs(30), meta.probe())
        .await
        .expect("the probe answers instead of hanging");
    assert!(probe.is_err(), "not ready without the database");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
}
