//! Raw readings, paged by time or by arrival and streamed from a database cursor.

#[cfg(feature = "parquet")]
use super::parquet_export;
use super::query::{
    decode_cursor, encode_cursor, micros, time_range, ReadingsQuery, DEFAULT_PAGE, MAX_PAGE,
};
use super::stations::unit_of;
use crate::http::problem::{ApiError, Result};
use crate::http::{rfc3339, time, typed, Format, PARQUET};
use crate::state::ApiState;
use axum::body::Body;
use axum::http::{header, HeaderValue};
use axum::response::Response;
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use serde::Serialize;
use tidemark_store::opendata::RawOrder;
use utoipa::ToSchema;

pub(crate) async fn raw(
    state: &ApiState,
    sensor: &str,
    quantity: &str,
    query: ReadingsQuery,
    format: Format,
) -> Result<Response> {
    let limit = query.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::bad(
            "limit",
            format!("limit must be 1 to {MAX_PAGE}"),
        ));
    }
    let cursor = match &query.cursor {
        Some(text) => Some(
            decode_cursor(text)
                .ok_or_else(|| ApiError::bad("cursor", "the cursor is not one this API gave"))?,
        ),
        None => None,
    };
    let order = match &query.since {
        Some(since) => {
            if query.from.is_some() || query.to.is_some() {
                return Err(ApiError::bad(
                    "since",
                    "since cannot be combined with from or to",
                ));
            }
            let after = match cursor {
                None => None,
                Some(('a', received, Some(ts))) => Some((
                    micros(received).ok_or_else(|| ApiError::bad("cursor", "bad cursor"))?,
                    micros(ts).ok_or_else(|| ApiError::bad("cursor", "bad cursor"))?,
                )),
                Some(_) => {
                    return Err(ApiError::bad(
                        "cursor",
                        "this cursor belongs to a from/to query",
                    ))
                }
            };
            RawOrder::Arrival {
                since: time("since", since)?,
                after,
            }
        }
        None => {
            let (from, to) = time_range(&query)?;
            let after = match cursor {
                None => None,
                Some(('t', ts, None)) => {
                    Some(micros(ts).ok_or_else(|| ApiError::bad("cursor", "bad cursor"))?)
                }
                Some(_) => {
                    return Err(ApiError::bad(
                        "cursor",
                        "this cursor belongs to a since query",
                    ))
                }
            };
            RawOrder::Time { from, to, after }
        }
    };
    let next = state
        .store
        .page_end(sensor, &order, limit)
        .await?
        .map(|last| encode_cursor(&order, &last));
    let rows = state.store.raw_readings(sensor, &order, limit).await?;
    let unit = unit_of(quantity);
    let base = state.settings.base_url();
    let mut next_link = None;
    if let Some(next) = &next {
        let mut url =
            format!("{base}/api/v1/sensors/{sensor}/readings?cursor={next}&limit={limit}");
        for (name, value) in [
            ("from", &query.from),
            ("to", &query.to),
            ("since", &query.since),
            ("format", &query.format),
        ] {
            if let Some(value) = value {
                url.push_str(&format!("&{name}={}", url_escape(value)));
            }
        }
        next_link = Some(url);
    }
    // Rows are written as they come from the database.
    let body = match format {
        #[cfg(feature = "parquet")]
        Format::Parquet => parquet_export::body(
            rows,
            vec![
                ("sensor".to_owned(), sensor.to_owned()),
                ("quantity".to_owned(), quantity.to_owned()),
                ("unit".to_owned(), unit.to_owned()),
                ("next".to_owned(), next.clone().unwrap_or_default()),
            ],
        ),
        #[cfg(not(feature = "parquet"))]
        Format::Parquet => {
            return Err(ApiError::bad(
                "format",
                "this build has no Parquet support (the cargo feature parquet is off)",
            ))
        }
        Format::Csv => {
            let header = futures_util::stream::once(async {
                Ok::<_, tidemark_store::Error>("ts,value,quality,received_at\n".to_owned())
            });
            let lines = rows.map(|row| {
                row.map(|r| {
                    format!(
                        "{},{},{},{}\n",
                        rfc3339(r.ts),
                        r.value,
                        r.quality,
                        rfc3339(r.received_at)
                    )
                })
            });
            Body::from_stream(header.chain(lines).ready_chunks(ROWS_PER_CHUNK).map(joined))
        }
        _ => {
            // The fields of [`RawPage`], written around the streamed readings.
            let head = format!(
                "{{\"sensor\":{},\"quantity\":{},\"unit\":{},\"readings\":[",
                serde_json::to_string(sensor).unwrap_or_default(),
                serde_json::to_string(quantity).unwrap_or_default(),
                serde_json::to_string(unit).unwrap_or_default()
            );
            let tail = format!(
                "],\"next\":{}}}",
                serde_json::to_string(&next).unwrap_or_default()
            );
            let items = rows.enumerate().map(|(i, row)| {
                row.map(|r| {
                    let item = serde_json::to_string(&RawItem {
                        ts: r.ts,
                        value: r.value,
                        quality: r.quality,
                        received_at: r.received_at,
                    })
                    .unwrap_or_default();
                    format!("{}{item}", if i == 0 { "" } else { "," })
                })
            });
            let head = futures_util::stream::once(async move { Ok(head) });
            let tail = futures_util::stream::once(async move { Ok(tail) });
            Body::from_stream(
                head.chain(items)
                    .chain(tail)
                    .ready_chunks(ROWS_PER_CHUNK)
                    .map(joined),
            )
        }
    };
    let content_type = match format {
        Format::Csv => "text/csv; charset=utf-8",
        Format::Parquet => PARQUET,
        _ => "application/json",
    };
    let mut response = typed(content_type, body);
    if format == Format::Parquet {
        if let Ok(disposition) = HeaderValue::from_str(&format!(
            "attachment; filename=\"{}.parquet\"",
            sensor.replace('"', "")
        )) {
            response
                .headers_mut()
                .insert(header::CONTENT_DISPOSITION, disposition);
        }
    }
    if let Some(link) =
        next_link.and_then(|l| HeaderValue::from_str(&format!("<{l}>; rel=\"next\"")).ok())
    {
        response.headers_mut().insert(header::LINK, link);
    }
    Ok(response)
}

/// Rows gathered into one write of a streamed answer: few enough to keep memory flat, many
/// enough that a page is not hundreds of tiny writes.
pub(crate) const ROWS_PER_CHUNK: usize = 512;

/// The rows ready at once as one piece of the body.
pub(crate) fn joined(
    pieces: Vec<tidemark_store::Result<String>>,
) -> tidemark_store::Result<String> {
    pieces.into_iter().collect()
}

pub(crate) fn url_escape(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// One raw reading.
#[derive(Serialize, ToSchema)]
pub struct RawItem {
    pub ts: DateTime<Utc>,
    pub value: f64,
    /// Quality flags: 0 good, 1 suspect (device), 2 bad (device), 256 spike, 512 stuck, 1024 out of range.
    pub quality: i16,
    pub received_at: DateTime<Utc>,
}

/// `GET /api/v1/sensors/{key}/readings` without `bucket`: a page of raw readings. The page is
/// streamed from a database cursor as the rows come; `next` follows the readings.
#[derive(Serialize, ToSchema)]
pub struct RawPage {
    pub sensor: String,
    pub quantity: String,
    pub unit: String,
    pub readings: Vec<RawItem>,
    /// The cursor of the next page; null on the last.
    pub next: Option<String>,
}
