//! Conformance suites: each trait's contract, written once and run against every backend (as
//! distribution's storage driver suite is). A backend's `#[cfg(test)]` module calls the suite
//! with a fresh, empty instance; the cluster backends (S3) are to pass the same functions.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::future::BoxFuture;

use super::blob_store::{BlobStore, Stored};
use super::{Error, UploadState};
use crate::oci::Digest;

/// Every byte of `stored`'s range `start..start + len`.
async fn collect(stored: Stored, start: u64, len: u64) -> Vec<u8> {
    let mut stream = stored.range(start, len).expect("the backend serves bytes itself");
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk.expect("a chunk"));
    }
    out
}

/// Bytes that differ at every offset, so a wrong range shows.
fn pattern(len: usize) -> Bytes {
    (0..len).map(|i| (i % 251) as u8).collect::<Vec<_>>().into()
}

/// Write `bytes` through a writer in batches of `step` and commit them as `digest`.
async fn write(store: &dyn BlobStore, digest: &Digest, bytes: &Bytes, step: usize) -> super::Result<u64> {
    let mut writer = store.writer(digest, Box::new(|_| {})).await?;
    for at in (0..bytes.len()).step_by(step.max(1)) {
        writer
            .append(vec![bytes.slice(at..(at + step).min(bytes.len()))])
            .await?;
    }
    writer.commit(digest).await
}

/// The [`BlobStore`] / [`super::BlobWriter`] contract.
pub(crate) async fn blob_store(store: Arc<dyn BlobStore>) {
    a_missing_blob_is_none_everywhere(store.as_ref()).await;
    a_committed_blob_reads_back_whole_and_by_range(store.as_ref()).await;
    a_digest_mismatch_publishes_nothing(store.as_ref()).await;
    a_dropped_writer_publishes_nothing(store.as_ref()).await;
    an_existing_blob_is_never_replaced(store.as_ref()).await;
    concurrent_writers_of_one_digest_all_succeed(store.clone()).await;
    bytes_written_so_far_read_back_before_and_after_commit(store.as_ref()).await;
    deleted_blobs_are_gone(store.as_ref()).await;
    store.probe().await.expect("a fresh store takes the probe write");
}

async fn a_missing_blob_is_none_everywhere(store: &dyn BlobStore) {
    let missing = Digest::sha256_of(b"never written");
    assert_eq!(store.stat(&missing).await.unwrap(), None);
    assert!(store.open(&missing).await.unwrap().is_none());
    assert_eq!(store.read(&missing).await.unwrap(), None);
    assert!(
        !store.delete(&missing).await.unwrap(),
        "deleting a missing blob says so"
    );
}

async fn a_committed_blob_reads_back_whole_and_by_range(store: &dyn BlobStore) {
    // Past two mapped windows of the filesystem backend, in batches that do not align with them.
    let bytes = pattern((5 << 20) / 2 + 7);
    let digest = Digest::sha256_of(&bytes);
    assert_eq!(
        write(store, &digest, &bytes, 300_001).await.unwrap(),
        bytes.len() as u64
    );
    assert_eq!(store.stat(&digest).await.unwrap().unwrap().size, bytes.len() as u64);
    assert_eq!(store.read(&digest).await.unwrap().unwrap(), bytes);
    assert!(
        store
            .list()
            .await
            .unwrap()
            .iter()
            .any(|e| e.digest == digest && e.size == bytes.len() as u64)
    );
    let size = bytes.len() as u64;
    let ranges = [
        (0, size),
        (0, 1),
        (size - 1, 1),
        ((1 << 20) - 3, 7), // across a window boundary
        (12_345, (1 << 20) + 99),
        (size, 0), // empty, at the end
    ];
    for (start, len) in ranges {
        let stored = store.open(&digest).await.unwrap().expect("published");
        assert_eq!(stored.size(), size);
        let got = collect(stored, start, len).await;
        assert!(
            got[..] == bytes[start as usize..(start + len) as usize],
            "range {start}+{len} reads back its own bytes"
        );
    }
    // The empty blob is a blob too.
    let empty = Digest::sha256_of(b"");
    assert_eq!(write(store, &empty, &Bytes::new(), 1).await.unwrap(), 0);
    assert_eq!(store.read(&empty).await.unwrap().unwrap(), Bytes::new());
}

