//! The rules that turn a decoded reading into an accepted [`Reading`] or a [`Rejection`] with a reason.
//!
//! Each reason has a stable `code()` that is stored with the rejected message and used as a metric label.

use crate::id::{DeviceId, SensorKey};
use crate::quantity::Quantity;
use crate::reading::Reading;
use crate::topic::TopicError;
use crate::unit::Unit;
use crate::wire::{DecodeError, WireReading};
use chrono::{DateTime, Utc};
use std::fmt;
use std::time::Duration;

/// Time bounds on accepted readings.
#[derive(Debug, Clone, Copy)]
pub struct TimeRules {
    /// How far ahead of the receiver's clock a timestamp may be (device clock skew).
    pub future_tolerance: Duration,
    /// How old a reading may be when it arrives (back-filled and replayed data).
    pub max_age: Duration,
}

impl TimeRules {
    /// Ten minutes of clock skew; readings up to 400 days old (a year and some, for back-fill).
    pub const DEFAULT: TimeRules = TimeRules {
        future_tolerance: Duration::from_secs(10 * 60),
        max_age: Duration::from_secs(400 * 86_400),
    };
}

/// What the validator knows about a sensor.
#[derive(Debug, Clone, PartialEq)]
pub struct SensorSpec {
    pub device: DeviceId,
    pub quantity: Quantity,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RejectReason {
    #[error("bad topic: {0}")]
    BadTopic(TopicError),
    #[error("malformed payload: {0}")]
    Malformed(DecodeError),
    #[error("unknown device {0:?}")]
    UnknownDevice(DeviceId),
    #[error("unknown sensor {0:?}")]
    UnknownSensor(SensorKey),
    #[error("sensor {sensor:?} belongs to device {owner:?}, not to the publishing device")]
    WrongDevice { sensor: SensorKey, owner: DeviceId },
    #[error("unit {unit} cannot express {quantity} (canonical unit {})", quantity.canonical_unit())]
    UnitMismatch { unit: Unit, quantity: Quantity },
    #[error("value {value} is not a finite number once converted to {}", quantity.canonical_unit())]
    NotFinite { value: f64, quantity: Quantity },
    #[error("{quantity} of {value} {} is outside the physical range {low} to {high}", quantity.canonical_unit())]
    OutOfRange {
        quantity: Quantity,
        value: f64,
        low: f64,
        high: f64,
    },
    #[error("timestamp {ts} is later than the accepted limit {limit}")]
    InFuture {
        ts: DateTime<Utc>,
        limit: DateTime<Utc>,
    },
    #[error("timestamp {ts} is earlier than the accepted limit {limit}")]
    TooOld {
        ts: DateTime<Utc>,
        limit: DateTime<Utc>,
    },
}

impl RejectReason {
    /// A stable, short code for storage and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            RejectReason::BadTopic(_) => "bad_topic",
            RejectReason::Malformed(DecodeError::UnknownUnit(_)) => "unknown_unit",
            RejectReason::Malformed(_) => "malformed",
            RejectReason::UnknownDevice(_) => "unknown_device",
            RejectReason::UnknownSensor(_) => "unknown_sensor",
            RejectReason::WrongDevice { .. } => "wrong_device",
            RejectReason::UnitMismatch { .. } => "unit_mismatch",
            RejectReason::NotFinite { .. } => "not_finite",
            RejectReason::OutOfRange { .. } => "out_of_range",
            RejectReason::InFuture { .. } => "future",
            RejectReason::TooOld { .. } => "too_old",
        }
    }

    /// Every code, for metrics that start at zero.
    pub const CODES: [&'static str; 11] = [
        "bad_topic",
        "malformed",
        "unknown_unit",
        "unknown_device",
        "unknown_sensor",
        "wrong_device",
        "unit_mismatch",
        "not_finite",
        "out_of_range",
        "future",
        "too_old",
    ];
}

/// A rejection: the reason, and which entry of the message it concerns (`None`: the whole message).
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    pub reason: RejectReason,
    pub entry: Option<usize>,
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.entry {
            Some(index) => write!(f, "entry {index}: {}", self.reason),
            None => write!(f, "{}", self.reason),
        }
    }
}

