//! The [`Meta`] conformance suite: the trait's contract, written once and run against every
//! implementation (as distribution's storage driver suite is). Each item is an async fn taking a
//! fresh, empty store; [`meta_conformance_tests!`](crate::meta_conformance_tests) turns the list
//! into one `#[tokio::test]` per item for a backend, given an async factory that returns the store
//! and a guard kept alive for the test (a temporary directory, a database schema).
//!
//! A new backend (PostgreSQL for cluster mode) passes when its module says
//! `crate::meta_conformance_tests!(async { (Arc::new(MyMeta::open(..)) as Arc<dyn Meta>, guard) });`.

use std::sync::Arc;

use super::{Error, ImageRecords, ManifestRecord, Meta, Origin, UploadHandle, UploadRecord, UploadState};
use crate::clock::unix_now_ms;
use crate::oci::{Digest, RepoName, Tag};

/// Run every item of the suite against the backend `$factory` makes (see the module doc).
#[macro_export]
macro_rules! meta_conformance_tests {
    ($factory:expr) => {
        $crate::meta_conformance_tests!(@list items $factory);
    };
    // Every item in one test, each on a fresh store from `$factory` (a backend whose engine is
    // started once per test function, as PostgreSQL is).
    (sequential $factory:expr) => {
        $crate::meta_conformance_tests!(@list sequential_items $factory)
    };
    (@list $mode:ident $factory:expr) => {
        $crate::meta_conformance_tests!(@$mode $factory;
            repos_page_in_lexical_order,
            tags_page_and_an_unknown_repository_has_none,
            a_tagged_put_is_one_step_and_deleting_the_manifest_drops_its_tags,
            deleting_a_tag_leaves_the_manifest,
            referrers_are_listed_by_subject,
            links_are_per_repository,
            a_registered_blob_keeps_its_creation_and_renews_its_grace,
            a_private_put_naming_an_unregistered_blob_fails_and_stores_nothing,
            a_proxied_manifest_may_name_layers_not_fetched_yet,
            a_blob_marked_for_deletion_is_refused_until_forgotten,
            gc_candidates_are_the_unreferenced_blobs_older_than_the_cutoff,
            forgetting_a_blob_drops_its_links_everywhere,
            parents_are_the_indexes_that_contain_a_manifest,
            pull_times_keep_the_newest,
            removing_a_repository_leaves_its_nested_and_neighbouring_names_alone,
            a_failed_image_put_stores_nothing,
            upload_records_round_trip_and_are_queried_by_owner_and_age,
            manifest_pages_cover_every_manifest_with_its_pull_time,
            usage_splits_registered_bytes_by_origin,
        );
    };
    (@sequential_items $factory:expr; $($item:ident),* $(,)?) => {
        $({
            let (meta, _guard) = $factory.await;
            $crate::store::meta_conformance::$item(meta).await;
        })*
    };
    (@items $factory:expr; $($item:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $item() {
                let (meta, _guard) = $factory.await;
                $crate::store::meta_conformance::$item(meta).await;
            }
        )*
    };
}

fn repo(name: &str) -> RepoName {
    name.parse().unwrap()
}

fn tag(name: &str) -> Tag {
    name.parse().unwrap()
}

fn digest(seed: &str) -> Digest {
    Digest::sha256_of(seed.as_bytes())
}

fn record(blobs: &[&Digest], children: &[&Digest], subject: Option<&Digest>) -> ManifestRecord {
    ManifestRecord {
        media_type: "application/vnd.oci.image.manifest.v1+json".into(),
        size: 2,
        blobs: blobs.iter().map(|d| (*d).clone()).collect(),
        children: children.iter().map(|d| (*d).clone()).collect(),
        subject: subject.cloned(),
        artifact_type: None,
        annotations: Default::default(),
        stored_at: 0,
    }
}

fn proxied() -> Origin {
    Origin::Proxied {
        upstream: "docker.io".into(),
    }
}