async fn a_digest_mismatch_publishes_nothing(store: &dyn BlobStore) {
    let claimed = Digest::sha256_of(b"what the client said");
    let err = write(store, &claimed, &Bytes::from_static(b"what it sent"), 4)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::DigestMismatch { expected, actual } if *expected == claimed && *actual == Digest::sha256_of(b"what it sent")),
        "{err}"
    );
    assert_eq!(store.stat(&claimed).await.unwrap(), None);
    assert_eq!(store.stat(&Digest::sha256_of(b"what it sent")).await.unwrap(), None);
    let err = store
        .put(&claimed, Bytes::from_static(b"what it sent"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");
    assert_eq!(store.stat(&claimed).await.unwrap(), None);
}

async fn a_dropped_writer_publishes_nothing(store: &dyn BlobStore) {
    let bytes = pattern(100_000);
    let digest = Digest::sha256_of(&bytes);
    let mut writer = store.writer(&digest, Box::new(|_| {})).await.unwrap();
    writer.append(vec![bytes.clone()]).await.unwrap();
    writer.close().await.unwrap();
    drop(writer);
    assert_eq!(store.stat(&digest).await.unwrap(), None);
    assert!(!store.list().await.unwrap().iter().any(|e| e.digest == digest));
}

async fn an_existing_blob_is_never_replaced(store: &dyn BlobStore) {
    let bytes = Bytes::from_static(b"the first copy");
    let digest = Digest::sha256_of(&bytes);
    write(store, &digest, &bytes, 5).await.unwrap();
    let first = store.stat(&digest).await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    write(store, &digest, &bytes, 3)
        .await
        .expect("a second publish of a digest succeeds");
    store.put(&digest, bytes.clone()).await.unwrap();
    assert_eq!(
        store.stat(&digest).await.unwrap().unwrap(),
        first,
        "the first copy stays, untouched"
    );
    // A wrong second copy cannot get in either.
    assert!(
        write(store, &digest, &Bytes::from_static(b"an impostor"), 5)
            .await
            .is_err()
    );
    assert_eq!(store.read(&digest).await.unwrap().unwrap(), bytes);
}

async fn concurrent_writers_of_one_digest_all_succeed(store: Arc<dyn BlobStore>) {
    let bytes = pattern(700_000);
    let digest = Digest::sha256_of(&bytes);
    let writers = (0..4).map(|i| {
        let (store, bytes, digest) = (store.clone(), bytes.clone(), digest.clone());
        tokio::spawn(async move { write(store.as_ref(), &digest, &bytes, 50_000 + i * 7).await })
    });
    for done in futures_util::future::join_all(writers).await {
        assert_eq!(done.unwrap().unwrap(), bytes.len() as u64);
    }
    assert_eq!(store.read(&digest).await.unwrap().unwrap(), bytes);
    let copies = store
        .list()
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.digest == digest)
        .count();
    assert_eq!(copies, 1);
}

async fn bytes_written_so_far_read_back_before_and_after_commit(store: &dyn BlobStore) {
    let bytes = pattern(600_000);
    let digest = Digest::sha256_of(&bytes);
    let reported = Arc::new(parking_lot::Mutex::new(0u64));
    let seen = reported.clone();
    let mut writer = store
        .writer(&digest, Box::new(move |n| *seen.lock() = n))
        .await
        .unwrap();
    let back = writer.read_back();
    writer.append(vec![bytes.slice(..250_000)]).await.unwrap();
    writer.append(vec![bytes.slice(250_000..)]).await.unwrap();
    writer.close().await.unwrap();
    assert_eq!(*reported.lock(), bytes.len() as u64, "on_written reports every byte");
    assert_eq!(back.read_at(1000, 300_000).await.unwrap(), bytes.slice(1000..301_000));
    writer.commit(&digest).await.unwrap();
    assert_eq!(
        back.read_at(599_000, 1000).await.unwrap(),
        bytes.slice(599_000..),
        "a trailing reader still reads once the blob is published"
    );
}

