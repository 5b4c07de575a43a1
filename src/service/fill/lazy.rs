//! A `Range` GET of a blob on a miss, served while its fill runs. Clients that pull lazily
//! (eStargz, SOCI, zstd:chunked) ask for small parts of large layers; waiting for the whole
//! verified fill made a 64 KiB part of a cold 256 MiB layer cost the whole download.
//!
//! A part is served as soon as its bytes are known: from the fill (its window, or what it wrote)
//! when the fill has already received the part's first byte, otherwise by a ranged upstream
//! request beside the fill. The fill itself goes on and is verified and cached as before. An
//! explicit range (`bytes=a-b`, what lazy clients send) is asked for upstream at once ([`Early`]),
//! beside the fill's own request, so the client waits for one upstream round trip, not two. The
//! fill's own request waits until that part's answer has begun (at most [`PART_FIRST_WAIT`]): an
//! upstream already streaming the whole blob answered the part three times slower (W9 in
//! BENCHMARKS.md).
//!
//! Why a part may go out before the fill verifies, when a whole body may not (promise 1): a whole
//! response that completes is the blob, and a client takes it as such. A part cannot be checked
//! against the blob's digest by anyone, berth included, until every other byte is in; the formats
//! that read parts carry their own digests for them (a table of contents whose digest is in the
//! manifest). So a part is worth exactly what the same part fetched directly from the upstream is
//! worth, which is what the lazy client would otherwise get. What stays:
//! - Unverified bytes are never stored: a ranged upstream body goes to the client only, and the
//!   fill's bytes are published only after they verify.
//! - A range that is the whole blob is served like a whole GET: its last byte waits.
//! - A part still being sent when the fill fails verification ends in an error, which aborts the
//!   response (whether it came from the fill or from the ranged request: a corrupt upstream is
//!   not trusted for its parts either). A part already sent in full cannot be taken back.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};

use super::{Fill, FillError, FillProgress};
use crate::metrics::Tracked;
use crate::store::{ByteStream, RangeRead, RemoteBlob, Stored};
use crate::upstream::{self, Remote};

/// A blob of `size` bytes whose fill is under way, ready to serve one range of: the API parses
/// the `Range` header against `size` and asks for the part.
pub fn ranged(
    fill: Arc<Fill>,
    size: u64,
    upstream: Arc<dyn Remote>,
    remote: String,
    early: Option<Early>,
    waiter: Tracked,
) -> Stored {
    Stored::Stream(RemoteBlob {
        size,
        read: Box::new(Lazy {
            fill,
            size,
            upstream,
            remote,
            early,
            waiter,
        }),
    })
}

/// A ranged upstream request started before the fill has answered (so before the blob's size is
/// known and the `Range` header can be checked against it), for an explicit range the fill has
/// not reached. Used if the range turns out to be exactly what the client gets; aborted when
/// dropped unused.
pub struct Early {
    start: u64,
    len: u64,
    /// The upstream's name, for an answer lost with its task.
    upstream: String,
    answer: Answer,
}

enum Answer {
    Pending(tokio::task::JoinHandle<upstream::Result<upstream::RemoteBlob>>),
    Ready(upstream::Result<upstream::RemoteBlob>),
}

/// How long a fill's own upstream request waits for an early part's answer to begin. A part is
/// answered in milliseconds; an upstream slower than this delays the whole blob by this at most.
const PART_FIRST_WAIT: Duration = Duration::from_millis(200);

impl Fill {
    /// Before the fill's own upstream request: wait for an early part's answer, if one was asked
    /// for before this fill started.
    pub(super) async fn let_a_part_go_first(&self) {
        let part = self.part_first.lock().take();
        if let Some(part) = part {
            let _ = tokio::time::timeout(PART_FIRST_WAIT, part).await;
        }
    }
}

impl Early {
    /// Ask for `range` (a `Range` header) now, if it is one explicit `bytes=a-b` beyond the
    /// bytes `fill` has.
    pub fn start(fill: &Fill, upstream: &Arc<dyn Remote>, remote: &str, range: &str) -> Option<Early> {
        let (first, last) = explicit(range)?;
        if first < fill.received() || fill.verified() {
            return None;
        }
        let name = upstream.name().to_owned();
        let (upstream, remote, digest) = (upstream.clone(), remote.to_owned(), fill.digest.clone());
        let len = last - first + 1;
        // The fill waits for this answer unless its own request has already gone out; either way
        // the answer (or its failure) drops `answered`, which lets it go.
        let (answered, part_first) = tokio::sync::oneshot::channel::<()>();
        if matches!(*fill.progress.borrow(), FillProgress::Connecting) {
            *fill.part_first.lock() = Some(part_first);
        }
        let task = tokio::spawn(async move {
            let answer = upstream.get_blob_range(&remote, &digest, first, len).await;
            drop(answered);
            answer
        });
        Some(Early {
            start: first,
            len,
            upstream: name,
            answer: Answer::Pending(task),
        })
    }

