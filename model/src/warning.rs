//! The warning vocabulary: severities, how a warning is known, its state, its category, the kinds
//! of its events, the MQTT topics alerts go to, and [`EventBody`], the JSON a warning event
//! travels as on every channel.
//!
//! Each term has one spelling in the database, on the wire and in query parameters (`name`), and
//! one way back (`parse`); severities are stored as their level, 1 to 3.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

macro_rules! spelled {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
        )]
        #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
        pub enum $name {
            $($(#[$vmeta])* #[serde(rename = $text)] $variant),+
        }

        impl $name {
            /// Every term, in order.
            pub const ALL: [$name; [$($text),+].len()] = [$($name::$variant),+];

            /// The spelling in the database, on the wire and in query parameters.
            pub const fn name(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }

            pub fn parse(text: &str) -> Option<$name> {
                match text {
                    $($text => Some($name::$variant),)+
                    _ => None,
                }
            }
        }

        /// A term equals its spelling.
        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.name() == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.name() == *other
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.name())
            }
        }
    };
}

spelled! {
    /// Flood severities in rising order, after the UK Environment Agency's scheme. A leak alert
    /// has one level, stored as `Alert`.
    Severity {
        /// Flood Alert: flooding is possible, be prepared.
        Alert = "alert",
        /// Flood Warning: flooding is expected, immediate action required.
        Warning = "warning",
        /// Severe Flood Warning: severe flooding, danger to life.
        Severe = "severe",
    }
}

impl Severity {
    /// The stored level: 1 (alert) to 3 (severe).
    pub const fn level(self) -> i16 {
        match self {
            Severity::Alert => 1,
            Severity::Warning => 2,
            Severity::Severe => 3,
        }
    }

    pub fn from_level(level: i16) -> Option<Severity> {
        match level {
            1 => Some(Severity::Alert),
            2 => Some(Severity::Warning),
            3 => Some(Severity::Severe),
            _ => None,
        }
    }

    /// The public name of a flood warning of this severity.
    pub const fn public_name(self) -> &'static str {
        match self {
            Severity::Alert => "Flood Alert",
            Severity::Warning => "Flood Warning",
            Severity::Severe => "Severe Flood Warning",
        }
    }
}

spelled! {
    /// How a warning's severity is known: measured, or projected (a rising trend, or water on its
    /// way from upstream). Orders observed above expected.
    WarningKind {
        Expected = "expected",
        Observed = "observed",
    }
}

spelled! {
    /// Whether a warning is in force or has been lifted ("no longer in force").
    WarningState {
        InForce = "in_force",
        Lifted = "lifted",
    }
}

spelled! {
    /// What a warning is about: a flood area, a drought area (levels that fall below their
    /// thresholds, such as groundwater), or (a utility alert) a suspected leak at a meter.
    Category {
        Flood = "flood",
        Leak = "leak",
        Drought = "drought",
    }
}

impl Category {
    /// Whether warnings of this category are about an area (flood, drought), not a meter.
    pub const fn is_area(self) -> bool {
        !matches!(self, Category::Leak)
    }

    /// The public name of a warning of this category at `severity`.
    pub const fn severity_name(self, severity: Severity) -> &'static str {
        match (self, severity) {
            (Category::Flood, s) => s.public_name(),
            (Category::Leak, _) => "Suspected leak",
            (Category::Drought, Severity::Alert) => "Drought Alert",
            (Category::Drought, Severity::Warning) => "Drought Warning",
            (Category::Drought, Severity::Severe) => "Severe Drought Warning",
        }
    }

    /// The Danish name of a warning of this category at `severity`.
    pub const fn severity_name_da(self, severity: Severity) -> &'static str {
        match (self, severity) {
            (Category::Flood, Severity::Alert) => "Varsel om mulig oversvømmelse",
            (Category::Flood, Severity::Warning) => "Oversvømmelsesvarsel",
            (Category::Flood, Severity::Severe) => "Alvorligt oversvømmelsesvarsel",
            (Category::Leak, _) => "Mistanke om lækage",
            (Category::Drought, Severity::Alert) => "Varsel om mulig tørke",
            (Category::Drought, Severity::Warning) => "Tørkevarsel",
            (Category::Drought, Severity::Severe) => "Alvorligt tørkevarsel",
        }
    }
}