/// Register `digests` and store a private manifest `m` naming `blobs`.
async fn push(meta: &Arc<dyn Meta>, r: &RepoName, m: &Digest, blobs: &[&Digest], t: Option<&str>) {
    for d in blobs.iter().copied().chain([m]) {
        meta.register_blob(d, 10).await.unwrap();
    }
    let t = t.map(tag);
    meta.put_manifest(r, m, &record(blobs, &[], None), t.as_ref(), Origin::Private)
        .await
        .unwrap();
}

pub(crate) async fn repos_page_in_lexical_order(meta: Arc<dyn Meta>) {
    for name in ["b", "a/x", "c", "a"] {
        let d = digest(name);
        meta.register_blob(&d, 1).await.unwrap();
        meta.link_blob(&repo(name), &d, Origin::Private).await.unwrap();
    }
    let names = |page: Vec<(RepoName, _)>| page.into_iter().map(|(r, _)| r.to_string()).collect::<Vec<_>>();
    assert_eq!(names(meta.repos(None, 2).await.unwrap()), ["a", "a/x"]);
    assert_eq!(names(meta.repos(Some("a/x"), 2).await.unwrap()), ["b", "c"]);
    assert!(meta.repos(Some("c"), 2).await.unwrap().is_empty());
    let (_, info) = &meta.repos(None, 1).await.unwrap()[0];
    assert_eq!(info.origin, Origin::Private);
}

pub(crate) async fn tags_page_and_an_unknown_repository_has_none(meta: Arc<dyn Meta>) {
    let r = repo("team/app");
    assert_eq!(meta.tags(&r, None, 10).await.unwrap(), None);
    let m = digest("m");
    push(&meta, &r, &m, &[], None).await;
    assert_eq!(meta.tags(&r, None, 10).await.unwrap(), Some(vec![]), "known, no tags");
    for t in ["3", "1", "2"] {
        meta.put_manifest(&r, &m, &record(&[], &[], None), Some(&tag(t)), Origin::Private)
            .await
            .unwrap();
    }
    assert_eq!(meta.tags(&r, None, 2).await.unwrap().unwrap(), ["1", "2"]);
    assert_eq!(meta.tags(&r, Some("2"), 2).await.unwrap().unwrap(), ["3"]);
    let targets = meta.tag_targets(&r).await.unwrap();
    assert_eq!(targets.len(), 3);
    assert!(targets.iter().all(|(_, d)| *d == m));
}

pub(crate) async fn a_tagged_put_is_one_step_and_deleting_the_manifest_drops_its_tags(meta: Arc<dyn Meta>) {
    let r = repo("team/app");
    let (m, layer) = (digest("m"), digest("layer"));
    push(&meta, &r, &m, &[&layer], Some("v1")).await;
    assert_eq!(meta.tag(&r, &tag("v1")).await.unwrap(), Some(m.clone()));
    assert_eq!(
        meta.manifest(&r, &m).await.unwrap().unwrap().blobs,
        std::slice::from_ref(&layer)
    );
    assert!(meta.delete_manifest(&r, &m).await.unwrap());
    assert!(!meta.delete_manifest(&r, &m).await.unwrap(), "already gone");
    assert_eq!(meta.tag(&r, &tag("v1")).await.unwrap(), None, "its tag went with it");
    assert!(meta.manifest(&r, &m).await.unwrap().is_none());
}

pub(crate) async fn deleting_a_tag_leaves_the_manifest(meta: Arc<dyn Meta>) {
    let r = repo("team/app");
    let m = digest("m");
    push(&meta, &r, &m, &[], Some("v1")).await;
    assert!(meta.delete_tag(&r, &tag("v1")).await.unwrap());
    assert!(!meta.delete_tag(&r, &tag("v1")).await.unwrap());
    assert!(meta.manifest(&r, &m).await.unwrap().is_some());
}

