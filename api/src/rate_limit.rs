//! Per-client rate limits for `/api/v1`: a token bucket per client, where a client is an API key
//! (checked, so an invented key earns nothing) or else the peer's IP address. Every answer carries
//! `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset`; past the limit the answer is
//! `429 Too Many Requests` with `Retry-After` and a problem body.

use crate::ApiState;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Buckets kept before idle ones are pruned.
const PRUNE_ABOVE: usize = 10_000;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Client {
    Key(String),
    Address(IpAddr),
    Unknown,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// The buckets of one process.
#[derive(Debug)]
pub struct RateLimiter {
    anonymous_per_minute: u32,
    keyed_per_minute: u32,
    buckets: Mutex<HashMap<Client, Bucket>>,
}

/// What one request was allowed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    pub allowed: bool,
    pub limit: u32,
    pub remaining: u32,
    /// Seconds until a token is back (for `Retry-After`) or the bucket is full (`RateLimit-Reset`).
    pub wait: Duration,
}

impl RateLimiter {
    pub fn new(anonymous_per_minute: u32, keyed_per_minute: u32) -> RateLimiter {
        RateLimiter {
            anonymous_per_minute,
            keyed_per_minute,
            buckets: Mutex::default(),
        }
    }

    /// Takes a token for `client` at `now`, if one is there. A bucket holds a minute's allowance
    /// and refills continuously.
    fn take(&self, client: Client, now: Instant) -> Decision {
        let limit = match client {
            Client::Key(_) => self.keyed_per_minute,
            _ => self.anonymous_per_minute,
        };
        let capacity = f64::from(limit.max(1));
        let per_second = capacity / 60.0;
        let mut buckets = self
            .buckets
            .lock()
            .expect("the rate limiter is never poisoned");
        if buckets.len() > PRUNE_ABOVE {
            buckets.retain(|_, b| now.duration_since(b.updated) < Duration::from_secs(120));
        }
        let bucket = buckets.entry(client).or_insert(Bucket {
            tokens: capacity,
            updated: now,
        });
        let elapsed = now.duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * per_second).min(capacity);
        bucket.updated = now;
        let allowed = bucket.tokens >= 1.0;
        if allowed {
            bucket.tokens -= 1.0;
        }
        let wait = if allowed {
            (capacity - bucket.tokens) / per_second
        } else {
            (1.0 - bucket.tokens) / per_second
        };
        Decision {
            allowed,
            limit,
            remaining: bucket.tokens.floor() as u32,
            wait: Duration::from_secs_f64(wait.max(0.0)),
        }
    }
}

/// The client a request counts against: its key if the key is valid, else its address.
async fn client_of(state: &ApiState, bearer: Option<String>, peer: Option<IpAddr>) -> Client {
    if let Some(key) = bearer {
        if let Ok(caller) = crate::auth::authenticate(&state.store, &key, chrono::Utc::now()).await
        {
            return Client::Key(caller.prefix);
        }
    }
    peer.map_or(Client::Unknown, Client::Address)
}

fn seconds(d: Duration) -> HeaderValue {
    HeaderValue::from(d.as_secs_f64().ceil() as u64)
}

/// The middleware; see the module documentation.
pub async fn limit(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    let bearer = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|v| v.trim().to_owned());
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(peer)| peer.ip());
    let client = client_of(&state, bearer, peer).await;
    let decision = state.limiter.take(client, Instant::now());
    let mut response = if decision.allowed {
        next.run(request).await
    } else {
        let mut refused = crate::error::ApiError::TooManyRequests(decision.limit).into_response();
        refused.headers_mut().insert(
            header::RETRY_AFTER,
            seconds(decision.wait).max(HeaderValue::from(1u64)),
        );
        refused
    };
    let headers = response.headers_mut();
    headers.insert("ratelimit-limit", HeaderValue::from(decision.limit));
    headers.insert("ratelimit-remaining", HeaderValue::from(decision.remaining));
    headers.insert("ratelimit-reset", seconds(decision.wait));
    if response.status() == StatusCode::TOO_MANY_REQUESTS {
        tracing::debug!("request refused by the rate limit");
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_holds_a_minute_and_refills_steadily() {
        let limiter = RateLimiter::new(60, 600);
        let start = Instant::now();
        let ip = Client::Address("192.0.2.1".parse().unwrap());
        for n in 0..60 {
            assert!(limiter.take(ip.clone(), start).allowed, "request {n}");
        }
        let refused = limiter.take(ip.clone(), start);
        assert!(!refused.allowed);
        assert_eq!(refused.wait, Duration::from_secs(1), "one token a second");
        assert!(
            limiter
                .take(ip.clone(), start + Duration::from_secs(1))
                .allowed
        );
        assert!(!limiter.take(ip, start + Duration::from_secs(1)).allowed);
        // Another client, and a key, have buckets of their own.
        assert!(
            limiter
                .take(Client::Address("192.0.2.2".parse().unwrap()), start)
                .allowed
        );
        let keyed = limiter.take(Client::Key("0123456789ab".into()), start);
        assert_eq!((keyed.allowed, keyed.limit), (true, 600));
    }
}
