//! The client for one upstream registry: Bearer token dance (or Basic), redirects followed without
//! `Authorization` (Docker Hub sends blob GETs to a CDN), retries with backoff on connection
//! errors for idempotent requests, and a request budget that a 429 pauses.
//!
//! Credentials go only to this upstream and its token realm; a client's own credentials are never
//! forwarded (this module never sees them).

mod auth;
mod budget;
#[cfg(test)]
pub(crate) mod fault;
mod peer;
mod remote;

pub use peer::{PEER_BLOB_PATH, PEER_SECRET_HEADER, Peers};
pub use remote::{Remote, RemoteBlob};

/// Public for the fuzz target in fuzz/: challenges come from upstreams, untrusted.
pub use auth::{Challenge, parse_challenge};

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use reqwest::header::{ACCEPT, CONTENT_TYPE, LOCATION, RANGE, RETRY_AFTER, WWW_AUTHENTICATE};
use reqwest::{Method, Response, StatusCode};

use crate::config::UpstreamSettings;
use crate::metrics::{UpstreamError, UpstreamMetrics};
use crate::oci::{Digest, Hasher};

/// How an upstream request failed, in the terms a client of berth cares about.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    #[error("upstream {upstream} is unavailable: {reason}")]
    Unavailable { upstream: String, reason: String },
    #[error("upstream {upstream} is rate limiting; retry after {retry_after} s")]
    RateLimited { upstream: String, retry_after: u64 },
    #[error("not found upstream")]
    NotFound,
    #[error("upstream {upstream} sent invalid content: {reason}")]
    Invalid { upstream: String, reason: String },
    /// Offline mode: the request was never sent.
    #[error("upstream {upstream} is offline")]
    Offline { upstream: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What a manifest HEAD told us.
#[derive(Debug, Clone)]
pub struct RemoteHead {
    pub digest: Option<Digest>,
    pub media_type: Option<String>,
}

/// A fetched manifest, its digest verified.
#[derive(Debug, Clone)]
pub struct RemoteManifest {
    pub digest: Digest,
    pub media_type: Option<String>,
    pub bytes: Bytes,
}

/// Attempts for an idempotent request that fails to connect.
const ATTEMPTS: u32 = 3;
const MAX_REDIRECTS: usize = 5;

pub struct Upstream {
    pub settings: UpstreamSettings,
    http: reqwest::Client,
    tokens: auth::Tokens,
    budget: budget::Budget,
    metrics: UpstreamMetrics,
    /// Offline mode: `send` refuses every request, so nothing reaches the upstream.
    offline: AtomicBool,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.settings.name)
            .field("url", &self.settings.url.as_str())
            .finish()
    }
}

impl Upstream {
    pub fn new(settings: UpstreamSettings) -> Result<Upstream, reqwest::Error> {
        let http = http_client(settings.timeout)?;
        let budget = budget::Budget::new(settings.requests_per_second, settings.burst, settings.max_retry_after);
        Ok(Upstream {
            offline: AtomicBool::new(settings.offline),
            settings,
            http,
            tokens: auth::Tokens::default(),
            budget,
            metrics: UpstreamMetrics::default(),
        })
    }

    /// Count this upstream's requests in `metrics` (a detached set otherwise).
    pub fn with_metrics(mut self, metrics: UpstreamMetrics) -> Upstream {
        metrics.set_offline(self.is_offline());
        self.metrics = metrics;
        self
    }

    /// Whether offline mode is on: no request reaches this upstream.
    pub fn is_offline(&self) -> bool {
        self.offline.load(Ordering::SeqCst)
    }

    /// Turn offline mode on or off; returns the previous state.
    pub fn set_offline(&self, on: bool) -> bool {
        let was = self.offline.swap(on, Ordering::SeqCst);
        self.metrics.set_offline(on);
        was
    }

    pub fn metrics(&self) -> &UpstreamMetrics {
        &self.metrics
    }

    pub fn name(&self) -> &str {
        &self.settings.name
    }

    fn unavailable(&self, reason: impl Into<String>) -> Error {
        Error::Unavailable {
            upstream: self.settings.name.clone(),
            reason: reason.into(),
        }
    }