pub(crate) async fn referrers_are_listed_by_subject(meta: Arc<dyn Meta>) {
    let r = repo("team/app");
    let (subject, sig, other) = (digest("subject"), digest("sig"), digest("other"));
    push(&meta, &r, &subject, &[], None).await;
    meta.register_blob(&sig, 1).await.unwrap();
    meta.put_manifest(&r, &sig, &record(&[], &[], Some(&subject)), None, Origin::Private)
        .await
        .unwrap();
    push(&meta, &r, &other, &[], None).await;
    let found = meta.referrers(&r, &subject).await.unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].0, sig);
    assert_eq!(found[0].1.subject, Some(subject.clone()));
    assert!(meta.referrers(&repo("elsewhere"), &subject).await.unwrap().is_empty());
    meta.delete_manifest(&r, &sig).await.unwrap();
    assert!(
        meta.referrers(&r, &subject).await.unwrap().is_empty(),
        "gone with the manifest"
    );
}

pub(crate) async fn links_are_per_repository(meta: Arc<dyn Meta>) {
    let (a, b, d) = (repo("a"), repo("b"), digest("layer"));
    meta.register_blob(&d, 5).await.unwrap();
    meta.link_blob(&a, &d, Origin::Private).await.unwrap();
    assert!(meta.blob_linked(&a, &d).await.unwrap());
    assert!(
        !meta.blob_linked(&b, &d).await.unwrap(),
        "another repository may not serve it"
    );
    assert_eq!(
        meta.repo(&a).await.unwrap().unwrap().origin,
        Origin::Private,
        "created by the link"
    );
    assert!(meta.unlink_blob(&a, &d).await.unwrap());
    assert!(!meta.unlink_blob(&a, &d).await.unwrap());
    assert!(!meta.blob_linked(&a, &d).await.unwrap());
    let never = digest("never registered");
    assert!(matches!(
        meta.link_blob(&a, &never, Origin::Private).await,
        Err(Error::BlobUnregistered(d)) if d == never
    ));
}

pub(crate) async fn a_registered_blob_keeps_its_creation_and_renews_its_grace(meta: Arc<dyn Meta>) {
    let d = digest("layer");
    assert_eq!(meta.blob(&d).await.unwrap(), None);
    let before = unix_now_ms();
    meta.register_blob(&d, 42).await.unwrap();
    let first = meta.blob(&d).await.unwrap().unwrap();
    assert_eq!((first.size, first.marked), (42, false));
    assert!(first.created_ms >= before && first.last_referenced_ms >= first.created_ms);
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    meta.register_blob(&d, 42).await.unwrap();
    let again = meta.blob(&d).await.unwrap().unwrap();
    assert_eq!(again.created_ms, first.created_ms, "created stays");
    assert!(
        again.last_referenced_ms > first.last_referenced_ms,
        "the grace period starts again"
    );
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    meta.link_blob(&repo("a"), &d, Origin::Private).await.unwrap();
    let linked = meta.blob(&d).await.unwrap().unwrap();
    assert!(
        linked.last_referenced_ms > again.last_referenced_ms,
        "a link renews it too"
    );
}

pub(crate) async fn a_private_put_naming_an_unregistered_blob_fails_and_stores_nothing(meta: Arc<dyn Meta>) {
    let r = repo("team/app");
    let (m, missing) = (digest("m"), digest("missing"));
    meta.register_blob(&m, 2).await.unwrap();
    let put = meta
        .put_manifest(
            &r,
            &m,
            &record(&[&missing], &[], None),
            Some(&tag("v1")),
            Origin::Private,
        )
        .await;
    assert!(
        matches!(&put, Err(Error::BlobUnregistered(d)) if *d == missing),
        "{put:?}"
    );
    assert!(meta.manifest(&r, &m).await.unwrap().is_none());
    assert_eq!(meta.tag(&r, &tag("v1")).await.unwrap(), None);
    assert_eq!(meta.repo(&r).await.unwrap(), None, "not even the repository");
    // An index may list platforms not stored (a partial import), but not one being deleted.
    let (index, child) = (digest("index"), digest("child"));
    meta.register_blob(&index, 2).await.unwrap();
    meta.put_manifest(&r, &index, &record(&[], &[&child], None), None, Origin::Private)
        .await
        .unwrap();
    meta.delete_manifest(&r, &index).await.unwrap();
    meta.register_blob(&child, 2).await.unwrap();
    meta.mark_unreferenced(u64::MAX, 100).await.unwrap();
    let put = meta
        .put_manifest(&r, &index, &record(&[], &[&child], None), None, Origin::Private)
        .await;
    assert!(matches!(put, Err(Error::BlobDeleting(_))), "{put:?}");
}

