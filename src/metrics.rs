//! Prometheus metrics: one [`Metrics`] registry, shared through the service by every part that
//! counts something, and exposed at `/metrics` in the OpenMetrics text format.
//!
//! The request path stays cheap: every label set a request touches is registered once and its
//! counter cached (a clone shares the same atomic), so counting is an atomic add with no lock and
//! no allocation. Upstream metrics are labelled by upstream name; they sit on a path that waits
//! for the network anyway.
//!
//! Metric names (all prefixed `berth_`):
//! ```text
//! http_requests_total{kind,method,code}           requests answered, by endpoint kind
//! http_response_bytes_total{kind}                 response body bytes sent
//! cache_requests_total{kind,result}               proxied manifests/blobs: hit, miss, stale
//! cache_served_bytes_total{kind,result}           body bytes of those responses (hit + stale = saved upstream)
//! cache_fills_total{result}                       blob fills finished: ok, corrupt, failed
//! cache_fills_in_flight                           blob fills running now
//! cache_fill_waiters                              clients attached to a running fill
//! cache_fill_joins_total                          clients that joined a fill instead of starting one
//! cluster_fills_from_peers_total                  fills whose bytes streamed from the replica leading them
//! cluster_fills_served_to_peers_total             blob responses to other replicas' fills (internal endpoint)
//! cluster_fills_resumed_upstream_total            fills whose leader's stream broke, taken over and resumed upstream
//! upstream_requests_total{upstream,code}          upstream HTTP exchanges, by status
//! upstream_request_duration_seconds{upstream}     time to the upstream's response headers
//! upstream_errors_total{upstream,reason}          connect, status, rate_limited, body, invalid
//! upstream_received_bytes_total{upstream}         body bytes read from the upstream
//! evictions_total                                 cached manifests evicted (TTL, size cap)
//! gc_runs_total, gc_reclaimed_bytes_total         garbage collection
//! store_bytes{content}, store_blobs{content}      blob store by content: private, cached, unreferenced
//! build_info{version}                             always 1
//! login_failures_total                            password checks that failed
//! login_throttled_total{by}                       logins refused unchecked (429): ip, user
//! login_checks_running, login_checks_waiting      bcrypt checks running now, and queued for a slot
//! notification_events_total{endpoint,result}      events delivered, failed (retries spent), dropped (queue full)
//! notification_queued_events{endpoint}            events waiting for delivery
//! cluster_members                                 replicas with a live heartbeat (cluster mode)
//! cluster_fills_owned_total, cluster_fills_joined_remotely_total, cluster_lease_takeovers_total,
//! cluster_notices_total                           what this replica's coordinator counted
//! ```

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

mod cluster;
mod login;
mod notify;

pub use cluster::{ClusterMetrics, ClusterReading};
pub use login::LoginMetrics;
pub use notify::NotificationMetrics;
use notify::{EndpointLabels, NotificationLabels};

/// What a request was for; the `kind` label.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Kind {
    Manifest,
    Blob,
    Upload,
    Tags,
    Catalog,
    Referrers,
    Base,
    Token,
    Other,
}

impl Kind {
    const ALL: [Kind; 9] = [
        Kind::Manifest,
        Kind::Blob,
        Kind::Upload,
        Kind::Tags,
        Kind::Catalog,
        Kind::Referrers,
        Kind::Base,
        Kind::Token,
        Kind::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Manifest => "manifest",
            Kind::Blob => "blob",
            Kind::Upload => "upload",
            Kind::Tags => "tags",
            Kind::Catalog => "catalog",
            Kind::Referrers => "referrers",
            Kind::Base => "base",
            Kind::Token => "token",
            Kind::Other => "other",
        }
    }
}

/// The request method; the `method` label. Anything unusual is `other`.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Put,
    Post,
    Patch,
    Delete,
    Other,
}

impl Method {
    const COUNT: usize = 7;

    /// The label for an HTTP method name.
    pub fn of(method: &str) -> Method {
        match method {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "PUT" => Method::Put,
            "POST" => Method::Post,
            "PATCH" => Method::Patch,
            "DELETE" => Method::Delete,
            _ => Method::Other,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Put => "PUT",
            Method::Post => "POST",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
            Method::Other => "other",
        }
    }
}

