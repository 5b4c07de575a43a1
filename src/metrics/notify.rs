//! Counters of the notification endpoints (`[[notifications]]`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

use super::Metrics;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct EndpointLabels {
    endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct NotificationLabels {
    endpoint: String,
    result: &'static str,
}

/// One notification endpoint's counters, registered (as 0) under its name.
#[derive(Clone, Debug, Default)]
pub struct NotificationMetrics {
    /// Events the endpoint accepted (a 2xx answer).
    pub delivered: Counter,
    /// Events given up on after the last retry.
    pub failed: Counter,
    /// Events dropped unsent because the queue was full (the oldest go first).
    pub dropped: Counter,
    /// Events waiting now.
    pub queued: Gauge,
}

impl Metrics {
    /// The counters of the notification endpoint `name`.
    pub fn notification_endpoint(&self, name: &str) -> NotificationMetrics {
        let result = |result| {
            self.notification_events.get_or_create_owned(&NotificationLabels {
                endpoint: name.to_owned(),
                result,
            })
        };
        NotificationMetrics {
            delivered: result("delivered"),
            failed: result("failed"),
            dropped: result("dropped"),
            queued: self.notification_queued.get_or_create_owned(&EndpointLabels {
                endpoint: name.to_owned(),
            }),
        }
    }
}