    /// The URL of `path`; with `forward_ns`, carrying this upstream's name as `?ns=` (the next
    /// berth routes by it, as it does for containerd).
    fn url(&self, path: &str) -> String {
        let base = self.settings.url.as_str().trim_end_matches('/');
        if !self.settings.forward_ns {
            return format!("{base}{path}");
        }
        let sep = if path.contains('?') { '&' } else { '?' };
        let mut ns = form_urlencoded::Serializer::new(String::new());
        ns.append_pair("ns", &self.settings.name);
        format!("{base}{path}{sep}{}", ns.finish())
    }

    /// The body of a manifest-sized response (`what` names it in errors): refused when its
    /// announced length exceeds the manifest limit.
    async fn manifest_body(&self, response: Response, what: &str) -> Result<Bytes> {
        if response
            .content_length()
            .is_some_and(|n| n > crate::oci::MAX_MANIFEST_BYTES as u64)
        {
            self.metrics.error(UpstreamError::Invalid);
            return Err(Error::Invalid {
                upstream: self.settings.name.clone(),
                reason: format!("{what} exceeds 4 MiB"),
            });
        }
        let bytes = response.bytes().await.map_err(|e| {
            self.metrics.error(UpstreamError::Body);
            self.unavailable(format!("reading {what}: {e}"))
        })?;
        self.metrics.received(bytes.len() as u64);
        Ok(bytes)
    }

    /// Send an idempotent request for repository `name` through the budget, authenticating on a
    /// challenge, retrying connection failures, and following redirects without credentials.
    async fn send(&self, method: Method, name: &str, path: &str, accept: &[String]) -> Result<Response> {
        self.send_with(method, name, path, accept, None).await
    }

