//! The filesystem upload store: the shared contract over a store reopened for real (a new
//! metadata database handle each time), and what only files can do: hold more or fewer bytes
//! than the record says, or a record from before berth kept hash states.

use std::sync::atomic::Ordering;

use futures_util::future::BoxFuture;

use super::*;
use crate::store::{BlobStore, RedbMeta};

/// The upload store at `root` as a fresh process opens it, with its metadata and blobs.
fn open(root: &Path) -> (Uploads, Arc<dyn Meta>, Blobs) {
    let meta: Arc<dyn Meta> = Arc::new(RedbMeta::open(&root.join("meta.redb")).unwrap());
    let blobs = Blobs::open(root).unwrap();
    (Uploads::open(root, blobs.clone(), meta.clone()).unwrap(), meta, blobs)
}

fn body(bytes: &'static [u8]) -> ByteStream {
    Box::pin(futures_util::stream::iter([Ok(Bytes::from_static(bytes))]))
}

fn repo() -> RepoName {
    "team/app".parse().unwrap()
}

/// A session holding `bytes`, opened and written by a process that has since stopped.
async fn session_with(root: &Path, bytes: &'static [u8]) -> String {
    let (uploads, _, _) = open(root);
    let id = uploads.create(&repo(), "alice", true, 10).await.unwrap();
    uploads.append(&id, None, body(bytes), 1 << 20).await.unwrap();
    id
}

/// Open the store at `root` again and continue session `id`, which holds "hello ", with "world".
async fn resume_with_world(root: &Path, id: &str, why: &str) -> (Uploads, Arc<dyn Meta>, Blobs) {
    let (uploads, meta, blobs) = open(root);
    assert_eq!(uploads.status(id).await.unwrap(), (repo(), 6), "{why}");
    assert_eq!(uploads.append(id, None, body(b"world"), 1 << 20).await.unwrap(), 11);
    (uploads, meta, blobs)
}

/// Finish a session holding "hello world" and check that exactly those bytes were published.
async fn finish_hello_world(uploads: &Uploads, blobs: &Blobs, id: &str) {
    let digest = Digest::sha256_of(b"hello world");
    assert_eq!(uploads.finish(id, &digest).await.unwrap(), 11);
    assert_eq!(blobs.read(&digest).await.unwrap().unwrap().as_ref(), b"hello world");
}

#[tokio::test]
async fn the_filesystem_backend_keeps_the_upload_store_contract() {
    let root = tempfile::tempdir().unwrap();
    let blobs = Blobs::open(root.path()).unwrap();
    // The metadata handle of the instance now open: redb locks its file, so each reopen first
    // lets go of the last one, as a restarted process would.
    let current: Arc<Mutex<Option<Arc<dyn Meta>>>> = Arc::default();
    let reopen = || {
        let mut current = current.lock();
        *current = None;
        let meta: Arc<dyn Meta> = Arc::new(RedbMeta::open(&root.path().join("meta.redb")).unwrap());
        *current = Some(meta.clone());
        Arc::new(Uploads::open(root.path(), blobs.clone(), meta).unwrap()) as Arc<dyn UploadStore>
    };
    let recorded = |id: &str| {
        let (meta, id) = (current.lock().clone().expect("a store is open"), id.to_owned());
        Box::pin(async move { meta.upload(&id).await.unwrap().and_then(|r| r.state) })
            as BoxFuture<'static, Option<UploadState>>
    };
    super::super::conformance::upload_store(&reopen, Arc::new(blobs.clone()), &recorded).await;
}

#[tokio::test]
async fn a_restarted_session_continues_from_its_recorded_state_without_reading_its_file() {
    let root = tempfile::tempdir().unwrap();
    let id = session_with(root.path(), b"hello ").await;
    let (uploads, meta, blobs) = resume_with_world(root.path(), &id, "the recorded length").await;
    let record = meta.upload(&id).await.unwrap().unwrap();
    assert_eq!(record.handle, Some(UploadHandle::File { name: id.clone() }));
    finish_hello_world(&uploads, &blobs, &id).await;
    assert_eq!(uploads.rehashed.load(Ordering::Relaxed), 0, "no file was read back");
}

#[tokio::test]
async fn a_file_longer_than_its_record_is_cut_back_to_the_committed_bytes() {
    let root = tempfile::tempdir().unwrap();
    let id = session_with(root.path(), b"hello ").await;
    // A crash after a chunk's bytes reached the file but before its record was committed.
    let path = root.path().join("uploads").join(&id);
    let mut file = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
    std::io::Write::write_all(&mut file, b"half a chunk").unwrap();
    drop(file);

    let why = "the record, not the file, says how far the session is";
    let (uploads, _, blobs) = resume_with_world(root.path(), &id, why).await;
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        11,
        "the uncommitted bytes are gone"
    );
    finish_hello_world(&uploads, &blobs, &id).await;
}

