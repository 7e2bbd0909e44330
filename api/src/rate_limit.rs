//! Per-client rate limits for `/api/v1`: a token bucket per client, where a client is an API key
//! (checked, so an invented key earns nothing) or else the client's address (an IPv6 client by its
//! /64; behind a trusted proxy, the address it forwarded). A request with a key first takes a token
//! from its address's lookup bucket (at the keyed rate) before the key is looked up in the
//! database, so invented keys cannot make the database work faster than that. The buckets are
//! bounded ([`MAX_BUCKETS`]).
//!
//! Why not the governor crate: its keyed limiter's store grows until `retain_recent` is called and
//! has no hard bound under a flood of fresh addresses, and the `RateLimit-Remaining` header needs
//! the bucket's level; the bucket here is thirty lines and both are direct. Every answer carries
//! `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset`; past the limit the answer is
//! `429 Too Many Requests` with `Retry-After` and a problem body.

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tidemark_model::network::Network;
use tidemark_store::Store;

/// Most buckets kept. A bucket idle for a minute is full, the same as a new one, so those go first
/// and nothing changes; past that (more clients active within a minute than this), the fullest
/// go, which forgets the least.
const MAX_BUCKETS: usize = 100_000;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Client {
    /// A valid API key (its prefix).
    Key(String),
    /// An address (an IPv6 client by its /64) without a valid key.
    Address(IpAddr),
    /// An address that presents a key: the allowance for looking keys up, taken before the
    /// database is asked, at the keyed rate.
    Lookup(IpAddr),
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
    max_buckets: usize,
    buckets: Mutex<HashMap<Client, Bucket>>,
    /// API keys looked up in the database on behalf of the limiter.
    lookups: AtomicU64,
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
            max_buckets: MAX_BUCKETS,
            buckets: Mutex::default(),
            lookups: AtomicU64::new(0),
        }
    }

    /// How many API keys the limiter has had looked up.
    pub fn lookups(&self) -> u64 {
        self.lookups.load(Ordering::Relaxed)
    }

    /// How many buckets are kept.
    pub fn buckets(&self) -> usize {
        self.buckets.lock().map(|b| b.len()).unwrap_or(0)
    }

    /// Takes a token for `client` at `now`, if one is there. A bucket holds a minute's allowance
    /// and refills continuously.
    /// A minute's allowance for `client`.
    fn limit_of(&self, client: &Client) -> u32 {
        match client {
            Client::Key(_) | Client::Lookup(_) => self.keyed_per_minute,
            _ => self.anonymous_per_minute,
        }
    }

    fn take(&self, client: Client, now: Instant) -> Decision {
        let limit = self.limit_of(&client);
        let capacity = f64::from(limit.max(1));
        let per_second = capacity / 60.0;
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if buckets.len() >= self.max_buckets && !buckets.contains_key(&client) {
            self.evict(&mut buckets, now);
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

    /// Makes room: first the buckets idle for a minute (full again, so forgetting them changes
    /// nothing), then, if that is not enough, the tenth that are fullest now (forgetting a nearly
    /// full bucket forgives the least; a spent one is kept).
    fn evict(&self, buckets: &mut HashMap<Client, Bucket>, now: Instant) {
        buckets.retain(|_, b| now.duration_since(b.updated) < Duration::from_secs(60));
        if buckets.len() < self.max_buckets {
            return;
        }
        let fullness = |client: &Client, b: &Bucket| {
            let capacity = f64::from(self.limit_of(client).max(1));
            let refilled = now.duration_since(b.updated).as_secs_f64() * capacity / 60.0;
            ((b.tokens + refilled) / capacity).min(1.0)
        };
        let mut levels: Vec<f64> = buckets.iter().map(|(c, b)| fullness(c, b)).collect();
        let cut = levels.len() - levels.len() / 10 - 1;
        levels.select_nth_unstable_by(cut, f64::total_cmp);
        let threshold = levels[cut];
        let mut over = buckets.len() - cut;
        buckets.retain(|c, b| {
            if over > 0 && fullness(c, b) >= threshold {
                over -= 1;
                false
            } else {
                true
            }
        });
    }
}

/// The address a client is counted by: an IPv6 address by its /64 (one subscriber's network, which
/// hands out addresses freely), an IPv4-mapped one as IPv4.
fn counted(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !0xffff_ffff_ffff_ffffu128)),
        },
        v4 => v4,
    }
}

/// The client's address: the peer's, or, when the peer is a trusted proxy, the nearest address in
/// `X-Forwarded-For` that is not itself a trusted proxy (read from the right, since every proxy
/// appends what it saw and only the trusted ones can be believed).
pub fn client_address(peer: IpAddr, headers: &HeaderMap, trusted: &[Network]) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(peer) {
        return peer;
    }
    let mut address = peer;
    let hops = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect::<Vec<_>>();
    for hop in hops.iter().rev() {
        let Ok(ip) = hop.parse::<IpAddr>() else {
            break;
        };
        address = ip;
        if !is_trusted(ip) {
            break;
        }
    }
    address
}

/// The address a request counts against, by [`client_address`] and [`counted`]; `None` where
/// the server was not started with the peers' addresses.
pub fn counted_client(
    extensions: &axum::http::Extensions,
    headers: &HeaderMap,
    trusted: &[Network],
) -> Option<IpAddr> {
    extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(peer)| counted(client_address(peer.ip(), headers, trusted)))
}