    /// [`Upstream::send`] with a `Range` header (`bytes=a-b`), which goes along redirects too: a
    /// CDN answers the range, and a presigned URL does not cover headers.
    async fn send_with(
        &self,
        method: Method,
        name: &str,
        path: &str,
        accept: &[String],
        range: Option<&str>,
    ) -> Result<Response> {
        if self.is_offline() {
            return Err(Error::Offline {
                upstream: self.settings.name.clone(),
            });
        }
        let scope = format!("repository:{name}:pull");
        let mut auth: Option<Auth> = self.tokens.get(&self.token_key(&scope)).map(Auth::Bearer);
        let mut authenticated_once = false;
        let mut attempt = 0;
        loop {
            self.budget.acquire().await.map_err(|retry_after| {
                self.metrics.error(UpstreamError::RateLimited);
                Error::RateLimited {
                    upstream: self.settings.name.clone(),
                    retry_after,
                }
            })?;
            let mut request = self.http.request(method.clone(), self.url(path));
            for a in accept {
                request = request.header(ACCEPT, a); // appended one by one: repeated Accept headers stay as they are
            }
            if let Some(range) = range {
                request = request.header(RANGE, range);
            }
            match (&auth, &self.settings.credentials) {
                (Some(Auth::Bearer(token)), _) => request = request.bearer_auth(token),
                (Some(Auth::Basic), Some((user, password))) => request = request.basic_auth(user, Some(&password.0)),
                _ => {}
            }
            let response = match self.exchange(request).await {
                Ok(r) => r,
                Err(e) if attempt + 1 < ATTEMPTS && (e.is_connect() || e.is_timeout() || e.is_request()) => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(100 * 4u64.pow(attempt - 1))).await;
                    continue;
                }
                Err(e) => return Err(self.unavailable(e.to_string())),
            };
            let status = response.status();
            if status == StatusCode::UNAUTHORIZED && !authenticated_once {
                authenticated_once = true;
                auth = Some(self.authenticate(&response, &scope).await.inspect_err(|_| {
                    self.metrics.error(UpstreamError::Status);
                })?);
                continue;
            }
            if status.is_redirection() {
                return self.follow(method, response, range).await;
            }
            return self.check(response);
        }
    }

    /// Send one request, counting it and timing it to its response headers.
    async fn exchange(&self, request: reqwest::RequestBuilder) -> reqwest::Result<Response> {
        let started = Instant::now();
        match request.send().await {
            Ok(response) => {
                self.metrics.exchange(response.status().as_u16(), started.elapsed());
                Ok(response)
            }
            Err(e) => {
                self.metrics.error(UpstreamError::Connect);
                Err(e)
            }
        }
    }

    /// A blob response's headers and streaming body.
    fn blob_response(&self, response: Response) -> RemoteBlob {
        blob_response(response, self.metrics.clone(), self.settings.name.clone())
    }

    fn token_key(&self, scope: &str) -> String {
        format!("{}|{scope}", self.settings.name)
    }

    /// Answer a 401 challenge: fetch a Bearer token, or use Basic credentials.
    async fn authenticate(&self, response: &Response, scope: &str) -> Result<Auth> {
        let challenge = header(response, WWW_AUTHENTICATE.as_str()).and_then(|h| auth::parse_challenge(&h));
        match challenge {
            Some(auth::Challenge::Bearer {
                realm,
                service,
                scope: challenged,
            }) => {
                let scope = challenged.unwrap_or_else(|| scope.to_owned());
                let token = self
                    .tokens
                    .fetch(
                        &self.http,
                        &self.token_key(&scope),
                        &realm,
                        service.as_deref(),
                        Some(&scope),
                        self.settings.credentials.as_ref(),
                    )
                    .await
                    .map_err(|e| self.unavailable(e))?;
                Ok(Auth::Bearer(token))
            }
            Some(auth::Challenge::Basic) if self.settings.credentials.is_some() => Ok(Auth::Basic),
            Some(auth::Challenge::Basic) => Err(self.unavailable("upstream wants Basic credentials; none configured")),
            None => Err(self.unavailable("upstream answered 401 without a usable challenge")),
        }
    }

    /// Follow redirects with a plain request: no Authorization ever crosses a redirect.
    async fn follow(&self, method: Method, mut response: Response, range: Option<&str>) -> Result<Response> {
        for _ in 0..MAX_REDIRECTS {
            let location =
                header(&response, LOCATION.as_str()).ok_or_else(|| self.unavailable("redirect without Location"))?;
            let next = response
                .url()
                .join(&location)
                .map_err(|e| self.unavailable(format!("bad redirect {location:?}: {e}")))?;
            let mut request = self.http.request(method.clone(), next);
            if let Some(range) = range {
                request = request.header(RANGE, range);
            }
            response = self
                .exchange(request)
                .await
                .map_err(|e| self.unavailable(e.to_string()))?;
            if !response.status().is_redirection() {
                return self.check(response);
            }
        }
        self.metrics.error(UpstreamError::Status);
        Err(self.unavailable("too many redirects"))
    }

    /// Map an upstream status to success or to the error a client of berth should see.
    fn check(&self, response: Response) -> Result<Response> {
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        match status {
            StatusCode::NOT_FOUND => Err(Error::NotFound),
            StatusCode::TOO_MANY_REQUESTS => {
                self.metrics.error(UpstreamError::RateLimited);
                let retry_after = header(&response, RETRY_AFTER.as_str()).and_then(|v| v.trim().parse().ok());
                let retry_after = self.budget.pause(retry_after);
                tracing::warn!(upstream = %self.settings.name, retry_after, "upstream rate limit hit (429)");
                Err(Error::RateLimited {
                    upstream: self.settings.name.clone(),
                    retry_after,
                })
            }
            _ => {
                self.metrics.error(UpstreamError::Status);
                Err(self.unavailable(format!("answered {status}")))
            }
        }
    }
}

#[async_trait]
impl Remote for Upstream {
    fn settings(&self) -> &UpstreamSettings {
        &self.settings
    }

    fn name(&self) -> &str {
        &self.settings.name
    }

    fn metrics(&self) -> &UpstreamMetrics {
        &self.metrics
    }

    fn is_offline(&self) -> bool {
        Upstream::is_offline(self)
    }

    fn set_offline(&self, on: bool) -> bool {
        Upstream::set_offline(self, on)
    }

    /// HEAD a manifest. Docker Hub does not count HEADs against its pull rate limit.
    async fn head_manifest(&self, name: &str, reference: &str, accept: &[String]) -> Result<RemoteHead> {
        let response = self
            .send(Method::HEAD, name, &format!("/v2/{name}/manifests/{reference}"), accept)
            .await?;
        let digest = header(&response, "docker-content-digest").and_then(|d| d.parse().ok());
        Ok(RemoteHead {
            digest,
            media_type: header(&response, CONTENT_TYPE.as_str()),
        })
    }

