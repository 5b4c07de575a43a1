//! The failed-login throttle: a leaky bucket per client IP and per user name. Each password check
//! that is not already known to succeed takes a place in both buckets before bcrypt runs; a check
//! that succeeds gives its places back, a failure keeps them. Buckets leak steadily, emptying
//! completely in one window, so a throttled client or user name is never locked out for longer.
//!
//! Hand-written rather than `governor`: a GCRA limiter cannot give a cell back, and successful
//! logins must not count, while places must be taken *before* the check so a burst of concurrent
//! guesses cannot all slip through before the first one has failed.

use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Buckets tracked at most; the least used are dropped first (an idle bucket has leaked anyway).
const TRACKED: u64 = 100_000;

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
enum Key {
    Ip(IpAddr),
    User(String),
}

/// The address a client is throttled by: an IPv6 client's /64, which one host usually holds
/// whole (so it cannot rotate addresses to escape), else the address itself.
fn network_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        },
        v4 => v4,
    }
}

/// Which bucket refused a login; the `by` label of `login_throttled_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum By {
    Ip,
    User,
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    level: f64,
    at: Instant,
}

impl Bucket {
    fn leaked(self, now: Instant, per_second: f64) -> f64 {
        (self.level - now.saturating_duration_since(self.at).as_secs_f64() * per_second).max(0.0)
    }
}

/// In-process state: each berth replica throttles on its own.
pub struct Throttle {
    per_ip: u32,
    per_user: u32,
    window: Duration,
    buckets: moka::sync::Cache<Key, Bucket>,
}

/// Places taken in the buckets for one password check.
#[derive(Debug)]
pub struct Reservation {
    keys: Vec<Key>,
}

impl Throttle {
    /// Up to `per_ip` failures per client IP and `per_user` per user name within `window`; 0 turns
    /// that limit off.
    pub fn new(per_ip: u32, per_user: u32, window: Duration) -> Throttle {
        let window = window.max(Duration::from_secs(1));
        Throttle {
            per_ip,
            per_user,
            window,
            buckets: moka::sync::Cache::builder()
                .max_capacity(TRACKED)
                .time_to_idle(window)
                .build(),
        }
    }

    /// Take a place for a check of `user`'s password from `client`, or say how long to wait.
    pub fn reserve(&self, client: Option<IpAddr>, user: &str) -> Result<Reservation, (By, Duration)> {
        let mut taken = Reservation { keys: Vec::new() };
        let wanted = [
            (client.map(|ip| Key::Ip(network_of(ip))), self.per_ip, By::Ip),
            (Some(Key::User(user.to_owned())), self.per_user, By::User),
        ];
        for (key, limit, by) in wanted {
            let Some(key) = key.filter(|_| limit > 0) else {
                continue;
            };
            if let Err(wait) = self.take(&key, limit) {
                self.release(taken);
                return Err((by, wait));
            }
            taken.keys.push(key);
        }
        Ok(taken)
    }

    /// The check succeeded: give the places back.
    pub fn release(&self, reservation: Reservation) {
        for key in reservation.keys {
            let now = Instant::now();
            let per_second = self.per_second(&key);
            self.buckets.entry(key).and_upsert_with(|bucket| {
                let level = bucket.map_or(0.0, |b| b.into_value().leaked(now, per_second));
                Bucket {
                    level: (level - 1.0).max(0.0),
                    at: now,
                }
            });
        }
    }

    fn per_second(&self, key: &Key) -> f64 {
        let limit = match key {
            Key::Ip(_) => self.per_ip,
            Key::User(_) => self.per_user,
        };
        f64::from(limit) / self.window.as_secs_f64()
    }

    /// One place in `key`'s bucket, if it holds fewer than `limit`.
    fn take(&self, key: &Key, limit: u32) -> Result<(), Duration> {
        let now = Instant::now();
        let per_second = self.per_second(key);
        let limit = f64::from(limit);
        let mut refused = None;
        self.buckets.entry(key.clone()).and_upsert_with(|bucket| {
            let level = bucket.map_or(0.0, |b| b.into_value().leaked(now, per_second));
            if level + 1.0 > limit {
                refused = Some(Duration::from_secs_f64((level + 1.0 - limit) / per_second));
                Bucket { level, at: now }
            } else {
                Bucket {
                    level: level + 1.0,
                    at: now,
                }
            }
        });
        refused.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HERE: Option<IpAddr> = Some(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));

    #[test]
    fn failures_fill_the_bucket_and_successes_do_not() {
        let t = Throttle::new(3, 5, Duration::from_secs(3600));
        for _ in 0..10 {
            let ok = t.reserve(HERE, "alice").unwrap();
            t.release(ok);
        }
        for _ in 0..3 {
            t.reserve(HERE, "alice").unwrap();
        }
        let (by, wait) = t.reserve(HERE, "alice").unwrap_err();
        assert_eq!(by, By::Ip);
        assert!(
            wait > Duration::from_secs(1000) && wait <= Duration::from_secs(1200),
            "{wait:?}"
        );
        // Another client is not affected; the refused check took no place in the user's bucket.
        let other = Some(IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2)));
        for _ in 0..2 {
            t.reserve(other, "alice").unwrap();
        }
        assert_eq!(t.reserve(other, "alice").unwrap_err().0, By::User);
    }

    #[test]
    fn the_bucket_leaks_empty_within_the_window() {
        let t = Throttle::new(2, 0, Duration::from_secs(1));
        t.reserve(HERE, "a").unwrap();
        t.reserve(HERE, "a").unwrap();
        assert!(t.reserve(HERE, "a").is_err());
        std::thread::sleep(Duration::from_millis(1100));
        t.reserve(HERE, "a").unwrap();
        t.reserve(HERE, "a").unwrap();
    }

    #[test]
    fn an_ipv6_client_is_throttled_by_its_64() {
        let t = Throttle::new(1, 0, Duration::from_secs(3600));
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        t.reserve(ip("2001:db8:1:2::1"), "a").unwrap();
        assert!(t.reserve(ip("2001:db8:1:2:ffff::9"), "a").is_err());
        t.reserve(ip("2001:db8:1:3::1"), "a").unwrap();
        t.reserve(ip("::ffff:192.0.2.1"), "a").unwrap();
        assert!(t.reserve(ip("192.0.2.1"), "a").is_err());
    }

    #[test]
    fn zero_turns_a_limit_off() {
        let t = Throttle::new(0, 0, Duration::from_secs(60));
        for _ in 0..1000 {
            t.reserve(HERE, "a").unwrap();
        }
    }
}