/// Checks one decoded reading from `device` against its sensor's spec and the time rules.
pub fn validate(
    wire: WireReading,
    device: &DeviceId,
    spec: Option<&SensorSpec>,
    now: DateTime<Utc>,
    rules: TimeRules,
) -> Result<Reading, RejectReason> {
    let Some(spec) = spec else {
        return Err(RejectReason::UnknownSensor(wire.sensor));
    };
    if &spec.device != device {
        return Err(RejectReason::WrongDevice {
            sensor: wire.sensor,
            owner: spec.device.clone(),
        });
    }
    let quantity = spec.quantity;
    let value = wire
        .unit
        .convert(wire.value, quantity.canonical_unit())
        .ok_or(RejectReason::UnitMismatch {
            unit: wire.unit,
            quantity,
        })?;
    if !value.is_finite() {
        return Err(RejectReason::NotFinite {
            value: wire.value,
            quantity,
        });
    }
    let (low, high) = quantity.range();
    if !(low..=high).contains(&value) {
        return Err(RejectReason::OutOfRange {
            quantity,
            value,
            low,
            high,
        });
    }
    let latest = now + saturating(rules.future_tolerance);
    if wire.ts > latest {
        return Err(RejectReason::InFuture {
            ts: wire.ts,
            limit: latest,
        });
    }
    let earliest = now - saturating(rules.max_age);
    if wire.ts < earliest {
        return Err(RejectReason::TooOld {
            ts: wire.ts,
            limit: earliest,
        });
    }
    Ok(Reading {
        sensor: wire.sensor,
        ts: wire.ts,
        value,
        quality: wire.quality,
    })
}

/// A std duration as a chrono one, capped at 1,000 years so that no configuration can overflow.
fn saturating(duration: Duration) -> chrono::Duration {
    const CAP_SECS: u64 = 1000 * 366 * 86_400;
    chrono::Duration::from_std(duration.min(Duration::from_secs(CAP_SECS)))
        .unwrap_or(chrono::Duration::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reading::Quality;

    fn wire(sensor: &str, value: f64, unit: Unit, ts: DateTime<Utc>) -> WireReading {
        WireReading {
            sensor: SensorKey::parse(sensor).unwrap(),
            ts,
            value,
            unit,
            quality: Quality::GOOD,
        }
    }

    /// (sensor spec, value, unit, ts, publishing device, expected canonical value or reason code)
    type Case<'a> = (
        Option<&'a SensorSpec>,
        f64,
        Unit,
        DateTime<Utc>,
        &'a DeviceId,
        Result<f64, &'static str>,
    );

    #[test]
    fn table() {
        let now = DateTime::parse_from_rfc3339("2026-01-01T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let rules = TimeRules {
            future_tolerance: Duration::from_secs(600),
            max_age: Duration::from_secs(30 * 86_400),
        };
        let gauge = DeviceId::parse("gauge").unwrap();
        let other = DeviceId::parse("other").unwrap();
        let level = SensorSpec {
            device: gauge.clone(),
            quantity: Quantity::WaterLevel,
        };
        let minutes = |m: i64| now + chrono::Duration::minutes(m);
        let cases: Vec<Case> = vec![
            (Some(&level), 123.0, Unit::Centimetre, now, &gauge, Ok(1.23)),
            (Some(&level), 1.5, Unit::Metre, minutes(10), &gauge, Ok(1.5)),
            (None, 1.0, Unit::Metre, now, &gauge, Err("unknown_sensor")),
            (
                Some(&level),
                1.0,
                Unit::Metre,
                now,
                &other,
                Err("wrong_device"),
            ),
            (
                Some(&level),
                1.0,
                Unit::Kilogram,
                now,
                &gauge,
                Err("unit_mismatch"),
            ),
            (
                Some(&level),
                1e308,
                Unit::Metre,
                now,
                &gauge,
                Err("out_of_range"),
            ),
            (
                Some(&level),
                101.0,
                Unit::Metre,
                now,
                &gauge,
                Err("out_of_range"),
            ),
            (
                Some(&level),
                -20.5,
                Unit::Metre,
                now,
                &gauge,
                Err("out_of_range"),
            ),
            (
                Some(&level),
                1.0,
                Unit::Metre,
                minutes(11),
                &gauge,
                Err("future"),
            ),
            (
                Some(&level),
                1.0,
                Unit::Metre,
                minutes(-30 * 1440 - 1),
                &gauge,
                Err("too_old"),
            ),
        ];
        for (spec, value, unit, ts, device, expected) in cases {
            let got = validate(wire("s", value, unit, ts), device, spec, now, rules);
            match (got, expected) {
                (Ok(reading), Ok(v)) => {
                    assert!((reading.value - v).abs() < 1e-12, "{value} {unit}")
                }
                (Err(reason), Err(code)) => assert_eq!(reason.code(), code, "{reason}"),
                (got, expected) => panic!("{value} {unit}: got {got:?}, expected {expected:?}"),
            }
        }
        let energy = SensorSpec {
            device: gauge.clone(),
            quantity: Quantity::EnergyImport,
        };
        let overflow = validate(
            wire("e", 1e308, Unit::MegawattHour, now),
            &gauge,
            Some(&energy),
            now,
            rules,
        );
        assert_eq!(overflow.unwrap_err().code(), "not_finite");
    }
}