pub(crate) async fn a_proxied_manifest_may_name_layers_not_fetched_yet(meta: Arc<dyn Meta>) {
    let r = repo("library/alpine");
    let (m, layer) = (digest("m"), digest("layer"));
    meta.register_blob(&m, 2).await.unwrap();
    meta.put_manifest(&r, &m, &record(&[&layer], &[], None), Some(&tag("3")), proxied())
        .await
        .unwrap();
    assert_eq!(meta.tag(&r, &tag("3")).await.unwrap(), Some(m.clone()));
    // Fetched later: registered, then it is referenced (not a GC candidate).
    meta.register_blob(&layer, 7).await.unwrap();
    let candidates = meta.mark_unreferenced(u64::MAX, 100).await.unwrap();
    assert!(candidates.is_empty(), "{candidates:?}");
}

pub(crate) async fn a_blob_marked_for_deletion_is_refused_until_forgotten(meta: Arc<dyn Meta>) {
    let (r, m, layer) = (repo("team/app"), digest("m"), digest("layer"));
    meta.register_blob(&layer, 3).await.unwrap();
    meta.register_blob(&m, 2).await.unwrap();
    let marked = meta.mark_unreferenced(u64::MAX, 100).await.unwrap();
    assert_eq!(marked.len(), 2);
    assert!(marked.iter().all(|b| b.marked));
    assert!(meta.blob(&layer).await.unwrap().unwrap().marked);
    let refused = |r: crate::store::Result<()>| matches!(r, Err(Error::BlobDeleting(_)));
    assert!(refused(
        meta.put_manifest(&r, &m, &record(&[&layer], &[], None), None, Origin::Private)
            .await
    ));
    assert!(refused(
        meta.put_manifest(&r, &m, &record(&[&layer], &[], None), None, proxied())
            .await
    ));
    assert!(refused(meta.link_blob(&r, &layer, Origin::Private).await));
    assert!(
        refused(meta.register_blob(&layer, 3).await),
        "not published again mid-deletion"
    );
    assert!(meta.manifest(&r, &m).await.unwrap().is_none(), "nothing stored");
    meta.forget_blobs(&[layer.clone(), m.clone()]).await.unwrap();
    assert_eq!(meta.blob(&layer).await.unwrap(), None);
    meta.register_blob(&layer, 3).await.unwrap();
    assert!(!meta.blob(&layer).await.unwrap().unwrap().marked, "a fresh row");
}

pub(crate) async fn gc_candidates_are_the_unreferenced_blobs_older_than_the_cutoff(meta: Arc<dyn Meta>) {
    let r = repo("team/app");
    let (m, used, old) = (digest("m"), digest("used"), digest("old"));
    push(&meta, &r, &m, &[&used], Some("v1")).await;
    meta.register_blob(&old, 9).await.unwrap();
    let cutoff = unix_now_ms() + 1;
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let young = digest("young");
    meta.register_blob(&young, 4).await.unwrap();
    let unreferenced: Vec<Digest> = meta
        .unreferenced()
        .await
        .unwrap()
        .into_iter()
        .map(|b| b.digest)
        .collect();
    assert_eq!(unreferenced.len(), 2, "{unreferenced:?}");
    assert!(unreferenced.contains(&old) && unreferenced.contains(&young));
    let marked = meta.mark_unreferenced(cutoff, 100).await.unwrap();
    assert_eq!(marked.iter().map(|b| &b.digest).collect::<Vec<_>>(), [&old]);
    assert_eq!(marked[0].size, 9);
    assert!(
        !meta.blob(&young).await.unwrap().unwrap().marked,
        "the grace period holds it"
    );
    assert!(!meta.blob(&used).await.unwrap().unwrap().marked);
    // An interrupted sweep's marks are found again, and `n` bounds a batch.
    assert_eq!(meta.mark_unreferenced(0, 100).await.unwrap().len(), 1);
    assert_eq!(meta.mark_unreferenced(u64::MAX, 1).await.unwrap().len(), 1);
    assert_eq!(meta.mark_unreferenced(u64::MAX, 100).await.unwrap().len(), 2);
    // Deleting the manifest makes its blobs candidates.
    meta.forget_blobs(&[old, young]).await.unwrap();
    meta.delete_manifest(&r, &m).await.unwrap();
    let marked = meta.mark_unreferenced(u64::MAX, 100).await.unwrap();
    assert_eq!(marked.len(), 2, "the manifest's bytes and its layer: {marked:?}");
}

