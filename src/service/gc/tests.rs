//! Promise 5 at the seam: garbage collection racing pushes never leaves a stored manifest
//! without its blobs, whichever [`Meta`](crate::store::Meta) backs the store.

use std::sync::Arc;
use std::time::Duration;

use crate::cache::{Policy, Pulls};
use crate::coord::Local;
use crate::oci::{Digest, RepoName};
use crate::store::{self, ManifestRecord, MemoryMeta, Origin, Store};

fn policy(grace: Duration) -> Policy {
    Policy {
        ttl: Duration::from_secs(3600),
        max_size: None,
        low_water_percent: 80,
        grace,
        upload_ttl: Duration::from_secs(3600),
        delete_untagged: false,
        pinned: Vec::new(),
        offline_upstreams: Vec::new(),
    }
}

/// Push one image the way the service does: register and write the layer, take a moment as a
/// client between its layers and its manifest does (long enough for a grace-0 sweep to find the
/// layer unreferenced), then register and write the manifest's bytes and store the manifest
/// (which checks and references them). Disabling the refusal of marked blobs in the filesystem
/// store's metadata makes its run of this test fail: the window is real.
async fn push(store: &Store, repo: &RepoName, seed: u64) -> store::Result<Digest> {
    let layer_bytes = format!("layer {seed}").into_bytes();
    let layer = Digest::sha256_of(&layer_bytes);
    store.meta.register_blob(&layer, layer_bytes.len() as u64).await?;
    store.blobs.put(&layer, layer_bytes.clone().into()).await?;
    tokio::time::sleep(Duration::from_millis(2)).await;
    let bytes = format!("manifest {seed}").into_bytes();
    let digest = Digest::sha256_of(&bytes);
    store.meta.register_blob(&digest, bytes.len() as u64).await?;
    store.blobs.put(&digest, bytes.clone().into()).await?;
    let record = ManifestRecord {
        media_type: "application/vnd.oci.image.manifest.v1+json".into(),
        size: bytes.len() as u64,
        blobs: vec![layer],
        children: Vec::new(),
        subject: None,
        artifact_type: None,
        annotations: Default::default(),
        stored_at: crate::clock::unix_now(),
    };
    store
        .meta
        .put_manifest(repo, &digest, &record, None, Origin::Private)
        .await?;
    Ok(digest)
}

/// Pushes and grace-0 collections at once: each push either succeeds or fails cleanly (a blob
/// was swept before its manifest was stored), and every manifest stored has all its blobs.
async fn racing_pushes_keep_what_they_reference(store: Store) {
    let repo: RepoName = "team/app".parse().unwrap();
    let gc = {
        let store = store.clone();
        tokio::spawn(async move {
            for _ in 0..200 {
                super::run(
                    &store,
                    &Pulls::default(),
                    None,
                    &policy(Duration::ZERO),
                    false,
                    &|_| {},
                    &*Local::shared(),
                )
                .await
                .unwrap();
                // A breath between runs: back to back on a loaded machine (the whole suite at
                // once), grace-0 runs swept every push's blob before its manifest landed, and
                // the race this test is about never had a winner to check.
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };
    let pushes: Vec<_> = (0..4u64)
        .map(|w| {
            let (store, repo) = (store.clone(), repo.clone());
            tokio::spawn(async move {
                let mut previous: Option<Digest> = None;
                for i in 0..40 {
                    match push(&store, &repo, w * 1000 + i).await {
                        Ok(pushed) => {
                            // Untag the previous image: its layer becomes garbage unless reused.
                            if let Some(old) = previous.replace(pushed) {
                                store.meta.delete_manifest(&repo, &old).await.unwrap();
                            }
                        }
                        Err(store::Error::BlobDeleting(_) | store::Error::BlobUnregistered(_)) => {}
                        Err(e) => panic!("a push failed with an unexpected error: {e}"),
                    }
                }
            })
        })
        .collect();
    for p in pushes {
        p.await.unwrap();
    }
    gc.await.unwrap();
    let stored = store.meta.manifest_page(None, usize::MAX).await.unwrap();
    assert!(!stored.is_empty(), "some pushes got through");
    for row in stored {
        for d in std::iter::once(&row.digest).chain(&row.record.blobs) {
            assert!(
                store.blobs.size(d).await.unwrap().is_some(),
                "{d} of {} was swept",
                row.digest
            );
            let registered = store.meta.blob(d).await.unwrap().expect("registered");
            assert!(!registered.marked, "{d} is referenced yet marked");
        }
    }
    // What nothing references goes with the next run; what is referenced stays.
    let report = super::run(
        &store,
        &Pulls::default(),
        None,
        &policy(Duration::ZERO),
        false,
        &|_| {},
        &*Local::shared(),
    )
    .await
    .unwrap();
    assert!(store.meta.unreferenced().await.unwrap().is_empty(), "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_racing_pushes_on_the_filesystem_store_never_sweeps_what_a_stored_manifest_references() {
    let dir = tempfile::tempdir().unwrap();
    racing_pushes_keep_what_they_reference(store::fs::open(dir.path()).unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_racing_pushes_in_memory_never_sweeps_what_a_stored_manifest_references() {
    racing_pushes_keep_what_they_reference(store::memory::store(Arc::new(MemoryMeta::new()))).await;
}

/// Two collections at once give one run: the second, asked while the first holds the
/// coordinator's GC lead, steps aside (`None`, nothing done), and a third, after the first ended,
/// runs again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_collection_steps_aside_while_one_runs() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::mpsc;

    let core = crate::service::Core::new(
        store::memory::store(Arc::new(MemoryMeta::new())),
        Vec::new(),
        Local::shared(),
    );
    let services = crate::service::Services::new(core);
    // The first run stops at its first progress report until the test lets it go on.
    let (entered_tx, entered_rx) = mpsc::channel::<()>();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let (entered_tx, release_rx) = (parking_lot::Mutex::new(entered_tx), parking_lot::Mutex::new(release_rx));
    let held = AtomicBool::new(false);
    let first = {
        let admin = services.admin.clone();
        tokio::spawn(async move {
            let progress = move |_: super::GcProgress| {
                if !held.swap(true, Ordering::SeqCst) {
                    entered_tx.lock().send(()).unwrap();
                    release_rx.lock().recv().unwrap();
                }
            };
            admin.collect_garbage(&policy(Duration::ZERO), false, &progress).await
        })
    };
    tokio::task::spawn_blocking(move || entered_rx.recv().unwrap())
        .await
        .unwrap();
    let second = services
        .admin
        .collect_garbage(&policy(Duration::ZERO), false, &|_| {})
        .await
        .unwrap();
    assert!(second.is_none(), "a second collection ran beside the first");
    release_tx.send(()).unwrap();
    assert!(first.await.unwrap().unwrap().is_some(), "the first collection ran");
    let third = services
        .admin
        .collect_garbage(&policy(Duration::ZERO), false, &|_| {})
        .await
        .unwrap();
    assert!(third.is_some(), "the lead was released when the first run ended");
}
