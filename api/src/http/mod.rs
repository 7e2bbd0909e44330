//! What every resource's handlers share: the problem answers (`problem`, RFC 9457), the format a
//! client asked for, query and parameter parsing, and the CSV, JSON and typed answers.

pub mod geojson;
pub mod problem;

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::Query;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, SecondsFormat, Utc};
use problem::{ApiError, Result};
use serde::Serialize;
use tidemark_model::warning::WarningState;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Format {
    Json,
    Csv,
    GeoJson,
    /// Raw readings only.
    Parquet,
}

/// The media type of Apache Parquet files.
pub const PARQUET: &str = "application/vnd.apache.parquet";

/// Whether the request asks for Parquet, by `format=` or `Accept`.
pub fn wants_parquet(asked: Option<&str>, headers: &HeaderMap) -> bool {
    asked == Some("parquet")
        || (asked.is_none()
            && headers
                .get(header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|a| a.contains(PARQUET)))
}

/// The format asked for by `format=` or the `Accept` header; `geo` says whether GeoJSON is offered.
pub fn format(asked: Option<&str>, headers: &HeaderMap, geo: bool) -> Result<Format> {
    let offered = if geo {
        "json, csv or geojson"
    } else {
        "json or csv"
    };
    match asked {
        Some("json") => return Ok(Format::Json),
        Some("csv") => return Ok(Format::Csv),
        Some("geojson") if geo => return Ok(Format::GeoJson),
        Some(other) => {
            return Err(ApiError::bad(
                "format",
                format!("format {other:?} is not offered here; use {offered}"),
            ))
        }
        None => {}
    }
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    Ok(if accept.contains("text/csv") {
        Format::Csv
    } else if geo && accept.contains("application/geo+json") {
        Format::GeoJson
    } else {
        Format::Json
    })
}

/// The format of an answer about one thing with a geometry: JSON or GeoJSON.
pub fn single_format(asked: Option<&str>, headers: &HeaderMap, what: &str) -> Result<Format> {
    match format(asked, headers, true)? {
        Format::Csv => Err(ApiError::bad(
            "format",
            format!("one {what} is offered as json or geojson"),
        )),
        other => Ok(other),
    }
}

pub fn parse_query<T>(query: std::result::Result<Query<T>, QueryRejection>) -> Result<T> {
    query
        .map(|Query(q)| q)
        .map_err(|e| ApiError::bad("query", e.body_text()))
}

pub fn time(parameter: &str, text: &str) -> Result<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| {
            ApiError::bad(
                parameter,
                format!(
                    "{parameter} {text:?} is not an RFC 3339 time such as 2023-10-20T18:00:00Z"
                ),
            )
        })
}

/// A key in a path: 1 to 100 letters, digits, `-`, `_` or `.`; `noun` names it in the answer
/// ("an area key").
pub fn check_key(key: &str, noun: &str) -> Result<()> {
    if key.is_empty()
        || key.len() > 100
        || !key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err(ApiError::bad(
            "key",
            format!("{noun} is 1 to 100 letters, digits, -, _ or ."),
        ));
    }
    Ok(())
}

/// A `bbox` parameter: `min_lon,min_lat,max_lon,max_lat` in degrees.
pub fn parse_bbox(text: &str) -> Result<[f64; 4]> {
    let b = numbers::<4>("bbox", text, "min_lon,min_lat,max_lon,max_lat")?;
    if !(b[0] <= b[2]
        && b[1] <= b[3]
        && b[0] >= -180.0
        && b[2] <= 180.0
        && b[1] >= -90.0
        && b[3] <= 90.0)
    {
        return Err(ApiError::bad(
            "bbox",
            "bbox must be min_lon,min_lat,max_lon,max_lat with min <= max, in degrees",
        ));
    }
    Ok(b)
}

pub fn numbers<const N: usize>(parameter: &str, text: &str, meaning: &str) -> Result<[f64; N]> {
    let values: Vec<f64> = text
        .split(',')
        .map(|v| v.trim().parse::<f64>())
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| ApiError::bad(parameter, format!("{parameter} must be {meaning}")))?;
    values
        .try_into()
        .map_err(|_| ApiError::bad(parameter, format!("{parameter} must be {meaning}")))
}

pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

fn csv_writer() -> csv::Writer<Vec<u8>> {
    csv::WriterBuilder::new()
        .terminator(csv::Terminator::Any(b'\n'))
        .from_writer(Vec::new())
}

fn csv_text(writer: csv::Writer<Vec<u8>>) -> String {
    String::from_utf8(writer.into_inner().unwrap_or_default()).unwrap_or_default()
}

/// One CSV line (RFC 4180 quoting where a field needs it), ending in `\n`.
pub fn csv_line<I, F>(fields: I) -> String
where
    I: IntoIterator<Item = F>,
    F: AsRef<[u8]>,
{
    let mut writer = csv_writer();
    // Writing to memory fails only on a record of no fields, which is written as an empty line.
    let _ = writer.write_record(fields);
    csv_text(writer)
}

/// An optional value as a CSV field: empty when absent.
pub fn optional<T: ToString>(value: Option<T>) -> String {
    value.map(|v| v.to_string()).unwrap_or_default()
}

/// One field as it stands in a CSV line: quoted where it holds a comma, a quote or a line break,
/// and otherwise (an empty field too) as it is.
pub fn csv_field(text: &str) -> String {
    if !text.contains([',', '"', '\n', '\r']) {
        return text.to_owned();
    }
    let mut line = csv_line([text]);
    line.pop();
    line
}

/// A CSV answer from a header and rows of fields, written by one writer.
pub fn csv_response(header: &[&str], rows: impl IntoIterator<Item = Vec<String>>) -> Response {
    let mut writer = csv_writer();
    let _ = writer.write_record(header);
    for row in rows {
        let _ = writer.write_record(&row);
    }
    typed("text/csv; charset=utf-8", csv_text(writer))
}

pub fn typed(content_type: &'static str, body: impl Into<Body>) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body.into()).into_response()
}

pub fn json_response(value: &impl Serialize) -> Response {
    typed(
        "application/json",
        serde_json::to_vec(value).unwrap_or_default(),
    )
}

/// A `state` filter of warnings and utility alerts: `in_force` (the default), `lifted` or `all`.
pub fn state_filter(asked: Option<&str>) -> Result<Option<WarningState>> {
    match asked {
        None => Ok(Some(WarningState::InForce)),
        Some("all") => Ok(None),
        Some(text) => match WarningState::parse(text) {
            Some(state) => Ok(Some(state)),
            None => Err(ApiError::bad(
                "state",
                format!("state {text:?} is not one of in_force, lifted, all"),
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_only_where_they_need_it() {
        assert_eq!(csv_field("Aabenraa"), "Aabenraa");
        assert_eq!(csv_field(""), "", "an empty field stays empty");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("two\nlines"), "\"two\nlines\"");
        assert_eq!(
            csv_line(["key", "name, with comma"]),
            "key,\"name, with comma\"\n"
        );
    }
}