fn seconds(d: Duration) -> HeaderValue {
    HeaderValue::from(d.as_secs_f64().ceil() as u64)
}

/// The middleware; see the module documentation.
/// What the rate limit middleware needs.
#[derive(Clone)]
pub struct Limits {
    pub limiter: Arc<RateLimiter>,
    pub store: Store,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Arc<Vec<Network>>,
}

pub async fn limit(State(state): State<Limits>, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(crate::auth::presented_key);
    let peer = counted_client(
        request.extensions(),
        request.headers(),
        &state.trusted_proxies,
    );
    let now = Instant::now();
    let limiter = &state.limiter;
    let anonymous = || peer.map_or(Client::Unknown, Client::Address);
    let decision = match presented {
        None => limiter.take(anonymous(), now),
        Some(key) => {
            // A key costs a database lookup: the address pays for it first.
            let lookup = limiter.take(peer.map_or(Client::Unknown, Client::Lookup), now);
            if !lookup.allowed {
                lookup
            } else {
                limiter.lookups.fetch_add(1, Ordering::Relaxed);
                match crate::auth::authenticate(&state.store, &key, chrono::Utc::now()).await {
                    Ok(caller) => limiter.take(Client::Key(caller.prefix), now),
                    Err(_) => limiter.take(anonymous(), now),
                }
            }
        }
    };
    let mut response = if decision.allowed {
        next.run(request).await
    } else {
        let mut refused =
            crate::http::problem::ApiError::TooManyRequests(decision.limit).into_response();
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

    #[test]
    fn ipv6_clients_count_by_their_64_and_mapped_ones_as_ipv4() {
        let a = counted("2001:db8:1:2:aaaa::1".parse().unwrap());
        let b = counted("2001:db8:1:2:bbbb:cccc:dddd:eeee".parse().unwrap());
        let other = counted("2001:db8:1:3::1".parse().unwrap());
        assert_eq!(a, b);
        assert_ne!(a, other);
        assert_eq!(a, "2001:db8:1:2::".parse::<IpAddr>().unwrap());
        assert_eq!(
            counted("::ffff:192.0.2.7".parse().unwrap()),
            "192.0.2.7".parse::<IpAddr>().unwrap()
        );
        let limiter = RateLimiter::new(2, 10);
        let now = Instant::now();
        assert!(limiter.take(Client::Address(a), now).allowed);
        assert!(limiter.take(Client::Address(b), now).allowed);
        assert!(
            !limiter.take(Client::Address(a), now).allowed,
            "one /64, one bucket"
        );
    }

    #[test]
    fn forwarded_addresses_count_only_behind_trusted_proxies() {
        let trusted = vec![
            Network::parse("10.0.0.0/8").unwrap(),
            Network::parse("fd00::/8").unwrap(),
        ];
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            "203.0.113.9, 198.51.100.4, 10.1.1.1".parse().unwrap(),
        );
        let proxy: IpAddr = "10.0.0.2".parse().unwrap();
        // The nearest untrusted hop: the client could have written the leftmost one itself.
        assert_eq!(
            client_address(proxy, &headers, &trusted),
            "198.51.100.4".parse::<IpAddr>().unwrap()
        );
        // An untrusted peer's header is ignored.
        let stranger: IpAddr = "198.51.100.77".parse().unwrap();
        assert_eq!(client_address(stranger, &headers, &trusted), stranger);
        assert_eq!(client_address(proxy, &headers, &[]), proxy);
        // Garbage stops the walk at the last address that could be read.
        headers.insert("x-forwarded-for", "nonsense, 10.2.2.2".parse().unwrap());
        assert_eq!(
            client_address(proxy, &headers, &trusted),
            "10.2.2.2".parse::<IpAddr>().unwrap()
        );
        let v6: IpAddr = "fd00::5".parse().unwrap();
        headers.insert("x-forwarded-for", "2001:db8::7".parse().unwrap());
        assert_eq!(
            client_address(v6, &headers, &trusted),
            "2001:db8::7".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn the_buckets_stay_bounded_and_forget_full_ones_first() {
        let mut limiter = RateLimiter::new(60, 600);
        limiter.max_buckets = 1000;
        let start = Instant::now();
        let address = |n: u32| Client::Address(IpAddr::from(std::net::Ipv4Addr::from(n)));
        // A busy client that has spent its allowance, then a flood of others.
        for _ in 0..60 {
            limiter.take(address(7), start);
        }
        for n in 1000..6000 {
            limiter.take(address(n), start + Duration::from_millis(u64::from(n)));
            assert!(limiter.buckets() <= 1000);
        }
        // Much later every bucket is full again: when room is needed, the idle ones all go.
        let later = start + Duration::from_secs(600);
        for n in 0..200 {
            limiter.take(address(10_000 + n), later);
        }
        assert!(limiter.buckets() <= 200, "{}", limiter.buckets());
        // Within a minute, the spent bucket is remembered while newer clients come and go.
        let limiter = RateLimiter {
            max_buckets: 100,
            ..RateLimiter::new(60, 600)
        };
        for _ in 0..60 {
            limiter.take(address(7), start + Duration::from_secs(2));
        }
        for n in 0..50 {
            limiter.take(address(100 + n), start);
        }
        for n in 0..200 {
            limiter.take(address(1000 + n), start + Duration::from_secs(2));
        }
        assert!(
            !limiter
                .take(address(7), start + Duration::from_secs(2))
                .allowed
        );
    }
}
