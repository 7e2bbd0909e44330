//! The JSON a warning event travels as on every channel (webhook body, Server-Sent Event data,
//! retained MQTT message, the warnings API). Version 1: fields are only ever added.

use chrono::{DateTime, Utc};
use serde::Serialize;
use tidemark_store::delivery::WarningEvent;

/// The public names of the three severities (after the UK Environment Agency's scheme).
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
    /// `warning.<kind>`: raised, changed, lifted, acknowledged, stale, fresh, undelivered.
    #[serde(rename = "type")]
    pub kind: String,
    pub warning_id: i64,
    pub area: AreaRef,
    /// 1 (Flood Alert) to 3 (Severe Flood Warning), as of this event.
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
    /// The CAP 1.2 message of this event.
    pub cap: String,
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
        EventBody {
            id: event.id,
            kind: format!("warning.{}", event.kind),
            warning_id: event.warning_id,
            area: AreaRef {
                key: event.area_key.clone(),
                name: event.area_name.clone(),
            },
            severity: event.severity,
            severity_name: severity_name(event.severity),
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
            cap: format!(
                "{}/api/v1/warning-events/{}.cap",
                public_url.trim_end_matches('/'),
                event.id
            ),
        }
    }
}
