//! Password checks under abuse: remembered results, a bound on concurrent bcrypt work, and the
//! failed-login throttle.
//!
//! Order of a check: credentials verified recently pass at once (a push sends them with every
//! request); credentials refused recently fail at once (a Docker daemon sends its Docker Hub login
//! to its mirror on every pull, and repeating a wrong guess teaches nothing); anything else takes a
//! place in the throttle, then waits for one of `password_checks` bcrypt slots.
//!
//! Both caches are keyed by an HMAC of user and password under a key made at startup, so neither
//! a password nor a plain hash of one is ever held.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use tokio::sync::Semaphore;

use super::htpasswd::Htpasswd;
use super::throttle::{By, Throttle};
use crate::metrics::{Metrics, Tracked};

/// Remembered results at most, each way.
const REMEMBERED: u64 = 10_000;

/// What a password check found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Login {
    Ok,
    Failed,
    /// Too many failures from this client or for this user name: try again in this many seconds.
    Throttled {
        retry_after: u64,
    },
}

/// How the checks are bounded; from `[auth]`.
#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    pub failures_per_ip: u32,
    pub failures_per_user: u32,
    pub failure_window: Duration,
    pub remember: Duration,
    /// Concurrent bcrypt checks; 0: one per CPU core.
    pub concurrent: usize,
}

pub struct Logins {
    htpasswd: Arc<Htpasswd>,
    key: [u8; 32],
    verified: moka::sync::Cache<[u8; 32], ()>,
    refused: moka::sync::Cache<[u8; 32], ()>,
    slots: Arc<Semaphore>,
    throttle: Throttle,
    metrics: Arc<Metrics>,
}

fn cache(ttl: Duration) -> moka::sync::Cache<[u8; 32], ()> {
    moka::sync::Cache::builder()
        .max_capacity(REMEMBERED)
        .time_to_live(ttl.max(Duration::from_millis(1)))
        .build()
}

impl Logins {
    pub fn new(htpasswd: Arc<Htpasswd>, bounds: Bounds, metrics: Arc<Metrics>) -> Logins {
        let mut key = [0u8; 32];
        key[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        key[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        let concurrent = match bounds.concurrent {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        Logins {
            htpasswd,
            key,
            verified: cache(bounds.remember),
            refused: cache(bounds.remember),
            slots: Arc::new(Semaphore::new(concurrent)),
            throttle: Throttle::new(bounds.failures_per_ip, bounds.failures_per_user, bounds.failure_window),
            metrics,
        }
    }

    fn key_of(&self, user: &str, password: &str) -> [u8; 32] {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(user.as_bytes());
        mac.update(b"\0");
        mac.update(password.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(&mac.finalize().into_bytes());
        out
    }

    /// Check `user`'s `password`, sent by `client`.
    pub async fn check(&self, user: &str, password: &str, client: Option<IpAddr>) -> Login {
        let key = self.key_of(user, password);
        if self.verified.contains_key(&key) {
            return Login::Ok;
        }
        if self.refused.contains_key(&key) {
            return Login::Failed;
        }
        let reservation = match self.throttle.reserve(client, user) {
            Ok(r) => r,
            Err((by, wait)) => {
                self.metrics.logins.throttled(by == By::User);
                // Debug only: the access log already has a line per refused request.
                tracing::debug!(user, client = ?client, by = ?by, "login throttled after repeated failures");
                return Login::Throttled {
                    retry_after: wait.as_secs_f64().ceil().max(1.0) as u64,
                };
            }
        };
        if self.bcrypt(user, password).await {
            self.throttle.release(reservation);
            self.verified.insert(key, ());
            Login::Ok
        } else {
            self.metrics.logins.failures.inc();
            self.refused.insert(key, ());
            Login::Failed
        }
    }

    /// Bcrypt on a blocking thread, once a slot is free. A caller that goes away while waiting
    /// gives up its place; a check already running finishes and frees its slot.
    async fn bcrypt(&self, user: &str, password: &str) -> bool {
        let waiting = Tracked::new(&self.metrics.logins.checks_waiting);
        let Ok(slot) = self.slots.clone().acquire_owned().await else {
            return false;
        };
        drop(waiting);
        let running = Tracked::new(&self.metrics.logins.checks_running);
        let (htpasswd, user, password) = (self.htpasswd.clone(), user.to_owned(), password.to_owned());
        tokio::task::spawn_blocking(move || {
            // The count drops before the slot is freed, so it never shows more than the slots.
            let _held = (running, slot);
            htpasswd.verify(&user, &password)
        })
        .await
        .unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn remembered_results_skip_bcrypt_and_the_throttle() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("htpasswd");
        std::fs::write(&file, format!("alice:{}\n", bcrypt::hash("right", 4).unwrap())).unwrap();
        let bounds = Bounds {
            failures_per_ip: 2,
            failures_per_user: 0,
            failure_window: Duration::from_secs(3600),
            remember: Duration::from_secs(3600),
            concurrent: 1,
        };
        let metrics = Arc::new(Metrics::new());
        let logins = Logins::new(Arc::new(Htpasswd::load(&file).unwrap()), bounds, metrics.clone());
        let here = Some(IpAddr::from([127, 0, 0, 1]));
        let check = |password: &'static str| logins.check("alice", password, here);

        assert_eq!(check("right").await, Login::Ok, "a success takes no place");
        assert_eq!(check("wrong-1").await, Login::Failed);
        assert_eq!(
            check("wrong-1").await,
            Login::Failed,
            "a repeat is known, not checked again"
        );
        assert_eq!(check("right").await, Login::Ok);
        assert_eq!(check("wrong-2").await, Login::Failed);
        assert!(matches!(check("wrong-3").await, Login::Throttled { retry_after } if retry_after > 1000));
        assert_eq!(check("right").await, Login::Ok, "verified credentials still pass");
        assert_eq!(metrics.logins.failures.get(), 2);
        assert_eq!(metrics.logins.checks_running.get(), 0);
    }
}