async fn deleted_blobs_are_gone(store: &dyn BlobStore) {
    let bytes = Bytes::from_static(b"short-lived");
    let digest = Digest::sha256_of(&bytes);
    store.put(&digest, bytes).await.unwrap();
    assert!(store.delete(&digest).await.unwrap());
    assert_eq!(store.stat(&digest).await.unwrap(), None);
    assert!(store.open(&digest).await.unwrap().is_none());
    assert!(!store.delete(&digest).await.unwrap());
}

/// A body of `parts`, then an error when `fail` (a client that disconnects mid-chunk).
fn body(parts: &[&'static [u8]], fail: bool) -> super::ByteStream {
    let mut items: Vec<std::io::Result<Bytes>> = parts.iter().map(|p| Ok(Bytes::from_static(p))).collect();
    if fail {
        items.push(Err(std::io::Error::other("connection reset")));
    }
    Box::pin(futures_util::stream::iter(items))
}

fn range(start: u64, len: u64) -> Option<super::ChunkRange> {
    Some(super::ChunkRange {
        start,
        end: start + len - 1,
    })
}

/// The state a backend keeps for an upload session, read from its data (not from the instance
/// that wrote it), or `None` when it keeps no such session.
pub(crate) type Recorded<'a> = dyn Fn(&str) -> BoxFuture<'static, Option<UploadState>> + 'a;

/// Assert that the state recorded for `id` is exactly that of `bytes`: their length and the
/// SHA-256 state that continues from them, so a resume needs no rehash of what came before.
async fn assert_recorded(recorded: &Recorded<'_>, id: &str, bytes: &[u8]) {
    let state = recorded(id).await.expect("a resumable session's state is recorded");
    assert_eq!(state.len, bytes.len() as u64, "the recorded length");
    let hasher = state.hasher().expect("the recorded hash state loads");
    assert_eq!(
        hasher.finish(),
        Digest::sha256_of(bytes),
        "the recorded hash state covers exactly the committed bytes"
    );
}

/// The [`UploadStore`](super::UploadStore) contract. `reopen` makes a fresh instance over the
/// same data (a restart, or another replica), once the suite has dropped the one before;
/// `blobs` is where finished uploads publish; `recorded` reads a session's state from the data.
pub(crate) async fn upload_store(
    reopen: &dyn Fn() -> Arc<dyn super::UploadStore>,
    blobs: Arc<dyn BlobStore>,
    recorded: &Recorded<'_>,
) {
    let repo: crate::oci::RepoName = "team/app".parse().unwrap();
    let uploads = reopen();
    let unknown = "0123456789abcdef0123456789abcdef";
    assert!(matches!(uploads.status(unknown).await, Err(Error::UploadUnknown)));

    // Chunks, a restart between them, and a finish that publishes exactly their bytes.
    let id = uploads.create(&repo, "alice", true, 10).await.unwrap();
    assert_eq!(super::parse_upload_id(&id), Some(id.as_str()));
    assert_eq!(uploads.status(&id).await.unwrap(), (repo.clone(), 0));
    assert_recorded(recorded, &id, b"").await;
    let n = uploads
        .append(&id, range(0, 6), body(&[b"hel", b"lo "], false), 1 << 20)
        .await
        .unwrap();
    assert_eq!(n, 6);
    assert_recorded(recorded, &id, b"hello ").await;
    drop(uploads);
    let uploads = reopen();
    assert_eq!(
        uploads.status(&id).await.unwrap(),
        (repo.clone(), 6),
        "the session outlives its process"
    );

    // Rejected chunks leave it as it was: wrong start, wrong length, too large, a body error.
    let err = uploads
        .append(&id, range(3, 2), body(&[b"xx"], false), 1 << 20)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::RangeMismatch { start: 3, offset: 6 }), "{err}");
    let err = uploads
        .append(&id, range(6, 5), body(&[b"xx"], false), 1 << 20)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::ChunkLength { declared: 5, got: 2 }), "{err}");
    let err = uploads
        .append(&id, None, body(&[b"0123456789"], false), 10)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::TooLarge { limit: 10 }), "{err}");
    let err = uploads
        .append(&id, None, body(&[b"junk"], true), 1 << 20)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Body(_)), "{err}");
    // A chunk whose request is dropped mid-body.
    let stalled: super::ByteStream = Box::pin(
        futures_util::stream::iter([Ok(Bytes::from_static(b"partial"))]).chain(futures_util::stream::pending()),
    );
    let cut = tokio::time::timeout(Duration::from_millis(200), uploads.append(&id, None, stalled, 1 << 20)).await;
    assert!(cut.is_err(), "the stalled chunk was cut off");
    assert_eq!(
        uploads.status(&id).await.unwrap().1,
        6,
        "no rejected or cut chunk counted"
    );
    assert_recorded(recorded, &id, b"hello ").await;

    let n = uploads
        .append(&id, None, body(&[b"world"], false), 1 << 20)
        .await
        .unwrap();
    assert_eq!(n, 11);
    assert_recorded(recorded, &id, b"hello world").await;
    // A third instance finishes what the second continued from the first's recorded state.
    drop(uploads);
    let uploads = reopen();
    assert_eq!(uploads.status(&id).await.unwrap(), (repo.clone(), 11));
    let digest = Digest::sha256_of(b"hello world");
    assert_eq!(uploads.finish(&id, &digest).await.unwrap(), 11);
    assert_eq!(
        blobs.read(&digest).await.unwrap().unwrap(),
        Bytes::from_static(b"hello world")
    );
    assert!(
        matches!(uploads.status(&id).await, Err(Error::UploadUnknown)),
        "finished sessions end"
    );

    // A mismatched finish publishes nothing and ends the session.
    let id = uploads.create(&repo, "alice", true, 10).await.unwrap();
    uploads
        .append(&id, None, body(&[b"not what was claimed"], false), 1 << 20)
        .await
        .unwrap();
    let claimed = Digest::sha256_of(b"the claim");
    let err = uploads.finish(&id, &claimed).await.unwrap_err();
    assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");
    assert!(recorded(&id).await.is_none(), "an ended session keeps no state");
    assert_eq!(blobs.stat(&claimed).await.unwrap(), None);
    assert_eq!(
        blobs.stat(&Digest::sha256_of(b"not what was claimed")).await.unwrap(),
        None
    );
    assert!(matches!(uploads.status(&id).await, Err(Error::UploadUnknown)));

    // Cancel, and the per-owner limit that every ending gives back to.
    let a = uploads.create(&repo, "bob", true, 2).await.unwrap();
    let _b = uploads.create(&repo, "bob", true, 2).await.unwrap();
    let err = uploads.create(&repo, "bob", true, 2).await.unwrap_err();
    assert!(matches!(err, Error::SessionLimit { limit: 2 }), "{err}");
    uploads
        .create(&repo, "carol", true, 2)
        .await
        .expect("the limit is per owner");
    uploads.append(&a, None, body(&[b"abc"], false), 1 << 20).await.unwrap();
    uploads.cancel(&a).await.unwrap();
    assert!(matches!(uploads.status(&a).await, Err(Error::UploadUnknown)));
    assert!(matches!(uploads.cancel(&a).await, Err(Error::UploadUnknown)));
    uploads
        .create(&repo, "bob", true, 2)
        .await
        .expect("a cancel gives the place back");
    assert!(
        uploads.orphans(Duration::ZERO).await.unwrap().is_empty(),
        "live sessions are not orphans"
    );
}
