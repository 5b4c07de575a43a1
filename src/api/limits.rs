//! Client rate limits (governor): per client IP as middleware, per logged-in user in dispatch.
//! Over the limit: 429 `TOOMANYREQUESTS` with `Retry-After`; other clients are unaffected.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use super::AppState;
use crate::config::Limits;
use crate::service::Error;

/// Forget idle clients once this many are tracked, so the tables stay small.
const TRACKED_CLIENTS: usize = 10_000;

pub struct ClientLimits {
    per_ip: Option<DefaultKeyedRateLimiter<IpAddr>>,
    per_user: Option<DefaultKeyedRateLimiter<String>>,
    trust_forwarded_for: bool,
}

fn limiter<K: std::hash::Hash + Eq + Clone>(per_second: u32, burst: u32) -> Option<DefaultKeyedRateLimiter<K>> {
    let rate = NonZeroU32::new(per_second)?;
    let burst = NonZeroU32::new(burst).unwrap_or(rate);
    Some(RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst)))
}

fn check<K: std::hash::Hash + Eq + Clone>(
    limiter: &DefaultKeyedRateLimiter<K>,
    key: &K,
    who: &str,
) -> Result<(), Error> {
    if limiter.len() > TRACKED_CLIENTS {
        limiter.retain_recent();
    }
    limiter.check_key(key).map_err(|not_until| {
        let wait = not_until.wait_time_from(DefaultClock::default().now());
        Error::TooManyRequests {
            retry_after: wait.as_secs() + 1,
            reason: format!("request rate limit reached for {who}"),
        }
    })
}

impl ClientLimits {
    pub fn new(config: &Limits) -> ClientLimits {
        ClientLimits {
            per_ip: limiter(config.requests_per_second, config.burst),
            per_user: limiter(config.user_requests_per_second, config.burst),
            trust_forwarded_for: config.trust_forwarded_for,
        }
    }

    pub fn off() -> ClientLimits {
        ClientLimits::new(&Limits {
            requests_per_second: 0,
            user_requests_per_second: 0,
            ..Limits::default()
        })
    }

    pub fn check_user(&self, user: &str) -> Result<(), Error> {
        match &self.per_user {
            Some(l) => check(l, &user.to_owned(), &format!("user {user}")),
            None => Ok(()),
        }
    }

    /// The client's address: the connection's peer, or the first `X-Forwarded-For` hop when
    /// configured to trust a proxy in front.
    pub fn client_ip(
        &self,
        request_headers: &axum::http::HeaderMap,
        extensions: &axum::http::Extensions,
    ) -> Option<IpAddr> {
        if self.trust_forwarded_for {
            let forwarded = request_headers.get("x-forwarded-for").and_then(|v| v.to_str().ok());
            if let Some(ip) = forwarded
                .and_then(|v| v.split(',').next())
                .and_then(|ip| ip.trim().parse().ok())
            {
                return Some(ip);
            }
        }
        extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip())
    }
}

/// Middleware: refuse a client IP over its rate.
pub async fn per_ip(State(app): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    if let Some(limiter) = &app.limits.per_ip
        && let Some(ip) = app.limits.client_ip(request.headers(), request.extensions())
        && let Err(e) = check(limiter, &ip, &ip.to_string())
    {
        return e.into_response();
    }
    next.run(request).await
}