/// How a proxied manifest or blob was answered: the `result` label, the `X-Berth-Cache` header
/// and the access log's `cache` field.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum CacheResult {
    Hit,
    Miss,
    /// From the cache because the upstream failed.
    Stale,
}

impl CacheResult {
    const ALL: [CacheResult; 3] = [CacheResult::Hit, CacheResult::Miss, CacheResult::Stale];

    pub fn as_str(self) -> &'static str {
        match self {
            CacheResult::Hit => "hit",
            CacheResult::Miss => "miss",
            CacheResult::Stale => "stale",
        }
    }
}

/// Why an upstream request failed; the `reason` label.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum UpstreamError {
    /// No response: connection refused, reset, or timed out.
    Connect,
    /// A status that is neither success, redirect, 404 nor 429.
    Status,
    /// 429, or berth's own request budget for the upstream ran out.
    RateLimited,
    /// The body broke off while it was read.
    Body,
    /// The content did not verify (digest mismatch, oversize manifest).
    Invalid,
}

impl UpstreamError {
    const ALL: [UpstreamError; 5] = [
        UpstreamError::Connect,
        UpstreamError::Status,
        UpstreamError::RateLimited,
        UpstreamError::Body,
        UpstreamError::Invalid,
    ];

    fn as_str(self) -> &'static str {
        match self {
            UpstreamError::Connect => "connect",
            UpstreamError::Status => "status",
            UpstreamError::RateLimited => "rate_limited",
            UpstreamError::Body => "body",
            UpstreamError::Invalid => "invalid",
        }
    }
}

/// How a blob fill ended; the `result` label of `cache_fills_total`.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum FillResult {
    Ok,
    Corrupt,
    Failed,
}

impl FillResult {
    const ALL: [FillResult; 3] = [FillResult::Ok, FillResult::Corrupt, FillResult::Failed];

    fn as_str(self) -> &'static str {
        match self {
            FillResult::Ok => "ok",
            FillResult::Corrupt => "corrupt",
            FillResult::Failed => "failed",
        }
    }
}

/// What part of the blob store a size counts; the `content` label.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Content {
    /// Referenced by a private (pushed) repository; never evicted.
    Private,
    /// Referenced only by cached (proxied) repositories.
    Cached,
    /// Referenced by no repository; garbage collection reclaims it.
    Unreferenced,
}

impl Content {
    const ALL: [Content; 3] = [Content::Private, Content::Cached, Content::Unreferenced];

    fn as_str(self) -> &'static str {
        match self {
            Content::Private => "private",
            Content::Cached => "cached",
            Content::Unreferenced => "unreferenced",
        }
    }
}