spelled! {
    /// What a warning event records.
    EventKind {
        Raised = "raised",
        Changed = "changed",
        Lifted = "lifted",
        /// The area's data stopped arriving while the warning is in force.
        Stale = "stale",
        /// Data arrive again.
        Fresh = "fresh",
        /// A municipality confirmed it received the warning.
        Acknowledged = "acknowledged",
        /// A delivery of an earlier event was given up.
        Undelivered = "undelivered",
    }
}

/// The retained MQTT topic of a flood area's warning state for a municipality.
pub fn alert_topic(prefix: &str, municipality: &str, area: &str) -> String {
    format!("{prefix}/alerts/{municipality}/{area}")
}

/// The MQTT topic of a district meter's leak alerts for a municipality.
pub fn utility_alert_topic(prefix: &str, municipality: &str, meter: &str) -> String {
    format!("{prefix}/utility-alerts/{municipality}/{meter}")
}

/// The topic prefixes [`alert_topic`] and [`utility_alert_topic`] write under.
pub fn alert_topic_prefixes(prefix: &str) -> [String; 2] {
    [
        format!("{prefix}/alerts/"),
        format!("{prefix}/utility-alerts/"),
    ]
}

/// A warning event as every channel carries it (webhook body, Server-Sent Event data, retained
/// MQTT message, the warnings API). Version 1: fields are only ever added.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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

/// What a warning is about: a flood area's key and name, or a meter's sensor key and station name.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AreaRef {
    pub key: String,
    pub name: String,
}

/// A message in English and Danish.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Messages {
    pub en: String,
    pub da: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_term_reads_back_as_it_is_spelled() {
        for s in Severity::ALL {
            assert_eq!(Severity::parse(s.name()), Some(s));
            assert_eq!(Severity::from_level(s.level()), Some(s));
        }
        for k in EventKind::ALL {
            assert_eq!(EventKind::parse(k.name()), Some(k));
            // JSON spells a term as the database does.
            let json = serde_json::to_value(k).unwrap();
            assert_eq!(json, serde_json::json!(k.name()));
            assert_eq!(serde_json::from_value::<EventKind>(json).unwrap(), k);
        }
        for s in WarningState::ALL {
            assert_eq!(
                serde_json::to_value(s).unwrap(),
                serde_json::json!(s.name())
            );
        }
        for c in Category::ALL {
            assert_eq!(Category::parse(c.name()), Some(c));
        }
        assert_eq!(WarningState::parse("in_force"), Some(WarningState::InForce));
        assert!(EventKind::Undelivered == "undelivered" && Category::Flood != "leak");
        assert_eq!(Severity::from_level(0), None);
        assert_eq!(Severity::parse("Severe"), None);
        assert!(Severity::Alert < Severity::Severe);
        assert!(WarningKind::Expected < WarningKind::Observed);
        assert_eq!(Severity::Warning.public_name(), "Flood Warning");
        assert_eq!(
            Category::Flood.severity_name(Severity::Severe),
            "Severe Flood Warning"
        );
        assert_eq!(
            Category::Drought.severity_name_da(Severity::Warning),
            "Tørkevarsel"
        );
        assert!(Category::Drought.is_area() && !Category::Leak.is_area());
        assert_eq!(
            alert_topic("tidemark/v1", "0101", "kbh-havn"),
            "tidemark/v1/alerts/0101/kbh-havn"
        );
        assert!(utility_alert_topic("p", "0101", "m1").starts_with(&alert_topic_prefixes("p")[1]));
    }
}
