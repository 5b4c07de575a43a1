//! The S3 backends on real engines: the shared conformance suites on a 3-node Garage cluster
//! (blobs and uploads) and on SeaweedFS (blobs), then what only S3 has: invisible multipart
//! uploads, sub-5 MiB chunks, the disk cache, presigned URLs and a node failure. One test
//! function per engine starts it, runs every check and stops it (by PID, when dropped).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use object_store::multipart::MultipartStore;
use object_store::{ObjectStore, ObjectStoreExt};

use super::*;
use crate::config::S3Config;
use crate::store::conformance;
use crate::store::{BlobStore, ByteStream, MemoryMeta, Stored, UploadState};
use crate::testing::engines::garage::{self, Garage};
use crate::testing::engines::seaweed::{self, Seaweed};

/// A replica's blob store: `bucket` with its own disk cache in `cache` (capped at `max`).
fn replica(bucket: &Bucket, cache: &Path, max: u64, redirect: bool) -> S3Blobs {
    let cfg = S3Config {
        cache_max_size: max,
        redirect,
        ..S3Config::default()
    };
    S3Blobs::open(bucket.clone(), cache, &cfg).unwrap()
}

fn pattern(len: usize, seed: u8) -> Bytes {
    (0..len).map(|i| (i % 251) as u8 ^ seed).collect::<Vec<_>>().into()
}