pub(crate) async fn forgetting_a_blob_drops_its_links_everywhere(meta: Arc<dyn Meta>) {
    let (a, b, d, kept) = (repo("a"), repo("b"), digest("d"), digest("kept"));
    for blob in [&d, &kept] {
        meta.register_blob(blob, 1).await.unwrap();
        meta.link_blob(&a, blob, Origin::Private).await.unwrap();
        meta.link_blob(&b, blob, Origin::Private).await.unwrap();
    }
    meta.forget_blobs(std::slice::from_ref(&d)).await.unwrap();
    assert!(
        meta.blob(&d).await.unwrap().is_some(),
        "an unmarked row is not forgotten"
    );
    meta.mark_unreferenced(u64::MAX, 100).await.unwrap();
    meta.forget_blobs(std::slice::from_ref(&d)).await.unwrap();
    assert_eq!(meta.blob(&d).await.unwrap(), None);
    assert!(!meta.blob_linked(&a, &d).await.unwrap());
    assert!(!meta.blob_linked(&b, &d).await.unwrap());
    assert!(meta.blob_linked(&a, &kept).await.unwrap());
}

pub(crate) async fn parents_are_the_indexes_that_contain_a_manifest(meta: Arc<dyn Meta>) {
    let (r, other) = (repo("team/app"), repo("team/other"));
    let (child, index, unrelated) = (digest("child"), digest("index"), digest("unrelated"));
    push(&meta, &r, &child, &[], None).await;
    push(&meta, &other, &child, &[], None).await;
    meta.register_blob(&index, 2).await.unwrap();
    meta.put_manifest(
        &r,
        &index,
        &record(&[], &[&child], None),
        Some(&tag("v1")),
        Origin::Private,
    )
    .await
    .unwrap();
    meta.put_manifest(&other, &index, &record(&[], &[&child], None), None, Origin::Private)
        .await
        .unwrap();
    push(&meta, &r, &unrelated, &[&child], None).await; // names it as a blob, not a child
    assert_eq!(meta.parents(&r, &child).await.unwrap(), std::slice::from_ref(&index));
    assert!(meta.parents(&r, &index).await.unwrap().is_empty());
    meta.delete_manifest(&r, &index).await.unwrap();
    assert!(meta.parents(&r, &child).await.unwrap().is_empty());
    assert_eq!(meta.parents(&other, &child).await.unwrap(), [index], "per repository");
}

pub(crate) async fn pull_times_keep_the_newest(meta: Arc<dyn Meta>) {
    let (r, m) = (repo("a"), digest("m"));
    push(&meta, &r, &m, &[], None).await;
    assert_eq!(meta.last_pull(&r, &m).await.unwrap(), None);
    meta.record_pulls(&[(r.clone(), m.clone(), 200)]).await.unwrap();
    meta.record_pulls(&[(r.clone(), m.clone(), 100)]).await.unwrap();
    assert_eq!(
        meta.last_pull(&r, &m).await.unwrap(),
        Some(200),
        "a late batch does not go back"
    );
    meta.record_pulls(&[(r.clone(), m.clone(), 300), (r.clone(), m.clone(), 250)])
        .await
        .unwrap();
    assert_eq!(meta.last_pull(&r, &m).await.unwrap(), Some(300));
    meta.delete_manifest(&r, &m).await.unwrap();
    assert_eq!(meta.last_pull(&r, &m).await.unwrap(), None, "gone with the manifest");
}

