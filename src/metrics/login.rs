//! Password checks and the failed-login throttle.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::pre;

/// Password checks and the failed-login throttle.
#[derive(Debug)]
pub struct LoginMetrics {
    /// Password checks that failed.
    pub failures: Counter,
    /// Logins refused without a check, `[by ip, by user]`.
    throttled: [Counter; 2],
    /// Bcrypt checks running now.
    pub checks_running: Gauge,
    /// Password checks waiting for a bcrypt slot.
    pub checks_waiting: Gauge,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ThrottledLabels {
    by: &'static str,
}

impl LoginMetrics {
    pub(super) fn register(r: &mut Registry) -> LoginMetrics {
        let failures = Counter::default();
        r.register("login_failures", "Password checks that failed", failures.clone());
        let throttled = Family::<ThrottledLabels, Counter>::default();
        r.register(
            "login_throttled",
            "Logins refused without a check after repeated failures, by the client IP or the user name",
            throttled.clone(),
        );
        let checks_running = Gauge::default();
        r.register(
            "login_checks_running",
            "Bcrypt password checks running",
            checks_running.clone(),
        );
        let checks_waiting = Gauge::default();
        r.register(
            "login_checks_waiting",
            "Password checks waiting for a bcrypt slot",
            checks_waiting.clone(),
        );
        LoginMetrics {
            failures,
            throttled: ["ip", "user"].map(|by| pre(&throttled, ThrottledLabels { by })),
            checks_running,
            checks_waiting,
        }
    }

    /// Count a login refused unchecked, because of its user name (else its client IP).
    pub fn throttled(&self, by_user: bool) {
        self.throttled[usize::from(by_user)].inc();
    }
}
