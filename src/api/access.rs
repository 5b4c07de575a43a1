//! One middleware around every route: a request id (the client's `X-Request-Id` when it is a
//! sane token, else a fresh one, echoed in the response), a tracing span carrying it, the request
//! metrics, and exactly one access-log line per request.
//!
//! The line is written when the response body ends or is dropped, so it has the bytes actually
//! sent and the whole duration of a download, and says whether the body completed. It never holds
//! a secret: the path is logged without its query string, and no header is logged at all.

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use http_body::{Frame, SizeHint};
use tracing::Instrument;

use super::{AppState, endpoint};
use crate::auth::{ClientAddr, User};
use crate::metrics::{self, CacheResult, Kind, Metrics};

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Longest client-sent request id that is kept.
const MAX_ID: usize = 128;

/// The id of the request being served, in its extensions.
#[derive(Clone, Debug)]
pub struct RequestId(pub String);

/// A client's request id is kept when it is 1 to 128 characters of `A-Z a-z 0-9 - _ . :`, so it
/// cannot forge log fields or split a header.
fn sane(id: &str) -> bool {
    (1..=MAX_ID).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// 32 hex digits, unique across restarts: a random half chosen at startup and a counter. (A v4
/// UUID per request cost a `getrandom` syscall each, visible in the manifest GET profile.)
fn new_request_id() -> String {
    static PREFIX: LazyLock<String> = LazyLock::new(|| uuid::Uuid::new_v4().simple().to_string()[..16].to_owned());
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    format!("{}{:016x}", *PREFIX, COUNTER.fetch_add(1, Ordering::Relaxed))
}

pub async fn access(State(app): State<Arc<AppState>>, mut request: Request, next: Next) -> Response {
    let started = Instant::now();
    let id = request
        .headers()
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| sane(v))
        .map(str::to_owned)
        .unwrap_or_else(new_request_id);
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let kind = endpoint::kind(&path);
    let client = app.limits.client_ip(request.headers(), request.extensions());
    request.extensions_mut().insert(RequestId(id.clone()));
    request.extensions_mut().insert(ClientAddr(client));

    let span = tracing::info_span!("request", id = %id);
    let mut response = next.run(request).instrument(span).await;

    response
        .headers_mut()
        .insert(REQUEST_ID, HeaderValue::from_str(&id).expect("a sane or generated id"));
    let metrics = app.services.core.metrics().clone();
    let cache = response.extensions().get::<CacheResult>().copied();
    if let Some(result) = cache {
        metrics.cache(kind, result);
    }
    let length = response.headers().get(header::CONTENT_LENGTH);
    let line = Line {
        length: length.and_then(|v| v.to_str().ok()?.parse().ok()),
        user: response.extensions_mut().remove::<User>().map(|u| u.0),
        status: response.status(),
        metrics,
        started,
        id,
        method,
        path,
        kind,
        client,
        cache,
        bytes: 0,
        ended: false,
    };
    response.map(|body| Body::new(Logged { body, line }))
}

/// What the access-log line says about one request.
struct Line {
    metrics: std::sync::Arc<Metrics>,
    started: Instant,
    id: String,
    method: Method,
    path: String,
    kind: Kind,
    client: Option<IpAddr>,
    user: Option<String>,
    cache: Option<CacheResult>,
    status: StatusCode,
    /// The response's Content-Length.
    length: Option<u64>,
    bytes: u64,
    /// The body reached its end (rather than being dropped or failing midway).
    ended: bool,
}

impl Line {
    fn write(&self, complete: bool) {
        self.metrics.request(
            self.kind,
            metrics::Method::of(self.method.as_str()),
            self.status.as_u16(),
        );
        let duration_ms = (self.started.elapsed().as_secs_f64() * 10_000.0).round() / 10.0;
        let cache = self.cache.map_or("-", CacheResult::as_str);
        let mut buf = [0; 48];
        tracing::info!(
            target: "berth::access",
            request_id = %self.id,
            method = %self.method,
            path = %self.path,
            status = self.status.as_u16(),
            bytes = self.bytes,
            duration_ms,
            client = ip_text(self.client, &mut buf),
            user = self.user.as_deref().unwrap_or("-"),
            cache,
            complete,
            "request"
        );
    }
}

/// The client address as text for the access line, `-` when unknown, formatted into `buf` on the
/// stack: a `String` per request showed in the manifest GET profile. It stays a `&str` field,
/// which the text format quotes as it always has.
fn ip_text(ip: Option<IpAddr>, buf: &mut [u8; 48]) -> &str {
    use std::io::Write;
    let Some(ip) = ip else { return "-" };
    let mut cursor = std::io::Cursor::new(&mut buf[..]);
    // Any address fits: the longest IPv6 text is 45 characters.
    write!(cursor, "{ip}").expect("an address fits in 48 bytes");
    let len = cursor.position() as usize;
    std::str::from_utf8(&buf[..len]).expect("an address is ASCII")
}

/// The response body, counted as it is sent; writes the access line when it ends or is dropped.
struct Logged {
    body: Body,
    line: Line,
}

impl http_body::Body for Logged {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let n = data.len() as u64;
                    this.line.bytes += n;
                    this.line.metrics.sent(this.line.kind, this.line.cache, n);
                }
            }
            Poll::Ready(None) => this.line.ended = true,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        // hyper stops polling a body once it has sent Content-Length bytes, so a streamed body
        // that was sent whole may never report its end.
        let complete = self.line.ended
            || http_body::Body::is_end_stream(&self.body)
            || self.line.method == Method::HEAD
            || self.line.length == Some(self.line.bytes);
        self.line.write(complete);
    }
}

#[cfg(test)]
mod tests {
    use super::{ip_text, sane};

    #[test]
    fn client_addresses_are_written_whole_and_a_missing_one_is_a_dash() {
        let mut buf = [0; 48];
        assert_eq!(ip_text(None, &mut buf), "-");
        assert_eq!(ip_text(Some("127.0.0.1".parse().unwrap()), &mut buf), "127.0.0.1");
        let longest = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
        assert_eq!(ip_text(Some(longest.parse().unwrap()), &mut buf), longest);
        let mapped = "::ffff:255.255.255.255";
        assert_eq!(ip_text(Some(mapped.parse().unwrap()), &mut buf), mapped);
    }

    #[test]
    fn request_ids_are_short_plain_tokens() {
        assert!(sane("abc-123_x.y:z"));
        assert!(sane(&"a".repeat(128)));
        for bad in ["", "a b", "a\nb", "a\"b", "ä", "a=b", "x,y"] {
            assert!(!sane(bad), "{bad:?}");
        }
        assert!(!sane(&"a".repeat(129)));
    }
}