pub(crate) async fn removing_a_repository_leaves_its_nested_and_neighbouring_names_alone(meta: Arc<dyn Meta>) {
    let d = digest("{}");
    let names = ["team", "team/app", "team-x"].map(repo);
    for r in &names {
        push(&meta, r, &d, &[], Some("1")).await;
        meta.link_blob(r, &d, Origin::Private).await.unwrap();
        meta.record_pulls(&[(r.clone(), d.clone(), 1)]).await.unwrap();
    }
    assert!(meta.remove_repo(&names[0]).await.unwrap());
    assert!(!meta.remove_repo(&names[0]).await.unwrap(), "already gone");
    assert_eq!(meta.repo(&names[0]).await.unwrap(), None);
    assert_eq!(meta.tags(&names[0], None, 10).await.unwrap(), None);
    assert!(meta.manifest(&names[0], &d).await.unwrap().is_none());
    assert!(!meta.blob_linked(&names[0], &d).await.unwrap());
    assert_eq!(meta.last_pull(&names[0], &d).await.unwrap(), None);
    for other in &names[1..] {
        assert_eq!(meta.tag(other, &tag("1")).await.unwrap(), Some(d.clone()), "{other}");
        assert!(meta.blob_linked(other, &d).await.unwrap());
        assert_eq!(meta.last_pull(other, &d).await.unwrap(), Some(1));
    }
    let left: Vec<String> = meta
        .repos(None, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|(r, _)| r.to_string())
        .collect();
    assert_eq!(left, ["team-x", "team/app"]);
    assert!(
        meta.mark_unreferenced(u64::MAX, 10).await.unwrap().is_empty(),
        "still referenced"
    );
    for other in &names[1..] {
        meta.remove_repo(other).await.unwrap();
    }
    assert_eq!(
        meta.mark_unreferenced(u64::MAX, 10).await.unwrap().len(),
        1,
        "the blobs stay for GC"
    );
}

pub(crate) async fn a_failed_image_put_stores_nothing(meta: Arc<dyn Meta>) {
    let r = repo("imported/app");
    let (layer, m, missing) = (digest("layer"), digest("m"), digest("missing"));
    meta.register_blob(&layer, 1).await.unwrap();
    meta.register_blob(&m, 1).await.unwrap();
    let image = |blobs: Vec<Digest>| ImageRecords {
        manifests: vec![(m.clone(), record(&blobs.iter().collect::<Vec<_>>(), &[], None))],
        blobs,
        tag: Some((tag("v1"), m.clone())),
    };
    let failed = meta
        .put_image(&r, Origin::Private, &image(vec![layer.clone(), missing.clone()]))
        .await;
    assert!(
        matches!(&failed, Err(Error::BlobUnregistered(d)) if *d == missing),
        "{failed:?}"
    );
    assert_eq!(meta.repo(&r).await.unwrap(), None);
    assert!(!meta.blob_linked(&r, &layer).await.unwrap(), "no link of the half");
    meta.put_image(&r, Origin::Private, &image(vec![layer.clone()]))
        .await
        .unwrap();
    assert_eq!(meta.tag(&r, &tag("v1")).await.unwrap(), Some(m.clone()));
    assert!(meta.blob_linked(&r, &layer).await.unwrap());
    assert!(meta.manifest(&r, &m).await.unwrap().is_some());
}

