//! What a readings request asks for: its parameters, time range, aggregates and page cursors.

use crate::http::problem::{ApiError, Result};
use crate::http::time;
use base64::Engine;
use chrono::{DateTime, Duration as ChronoDuration, Utc};
use serde::Deserialize;
use std::time::Duration;
use tidemark_store::opendata::{RawOrder, RawReading};
use utoipa::IntoParams;

/// Raw readings per page: the default and the most.
pub(crate) const DEFAULT_PAGE: i64 = 1_000;

pub(crate) const MAX_PAGE: i64 = 100_000;

/// Most buckets one aggregation returns.
pub(crate) const MAX_BUCKETS: i64 = 100_000;

/// The smallest bucket.
pub(crate) const MIN_BUCKET: Duration = Duration::from_secs(60);

/// Without `from`, a query covers this long before `to`.
pub(crate) const DEFAULT_SPAN: ChronoDuration = ChronoDuration::hours(24);

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ReadingsQuery {
    /// Start (inclusive) of the measurement-time range; default 24 hours before `to`.
    pub from: Option<String>,
    /// End (exclusive); default now.
    pub to: Option<String>,
    /// Everything received at or after this instant, in order of arrival (for pollers).
    pub since: Option<String>,
    /// Where the next page starts, from the previous page's `next`.
    pub cursor: Option<String>,
    pub limit: Option<i64>,
    /// Aggregate into buckets of this length (`15m`, `1h`, `1d`, ...).
    pub bucket: Option<String>,
    /// Comma-separated: avg, min, max, sum, count, first, last.
    pub agg: Option<String>,
    /// Empty buckets: omit (default), null, or interpolate (linear, across at most `max_gap`).
    pub fill: Option<String>,
    pub max_gap: Option<u32>,
    /// usable (default: good or merely suspect readings) or all.
    pub quality: Option<String>,
    /// json, csv or parquet (or use the Accept header).
    pub format: Option<String>,
}

pub(crate) const AGGREGATES: [&str; 7] = ["avg", "min", "max", "sum", "count", "first", "last"];

/// A cursor: `t<micros>` after a measurement time, `a<micros>_<micros>` after an arrival.
pub(crate) fn encode_cursor(order: &RawOrder, last: &RawReading) -> String {
    let text = match order {
        RawOrder::Time { .. } => format!("t{}", last.ts.timestamp_micros()),
        RawOrder::Arrival { .. } => format!(
            "a{}_{}",
            last.received_at.timestamp_micros(),
            last.ts.timestamp_micros()
        ),
    };
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
}

pub(crate) fn decode_cursor(text: &str) -> Option<(char, i64, Option<i64>)> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let kind = text.chars().next()?;
    let rest = &text[1..];
    match kind {
        't' => Some(('t', rest.parse().ok()?, None)),
        'a' => {
            let (a, b) = rest.split_once('_')?;
            Some(('a', a.parse().ok()?, Some(b.parse().ok()?)))
        }
        _ => None,
    }
}

pub(crate) fn micros(value: i64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_micros(value)
}

pub(crate) fn time_range(query: &ReadingsQuery) -> Result<(DateTime<Utc>, DateTime<Utc>)> {
    let to = match &query.to {
        Some(t) => time("to", t)?,
        None => Utc::now(),
    };
    let from = match &query.from {
        Some(t) => time("from", t)?,
        None => to - DEFAULT_SPAN,
    };
    if from >= to {
        return Err(ApiError::bad("from", "from must be before to"));
    }
    Ok((from, to))
}
