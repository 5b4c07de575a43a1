//! The request budget towards one upstream: a GCRA rate limit (governor), and a pause after a
//! 429 that lasts for the upstream's `Retry-After`.

use parking_lot::Mutex;
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

pub struct Budget {
    limiter: DefaultDirectRateLimiter,
    paused_until: Mutex<Option<Instant>>,
    /// The longest pause a `Retry-After` may impose.
    max_pause: Duration,
}

/// Pause used when a 429 carries no usable `Retry-After`.
const DEFAULT_PAUSE: Duration = Duration::from_secs(30);

impl Budget {
    pub fn new(per_second: NonZeroU32, burst: NonZeroU32, max_pause: Duration) -> Budget {
        Budget {
            limiter: RateLimiter::direct(Quota::per_second(per_second).allow_burst(burst)),
            paused_until: Mutex::new(None),
            max_pause,
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
        let mut paused = self.paused_until.lock();
        match *paused {
            Some(until) if until > Instant::now() => Some(until - Instant::now()),
            Some(_) => {
                *paused = None;
                None
            }
            None => None,
        }
    }

    /// Record a 429: stop sending for `retry_after` seconds (or the default), at most the
    /// configured maximum, so a hostile or broken value cannot stop traffic for years (or
    /// overflow the clock). Returns the pause.
    pub fn pause(&self, retry_after: Option<u64>) -> u64 {
        let pause = retry_after
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_PAUSE)
            .min(self.max_pause);
        *self.paused_until.lock() = Some(Instant::now() + pause);
        pause.as_secs().max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_huge_retry_after_is_capped_and_never_panics() {
        let one = NonZeroU32::new(1).unwrap();
        let budget = Budget::new(one, one, Duration::from_secs(3600));
        assert_eq!(budget.pause(Some(u64::MAX)), 3600);
        assert_eq!(budget.pause(Some(99_999_999_999)), 3600);
        let left = budget.acquire().await.unwrap_err();
        assert!((3599..=3600).contains(&left), "paused for {left} s");
        assert_eq!(budget.pause(Some(2)), 2);
    }
}
