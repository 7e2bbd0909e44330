//! `Last-Modified` and `If-Modified-Since` for the public GET endpoints.
//!
//! What a response says depends on one or more kinds of data: readings, reference data (stations,
//! sensors, flood areas, thresholds) and warnings. Every change to one of them is announced with a
//! notification at its commit; [`Freshness`] listens and remembers when each kind last changed, as
//! seen by this process. A response's `Last-Modified` is the latest of those times for the kinds it
//! depends on, read before the handler runs, so a response never claims to be newer than its data.
//!
//! HTTP dates count whole seconds, so a change in the same second as the one a client already
//! holds would be invisible to `If-Modified-Since`. No `Last-Modified` is therefore given, and no
//! `304` answered on it, until the second of the latest change has passed. While the listening
//! connection is down the process cannot know what changed, and gives neither.
//!
//! When the open-data reads come from a standby (`database.read_url`), no `Last-Modified` is given
//! at all: the standby may lag the primary whose notifications this follows.
//!
//! Routes whose answer is kept in a cache of its own (`/api/v1/latest`), that need a key, or whose
//! answer also depends on the clock carry only the `ETag` of [`crate::caching`].

use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use chrono::{DateTime, TimeZone, Utc};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tidemark_store::coordination::Channel;
use tidemark_store::DatabaseConfig;
use tokio_util::sync::CancellationToken;

/// A kind of data responses depend on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Readings = 0,
    Reference = 1,
    Warnings = 2,
    Forecasts = 3,
}

const KINDS: [Kind; 4] = [
    Kind::Readings,
    Kind::Reference,
    Kind::Warnings,
    Kind::Forecasts,
];

/// The kinds a notification channel announces changes to.
fn kinds_of(channel: Channel) -> &'static [Kind] {
    match channel {
        Channel::ReadingsCommitted | Channel::ReadingsFlagged => &[Kind::Readings],
        Channel::ReferenceChanged | Channel::FloodSetupChanged => &[Kind::Reference],
        Channel::WarningsChanged => &[Kind::Warnings],
        Channel::ForecastsCommitted => &[Kind::Forecasts],
    }
}

/// Which requests to a route are answered from stored data alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Span {
    /// Every request.
    Any,
    /// Only requests that fix their time range (`from` and `to`, or `since`); a default range
    /// ends now, and readings leave it as time passes without any change to the data.
    Fixed,
}

/// The routes with `Last-Modified`, and the kinds of data their answers depend on. Routes whose
/// answers depend on the clock as well (stations and municipalities show which sensors are stale,
/// the Atom feed is dated now when it is empty) are left out: only their `ETag` is reliable.
const DEPENDENCIES: &[(&str, Span, &[Kind])] = {
    use Kind::*;
    use Span::*;
    &[
        ("/api/v1/sensors/{key}/readings", Fixed, &[Readings]),
        (
            "/api/v1/utilities/sensors/{key}/summary",
            Fixed,
            &[Readings],
        ),
        (
            "/api/v1/utilities/sensors/{key}/load-duration",
            Fixed,
            &[Readings],
        ),
        ("/api/v1/municipalities", Any, &[Reference]),
        ("/api/v1/flood-areas", Any, &[Reference, Warnings]),
        ("/api/v1/rain-rules", Any, &[Reference]),
        ("/api/v1/quality-rules", Any, &[Reference]),
        ("/api/v1/warnings", Any, &[Warnings, Reference]),
        ("/api/v1/warnings/{id}", Any, &[Warnings, Reference]),
        ("/api/v1/warning-events/{file}", Any, &[Warnings, Reference]),
        (
            "/api/v1/sensors/{key}/forecasts",
            Any,
            &[Forecasts, Reference],
        ),
        // Fixed for the life of the process.
        ("/api/v1/openapi.json", Any, &[]),
        ("/api/v1/docs", Any, &[]),
    ]
};