    /// Wait for the part's answer: the whole blob's size if the upstream told it (the total of
    /// its `Content-Range`). The fill's own request waits for this answer, so the size comes from
    /// here first; it is checked against the bytes when the fill completes, like the fill's own.
    pub async fn whole_size(&mut self) -> Option<u64> {
        if let Answer::Pending(task) = &mut self.answer {
            let answer = task.await.unwrap_or_else(|e| {
                Err(upstream::Error::Unavailable {
                    upstream: self.upstream.clone(),
                    reason: format!("ranged request: {e}"),
                })
            });
            self.answer = Answer::Ready(answer);
        }
        match &self.answer {
            Answer::Ready(Ok(part)) => part.whole,
            _ => None,
        }
    }

    /// The part's answer, once it is in.
    async fn answer(mut self) -> upstream::Result<upstream::RemoteBlob> {
        self.whole_size().await;
        match std::mem::replace(&mut self.answer, Answer::Ready(Err(upstream::Error::NotFound))) {
            Answer::Ready(answer) => answer,
            Answer::Pending(_) => unreachable!("whole_size waited for the answer"),
        }
    }
}

impl Drop for Early {
    fn drop(&mut self) {
        if let Answer::Pending(task) = &self.answer {
            task.abort();
        }
    }
}

/// The blob's size, to serve a part of it: from an early part's answer when that comes first (the
/// fill's own request waits for it), else when the fill's upstream answers.
pub async fn known_size(fill: &Fill, early: Option<&mut Early>) -> Result<Option<u64>, FillError> {
    if let Some(early) = early {
        tokio::select! {
            biased;
            started = fill.started() => return started,
            Some(size) = early.whole_size() => return Ok(Some(size)),
        }
    }
    fill.started().await
}

/// `bytes=a-b` as `(a, b)`; `None` for any other form (a suffix, an open end, several ranges),
/// which waits for the size as before.
fn explicit(range: &str) -> Option<(u64, u64)> {
    let (first, last) = range.trim().strip_prefix("bytes=")?.split_once('-')?;
    let (first, last): (u64, u64) = (first.trim().parse().ok()?, last.trim().parse().ok()?);
    (first <= last).then_some((first, last))
}

struct Lazy {
    fill: Arc<Fill>,
    size: u64,
    upstream: Arc<dyn Remote>,
    /// The repository's name upstream.
    remote: String,
    early: Option<Early>,
    waiter: Tracked,
}

impl RangeRead for Lazy {
    fn range(self: Box<Self>, start: u64, len: u64) -> ByteStream {
        let Lazy {
            fill,
            size,
            upstream,
            remote,
            early,
            waiter,
        } = *self;
        if start == 0 && len == size {
            return Box::pin(fill.stream(waiter));
        }
        if start < fill.received() {
            return Box::pin(fill.part(start, start + len, waiter));
        }
        let digest = fill.digest.clone();
        match early.filter(|e| (e.start, e.len) == (start, len)) {
            Some(early) => {
                let answer = early.answer();
                Box::pin(fetched(fill, answer, waiter))
            }
            None => {
                let answer = async move { upstream.get_blob_range(&remote, &digest, start, len).await };
                Box::pin(fetched(fill, answer, waiter))
            }
        }
    }
}

/// The part from a ranged upstream request, ended in an error if the fill turns out corrupt
/// while it is being sent.
fn fetched(
    fill: Arc<Fill>,
    answer: impl Future<Output = upstream::Result<upstream::RemoteBlob>> + Send + 'static,
    waiter: Tracked,
) -> impl futures_util::Stream<Item = std::io::Result<bytes::Bytes>> + Send + 'static {
    let request = async move { answer.await.map(|part| part.body) };
    futures_util::stream::once(request).try_flatten().map(move |item| {
        let _counted = &waiter;
        if let FillProgress::Failed(FillError::Corrupt(reason)) = &*fill.progress.borrow() {
            return Err(std::io::Error::other(format!(
                "upstream bytes of {} are corrupt: {reason}",
                fill.digest
            )));
        }
        item.map_err(std::io::Error::other)
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_one_explicit_range_is_asked_for_early() {
        assert_eq!(super::explicit("bytes=100-199"), Some((100, 199)));
        assert_eq!(super::explicit(" bytes=5-5"), Some((5, 5)));
        for other in [
            "bytes=100-",
            "bytes=-100",
            "bytes=0-1,5-9",
            "bytes=9-1",
            "items=0-1",
            "",
        ] {
            assert_eq!(super::explicit(other), None, "{other:?}");
        }
    }
}
