//! `GET /api/v1/verification`: how the warnings of a period fared against the flood events the
//! gauges measured, per area and severity and overall (`tidemark_model::verification` says how
//! events are found and matched).

use crate::http::problem::{ApiError, Result};
use crate::http::{csv_response, format, json_response, optional, parse_query, time, Format};
use crate::state::ApiState;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use tidemark_model::verification::{score_area, Observed, Score, Tally};
use tidemark_model::warning::Severity;
use utoipa::{IntoParams, ToSchema};

/// The longest period one request may verify.
const MAX_PERIOD_DAYS: i64 = 366;

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct VerificationQuery {
    /// The period's start (RFC 3339).
    pub from: Option<String>,
    /// The period's end (RFC 3339, exclusive); default now.
    pub to: Option<String>,
    /// Only this flood area (key).
    pub area: Option<String>,
    /// Only this severity: alert, warning or severe.
    pub severity: Option<String>,
    /// How long after an event ends a warning still counts for it (default 1h).
    pub grace: Option<String>,
    /// json or csv (or use the Accept header).
    pub format: Option<String>,
}

/// Hits, misses and false alarms, with the rates verification reports.
#[derive(Debug, Serialize, ToSchema)]
pub struct TallyBody {
    pub hits: u32,
    pub misses: u32,
    pub false_alarms: u32,
    /// Hits over observed events.
    pub probability_of_detection: Option<f64>,
    /// False alarms over warnings, matched or not.
    pub false_alarm_ratio: Option<f64>,
    /// Hits over hits, misses and false alarms.
    pub critical_success_index: Option<f64>,
}

impl From<Tally> for TallyBody {
    fn from(t: Tally) -> TallyBody {
        TallyBody {
            hits: t.hits,
            misses: t.misses,
            false_alarms: t.false_alarms,
            probability_of_detection: t.probability_of_detection(),
            false_alarm_ratio: t.false_alarm_ratio(),
            critical_success_index: t.critical_success_index(),
        }
    }
}

/// A flood event the gauges measured, and the warning that caught it, if one did.
#[derive(Debug, Serialize, ToSchema)]
pub struct ObservedEvent {
    /// The first reading at or above the threshold.
    pub first_crossing: DateTime<Utc>,
    /// The first reading back below it (or the last reading, while it lasts).
    pub until: DateTime<Utc>,
    /// The sensor that crossed first.
    pub sensor: String,
    /// When a warning of the severity or higher was first in force for it; null for a miss.
    pub warned_at: Option<DateTime<Utc>>,
    /// The warning was already in force for an earlier event: a hit without a lead time.
    pub continues: bool,
    /// First crossing minus the warning's start: negative when the warning came after the water;
    /// null for a miss, or when the warning continues from an earlier event.
    pub lead_minutes: Option<i64>,
}

impl From<&Observed> for ObservedEvent {
    fn from(e: &Observed) -> ObservedEvent {
        ObservedEvent {
            first_crossing: e.first_crossing,
            until: e.until,
            sensor: e.sensor.clone(),
            warned_at: e.warned_at,
            continues: e.continues,
            lead_minutes: e.lead_minutes(),
        }
    }
}

/// A warning period that no flood event of its severity overlapped.
#[derive(Debug, Serialize, ToSchema)]
pub struct FalseAlarm {
    pub from: DateTime<Utc>,
    pub until: DateTime<Utc>,
}

/// One area and severity.
#[derive(Debug, Serialize, ToSchema)]
pub struct AreaScore {
    pub area: String,
    pub area_name: String,
    pub severity: Severity,
    #[serde(flatten)]
    pub tally: TallyBody,
    /// The mean lead time of the hits that have one, in minutes.
    pub mean_lead_minutes: Option<f64>,
    pub events: Vec<ObservedEvent>,
    pub false_alarm_periods: Vec<FalseAlarm>,
}

/// `GET /api/v1/verification`
#[derive(Debug, Serialize, ToSchema)]
pub struct VerificationBody {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub grace_seconds: i64,
    /// Over every area and severity listed.
    pub overall: TallyBody,
    /// By area, then severity; only those with an event or a warning.
    pub scores: Vec<AreaScore>,
}

