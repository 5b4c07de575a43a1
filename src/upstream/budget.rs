//! The request budget towards one upstream: a GCRA rate limit (governor), and a pause after a
//! 429 that lasts for the upstream's `Retry-After`.

use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

pub struct Budget {
    limiter: DefaultDirectRateLimiter,
    paused_until: Mutex<Option<Instant>>,
}

/// Pause used when a 429 carries no usable `Retry-After`.
const DEFAULT_PAUSE: Duration = Duration::from_secs(30);

impl Budget {
    pub fn new(per_second: NonZeroU32, burst: NonZeroU32) -> Budget {
        Budget {
            limiter: RateLimiter::direct(Quota::per_second(per_second).allow_burst(burst)),
            paused_until: Mutex::new(None),
        }
    }

    /// Wait for a slot. While paused by a 429, answer at once with the seconds left instead.
    pub async fn acquire(&self) -> Result<(), u64> {
        if let Some(left) = self.paused_for() {
            return Err(left.as_secs().max(1));
        }
        self.limiter.until_ready().await;
        Ok(())
    }

    fn paused_for(&self) -> Option<Duration> {
        let mut paused = self.paused_until.lock().expect("budget lock");
        match *paused {
            Some(until) if until > Instant::now() => Some(until - Instant::now()),
            Some(_) => {
                *paused = None;
                None
            }
            None => None,
        }
    }

    /// Record a 429: stop sending for `retry_after` seconds (or the default). Returns the pause.
    pub fn pause(&self, retry_after: Option<u64>) -> u64 {
        let pause = retry_after.map(Duration::from_secs).unwrap_or(DEFAULT_PAUSE);
        *self.paused_until.lock().expect("budget lock") = Some(Instant::now() + pause);
        pause.as_secs().max(1)
    }
}