pub(crate) async fn upload_records_round_trip_and_are_queried_by_owner_and_age(meta: Arc<dyn Meta>) {
    let upload = |started, owner: &str| UploadRecord {
        repo: repo("team/app"),
        started,
        owner: owner.into(),
        state: None,
        handle: None,
    };
    meta.put_upload("u1", &upload(100, "alice")).await.unwrap();
    meta.put_upload("u2", &upload(300, "alice")).await.unwrap();
    meta.put_upload("u3", &upload(200, "bob")).await.unwrap();
    assert_eq!(meta.upload("u1").await.unwrap(), Some(upload(100, "alice")));
    // A session's state and handle are replaced whole with each chunk and read back as written.
    let mut hasher = crate::oci::Hasher::new(crate::oci::Algorithm::Sha256);
    hasher.update(b"first chunk");
    let chunked = UploadRecord {
        state: Some(UploadState::new(11, &hasher)),
        handle: Some(UploadHandle::File { name: "u2".into() }),
        ..upload(300, "alice")
    };
    meta.put_upload("u2", &chunked).await.unwrap();
    assert_eq!(meta.upload("u2").await.unwrap(), Some(chunked));
    assert_eq!(meta.upload("nope").await.unwrap(), None);
    assert_eq!(meta.upload_count("alice").await.unwrap(), 2);
    assert_eq!(meta.upload_count("carol").await.unwrap(), 0);
    let mut stale = meta.uploads_started_before(250).await.unwrap();
    stale.sort();
    assert_eq!(stale, ["u1", "u3"]);
    meta.delete_upload("u1").await.unwrap();
    assert_eq!(meta.upload("u1").await.unwrap(), None);
    assert_eq!(meta.upload_count("alice").await.unwrap(), 1);
}

pub(crate) async fn manifest_pages_cover_every_manifest_with_its_pull_time(meta: Arc<dyn Meta>) {
    let mut all = Vec::new();
    for (i, name) in ["b", "a", "c"].iter().enumerate() {
        let (r, m) = (repo(name), digest(name));
        push(&meta, &r, &m, &[], None).await;
        meta.record_pulls(&[(r.clone(), m.clone(), i as u64 + 10)])
            .await
            .unwrap();
        all.push((r, m, i as u64 + 10));
    }
    let mut seen = Vec::new();
    let mut after: Option<(RepoName, Digest)> = None;
    loop {
        let page = meta
            .manifest_page(after.as_ref().map(|(r, d)| (r, d)), 2)
            .await
            .unwrap();
        assert!(page.len() <= 2);
        let Some(last) = page.last() else { break };
        after = Some((last.repo.clone(), last.digest.clone()));
        seen.extend(
            page.into_iter()
                .map(|row| (row.repo, row.digest, row.last_pull.unwrap())),
        );
    }
    all.sort();
    assert_eq!(seen, all, "every manifest once, in key order");
}

pub(crate) async fn usage_splits_registered_bytes_by_origin(meta: Arc<dyn Meta>) {
    let (private, cached) = (repo("team/app"), repo("library/alpine"));
    let (shared, mine, theirs, loose) = (digest("shared"), digest("mine"), digest("theirs"), digest("loose"));
    for (d, size) in [(&shared, 100), (&mine, 10), (&theirs, 1000), (&loose, 5)] {
        meta.register_blob(d, size).await.unwrap();
    }
    let (pm, cm) = (digest("pm"), digest("cm"));
    meta.register_blob(&pm, 1).await.unwrap();
    meta.register_blob(&cm, 2).await.unwrap();
    meta.put_manifest(
        &private,
        &pm,
        &record(&[&shared, &mine], &[], None),
        None,
        Origin::Private,
    )
    .await
    .unwrap();
    meta.put_manifest(&cached, &cm, &record(&[&shared, &theirs], &[], None), None, proxied())
        .await
        .unwrap();
    let usage = meta.usage().await.unwrap();
    assert_eq!(
        (usage.private.bytes, usage.private.blobs),
        (111, 3),
        "shared counts as private"
    );
    assert_eq!((usage.cached.bytes, usage.cached.blobs), (1002, 2));
    assert_eq!((usage.unreferenced.bytes, usage.unreferenced.blobs), (5, 1));
}
