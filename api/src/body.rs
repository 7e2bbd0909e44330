//! The JSON a warning event travels as on every channel (webhook body, Server-Sent Event data,
//! retained MQTT message, the warnings API). Version 1: fields are only ever added.

use chrono::{DateTime, Utc};
use serde::Serialize;
use tidemark_store::delivery::WarningEvent;

/// The category of flood warnings; the other categories are utility alerts.
pub const FLOOD: &str = "flood";

/// The short names of the three severities, as JSON fields and query parameters spell them.
pub fn severity_key(severity: i16) -> &'static str {
    match severity {
        3 => "severe",
        2 => "warning",
        _ => "alert",
    }
}

/// The public names of the three flood severities (after the UK Environment Agency's scheme).
pub fn severity_name(severity: i16) -> &'static str {
    match severity {
        3 => "Severe Flood Warning",
        2 => "Flood Warning",
        _ => "Flood Alert",
    }
}

#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct EventBody {
    /// The warning event's id: stable, unique, and growing in the order events were committed.
    pub id: i64,
    /// `warning.<kind>` for a flood warning (raised, changed, lifted, acknowledged, stale, fresh,
    /// undelivered); `utility_alert.<kind>` for a utility alert (raised, lifted, undelivered).
    #[serde(rename = "type")]
    pub kind: String,
    /// `flood` (a flood warning) or `leak` (a utility alert: a suspected leak in a water network).
    pub category: String,
    /// The warning's (or utility alert's) id.
    pub warning_id: i64,
    /// The flood area, for a flood warning.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub area: Option<AreaRef>,
    /// The district meter (its sensor key, and its station's name), for a leak alert.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub meter: Option<AreaRef>,
    /// 1 (Flood Alert) to 3 (Severe Flood Warning), as of this event; 1 for a leak alert.
    pub severity: i16,
    pub severity_name: &'static str,
    /// observed or expected, as of this event.
    pub warning_kind: String,
    /// True until the warning is lifted ("no longer in force").
    pub in_force: bool,
    pub stale: Option<bool>,
    /// When it happened in the data.
    pub at: DateTime<Utc>,
    /// When Tidemark recorded it.
    pub recorded_at: DateTime<Utc>,
    pub municipalities: Vec<String>,
    pub message: Messages,
    pub detail: serde_json::Value,
    /// The CAP 1.2 message of this event (flood warnings only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cap: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct AreaRef {
    pub key: String,
    pub name: String,
}

#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct Messages {
    pub en: String,
    pub da: String,
}

impl EventBody {
    pub fn new(event: &WarningEvent, public_url: &str) -> EventBody {
        let stale = match event.kind.as_str() {
            "stale" => Some(true),
            "fresh" => Some(false),
            _ => None,
        };
        let flood = event.category == FLOOD;
        let subject = AreaRef {
            key: event.subject_key.clone(),
            name: event.subject_name.clone(),
        };
        let (area, meter) = if flood {
            (Some(subject), None)
        } else {
            (None, Some(subject))
        };
        EventBody {
            id: event.id,
            kind: format!(
                "{}.{}",
                if flood { "warning" } else { "utility_alert" },
                event.kind
            ),
            category: event.category.clone(),
            warning_id: event.warning_id,
            area,
            meter,
            severity: event.severity,
            severity_name: if flood {
                severity_name(event.severity)
            } else {
                "Suspected leak"
            },
            warning_kind: event.warning_kind.clone(),
            in_force: match event.kind.as_str() {
                "lifted" => false,
                // Recorded when a delivery is given up, possibly after the lift.
                "undelivered" => event.warning_state == "in_force",
                _ => true,
            },
            stale,
            at: event.at,
            recorded_at: event.recorded_at,
            municipalities: event.municipalities.clone(),
            message: Messages {
                en: event.message_en.clone(),
                da: event.message_da.clone(),
            },
            detail: event.detail.clone(),
            cap: flood.then(|| {
                format!(
                    "{}/api/v1/warning-events/{}.cap",
                    public_url.trim_end_matches('/'),
                    event.id
                )
            }),
        }
    }
}
