//! Request bodies that stall: see [`StallTimeout`].

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep, sleep};

/// A request body that fails once it has sent nothing for `timeout` while its reader waits. An
/// upload chunk then ends as on a disconnect, and its session stays as it was before the chunk.
/// A body wrapper rather than a socket timeout, because only the handler's reads say that the
/// request is waiting for body bytes (and not, say, for the disk). tower-http's `TimeoutBody`
/// does the same but hides the body's length and end from the handler, and starts a new timer
/// for every frame; this one arms its timer once and moves it only when it fires.
pub struct StallTimeout<B> {
    body: B,
    timeout: Duration,
    /// When the body last sent a frame (or was first read).
    last: Option<Instant>,
    timer: Option<Pin<Box<Sleep>>>,
}

impl<B> StallTimeout<B> {
    pub(super) fn new(body: B, timeout: Duration) -> Self {
        StallTimeout {
            body,
            timeout,
            last: None,
            timer: None,
        }
    }

    /// The body is waiting: fail once it sent nothing for the timeout.
    fn poll_stalled(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let last = *self.last.get_or_insert_with(Instant::now);
        let timer = self.timer.get_or_insert_with(|| Box::pin(sleep(self.timeout)));
        loop {
            ready!(timer.as_mut().poll(cx));
            let due = last + self.timeout;
            if Instant::now() >= due {
                return Poll::Ready(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("the request body sent nothing for {:?}", self.timeout),
                ));
            }
            timer.as_mut().reset(due);
        }
    }
}

impl<B> Body for StallTimeout<B>
where
    B: Body + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = B::Data;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Pending => this.poll_stalled(cx).map(|e| Some(Err(e.into()))),
            Poll::Ready(frame) => {
                this.last = Some(Instant::now());
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use futures_util::{StreamExt, stream};

    const T: Duration = Duration::from_millis(150);

    async fn next_frame<B: Body + Unpin>(body: &mut B) -> Option<Result<Frame<B::Data>, B::Error>> {
        std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await
    }

    #[tokio::test]
    async fn a_body_silent_for_the_timeout_fails_and_one_that_keeps_sending_does_not() {
        // Five frames 100 ms apart: 500 ms in all, never 150 ms silent.
        let steady = stream::unfold(0, |n| async move {
            if n == 5 {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            Some((Ok::<_, io::Error>(Bytes::from_static(b"x")), n + 1))
        });
        let mut body = StallTimeout::new(axum::body::Body::from_stream(steady), T);
        for _ in 0..5 {
            assert!(next_frame(&mut body).await.unwrap().is_ok());
        }
        assert!(next_frame(&mut body).await.is_none());

        let stalls = stream::once(async { Ok::<_, io::Error>(Bytes::from_static(b"x")) }).chain(stream::pending());
        let mut body = StallTimeout::new(axum::body::Body::from_stream(stalls), T);
        assert!(next_frame(&mut body).await.unwrap().is_ok());
        let start = Instant::now();
        let err = next_frame(&mut body).await.unwrap().unwrap_err();
        assert!(err.to_string().contains("sent nothing"), "{err}");
        assert!(
            start.elapsed() >= T && start.elapsed() < 10 * T,
            "{:?}",
            start.elapsed()
        );
    }
}
