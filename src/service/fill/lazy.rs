//! A `Range` GET of a blob on a miss, served while its fill runs. Clients that pull lazily
//! (eStargz, SOCI, zstd:chunked) ask for small parts of large layers; waiting for the whole
//! verified fill made a 64 KiB part of a cold 256 MiB layer cost the whole download.
//!
//! A part is served as soon as its bytes are known: from the fill (its window, or what it wrote)
//! when the fill has already received the part's first byte, otherwise by a ranged upstream
//! request beside the fill. The fill itself goes on and is verified and cached as before. An
//! explicit range (`bytes=a-b`, what lazy clients send) is asked for upstream at once ([`Early`]),
//! beside the fill's own request, so the client waits for one upstream round trip, not two.
//! The blob's size, which the `Range` is checked against, is taken from whichever answer comes
//! first ([`size_for_range`]): the ranged answer's `Content-Range` total serves as well as the
//! fill's `Content-Length`, so the part's headers do not wait for the fill's exchange either.
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
//! - A size taken from the ranged answer is the upstream's word, exactly like the fill's
//!   `Content-Length`: neither is verified before the part goes out, and either only bounds the
//!   `Range` check and the `Content-Range` total. The fill checks the length it receives against
//!   its own answer and the digest as before; a wrong total changes nothing that is stored. A
//!   range that covers the whole blob by that size is still served like a whole GET (from the
//!   fill, last byte held until verified), never from the ranged request.

use std::sync::Arc;

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
    task: tokio::task::JoinHandle<upstream::Result<upstream::RemoteBlob>>,
    /// The blob's size as the ranged answer states it, as soon as that answer is in.
    total: Option<tokio::sync::oneshot::Receiver<u64>>,
}

impl Early {
    /// Ask for `range` (a `Range` header) now, if it is one explicit `bytes=a-b` beyond the
    /// bytes `fill` has.
    pub fn start(fill: &Fill, upstream: &Arc<dyn Remote>, remote: &str, range: &str) -> Option<Early> {
        let (first, last) = explicit(range)?;
        if first < fill.received() || fill.verified() {
            return None;
        }
        let (upstream, remote, digest) = (upstream.clone(), remote.to_owned(), fill.digest.clone());
        let len = last - first + 1;
        let (tell, total) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let answer = upstream.get_blob_range(&remote, &digest, first, len).await;
            if let Some(total) = answer.as_ref().ok().and_then(|a| a.total) {
                let _ = tell.send(total);
            }
            answer
        });
        Some(Early {
            start: first,
            len,
            task,
            total: Some(total),
        })
    }

    /// The blob's size from the ranged answer, once it is in; `None` (at once on later calls)
    /// when that answer failed or did not say.
    pub async fn total(&mut self) -> Option<u64> {
        self.total.take()?.await.ok()
    }
}

/// The blob's size for a range request on a miss: from whichever upstream answer comes first,
/// the fill's or the early ranged request's (its `Content-Range` total), so the response does not
/// wait for the fill's exchange (a cold token, a redirect) when the part's came back sooner.
pub async fn size_for_range(fill: &Fill, early: Option<&mut Early>) -> Result<Option<u64>, FillError> {
    let Some(early) = early else {
        return fill.started().await;
    };
    tokio::select! {
        started = fill.started() => started,
        Some(total) = early.total() => Ok(Some(total)),
    }
}

impl Drop for Early {
    fn drop(&mut self) {
        self.task.abort();
    }
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
            Some(mut early) => {
                let answer = async move {
                    (&mut early.task).await.map_err(|e| upstream::Error::Unavailable {
                        upstream: upstream.name().to_owned(),
                        reason: format!("ranged request: {e}"),
                    })?
                };
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
