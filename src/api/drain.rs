//! Upload bodies that the handler can finish reading after the store gave up on them.
//!
//! When a push fails halfway through its body (a full disk, a chunk at the wrong offset), the
//! error is ready while the client is still sending. If the server answered and closed now, the
//! kernel would reset the connection over the unread bytes, and the client would see
//! "connection reset" instead of the error. So the rest of the body is read and discarded first,
//! within [`DRAIN_BYTES`] and [`DRAIN_TIME`]; past either, the connection is closed as before.

use std::io;
use std::pin::Pin;
use std::sync::Arc;

use parking_lot::Mutex;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};

/// At most this much of a failed upload's remaining body is read to deliver its error.
pub const DRAIN_BYTES: u64 = 1 << 30;
/// For at most this long (nginx's `lingering_time` default).
pub const DRAIN_TIME: Duration = Duration::from_secs(30);

struct State<S> {
    body: S,
    /// The store read from it: a client that sent `Expect: 100-continue` is sending now.
    started: bool,
    ended: bool,
}

/// The body as the store reads it.
pub struct Body<S>(Arc<Mutex<State<S>>>);

/// What the handler keeps to drain the body after an error.
pub struct Rest<S>(Arc<Mutex<State<S>>>);

/// Split `body` into the stream the store reads and the handle that drains what it left.
pub fn drainable<S>(body: S) -> (Body<S>, Rest<S>) {
    let state = Arc::new(Mutex::new(State {
        body,
        started: false,
        ended: false,
    }));
    (Body(state.clone()), Rest(state))
}

impl<S> Stream for Body<S>
where
    S: Stream<Item = io::Result<Bytes>> + Unpin,
{
    type Item = io::Result<Bytes>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut state = self.0.lock();
        state.started = true;
        let next = state.body.poll_next_unpin(cx);
        if matches!(next, Poll::Ready(None | Some(Err(_)))) {
            state.ended = true;
        }
        next
    }
}

impl<S> Rest<S>
where
    S: Stream<Item = io::Result<Bytes>> + Unpin,
{
    /// Read and discard what is left of a body the store started on, within the limits.
    pub async fn drain(self) {
        {
            let state = self.0.lock();
            if !state.started || state.ended {
                return;
            }
        }
        let mut body = Body(self.0);
        let discard = async {
            let mut read = 0u64;
            while let Some(Ok(chunk)) = body.next().await {
                read += chunk.len() as u64;
                if read > DRAIN_BYTES {
                    return;
                }
            }
        };
        let _ = tokio::time::timeout(DRAIN_TIME, discard).await;
    }

    /// Drain after an error, then pass `result` on.
    pub async fn after<T, E>(self, result: Result<T, E>) -> Result<T, E> {
        if result.is_err() {
            self.drain().await;
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(n: usize) -> impl Stream<Item = io::Result<Bytes>> + Unpin {
        futures_util::stream::iter((0..n).map(|_| Ok(Bytes::from_static(b"abcd"))))
    }

    #[tokio::test]
    async fn an_error_halfway_reads_the_rest_and_an_unread_body_stays_unread() {
        let (mut body, rest) = drainable(chunks(10));
        body.next().await.unwrap().unwrap();
        drop(body);
        let state = rest.0.clone();
        rest.after(Err::<(), ()>(())).await.unwrap_err();
        assert!(state.lock().ended, "the rest was read to its end");

        let (body, rest) = drainable(chunks(10));
        drop(body);
        let state = rest.0.clone();
        rest.after(Err::<(), ()>(())).await.unwrap_err();
        let state = state.lock();
        assert!(
            !state.started && !state.ended,
            "a body the store never read is left alone"
        );
    }
}