/// `GET /api/v1/verification`: for a period, the flood events the readings show (a threshold
/// crossed and held for its persistence, independently of the warning state machine), matched
/// with the warnings, observed and expected: hits, misses, false alarms and lead times per area
/// and severity, and the probability of detection, false alarm ratio and critical success index.
#[utoipa::path(get, path = "/api/v1/verification", tag = "warnings", params(VerificationQuery),
    responses(
        (status = 200, description = "Scores by area and severity", content((VerificationBody = "application/json"), (String = "text/csv"))),
        (status = 400, description = "A bad parameter", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such flood area", body = crate::http::problem::Problem, content_type = "application/problem+json"),
    ))]
pub async fn verification(
    State(state): State<ApiState>,
    headers: HeaderMap,
    query: std::result::Result<Query<VerificationQuery>, QueryRejection>,
) -> Result<Response> {
    let query = parse_query(query)?;
    let format = format(query.format.as_deref(), &headers, false)?;
    let from = time(
        "from",
        query
            .from
            .as_deref()
            .ok_or_else(|| ApiError::bad("from", "from (the period's start) is required"))?,
    )?;
    let to = match &query.to {
        Some(text) => time("to", text)?,
        None => Utc::now(),
    };
    if to <= from {
        return Err(ApiError::bad("to", "to must be after from"));
    }
    if to - from > Duration::days(MAX_PERIOD_DAYS) {
        return Err(ApiError::bad(
            "from",
            format!("a period is at most {MAX_PERIOD_DAYS} days"),
        ));
    }
    let severity = query
        .severity
        .as_deref()
        .map(|text| {
            Severity::parse(text)
                .ok_or_else(|| ApiError::bad("severity", "severity is alert, warning or severe"))
        })
        .transpose()?;
    let grace = match &query.grace {
        Some(text) => tidemark_model::duration::parse(text)
            .ok()
            .and_then(|d| Duration::from_std(d).ok())
            .filter(|d| *d <= Duration::days(7))
            .ok_or_else(|| ApiError::bad("grace", "grace is a duration up to 7d, such as 1h"))?,
        None => Duration::hours(1),
    };
    let areas = state
        .store
        .verification_records(from, to, query.area.as_deref())
        .await?;
    if let (Some(area), true) = (&query.area, areas.is_empty()) {
        return Err(ApiError::NotFound(format!("flood area {area}")));
    }
    let mut overall = Tally::default();
    let mut scores = Vec::new();
    for area in areas {
        for (s, score) in score_area(&area.sensors, &area.events, grace, to) {
            if severity.is_some_and(|wanted| wanted != s) {
                continue;
            }
            overall = overall + score.tally();
            scores.push(area_score(&area.key, &area.name, s, &score));
        }
    }
    if format == Format::Csv {
        return Ok(csv_response(
            &[
                "area",
                "severity",
                "hits",
                "misses",
                "false_alarms",
                "mean_lead_minutes",
                "probability_of_detection",
                "false_alarm_ratio",
                "critical_success_index",
            ],
            scores.iter().map(|s| {
                vec![
                    s.area.clone(),
                    s.severity.name().to_owned(),
                    s.tally.hits.to_string(),
                    s.tally.misses.to_string(),
                    s.tally.false_alarms.to_string(),
                    optional(s.mean_lead_minutes),
                    optional(s.tally.probability_of_detection),
                    optional(s.tally.false_alarm_ratio),
                    optional(s.tally.critical_success_index),
                ]
            }),
        ));
    }
    Ok(json_response(&VerificationBody {
        from,
        to,
        grace_seconds: grace.num_seconds(),
        overall: overall.into(),
        scores,
    }))
}

fn area_score(key: &str, name: &str, severity: Severity, score: &Score) -> AreaScore {
    AreaScore {
        area: key.to_owned(),
        area_name: name.to_owned(),
        severity,
        tally: score.tally().into(),
        mean_lead_minutes: score.mean_lead_minutes(),
        events: score.events.iter().map(ObservedEvent::from).collect(),
        false_alarm_periods: score
            .false_alarms
            .iter()
            .map(|(from, until)| FalseAlarm {
                from: *from,
                until: *until,
            })
            .collect(),
    }
}