/// The kinds of data the answer to a request depends on; `None` for requests without
/// `Last-Modified`.
pub fn depends_on(route: &str, query: Option<&str>) -> Option<&'static [Kind]> {
    let (_, span, kinds) = DEPENDENCIES.iter().find(|(r, _, _)| *r == route)?;
    let given = |name: &str| {
        query
            .unwrap_or_default()
            .split('&')
            .any(|pair| pair.split('=').next() == Some(name))
    };
    match span {
        Span::Fixed if !((given("from") && given("to")) || given("since")) => None,
        _ => Some(*kinds),
    }
}

/// When each kind of data last changed, as far as this process has heard.
#[derive(Debug)]
pub struct Freshness {
    /// Unix milliseconds, per [`Kind`].
    changed: [AtomicI64; 4],
    started: i64,
    listening: AtomicBool,
}

impl Freshness {
    /// Starts listening for changes until `shutdown`. Until the first connection, and whenever it
    /// is lost, no `Last-Modified` is given.
    pub fn start(database: DatabaseConfig, shutdown: CancellationToken) -> Arc<Freshness> {
        let freshness = Arc::new(Freshness::new(Utc::now()));
        if database.read_url.is_some() {
            // Answers come from a standby, which may lag the primary whose notifications this
            // would follow: a Last-Modified could claim data the answer does not hold yet. Never
            // listening, the process gives none; ETags, hashes of the bodies, stay right.
            tracing::info!("reads come from a standby: no Last-Modified, ETags only");
            return freshness;
        }
        let listener = freshness.clone();
        tokio::spawn(async move {
            let channels = Channel::ALL;
            while !shutdown.is_cancelled() {
                match tidemark_store::notify::listen(&database, &channels).await {
                    Ok(mut connection) => {
                        // Anything may have changed while nobody listened.
                        listener.changed_now(&KINDS);
                        listener.listening.store(true, Ordering::Release);
                        loop {
                            tokio::select! {
                                _ = shutdown.cancelled() => return,
                                notification = connection.recv() => match notification {
                                    Some(n) => listener.changed_now(kinds_of(n.channel())),
                                    None => break,
                                },
                            }
                        }
                        listener.listening.store(false, Ordering::Release);
                        tracing::warn!("the change listener closed; reconnecting");
                    }
                    Err(error) => tracing::warn!(%error, "cannot listen for changes"),
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        });
        freshness
    }

    fn new(now: DateTime<Utc>) -> Freshness {
        let at = now.timestamp_millis();
        Freshness {
            changed: std::array::from_fn(|_| AtomicI64::new(at)),
            started: at,
            listening: AtomicBool::new(false),
        }
    }

    fn changed_now(&self, kinds: &[Kind]) {
        let now = Utc::now().timestamp_millis();
        for kind in kinds {
            self.changed[*kind as usize].fetch_max(now, Ordering::AcqRel);
        }
    }

    /// The `Last-Modified` of an answer depending on `kinds`, at `now`: whole seconds, and only
    /// once the second of the latest change has passed.
    fn last_modified(&self, kinds: &[Kind], now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        if !self.listening.load(Ordering::Acquire) {
            return None;
        }
        let latest = kinds
            .iter()
            .map(|k| self.changed[*k as usize].load(Ordering::Acquire))
            .fold(self.started, i64::max);
        let second = latest.div_euclid(1000);
        (now.timestamp() > second)
            .then(|| Utc.timestamp_opt(second, 0).single())
            .flatten()
    }
}

/// The middleware; see the module documentation. It sits outside [`crate::caching::etag`], so a
/// `304` keeps the `ETag` a `200` would have carried.
pub async fn last_modified(
    State(freshness): State<Arc<Freshness>>,
    request: Request,
    next: Next,
) -> Response {
    let kinds = request
        .extensions()
        .get::<MatchedPath>()
        .and_then(|p| depends_on(p.as_str(), request.uri().query()));
    let (Some(kinds), true) = (kinds, request.method() == Method::GET) else {
        return next.run(request).await;
    };
    let modified = freshness.last_modified(kinds, Utc::now());
    // If-None-Match, when present, decides alone (RFC 9110 section 13.1.3).
    let since = (!request.headers().contains_key(header::IF_NONE_MATCH))
        .then(|| request.headers().get(header::IF_MODIFIED_SINCE))
        .flatten()
        .and_then(|v| v.to_str().ok())
        .and_then(|v| DateTime::parse_from_rfc2822(v).ok());
    let mut response = next.run(request).await;
    let Some(modified) = modified else {
        return response;
    };
    if response.status() != StatusCode::OK {
        return response;
    }
    let stamp = modified.format("%a, %d %b %Y %H:%M:%S GMT").to_string();
    if let Ok(value) = HeaderValue::from_str(&stamp) {
        response.headers_mut().insert(header::LAST_MODIFIED, value);
    }
    if since.is_some_and(|since| modified <= since) {
        let (mut parts, _) = response.into_parts();
        parts.status = StatusCode::NOT_MODIFIED;
        parts.headers.remove(header::CONTENT_TYPE);
        parts.headers.remove(header::CONTENT_LENGTH);
        parts.headers.remove(header::LINK);
        return Response::from_parts(parts, Body::empty());
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn last_modified_waits_for_the_second_of_the_change_to_pass() {
        let freshness = Freshness::new(at("2026-01-01T10:00:00.250Z"));
        let kinds = [Kind::Reference];
        assert_eq!(
            freshness.last_modified(&kinds, at("2026-01-01T10:00:05Z")),
            None,
            "not listening yet"
        );
        freshness.listening.store(true, Ordering::Release);
        assert_eq!(
            freshness.last_modified(&kinds, at("2026-01-01T10:00:00.900Z")),
            None,
            "the second of the start has not passed"
        );
        assert_eq!(
            freshness.last_modified(&kinds, at("2026-01-01T10:00:01Z")),
            Some(at("2026-01-01T10:00:00Z"))
        );
        // A change to readings does not touch an answer made of reference data.
        freshness.changed[Kind::Readings as usize].store(
            at("2026-01-01T10:00:07.5Z").timestamp_millis(),
            Ordering::Release,
        );
        assert_eq!(
            freshness.last_modified(&kinds, at("2026-01-01T10:00:08Z")),
            Some(at("2026-01-01T10:00:00Z"))
        );
        assert_eq!(
            freshness.last_modified(
                &[Kind::Reference, Kind::Readings],
                at("2026-01-01T10:00:07.9Z")
            ),
            None
        );
        assert_eq!(
            freshness.last_modified(
                &[Kind::Reference, Kind::Readings],
                at("2026-01-01T10:00:08Z")
            ),
            Some(at("2026-01-01T10:00:07Z"))
        );
    }

    #[test]
    fn every_notification_channel_maps_to_a_kind() {
        for channel in Channel::ALL {
            assert!(!kinds_of(channel).is_empty(), "{channel:?}");
        }
        assert!(depends_on("/api/v1/latest", None).is_none());
        assert!(depends_on("/api/v1/keys", None).is_none());
        assert!(
            depends_on("/api/v1/stations", None).is_none(),
            "staleness moves with the clock"
        );
        let readings = "/api/v1/sensors/{key}/readings";
        assert!(depends_on(readings, None).is_none());
        assert!(depends_on(readings, Some("from=2024-01-01T00:00:00Z")).is_none());
        assert!(depends_on(readings, Some("from=a&to=b&bucket=1h")).is_some());
        assert!(depends_on(readings, Some("since=a&limit=10")).is_some());
        assert!(depends_on(readings, Some("fromage=a&to=b")).is_none());
    }

    #[test]
    fn every_route_given_last_modified_is_in_the_router() {
        // The router serves exactly what the document lists (both come from the same routers).
        let doc = serde_json::to_value(crate::openapi::document()).unwrap();
        for (route, _, _) in DEPENDENCIES {
            assert!(
                doc["paths"][route]["get"].is_object(),
                "{route} is not a route"
            );
        }
    }
}