    /// GET a manifest and verify its bytes against `expected` (or the upstream's
    /// `Docker-Content-Digest`, when it sends one).
    async fn get_manifest(
        &self,
        name: &str,
        reference: &str,
        accept: &[String],
        expected: Option<&Digest>,
    ) -> Result<RemoteManifest> {
        let response = self
            .send(Method::GET, name, &format!("/v2/{name}/manifests/{reference}"), accept)
            .await?;
        let media_type = header(&response, CONTENT_TYPE.as_str());
        let announced: Option<Digest> = header(&response, "docker-content-digest").and_then(|d| d.parse().ok());
        let bytes = self.manifest_body(response, "manifest").await?;
        let check = expected.or(announced.as_ref());
        let digest = match check {
            Some(d) => {
                let mut h = Hasher::new(d.algorithm());
                h.update(&bytes);
                let actual = h.finish();
                if actual != *d {
                    self.metrics.error(UpstreamError::Invalid);
                    let reason = format!("manifest {name}:{reference} hashes to {actual}, not {d}");
                    return Err(Error::Invalid {
                        upstream: self.settings.name.clone(),
                        reason,
                    });
                }
                actual
            }
            None => Digest::sha256_of(&bytes),
        };
        Ok(RemoteManifest {
            digest,
            media_type,
            bytes,
        })
    }

    /// GET a blob; the response body streams. Redirects (CDN) are followed without credentials.
    async fn get_blob(&self, name: &str, digest: &Digest) -> Result<RemoteBlob> {
        let response = self
            .send(Method::GET, name, &format!("/v2/{name}/blobs/{digest}"), &[])
            .await?;
        Ok(self.blob_response(response))
    }

    /// GET a part of a blob with a `Range` header. An upstream that ignores it (200, the whole
    /// blob) is cut to the part; a 206 for another range than asked is refused.
    async fn get_blob_range(&self, name: &str, digest: &Digest, start: u64, len: u64) -> Result<RemoteBlob> {
        let range = format!("bytes={start}-{}", start + len.max(1) - 1);
        let response = self
            .send_with(
                Method::GET,
                name,
                &format!("/v2/{name}/blobs/{digest}"),
                &[],
                Some(&range),
            )
            .await?;
        let partial = response.status() == StatusCode::PARTIAL_CONTENT;
        let mut whole = response.content_length();
        if partial {
            let answered = header(&response, "content-range");
            let expected = format!("bytes {start}-{}/", start + len.max(1) - 1);
            let Some(total) = answered.as_deref().and_then(|a| a.strip_prefix(&expected)) else {
                self.metrics.error(UpstreamError::Invalid);
                return Err(Error::Invalid {
                    upstream: self.settings.name.clone(),
                    reason: format!("asked for {range}, got Content-Range {answered:?}"),
                });
            };
            // `*` when the upstream does not know the whole size.
            whole = total.parse().ok();
        }
        let blob = self.blob_response(response);
        let skip = if partial { 0 } else { start };
        Ok(RemoteBlob {
            size: Some(len),
            whole,
            body: remote::part_of(blob.body, skip, len, self.settings.name.clone()),
            ..blob
        })
    }

    /// HEAD a blob: its size, when the upstream has it.
    async fn head_blob(&self, name: &str, digest: &Digest) -> Result<Option<u64>> {
        let response = self
            .send(Method::HEAD, name, &format!("/v2/{name}/blobs/{digest}"), &[])
            .await?;
        Ok(header(&response, "content-length").and_then(|n| n.parse().ok()))
    }

    /// GET the referrers index of `subject` (OCI 1.1 referrers API), unfiltered. `Error::NotFound`
    /// when the upstream has no such API (distribution 2.8 answers 404).
    async fn referrers(&self, name: &str, subject: &Digest) -> Result<Bytes> {
        let accept = [crate::oci::media::OCI_INDEX.to_owned()];
        let response = self
            .send(Method::GET, name, &format!("/v2/{name}/referrers/{subject}"), &accept)
            .await?;
        self.manifest_body(response, "referrers index").await
    }