macro_rules! label_value_by_as_str {
    ($($t:ty),*) => {$(
        impl EncodeLabelValue for $t {
            fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
                EncodeLabelValue::encode(&self.as_str(), encoder)
            }
        }
    )*};
}
label_value_by_as_str!(Kind, Method, CacheResult, UpstreamError, FillResult, Content);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    kind: Kind,
    method: Method,
    code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: Kind,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheLabels {
    kind: Kind,
    result: CacheResult,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FillLabels {
    result: FillResult,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ContentLabels {
    content: Content,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabels {
    upstream: Arc<String>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamCodeLabels {
    upstream: Arc<String>,
    code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamErrorLabels {
    upstream: Arc<String>,
    reason: UpstreamError,
}

/// Status codes whose request counters are cached per kind and method; others go through the
/// family's map (still correct, one lock away).
const CACHED_CODES: [u16; 22] = [
    200, 201, 202, 204, 206, 301, 302, 304, 307, 308, 400, 401, 403, 404, 405, 413, 416, 429, 500, 502, 503, 504,
];

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 5 ms .. ~41 s: from a local mirror's upstream to a slow registry across the world.
    Histogram::new(exponential_buckets(0.005, 2.0, 14))
}

/// Every metric berth exports, and the registry that encodes them.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    request_slots: Box<[OnceLock<Counter>]>,
    response_bytes: [Counter; Kind::ALL.len()],
    /// `[manifest, blob][hit, miss, stale]`
    cache_requests: [[Counter; 3]; 2],
    cache_bytes: [[Counter; 3]; 2],
    fills: [Counter; 3],
    /// Blob fills running now.
    pub fills_in_flight: Gauge,
    /// Clients streaming from (or waiting for) a running fill.
    pub fill_waiters: Gauge,
    /// Clients that joined a running fill instead of starting another upstream fetch.
    pub fill_joins: Counter,
    /// Fills led by another replica whose bytes this one streamed from it (cluster mode).
    pub fills_from_peers: Counter,
    /// Blob responses to other replicas' fills, on the internal endpoint (cluster mode).
    pub fills_served_to_peers: Counter,
    /// Fills whose leading replica's stream broke (it died), taken over here and resumed from
    /// the upstream with a `Range`. The coordinator's `cluster_lease_takeovers` counts leases.
    pub fills_resumed_upstream: Counter,
    upstream_requests: Family<UpstreamCodeLabels, Counter>,
    upstream_latency: HistogramFamily<UpstreamLabels>,
    upstream_errors: Family<UpstreamErrorLabels, Counter>,
    upstream_bytes: Family<UpstreamLabels, Counter>,
    /// 1 while an upstream is in offline mode (issue 15).
    upstream_offline: Family<UpstreamLabels, Gauge>,
    /// Cached manifests evicted (and untagged private ones deleted) by GC runs.
    pub evictions: Counter,
    /// Garbage collection runs completed: `metrics.gc_runs.inc()`.
    pub gc_runs: Counter,
    /// Bytes garbage collection removed: `metrics.gc_reclaimed_bytes.inc_by(n)`.
    pub gc_reclaimed_bytes: Counter,
    store_bytes: [Gauge; 3],
    store_blobs: [Gauge; 3],
    /// Password checks and the failed-login throttle.
    pub logins: LoginMetrics,
    /// Cluster membership and coordination (zero on a single node).
    pub cluster: ClusterMetrics,
    // --- notifications (issue 12) ---
    notification_events: Family<NotificationLabels, Counter>,
    notification_queued: Family<EndpointLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

/// The metric of one label set, registered now so the series shows (as 0) before first use.
fn pre<L: Clone + std::hash::Hash + Eq, M: Default + Clone>(family: &Family<L, M>, labels: L) -> M {
    family.get_or_create_owned(&labels)
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut r = Registry::with_prefix("berth");
        let requests = Family::<RequestLabels, Counter>::default();
        r.register(
            "http_requests",
            "Requests answered, by endpoint kind, method and status",
            requests.clone(),
        );
        let response_bytes = Family::<KindLabels, Counter>::default();
        r.register_with_unit(
            "http_response",
            "Response body bytes sent, by endpoint kind",
            Unit::Bytes,
            response_bytes.clone(),
        );
        let cache_requests = Family::<CacheLabels, Counter>::default();
        r.register(
            "cache_requests",
            "Manifest and blob requests of cached (proxied) repositories, by how they were answered",
            cache_requests.clone(),
        );
        let cache_bytes = Family::<CacheLabels, Counter>::default();
        r.register_with_unit(
            "cache_served",
            "Body bytes of cached-repository responses; hit and stale bytes did not come from upstream",
            Unit::Bytes,
            cache_bytes.clone(),
        );
        let fills = Family::<FillLabels, Counter>::default();
        r.register("cache_fills", "Blob cache fills finished, by result", fills.clone());
        let fills_in_flight = Gauge::default();
        r.register(
            "cache_fills_in_flight",
            "Blob cache fills running",
            fills_in_flight.clone(),
        );
        let fill_waiters = Gauge::default();
        r.register(
            "cache_fill_waiters",
            "Clients streaming from or waiting for a running blob fill (single flight)",
            fill_waiters.clone(),
        );
        let fill_joins = Counter::default();
        r.register(
            "cache_fill_joins",
            "Clients that joined a running fill instead of starting another upstream fetch",
            fill_joins.clone(),
        );
        let fills_from_peers = Counter::default();
        r.register(
            "cluster_fills_from_peers",
            "Blob fills led by another replica whose bytes streamed from it instead of the upstream",
            fills_from_peers.clone(),
        );
        let fills_served_to_peers = Counter::default();
        r.register(
            "cluster_fills_served_to_peers",
            "Blob responses to other replicas' fills on the internal endpoint",
            fills_served_to_peers.clone(),
        );
        let fills_resumed_upstream = Counter::default();
        r.register(
            "cluster_fills_resumed_upstream",
            "Blob fills whose leading replica's stream broke, taken over and resumed from the upstream with a Range",
            fills_resumed_upstream.clone(),
        );
        let upstream_requests = Family::<UpstreamCodeLabels, Counter>::default();
        r.register(
            "upstream_requests",
            "HTTP exchanges with upstream registries (and their CDNs), by status",
            upstream_requests.clone(),
        );
        let upstream_latency: HistogramFamily<UpstreamLabels> = Family::new_with_constructor(latency_histogram);
        r.register_with_unit(
            "upstream_request_duration",
            "Time until an upstream's response headers arrived",
            Unit::Seconds,
            upstream_latency.clone(),
        );
        let upstream_errors = Family::<UpstreamErrorLabels, Counter>::default();
        r.register(
            "upstream_errors",
            "Failed upstream requests, by reason",
            upstream_errors.clone(),
        );
        let upstream_bytes = Family::<UpstreamLabels, Counter>::default();
        r.register_with_unit(
            "upstream_received",
            "Body bytes read from upstream registries",
            Unit::Bytes,
            upstream_bytes.clone(),
        );
        let upstream_offline = Family::<UpstreamLabels, Gauge>::default();
        r.register(
            "upstream_offline",
            "1 while an upstream is in offline mode (berth does not contact it), else 0",
            upstream_offline.clone(),
        );
        let evictions = Counter::default();
        r.register(
            "evictions",
            "Cached manifests evicted by garbage collection runs",
            evictions.clone(),
        );

        let gc_runs = Counter::default();
        r.register("gc_runs", "Garbage collection runs completed", gc_runs.clone());
        let gc_reclaimed_bytes = Counter::default();
        r.register_with_unit(
            "gc_reclaimed",
            "Bytes removed by garbage collection",
            Unit::Bytes,
            gc_reclaimed_bytes.clone(),
        );
        let store_bytes = Family::<ContentLabels, Gauge>::default();
        r.register_with_unit(
            "store",
            "Blob store size by content (measured periodically)",
            Unit::Bytes,
            store_bytes.clone(),
        );
        let store_blobs = Family::<ContentLabels, Gauge>::default();
        r.register(
            "store_blobs",
            "Blob store files by content (measured periodically)",
            store_blobs.clone(),
        );
        let notification_events = Family::<NotificationLabels, Counter>::default();
        r.register(
            "notification_events",
            "Notification events by endpoint and result: delivered, failed (retries spent), dropped (queue full)",
            notification_events.clone(),
        );
        let notification_queued = Family::<EndpointLabels, Gauge>::default();
        r.register(
            "notification_queued_events",
            "Notification events waiting for delivery, by endpoint",
            notification_queued.clone(),
        );
        r.register(
            "build",
            "The running berth version",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );

        let cache_pair = |family: &Family<CacheLabels, Counter>| {
            [Kind::Manifest, Kind::Blob]
                .map(|kind| CacheResult::ALL.map(|result| pre(family, CacheLabels { kind, result })))
        };
        let slots = Kind::ALL.len() * Method::COUNT * CACHED_CODES.len();
        Metrics {
            request_slots: (0..slots).map(|_| OnceLock::new()).collect(),
            requests,
            response_bytes: Kind::ALL.map(|kind| pre(&response_bytes, KindLabels { kind })),
            cache_requests: cache_pair(&cache_requests),
            cache_bytes: cache_pair(&cache_bytes),
            fills: FillResult::ALL.map(|result| pre(&fills, FillLabels { result })),
            fills_in_flight,
            fill_waiters,
            fill_joins,
            fills_from_peers,
            fills_served_to_peers,
            fills_resumed_upstream,
            upstream_requests,
            upstream_latency,
            upstream_errors,
            upstream_bytes,
            upstream_offline,
            evictions,

            gc_runs,
            gc_reclaimed_bytes,
            store_bytes: Content::ALL.map(|content| pre(&store_bytes, ContentLabels { content })),
            store_blobs: Content::ALL.map(|content| pre(&store_blobs, ContentLabels { content })),
            logins: LoginMetrics::register(&mut r),
            cluster: ClusterMetrics::register(&mut r),
            notification_events,
            notification_queued,
            registry: r,
        }
    }

    /// The OpenMetrics text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(16 << 10);
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }

    /// Count one answered request.
    pub fn request(&self, kind: Kind, method: Method, code: u16) {
        let Some(c) = CACHED_CODES.iter().position(|&k| k == code) else {
            self.requests.get_or_create(&RequestLabels { kind, method, code }).inc();
            return;
        };
        let slot = (kind as usize * Method::COUNT + method as usize) * CACHED_CODES.len() + c;
        self.request_slots[slot]
            .get_or_init(|| self.requests.get_or_create_owned(&RequestLabels { kind, method, code }))
            .inc();
    }

    /// Count `n` response body bytes sent for a request of `kind`, answered from `cache` if proxied.
    pub fn sent(&self, kind: Kind, cache: Option<CacheResult>, n: u64) {
        self.response_bytes[kind as usize].inc_by(n);
        if let (Some(k), Some(result)) = (cache_kind(kind), cache) {
            self.cache_bytes[k][result as usize].inc_by(n);
        }
    }

    /// Count a proxied manifest or blob request by how it was answered.
    pub fn cache(&self, kind: Kind, result: CacheResult) {
        if let Some(k) = cache_kind(kind) {
            self.cache_requests[k][result as usize].inc();
        }
    }

    /// Proxied requests answered so far: `(hit, miss, stale)`, manifests and blobs together.
    pub fn cache_totals(&self) -> (u64, u64, u64) {
        let sum = |r: CacheResult| self.cache_requests.iter().map(|k| k[r as usize].get()).sum();
        (sum(CacheResult::Hit), sum(CacheResult::Miss), sum(CacheResult::Stale))
    }

    /// Body bytes served from the cache (hits and stale answers): bytes the upstream did not send.
    pub fn bytes_saved(&self) -> u64 {
        self.cache_bytes
            .iter()
            .map(|k| k[CacheResult::Hit as usize].get() + k[CacheResult::Stale as usize].get())
            .sum()
    }

    /// Count a finished blob fill.
    pub fn fill_done(&self, result: FillResult) {
        self.fills[result as usize].inc();
    }

    /// The store's size by content.
    pub fn set_store(&self, content: Content, bytes: u64, blobs: u64) {
        self.store_bytes[content as usize].set(bytes.min(i64::MAX as u64) as i64);
        self.store_blobs[content as usize].set(blobs.min(i64::MAX as u64) as i64);
    }

    /// The counters of one upstream, registered under its name.
    pub fn upstream(&self, name: &str) -> UpstreamMetrics {
        let upstream = Arc::new(name.to_owned());
        let labels = UpstreamLabels {
            upstream: upstream.clone(),
        };
        UpstreamMetrics {
            latency: self.upstream_latency.get_or_create_owned(&labels),
            bytes: self.upstream_bytes.get_or_create_owned(&labels),
            offline: self.upstream_offline.get_or_create_owned(&labels),
            errors: UpstreamError::ALL.map(|reason| {
                self.upstream_errors.get_or_create_owned(&UpstreamErrorLabels {
                    upstream: upstream.clone(),
                    reason,
                })
            }),
            requests: self.upstream_requests.clone(),
            upstream,
        }
    }
}

/// Index into the `[manifest, blob]` cache arrays.
fn cache_kind(kind: Kind) -> Option<usize> {
    match kind {
        Kind::Manifest => Some(0),
        Kind::Blob => Some(1),
        _ => None,
    }
}

/// One upstream's counters. Cheap to clone; a detached set (not exported) by default.
#[derive(Clone, Debug)]
pub struct UpstreamMetrics {
    upstream: Arc<String>,
    requests: Family<UpstreamCodeLabels, Counter>,
    latency: Histogram,
    bytes: Counter,
    errors: [Counter; 5],
    offline: Gauge,
}

impl Default for UpstreamMetrics {
    fn default() -> Self {
        Metrics::new().upstream("detached")
    }
}

impl UpstreamMetrics {
    /// One HTTP exchange that got a response with `code` after `elapsed`.
    pub fn exchange(&self, code: u16, elapsed: Duration) {
        self.latency.observe(elapsed.as_secs_f64());
        self.requests
            .get_or_create(&UpstreamCodeLabels {
                upstream: self.upstream.clone(),
                code,
            })
            .inc();
    }

    pub fn error(&self, reason: UpstreamError) {
        self.errors[reason as usize].inc();
    }

    /// Offline mode on (1) or off (0).
    pub fn set_offline(&self, on: bool) {
        self.offline.set(i64::from(on));
    }

    /// `n` body bytes read from the upstream.
    pub fn received(&self, n: u64) {
        self.bytes.inc_by(n);
    }
}

/// Gauge guard: counts one unit while it lives.
#[derive(Debug)]
pub struct Tracked(Gauge);

impl Tracked {
    pub fn new(gauge: &Gauge) -> Tracked {
        gauge.inc();
        Tracked(gauge.clone())
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn counts_requests_cache_results_and_upstreams() {
        let m = Metrics::new();
        m.request(Kind::Manifest, Method::Get, 200);
        m.request(Kind::Manifest, Method::Get, 200);
        m.request(Kind::Blob, Method::Get, 418);
        m.cache(Kind::Manifest, CacheResult::Stale);
        m.cache(Kind::Tags, CacheResult::Hit);
        m.sent(Kind::Blob, Some(CacheResult::Hit), 10);
        m.sent(Kind::Blob, Some(CacheResult::Miss), 5);
        let u = m.upstream("docker.io");
        u.exchange(200, Duration::from_millis(20));
        u.error(UpstreamError::Connect);
        u.received(99);
        m.gc_runs.inc();
        let text = m.encode();
        let v = |s: &str| value(&text, s);
        assert_eq!(
            v(r#"berth_http_requests_total{kind="manifest",method="GET",code="200"}"#),
            Some(2.0),
            "{text}"
        );
        assert_eq!(
            v(r#"berth_http_requests_total{kind="blob",method="GET",code="418"}"#),
            Some(1.0)
        );
        assert_eq!(
            v(r#"berth_cache_requests_total{kind="manifest",result="stale"}"#),
            Some(1.0)
        );
        assert_eq!(v(r#"berth_cache_requests_total{kind="blob",result="hit"}"#), Some(0.0));
        assert_eq!(v(r#"berth_http_response_bytes_total{kind="blob"}"#), Some(15.0));
        assert_eq!(
            v(r#"berth_cache_served_bytes_total{kind="blob",result="hit"}"#),
            Some(10.0)
        );
        assert_eq!(
            v(r#"berth_upstream_requests_total{upstream="docker.io",code="200"}"#),
            Some(1.0)
        );
        assert_eq!(
            v(r#"berth_upstream_errors_total{upstream="docker.io",reason="connect"}"#),
            Some(1.0)
        );
        assert_eq!(
            v(r#"berth_upstream_received_bytes_total{upstream="docker.io"}"#),
            Some(99.0)
        );
        assert_eq!(
            v(r#"berth_upstream_request_duration_seconds_count{upstream="docker.io"}"#),
            Some(1.0)
        );
        assert_eq!(v("berth_gc_runs_total"), Some(1.0));
        assert_eq!(m.cache_totals(), (0, 0, 1));
        assert_eq!(m.bytes_saved(), 10);
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn tracked_gauges_count_while_alive() {
        let m = Metrics::new();
        let a = Tracked::new(&m.fill_waiters);
        let b = Tracked::new(&m.fill_waiters);
        assert_eq!(m.fill_waiters.get(), 2);
        drop((a, b));
        assert_eq!(m.fill_waiters.get(), 0);
    }
}