/// Wait until the bucket takes writes (SeaweedFS creates it a moment after it listens).
async fn ready(blobs: &S3Blobs) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while let Err(e) = blobs.probe().await {
        assert!(Instant::now() < deadline, "the bucket never took a write: {e}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn in_bucket(bucket: &Bucket, digest: &Digest) -> bool {
    found(bucket.s3.head(&blob_key(digest)).await).unwrap().is_some()
}

async fn write(blobs: &S3Blobs, bytes: &Bytes) -> Digest {
    let digest = Digest::sha256_of(bytes);
    let mut writer = blobs.writer(&digest, Box::new(|_| {})).await.unwrap();
    for chunk in bytes.chunks(1 << 20) {
        writer.append(vec![bytes.slice_ref(chunk)]).await.unwrap();
    }
    writer.commit(&digest).await.unwrap();
    digest
}

async fn collect(stored: Stored) -> Vec<u8> {
    let size = stored.size();
    let mut stream = stored.range(0, size).expect("bytes, not a redirect");
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_three_node_garage_cluster() {
    crate::install_crypto_provider();
    let mut garage = Garage::start();
    let bucket = Bucket::connect(&garage.s3_config(0), garage::KEY_ID, garage::SECRET_KEY).unwrap();
    let caches = tempfile::tempdir().unwrap();
    let blobs = replica(&bucket, &caches.path().join("suite"), 1 << 30, false);
    ready(&blobs).await;
    conformance::blob_store(Arc::new(blobs.clone())).await;
    upload_conformance(&bucket, caches.path()).await;

    an_object_is_invisible_until_commit_and_never_after_a_failed_verification(&bucket, caches.path()).await;
    small_chunks_fold_into_parts_across_the_5_mib_boundary(&bucket, caches.path()).await;
    a_cancelled_session_aborts_its_multipart_upload_and_orphans_are_removed(&bucket, caches.path()).await;
    the_disk_cache_serves_warm_reads_locally_and_evicts_past_its_cap(&bucket, caches.path()).await;
    a_redirect_is_a_presigned_url_that_serves_the_blob(&bucket, caches.path()).await;
    two_replicas_writing_one_blob_at_once_both_commit_and_the_object_is_whole(&bucket, caches.path()).await;
    a_killed_node_fails_no_read_or_write(&mut garage, &bucket, caches.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_seaweedfs() {
    crate::install_crypto_provider();
    let weed = Seaweed::start();
    let bucket = Bucket::connect(&weed.s3_config(), seaweed::ACCESS_KEY, seaweed::SECRET_KEY).unwrap();
    let cache = tempfile::tempdir().unwrap();
    let blobs = replica(&bucket, cache.path(), 1 << 30, false);
    ready(&blobs).await;
    conformance::blob_store(Arc::new(blobs)).await;
}

/// The upload suite, each `reopen` a new replica (its own client and cache) over the same
/// metadata and bucket.
async fn upload_conformance(bucket: &Bucket, caches: &Path) {
    let meta: Arc<dyn Meta> = Arc::new(MemoryMeta::new());
    let blobs = replica(bucket, &caches.join("uploads-0"), 1 << 30, false);
    let n = std::sync::atomic::AtomicUsize::new(1);
    let reopen = || {
        let i = n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let blobs = replica(bucket, &caches.join(format!("uploads-{i}")), 1 << 30, false);
        Arc::new(S3Uploads::new(bucket.clone(), blobs, meta.clone())) as Arc<dyn UploadStore>
    };
    let recorded = |id: &str| {
        let (meta, id) = (meta.clone(), id.to_owned());
        Box::pin(async move { meta.upload(&id).await.unwrap().and_then(|r| r.state) })
            as BoxFuture<'static, Option<UploadState>>
    };
    conformance::upload_store(&reopen, Arc::new(blobs), &recorded).await;
}

async fn an_object_is_invisible_until_commit_and_never_after_a_failed_verification(bucket: &Bucket, caches: &Path) {
    let blobs = replica(bucket, &caches.join("visibility"), 1 << 30, false);
    // More than one part, so a multipart upload of the final key is open while it is written.
    let bytes = pattern(PART + (1 << 20), 1);
    let digest = Digest::sha256_of(&bytes);
    let mut writer = blobs.writer(&digest, Box::new(|_| {})).await.unwrap();
    writer.append(vec![bytes.clone()]).await.unwrap();
    writer.close().await.unwrap();
    assert!(
        !in_bucket(bucket, &digest).await,
        "a written, uncommitted blob is invisible"
    );
    assert_eq!(blobs.stat(&digest).await.unwrap(), None);
    writer.commit(&digest).await.unwrap();
    assert!(in_bucket(bucket, &digest).await, "published at commit");

    let claimed = Digest::sha256_of(b"what the sender claimed");
    let mut writer = blobs.writer(&claimed, Box::new(|_| {})).await.unwrap();
    writer.append(vec![pattern(PART + 5, 2)]).await.unwrap();
    let err = writer.commit(&claimed).await.unwrap_err();
    assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");
    // The abort runs in the background; the key must never appear, before or after it.
    for _ in 0..10 {
        assert!(
            !in_bucket(bucket, &claimed).await,
            "a failed verification publishes nothing"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn small_chunks_fold_into_parts_across_the_5_mib_boundary(bucket: &Bucket, caches: &Path) {
    let meta: Arc<dyn Meta> = Arc::new(MemoryMeta::new());
    let open = |i: usize| {
        let blobs = replica(bucket, &caches.join(format!("chunks-{i}")), 1 << 30, false);
        S3Uploads::new(bucket.clone(), blobs, meta.clone())
    };
    let bytes = pattern(PART + (3 << 20) + 17, 3);
    let repo: crate::oci::RepoName = "team/app".parse().unwrap();
    let id = open(0).create(&repo, "alice", true, 10).await.unwrap();
    // 1 MiB + 1 chunks, each PATCH on another replica: every one is below S3's 5 MiB minimum.
    let step = (1 << 20) + 1;
    for (i, at) in (0..bytes.len()).step_by(step).enumerate() {
        let chunk = bytes.slice(at..(at + step).min(bytes.len()));
        let body: ByteStream = Box::pin(futures_util::stream::iter([Ok(chunk.clone())]));
        let n = open(i + 1).append(&id, None, body, 1 << 30).await.unwrap();
        assert_eq!(n, (at + chunk.len()) as u64);
    }
    let record = meta.upload(&id).await.unwrap().unwrap();
    let Some(crate::store::UploadHandle::Multipart { parts, tail, .. }) = record.handle else {
        panic!("a multipart handle: {:?}", record.handle);
    };
    assert_eq!(parts.len(), 1, "the first {PART} bytes became one part");
    assert_eq!(tail, (bytes.len() - PART) as u64, "the rest waits in the tail object");
    let digest = Digest::sha256_of(&bytes);
    assert_eq!(open(99).finish(&id, &digest).await.unwrap(), bytes.len() as u64);
    let blobs = replica(bucket, &caches.join("chunks-read"), 1 << 30, false);
    assert!(
        blobs.read(&digest).await.unwrap().unwrap() == bytes,
        "the parts and the tail, in order"
    );
    let left: Vec<_> = bucket
        .s3
        .list(Some(&Key::from(format!("uploads/{id}"))))
        .collect()
        .await;
    assert!(
        left.is_empty(),
        "a finished session leaves nothing in the bucket: {left:?}"
    );
}

/// What garbage collection's purge does to an abandoned session (it cancels it) and to objects a
/// crash left without a session (orphans).
async fn a_cancelled_session_aborts_its_multipart_upload_and_orphans_are_removed(bucket: &Bucket, caches: &Path) {
    let meta: Arc<dyn Meta> = Arc::new(MemoryMeta::new());
    let blobs = replica(bucket, &caches.join("cancel"), 1 << 30, false);
    let uploads = S3Uploads::new(bucket.clone(), blobs, meta.clone());
    let repo: crate::oci::RepoName = "team/app".parse().unwrap();
    let id = uploads.create(&repo, "alice", true, 10).await.unwrap();
    let body: ByteStream = Box::pin(futures_util::stream::iter([Ok(pattern(PART + 10, 10))]));
    uploads.append(&id, None, body, 1 << 30).await.unwrap();
    let Some(crate::store::UploadHandle::Multipart { upload_id, .. }) = meta.upload(&id).await.unwrap().unwrap().handle
    else {
        panic!("a multipart handle");
    };
    let data = Key::from(format!("uploads/{id}/data"));
    uploads.cancel(&id).await.unwrap();
    let late = bucket
        .s3
        .put_part(&data, &upload_id, 1, Bytes::from_static(b"late").into())
        .await;
    assert!(
        late.is_err(),
        "the multipart upload was aborted, so it takes no more parts"
    );
    let left: Vec<_> = bucket
        .s3
        .list(Some(&Key::from(format!("uploads/{id}"))))
        .collect()
        .await;
    assert!(left.is_empty(), "its tail went too: {left:?}");

    // What crashes leave: a tail no session owns, a session's multipart upload whose record is
    // gone, and a blob fill's multipart upload that was never completed nor aborted.
    let stray = Key::from("uploads/0123456789abcdef0123456789abcdef/tail.5");
    bucket
        .s3
        .put(&stray, Bytes::from_static(b"stray").into())
        .await
        .unwrap();
    let lost = uploads.create(&repo, "alice", true, 10).await.unwrap();
    let Some(crate::store::UploadHandle::Multipart {
        upload_id: lost_upload, ..
    }) = meta.upload(&lost).await.unwrap().unwrap().handle
    else {
        panic!("a multipart handle");
    };
    meta.delete_upload(&lost).await.unwrap();
    let fill_key = blob_key(&Digest::sha256_of(b"a fill that crashed"));
    let fill_upload = bucket.s3.create_multipart(&fill_key).await.unwrap();
    let live = uploads.create(&repo, "alice", true, 10).await.unwrap();
    let body: ByteStream = Box::pin(futures_util::stream::iter([Ok(Bytes::from_static(b"live"))]));
    uploads.append(&live, None, body, 1 << 20).await.unwrap();

    let orphans = uploads.orphans(Duration::ZERO).await.unwrap();
    // (Sessions the other checks left open in their own metadata are orphans here too.)
    let lost_name = format!("uploads/{lost}/data?uploadId={lost_upload}");
    assert!(
        orphans.contains(&stray.to_string()) && orphans.contains(&lost_name),
        "{orphans:?}"
    );
    assert!(
        !orphans.iter().any(|o| o.contains(&live)),
        "not the live session's tail or upload"
    );
    let fill_name = format!("{fill_key}?uploadId={fill_upload}");
    assert!(orphans.contains(&fill_name), "the crashed fill's upload: {orphans:?}");
    assert!(
        uploads.orphans(Duration::from_secs(3600)).await.unwrap().is_empty(),
        "too young"
    );
    for orphan in &orphans {
        uploads.remove_orphan(orphan).await.unwrap();
    }
    assert!(found(bucket.s3.head(&stray).await).unwrap().is_none());
    for (key, id) in [(data_key_of(&lost), lost_upload), (fill_key, fill_upload)] {
        let late = bucket
            .s3
            .put_part(&key, &id, 0, Bytes::from_static(b"late").into())
            .await;
        assert!(late.is_err(), "{key}: the orphaned upload was aborted");
    }
    let still = uploads.orphans(Duration::ZERO).await.unwrap();
    assert!(
        !still.iter().any(|o| orphans.contains(o)),
        "every orphan was removed: {still:?}"
    );
    uploads.cancel(&live).await.unwrap();
}

fn data_key_of(id: &str) -> Key {
    Key::from(format!("uploads/{id}/data"))
}

async fn the_disk_cache_serves_warm_reads_locally_and_evicts_past_its_cap(bucket: &Bucket, caches: &Path) {
    let writer = replica(bucket, &caches.join("cache-writer"), 1 << 30, false);
    let size = (3 << 20) / 2;
    let a = write(&writer, &pattern(size, 4)).await;
    assert!(
        matches!(writer.open(&a).await.unwrap(), Some(Stored::Local(_))),
        "the writer's spool became its cache entry"
    );

    // Another replica, cold: its cache holds at most two of these blobs.
    let reader = replica(bucket, &caches.join("cache-reader"), 2 * size as u64 + 10, false);
    let cold = reader.open(&a).await.unwrap().unwrap();
    assert!(
        matches!(cold, Stored::Stream(_)),
        "a cold large blob streams from the bucket"
    );
    assert!(collect(cold).await == pattern(size, 4));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !matches!(reader.open(&a).await.unwrap(), Some(Stored::Local(_))) {
        assert!(Instant::now() < deadline, "the background fill never cached the blob");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(collect(reader.open(&a).await.unwrap().unwrap()).await == pattern(size, 4));

    let b = write(&reader, &pattern(size, 5)).await;
    let c = write(&reader, &pattern(size, 6)).await;
    assert!(
        reader.cache.total() <= 2 * size as u64 + 10,
        "the cache stays under its cap"
    );
    assert!(
        matches!(reader.open(&a).await.unwrap(), Some(Stored::Stream(_))),
        "the least recently used blob was evicted"
    );
    for d in [&b, &c] {
        assert!(matches!(reader.open(d).await.unwrap(), Some(Stored::Local(_))));
    }
    assert!(reader.delete(&c).await.unwrap());
    assert!(
        reader.open(&c).await.unwrap().is_none(),
        "a delete drops the cache entry too"
    );
}

async fn a_redirect_is_a_presigned_url_that_serves_the_blob(bucket: &Bucket, caches: &Path) {
    let plain = replica(bucket, &caches.join("no-redirect"), 1 << 30, false);
    let blobs = replica(bucket, &caches.join("redirect"), 1 << 30, true);
    let bytes = pattern(70_000, 7);
    let digest = write(&blobs, &bytes).await;
    assert_eq!(plain.presign(&digest).await.unwrap(), None, "redirects are opt-in");
    let url = blobs.presign(&digest).await.unwrap().expect("a presigned URL");
    let got = reqwest::get(&url).await.unwrap();
    assert!(got.status().is_success(), "{}", got.status());
    assert!(
        got.bytes().await.unwrap() == bytes,
        "the URL serves the blob without credentials"
    );
}

/// A fill's owner and a replica following it (or one that took over) write the same digest at
/// once, each with a multipart upload of the same key. Garage lets only one complete; the other
/// writer's parts or completion fail, and that must not fail its write.
async fn two_replicas_writing_one_blob_at_once_both_commit_and_the_object_is_whole(bucket: &Bucket, caches: &Path) {
    let bytes = pattern(3 * PART + 12345, 77);
    let digest = Digest::sha256_of(&bytes);
    let (owner, follower) = (
        replica(bucket, &caches.join("owner"), 1 << 30, false),
        replica(bucket, &caches.join("follower"), 1 << 30, false),
    );
    let mut a = owner.writer(&digest, Box::new(|_| {})).await.unwrap();
    let mut b = follower.writer(&digest, Box::new(|_| {})).await.unwrap();
    let (first, rest) = bytes.split_at(2 * PART);
    a.append(vec![bytes.slice_ref(first)]).await.unwrap();
    b.append(vec![bytes.slice_ref(first)]).await.unwrap();
    a.append(vec![bytes.slice_ref(rest)]).await.unwrap();
    assert_eq!(a.commit(&digest).await.unwrap(), bytes.len() as u64);
    // The owner's upload completed over the follower's: its next parts may fail.
    b.append(vec![bytes.slice_ref(rest)]).await.unwrap();
    assert_eq!(b.commit(&digest).await.unwrap(), bytes.len() as u64);
    let stored = bucket.s3.get(&blob_key(&digest)).await.unwrap().bytes().await.unwrap();
    assert!(stored == bytes, "the published object is the blob");
    for blobs in [&owner, &follower] {
        assert_eq!(
            collect(blobs.open(&digest).await.unwrap().unwrap()).await,
            bytes.to_vec()
        );
    }

    // The other order: the follower's writer started its upload first and completes last.
    let bytes = pattern(2 * PART + 99, 78);
    let digest = Digest::sha256_of(&bytes);
    let mut b = follower.writer(&digest, Box::new(|_| {})).await.unwrap();
    b.append(vec![bytes.slice(..PART + 1)]).await.unwrap();
    write(&owner, &bytes).await;
    b.append(vec![bytes.slice(PART + 1..)]).await.unwrap();
    assert_eq!(b.commit(&digest).await.unwrap(), bytes.len() as u64);
    let stored = bucket.s3.get(&blob_key(&digest)).await.unwrap().bytes().await.unwrap();
    assert!(stored == bytes);

    // Three at once, parts in flight together, as a herd's fills on three replicas.
    let bytes = pattern(4 * PART + 7, 79);
    let digest = Digest::sha256_of(&bytes);
    let third = replica(bucket, &caches.join("third"), 1 << 30, false);
    let writes = [&owner, &follower, &third].map(|blobs| {
        let (blobs, bytes, digest) = (blobs.clone(), bytes.clone(), digest.clone());
        tokio::spawn(async move {
            let mut w = blobs.writer(&digest, Box::new(|_| {})).await.unwrap();
            for chunk in bytes.chunks(1 << 20) {
                w.append(vec![bytes.slice_ref(chunk)]).await.unwrap();
            }
            w.commit(&digest).await
        })
    });
    for write in writes {
        assert_eq!(write.await.unwrap().unwrap(), bytes.len() as u64);
    }
    let stored = bucket.s3.get(&blob_key(&digest)).await.unwrap().bytes().await.unwrap();
    assert!(stored == bytes);
}

async fn a_killed_node_fails_no_read_or_write(garage: &mut Garage, bucket: &Bucket, caches: &Path) {
    let before = pattern(PART + 100, 8);
    let old = write(&replica(bucket, &caches.join("kill-0"), 1 << 30, false), &before).await;
    let pid = garage.pid(2).expect("node 2 runs");
    garage.kill_node(2);
    assert!(garage.pid(2).is_none(), "node {pid} is gone");
    // Fresh replicas, so every read goes to the cluster, not to a disk cache.
    let blobs = replica(bucket, &caches.join("kill-1"), 1 << 30, false);
    assert!(
        blobs.read(&old).await.unwrap().unwrap() == before,
        "a blob written before the failure"
    );
    let after = pattern(PART + (2 << 20), 9);
    let new = write(&blobs, &after).await;
    let reader = replica(bucket, &caches.join("kill-2"), 1 << 30, false);
    assert!(
        reader.read(&new).await.unwrap().unwrap() == after,
        "a blob written after it"
    );
    let meta: Arc<dyn Meta> = Arc::new(MemoryMeta::new());
    let uploads = S3Uploads::new(bucket.clone(), reader, meta);
    let repo: crate::oci::RepoName = "team/app".parse().unwrap();
    let id = uploads.create(&repo, "alice", true, 10).await.unwrap();
    let body: ByteStream = Box::pin(futures_util::stream::iter([Ok(Bytes::from_static(b"still up"))]));
    uploads.append(&id, None, body, 1 << 20).await.unwrap();
    uploads.finish(&id, &Digest::sha256_of(b"still up")).await.unwrap();
}

#[test]
fn missing_credentials_are_refused_with_the_variable_to_set() {
    let storage = crate::config::Storage {
        s3: S3Config {
            endpoint: "http://127.0.0.1:9".into(),
            access_key_id_env: "BERTH_TEST_S3_KEY_THAT_IS_NEVER_SET".into(),
            ..S3Config::default()
        },
        ..crate::config::Storage::default()
    };
    let Err(err) = open(&storage, Arc::new(MemoryMeta::new())) else {
        panic!("opened without credentials");
    };
    assert!(err.to_string().contains("BERTH_TEST_S3_KEY_THAT_IS_NEVER_SET"), "{err}");
}
