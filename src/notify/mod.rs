//! Notifications: registry:2's `notifications.endpoints` as `[[notifications]]`. Push, pull,
//! delete and cache-fill events are queued per endpoint and POSTed in registry:2's envelope by one
//! background task per endpoint, so a slow or dead receiver never slows a request: emitting is a
//! lock, a push onto a bounded queue and a wake-up.
//!
//! Each queue holds at most `queue` events; when it is full the oldest event is dropped (and
//! counted), because a receiver that is that far behind cares more about what happens now. A
//! delivery that fails (no answer within `timeout`, or a non-2xx status) is retried `retries`
//! times with a doubling `backoff`, then its events count as failed and the next batch goes.
//! At shutdown berth waits a little for queued events (see [`Notifier::flush`]); what is still
//! queued after that is lost, as with registry:2.
//!
//! A leaf like `metrics`: the API and the service call in; it knows neither.

pub mod event;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;
use std::time::{Duration, SystemTime};

pub use event::{Action, Actor, BLOB_MEDIA_TYPE, ENVELOPE_MEDIA_TYPE, Event, Request, Source, Target};

use crate::config::NotificationSettings;
use crate::metrics::{Metrics, NotificationMetrics};

/// Events sent in one envelope at most.
const MAX_BATCH: usize = 100;
/// The longest wait between retries, however many there are.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Where events go. Does nothing until [`Notifier::start`] is given endpoints.
#[derive(Default)]
pub struct Notifier {
    started: OnceLock<Started>,
}

struct Started {
    sinks: Vec<Arc<Sink>>,
    source: Source,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Notifier({} endpoints)",
            self.started.get().map_or(0, |s| s.sinks.len())
        )
    }
}

impl Notifier {
    /// Start one delivery task per endpoint (inside the Tokio runtime). `source` is the
    /// `hostname:port` events name as their source. Only the first call has an effect.
    pub fn start(&self, endpoints: Vec<NotificationSettings>, source: String, metrics: &Metrics) {
        if endpoints.is_empty() {
            return;
        }
        let mut sinks = Vec::new();
        for settings in endpoints {
            let http = reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(settings.timeout)
                .build();
            let http = match http {
                Ok(http) => http,
                Err(e) => {
                    tracing::error!(endpoint = %settings.name, error = %e, "notification endpoint left out: cannot build its HTTP client");
                    continue;
                }
            };
            let sink = Arc::new(Sink {
                metrics: metrics.notification_endpoint(&settings.name),
                settings,
                queue: Mutex::default(),
                sending: AtomicBool::new(false),
                wake: tokio::sync::Notify::new(),
                http,
            });
            tokio::spawn(Arc::clone(&sink).deliver_forever());
            sinks.push(sink);
        }
        let source = Source {
            addr: source,
            instance_id: uuid::Uuid::new_v4().to_string(),
        };
        let _ = self.started.set(Started { sinks, source });
    }

    /// Wait up to `limit` for every queued event to be delivered or given up (at shutdown, so
    /// the last pushes before a restart are not lost to a healthy endpoint).
    pub async fn flush(&self, limit: Duration) {
        let Some(started) = self.started.get() else {
            return;
        };
        let deadline = tokio::time::Instant::now() + limit;
        while !started.sinks.iter().all(|s| s.idle()) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Whether any endpoint listens; callers skip building events when none does.
    pub fn enabled(&self) -> bool {
        self.started.get().is_some_and(|s| !s.sinks.is_empty())
    }

    /// Queue an event for every endpoint that does not ignore it. Never waits.
    pub fn emit(&self, action: Action, target: Target, request: Request, actor: Actor) {
        let Some(started) = self.started.get() else {
            return;
        };
        let wanted: Vec<&Arc<Sink>> = started.sinks.iter().filter(|s| s.wants(action, &target)).collect();
        if wanted.is_empty() {
            return;
        }
        let event = Event {
            id: uuid::Uuid::new_v4().to_string(),
            timestamp: humantime::format_rfc3339_nanos(SystemTime::now()).to_string(),
            action,
            target,
            request,
            actor,
            source: started.source.clone(),
        };
        for sink in wanted {
            sink.offer(event.clone());
        }
    }
}

/// One endpoint: its bounded queue and the task that empties it.
struct Sink {
    settings: NotificationSettings,
    queue: Mutex<VecDeque<Event>>,
    /// A batch is out (taken from the queue, not yet delivered or given up).
    sending: AtomicBool,
    wake: tokio::sync::Notify,
    http: reqwest::Client,
    metrics: NotificationMetrics,
}

impl Sink {
    fn wants(&self, action: Action, target: &Target) -> bool {
        let s = &self.settings;
        !s.ignored_actions.iter().any(|a| a == action.as_str()) && !s.ignored_media_types.contains(&target.media_type)
    }

    fn offer(&self, event: Event) {
        {
            let mut queue = self.queue.lock();
            if queue.len() >= self.settings.queue {
                queue.pop_front();
                self.metrics.dropped.inc();
            }
            queue.push_back(event);
            self.metrics.queued.set(queue.len() as i64);
        }
        self.wake.notify_one();
    }

    fn take_batch(&self) -> Vec<Event> {
        let mut queue = self.queue.lock();
        let n = queue.len().min(MAX_BATCH);
        let batch: Vec<Event> = queue.drain(..n).collect();
        self.metrics.queued.set(queue.len() as i64);
        // Under the lock, so `idle` never sees an empty queue before the batch counts as out.
        self.sending.store(n > 0, Ordering::SeqCst);
        batch
    }

    fn idle(&self) -> bool {
        let queue = self.queue.lock();
        queue.is_empty() && !self.sending.load(Ordering::SeqCst)
    }

    async fn deliver_forever(self: Arc<Self>) {
        loop {
            let batch = self.take_batch();
            if batch.is_empty() {
                self.wake.notified().await;
                continue;
            }
            self.deliver(&batch).await;
        }
    }

    /// Send one envelope, retrying with backoff; count the outcome.
    async fn deliver(&self, batch: &[Event]) {
        let body = serde_json::to_vec(&event::Envelope { events: batch }).expect("events serialise");
        let n = batch.len() as u64;
        let mut backoff = self.settings.backoff;
        for attempt in 0..=self.settings.retries {
            match self.post(&body).await {
                Ok(()) => {
                    self.metrics.delivered.inc_by(n);
                    return;
                }
                Err(why) if attempt == self.settings.retries => {
                    tracing::warn!(endpoint = %self.settings.name, events = n, error = %why, "notification delivery failed; events dropped");
                }
                Err(why) => {
                    tracing::debug!(endpoint = %self.settings.name, attempt, error = %why, "notification delivery failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
        self.metrics.failed.inc_by(n);
    }

    async fn post(&self, body: &[u8]) -> Result<(), String> {
        let mut request = self
            .http
            .post(self.settings.url.clone())
            .header(reqwest::header::CONTENT_TYPE, ENVELOPE_MEDIA_TYPE)
            .body(body.to_vec());
        for (name, value) in &self.settings.headers {
            request = request.header(name.as_str(), value.0.as_str());
        }
        let response = request.send().await.map_err(|e| e.without_url().to_string())?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(format!("the endpoint answered {}", response.status()))
        }
    }
}
