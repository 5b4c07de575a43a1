//! [`RedbMeta`] against the conformance suite, and its one-time migration.

use super::*;

crate::meta_conformance_tests!(async {
    let dir = tempfile::tempdir().unwrap();
    let meta = super::RedbMeta::open(&dir.path().join("meta.redb")).unwrap();
    (std::sync::Arc::new(meta) as std::sync::Arc<dyn crate::store::Meta>, dir)
});

/// A store made before the blob registry: its blob files get rows once (with their file
/// times, so grace periods carry over), and its manifests' references are indexed, so what
/// they use is not a GC candidate.
#[tokio::test]
async fn a_store_from_before_the_registry_is_back_filled_once() {
    let dir = tempfile::tempdir().unwrap();
    let meta = RedbMeta::open(&dir.path().join("meta.redb")).unwrap();
    let (repo, m, layer, loose) = (
        "team/app".parse::<RepoName>().unwrap(),
        Digest::sha256_of(b"m"),
        Digest::sha256_of(b"layer"),
        Digest::sha256_of(b"loose"),
    );
    let record = ManifestRecord {
        media_type: "application/vnd.oci.image.manifest.v1+json".into(),
        size: 1,
        blobs: vec![layer.clone()],
        children: Vec::new(),
        subject: None,
        artifact_type: None,
        annotations: Default::default(),
        stored_at: 0,
    };
    // The old schema: a manifest row, and no registry or references.
    meta.write(|txn| {
        ensure_repo_in(txn, &repo, Origin::Private)?;
        let bytes = serde_json::to_vec(&record).map_err(json_err)?;
        txn.open_table(MANIFESTS)
            .map_err(db_err)?
            .insert(link_key(&repo, &m).as_str(), bytes.as_slice())
            .map_err(db_err)?;
        Ok(())
    })
    .unwrap();
    let files = vec![
        (m.clone(), 1, 1_000),
        (layer.clone(), 5, 2_000),
        (loose.clone(), 7, 3_000),
    ];
    meta.migrate_blob_registry(|| Ok(files.clone())).unwrap();
    let row = meta.blob(&layer).await.unwrap().unwrap();
    assert_eq!((row.size, row.created_ms, row.last_referenced_ms), (5, 2_000, 2_000));
    let candidates: Vec<Digest> = meta
        .unreferenced()
        .await
        .unwrap()
        .into_iter()
        .map(|b| b.digest)
        .collect();
    assert_eq!(
        candidates,
        std::slice::from_ref(&loose),
        "the manifest and its layer are referenced"
    );
    meta.migrate_blob_registry(|| panic!("the directory is walked once"))
        .unwrap();
    drop(meta);
    let reopened = RedbMeta::open(&dir.path().join("meta.redb")).unwrap();
    reopened
        .migrate_blob_registry(|| panic!("not after a restart either"))
        .unwrap();
    assert_eq!(reopened.blob(&loose).await.unwrap().unwrap().size, 7);
}
