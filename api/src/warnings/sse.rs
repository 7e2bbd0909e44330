//! `GET /api/v1/warnings/stream`: warning events as Server-Sent Events (flood warnings unless a
//! client asks for utility alerts too).
//!
//! One [`Hub`] per process LISTENs on `warnings_changed`, reads the new events from the database in
//! id order and broadcasts them to the connected clients. A client that reconnects with
//! `Last-Event-ID` first gets every later event from the database (the source of truth), then live
//! ones; a client that falls behind the broadcast catches up the same way. Event ids grow in
//! commit order (see `tidemark_store::events`), so "every event after N" misses nothing.

pub use crate::hub::{Hub, StreamPlace, Streams};

use crate::http::problem::{ApiError, Result};
use crate::hub::CATCH_UP_PAGE;
use crate::state::ApiState;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tidemark_model::warning::Category;
use tidemark_store::events::WarningEvent;
use tokio::sync::{broadcast, mpsc};

/// The stream's filters.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct StreamQuery {
    /// `flood` (flood warnings, the default), `leak` (utility alerts for suspected leaks) or
    /// `all`.
    pub category: Option<String>,
    /// Only warnings sent to this municipality (code).
    pub municipality: Option<String>,
    /// Only this flood area (key), or this district meter (sensor key) for leak alerts.
    pub area: Option<String>,
    /// Only warnings at or above this severity (1 to 3) at the event.
    pub min_severity: Option<i16>,
    /// Resume after this event id, for clients that cannot set the `Last-Event-ID` header.
    pub last_event_id: Option<i64>,
}

impl StreamQuery {
    fn matches(&self, event: &WarningEvent) -> bool {
        super::cap::is_public(event)
            && match self.category.as_deref() {
                None => event.category == crate::body::FLOOD,
                Some("all") => true,
                Some(category) => event.category == category,
            }
            && self
                .municipality
                .as_ref()
                .is_none_or(|m| event.municipalities.contains(m))
            && self.area.as_ref().is_none_or(|a| &event.subject_key == a)
            && self
                .min_severity
                .is_none_or(|s| event.severity.level() >= s)
    }
}

/// Warning events as Server-Sent Events: `id` (the event id), `event` (`warning.<kind>`) and `data`
/// (the event as JSON), with heartbeat comments. Reconnect with `Last-Event-ID` to receive every
/// event missed, in order.
#[utoipa::path(get, path = "/api/v1/warnings/stream", tag = "warnings",
    params(StreamQuery, ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event id")),
    responses(
        (status = 200, description = "An endless stream of events", body = String, content_type = "text/event-stream"),
        (status = 400, description = "A bad parameter", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 429, description = "This client has as many streams open as it may", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 503, description = "The server holds as many streams as it can", body = crate::http::problem::Problem, content_type = "application/problem+json"),
    ))]
pub async fn stream(
    State(state): State<ApiState>,
    headers: HeaderMap,
    extensions: axum::http::Extensions,
    query: std::result::Result<Query<StreamQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response> {
    let Query(query) = query.map_err(|e| ApiError::bad("query", e.body_text()))?;
    let client =
        crate::rate_limit::counted_client(&extensions, &headers, &state.settings.trusted_proxies);
    let place = state.streams.take(client)?;
    if query
        .category
        .as_deref()
        .is_some_and(|c| c != "all" && Category::parse(c).is_none())
    {
        return Err(ApiError::bad(
            "category",
            "category must be flood, leak, drought or all",
        ));
    }
    if query.min_severity.is_some_and(|s| !(1..=3).contains(&s)) {
        return Err(ApiError::bad(
            "min_severity",
            "min_severity must be 1, 2 or 3",
        ));
    }
    let header_cursor = match headers.get("last-event-id") {
        Some(value) => Some(
            value
                .to_str()
                .ok()
                .and_then(|v| v.trim().parse::<i64>().ok())
                .filter(|id| *id >= 0)
                .ok_or_else(|| {
                    ApiError::bad("Last-Event-ID", "Last-Event-ID must be an event id we sent")
                })?,
        ),
        None => None,
    };
    let cursor = header_cursor.or(query.last_event_id);
    // Subscribe before reading the database, so nothing committed in between is missed.
    let live = state.hub.subscribe();
    let cursor = match cursor {
        Some(cursor) => cursor,
        None => state
            .hub
            .position(Duration::from_secs(10))
            .await
            .ok_or(ApiError::Unavailable("the event stream is starting"))?,
    };
    let (sender, receiver) = mpsc::channel::<Event>(64);
    tokio::spawn(follow(state.clone(), query, cursor, live, sender, place));
    let events = futures_util::stream::unfold(receiver, |mut receiver| async move {
        receiver
            .recv()
            .await
            .map(|event| (Ok::<_, Infallible>(event), receiver))
    });
    let keep_alive = KeepAlive::new()
        .interval(state.settings.sse_heartbeat)
        .text("heartbeat");
    let mut response = Sse::new(events).keep_alive(keep_alive).into_response();
    // Tell buffering proxies (nginx) to pass events through at once.
    response.headers_mut().insert(
        "x-accel-buffering",
        axum::http::HeaderValue::from_static("no"),
    );
    response.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-cache"),
    );
    Ok(response)
}

fn sse_event(state: &ApiState, event: &WarningEvent) -> Event {
    let body = event.body(&state.settings.public_url);
    Event::default()
        .id(event.id.to_string())
        .event(body.kind.clone())
        .data(serde_json::to_string(&body).unwrap_or_default())
}

/// Feeds one client: the missed events from the database, then live ones. Ends when the client
/// goes away (its receiver is dropped) or the database cannot be read (the client reconnects).
async fn follow(
    state: ApiState,
    query: StreamQuery,
    mut cursor: i64,
    mut live: broadcast::Receiver<Arc<WarningEvent>>,
    sender: mpsc::Sender<Event>,
    // Held while the client is connected: the task ends when it goes away.
    _place: StreamPlace,
) {
    if catch_up(&state, &query, &mut cursor, &sender)
        .await
        .is_err()
    {
        return;
    }
    loop {
        // A client that has gone away ends its task now, not at the next event.
        let received = tokio::select! {
            received = live.recv() => received,
            _ = sender.closed() => return,
        };
        match received {
            Ok(event) => {
                if event.id <= cursor {
                    continue;
                }
                cursor = event.id;
                if query.matches(&event) && sender.send(sse_event(&state, &event)).await.is_err() {
                    return;
                }
            }
            Err(broadcast::error::RecvError::Lagged(_)) => {
                if catch_up(&state, &query, &mut cursor, &sender)
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

async fn catch_up(
    state: &ApiState,
    query: &StreamQuery,
    cursor: &mut i64,
    sender: &mpsc::Sender<Event>,
) -> std::result::Result<(), ()> {
    loop {
        let events = match state
            .store
            .warning_events_after(*cursor, CATCH_UP_PAGE)
            .await
        {
            Ok(events) => events,
            Err(error) => {
                tracing::warn!(%error, "event stream catch-up failed; closing the stream");
                return Err(());
            }
        };
        let full = events.len() as i64 == CATCH_UP_PAGE;
        for event in events {
            *cursor = event.id;
            if query.matches(&event) && sender.send(sse_event(state, &event)).await.is_err() {
                return Err(());
            }
        }
        if !full {
            return Ok(());
        }
    }
}