#[tokio::test]
async fn a_file_shorter_than_its_record_is_a_broken_session_that_can_only_be_cancelled() {
    let root = tempfile::tempdir().unwrap();
    let id = session_with(root.path(), b"hello world").await;
    // Committed bytes lost (a damaged or restored disk).
    let path = root.path().join("uploads").join(&id);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(5)
        .unwrap();

    let (uploads, meta, blobs) = open(root.path());
    let says_broken = |e: Error| {
        let text = e.to_string();
        assert!(
            text.contains("is broken") && text.contains("holds 5 bytes but 11"),
            "{text}"
        );
    };
    says_broken(uploads.status(&id).await.unwrap_err());
    says_broken(uploads.append(&id, None, body(b"!"), 1 << 20).await.unwrap_err());
    let digest = Digest::sha256_of(b"hello world");
    says_broken(uploads.finish(&id, &digest).await.unwrap_err());
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 5, "nothing was cut to fit");
    assert_eq!(blobs.stat(&digest).await.unwrap(), None, "nothing was published");
    uploads.cancel(&id).await.unwrap();
    assert!(matches!(uploads.status(&id).await, Err(Error::UploadUnknown)));
    assert_eq!(meta.upload(&id).await.unwrap(), None);
    assert!(!path.exists());
}

#[tokio::test]
async fn a_session_recorded_before_hash_states_resumes_by_hashing_its_file_once() {
    let root = tempfile::tempdir().unwrap();
    let id = session_with(root.path(), b"hello ").await;
    {
        // Rewrite the record as berth wrote it before it kept a state or a handle.
        let (_, meta, _) = open(root.path());
        let record = meta.upload(&id).await.unwrap().unwrap();
        let old = UploadRecord {
            state: None,
            handle: None,
            ..record
        };
        meta.put_upload(&id, &old).await.unwrap();
    }

    let (uploads, meta, blobs) = resume_with_world(root.path(), &id, "the file is the record").await;
    assert_eq!(uploads.rehashed.load(Ordering::Relaxed), 1);
    let record = meta.upload(&id).await.unwrap().unwrap();
    assert_eq!(record.state.map(|s| s.len), Some(11), "the record now keeps the state");
    assert_eq!(record.handle, Some(UploadHandle::File { name: id.clone() }));
    finish_hello_world(&uploads, &blobs, &id).await;
    assert_eq!(
        uploads.rehashed.load(Ordering::Relaxed),
        1,
        "hashed once, then continued"
    );
}

/// Chunks larger than an upload's spool batch are hashed on a thread beside the receive (`spool::Hashing`);
/// the session's hash state must still cover every byte, in order, across chunks and a restart.
#[tokio::test]
async fn large_chunks_hashed_beside_the_receive_cover_every_byte_across_chunks_and_a_restart() {
    let root = tempfile::tempdir().unwrap();
    let blob: Vec<u8> = (0..(3 * crate::store::spool::UPLOAD_BATCH + 12_345))
        .map(|i| (i % 253) as u8)
        .collect();
    let (first, second) = blob.split_at(crate::store::spool::UPLOAD_BATCH * 2 + 7);
    // Many small buffers, as a socket delivers them.
    let pieces = |part: &[u8]| -> ByteStream {
        let chunks: Vec<_> = part.chunks(16 << 10).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
        Box::pin(futures_util::stream::iter(chunks))
    };
    let id = {
        let (uploads, _, _) = open(root.path());
        let id = uploads.create(&repo(), "alice", true, 10).await.unwrap();
        assert_eq!(
            uploads.append(&id, None, pieces(first), 1 << 30).await.unwrap(),
            first.len() as u64
        );
        id
    };
    let (uploads, _, blobs) = open(root.path());
    assert_eq!(
        uploads.append(&id, None, pieces(second), 1 << 30).await.unwrap(),
        blob.len() as u64
    );
    let wrong = Digest::sha256_of(&blob[1..]);
    let right = Digest::sha256_of(&blob);
    assert_eq!(
        uploads.rehashed.load(Ordering::Relaxed),
        0,
        "the committed hash state was used"
    );
    assert!(matches!(
        uploads.finish(&id, &wrong).await,
        Err(Error::DigestMismatch { .. })
    ));
    let id = uploads.create(&repo(), "alice", true, 10).await.unwrap();
    uploads.append(&id, None, pieces(&blob), 1 << 30).await.unwrap();
    assert_eq!(uploads.finish(&id, &right).await.unwrap(), blob.len() as u64);
    assert_eq!(blobs.read(&right).await.unwrap().unwrap().as_ref(), &blob[..]);
}