    /// GET the upstream's tag list (query passed through); the JSON body as it came.
    async fn tags(&self, name: &str, query: &str) -> Result<Bytes> {
        let path = format!(
            "/v2/{name}/tags/list{}",
            if query.is_empty() {
                String::new()
            } else {
                format!("?{query}")
            }
        );
        let response = self.send(Method::GET, name, &path, &[]).await?;
        let bytes = response.bytes().await.map_err(|e| {
            self.metrics.error(UpstreamError::Body);
            self.unavailable(format!("reading tags: {e}"))
        })?;
        self.metrics.received(bytes.len() as u64);
        Ok(bytes)
    }
}

/// The HTTP client of berth's outgoing requests (upstreams and, in cluster mode, peer
/// replicas): redirects are not followed automatically (an upstream's are followed by hand,
/// without `Authorization`; a peer's are refused), and a connection that goes quiet for `timeout`
/// fails.
fn http_client(timeout: Duration) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(timeout)
        .read_timeout(timeout)
        .user_agent(concat!("berth/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// A blob response's headers and streaming body; a broken body counts in `metrics` and is
/// `Unavailable` from `source`.
fn blob_response(response: Response, metrics: UpstreamMetrics, source: String) -> RemoteBlob {
    RemoteBlob {
        size: response.content_length(),
        whole: response.content_length(),
        content_type: header(&response, CONTENT_TYPE.as_str()),
        digest: header(&response, "docker-content-digest").and_then(|d| d.parse().ok()),
        body: response
            .bytes_stream()
            .map(move |chunk| {
                chunk.map_err(|e| {
                    metrics.error(UpstreamError::Body);
                    Error::Unavailable {
                        upstream: source.clone(),
                        reason: format!("reading blob: {e}"),
                    }
                })
            })
            .boxed(),
    }
}

/// How a request authenticates to the upstream.
enum Auth {
    Bearer(String),
    /// The configured username and password.
    Basic,
}

fn header(response: &Response, name: &str) -> Option<String> {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn upstream(entry: &str, url: &str) -> Upstream {
        crate::install_crypto_provider();
        let toml = format!("[[upstream]]\nname = \"ghcr.io\"\nurl = \"{url}\"\n{entry}\n");
        let config = Config::from_toml(&toml, std::iter::empty::<(String, String)>()).unwrap();
        Upstream::new(config.upstream_settings().unwrap().remove(0)).unwrap()
    }

    #[tokio::test]
    async fn an_offline_upstream_is_never_connected_to_and_switches_back() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let u = upstream("offline = true", &format!("http://{}", listener.local_addr().unwrap()));
        assert!(u.is_offline());
        let digest = Digest::sha256_of(b"x");
        assert!(matches!(
            u.head_manifest("owner/app", "latest", &[]).await,
            Err(Error::Offline { upstream }) if upstream == "ghcr.io"
        ));
        assert!(matches!(
            u.get_blob("owner/app", &digest).await,
            Err(Error::Offline { .. })
        ));
        assert!(matches!(
            u.referrers("owner/app", &digest).await,
            Err(Error::Offline { .. })
        ));
        assert!(listener.accept().is_err(), "offline: no connection was made");
        assert!(u.set_offline(false));
        // Online again: the request goes out (and the listener never answers, so just check it
        // connected).
        let pending = tokio::spawn(async move { u.head_manifest("owner/app", "latest", &[]).await });
        let deadline = Instant::now() + Duration::from_secs(10);
        while listener.accept().is_err() {
            assert!(Instant::now() < deadline, "online: the request never connected");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        pending.abort();
    }

    #[test]
    fn forward_ns_names_the_upstream_on_every_request() {
        let u = upstream("forward_ns = true", "http://central:5000/");
        assert_eq!(
            u.url("/v2/owner/app/manifests/1"),
            "http://central:5000/v2/owner/app/manifests/1?ns=ghcr.io"
        );
        assert_eq!(
            u.url("/v2/owner/app/tags/list?n=5"),
            "http://central:5000/v2/owner/app/tags/list?n=5&ns=ghcr.io"
        );
        let plain = upstream("", "http://central:5000");
        assert_eq!(
            plain.url("/v2/owner/app/manifests/1"),
            "http://central:5000/v2/owner/app/manifests/1"
        );
    }
}
