//! Forecasts as they arrive: values (optionally with quantiles) at valid times for one sensor,
//! issued at a time by a named source (a met or ocean service, a hydrological model, or
//! Tidemark's own nowcast).
//!
//! A source publishes to `<prefix>/forecasts/<source>` (the source is an identifier, as device
//! ids are) a JSON object, version 1:
//!
//! ```json
//! {"sensor": "flensburg.sea_level", "issued_at": "2023-10-20T06:00:00Z", "unit": "cm",
//!  "values": [{"valid_at": "2023-10-20T07:00:00Z", "value": 112.0,
//!              "quantiles": {"0.1": 104.0, "0.9": 121.0}}]}
//! ```
//!
//! [`decode`] reads it (unknown fields are refused, so a misspelt field is never silently
//! ignored), and [`validate`] checks it against the sensor's quantity and the clock: values in the
//! sensor's canonical unit within its physical range, valid times strictly increasing from the
//! issue time and within the horizon, quantile probabilities between 0 and 1 with values that do
//! not decrease as the probability rises, and an issue time neither ahead of the clock nor too old.

use crate::id::{IdError, SensorKey};
use crate::quantity::Quantity;
use crate::unit::Unit;
use chrono::{DateTime, Duration, Utc};
use serde::Deserialize;
use std::collections::BTreeMap;

/// Bounds on what one forecast may hold.
#[derive(Debug, Clone, Copy)]
pub struct ForecastLimits {
    pub max_bytes: usize,
    pub max_values: usize,
    /// How far after its issue a value may be valid.
    pub max_horizon: Duration,
    /// How far ahead of the receiver's clock an issue time may be.
    pub future_tolerance: Duration,
    /// How old a forecast may be when it arrives.
    pub max_age: Duration,
}

impl Default for ForecastLimits {
    fn default() -> Self {
        ForecastLimits {
            max_bytes: 1024 * 1024,
            max_values: 5000,
            max_horizon: Duration::days(16),
            future_tolerance: Duration::minutes(5),
            max_age: Duration::days(30),
        }
    }
}

/// A forecast as the wire carries it, before validation.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireForecast {
    pub sensor: String,
    pub issued_at: DateTime<Utc>,
    pub unit: String,
    pub values: Vec<WireValue>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireValue {
    pub valid_at: DateTime<Utc>,
    pub value: f64,
    /// Probability (as a decimal string, `"0.9"`) to value.
    #[serde(default)]
    pub quantiles: BTreeMap<String, f64>,
}

/// A validated forecast, in the sensor's canonical unit.
#[derive(Debug, Clone, PartialEq)]
pub struct Forecast {
    pub sensor: SensorKey,
    pub source: String,
    pub issued_at: DateTime<Utc>,
    pub values: Vec<ForecastValue>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ForecastValue {
    pub valid_at: DateTime<Utc>,
    pub value: f64,
    /// `(probability, value)`, by rising probability.
    pub quantiles: Vec<(f64, f64)>,
}

/// Why a forecast is refused; `index` is the value's position in `values`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ForecastError {
    #[error("forecast source {0:?} is not registered")]
    UnknownSource(String),
    #[error("unknown sensor {0:?}")]
    UnknownSensor(String),
    #[error("payload is {size} bytes; at most {max} are accepted")]
    TooLarge { size: usize, max: usize },
    #[error("malformed forecast: {0}")]
    Malformed(String),
    #[error("sensor {sensor:?} is not a valid sensor key: {error}")]
    BadSensor { sensor: String, error: IdError },
    #[error("{count} values; at most {max} are accepted")]
    TooManyValues { count: usize, max: usize },
    #[error("a forecast needs at least one value")]
    NoValues,
    #[error("unknown unit {0:?}")]
    UnknownUnit(String),
    #[error("unit {unit} cannot express {quantity}")]
    UnitMismatch { unit: Unit, quantity: Quantity },
    #[error("value {index}: {value} is not finite, or outside {quantity}'s range {low} to {high}")]
    OutOfRange {
        index: usize,
        value: f64,
        quantity: Quantity,
        low: f64,
        high: f64,
    },
    #[error("value {index}: valid at {valid_at}, not after the previous value")]
    Unordered {
        index: usize,
        valid_at: DateTime<Utc>,
    },
    #[error("value {index}: valid at {valid_at}, before the issue time or beyond the horizon")]
    OutsideHorizon {
        index: usize,
        valid_at: DateTime<Utc>,
    },
    #[error("value {index}: quantile {probability:?} is not a probability between 0 and 1, or its value falls as the probability rises")]
    BadQuantile { index: usize, probability: String },
    #[error("issued at {issued_at}, later than the accepted limit {limit}")]
    InFuture {
        issued_at: DateTime<Utc>,
        limit: DateTime<Utc>,
    },
    #[error("issued at {issued_at}, earlier than the accepted limit {limit}")]
    TooOld {
        issued_at: DateTime<Utc>,
        limit: DateTime<Utc>,
    },
}

impl ForecastError {
    /// The codes forecasts are refused with that readings never are.
    pub const CODES: [&'static str; 5] = [
        "too_large",
        "unknown_source",
        "unordered",
        "outside_horizon",
        "bad_quantile",
    ];

    /// A stable, short code for storage and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            ForecastError::UnknownSource(_) => "unknown_source",
            ForecastError::TooLarge { .. } | ForecastError::TooManyValues { .. } => "too_large",
            ForecastError::Malformed(_) | ForecastError::NoValues => "malformed",
            ForecastError::BadSensor { .. } | ForecastError::UnknownSensor(_) => "unknown_sensor",
            ForecastError::UnknownUnit(_) => "unknown_unit",
            ForecastError::UnitMismatch { .. } => "unit_mismatch",
            ForecastError::OutOfRange { .. } => "out_of_range",
            ForecastError::Unordered { .. } => "unordered",
            ForecastError::OutsideHorizon { .. } => "outside_horizon",
            ForecastError::BadQuantile { .. } => "bad_quantile",
            ForecastError::InFuture { .. } => "future",
            ForecastError::TooOld { .. } => "too_old",
        }
    }
}

/// Reads a forecast's JSON, refusing oversized payloads before parsing them.
pub fn decode(payload: &[u8], limits: ForecastLimits) -> Result<WireForecast, ForecastError> {
    if payload.len() > limits.max_bytes {
        return Err(ForecastError::TooLarge {
            size: payload.len(),
            max: limits.max_bytes,
        });
    }
    let wire: WireForecast =
        serde_json::from_slice(payload).map_err(|e| ForecastError::Malformed(e.to_string()))?;
    if wire.values.len() > limits.max_values {
        return Err(ForecastError::TooManyValues {
            count: wire.values.len(),
            max: limits.max_values,
        });
    }
    Ok(wire)
}

/// Checks a decoded forecast from `source` for a sensor measuring `quantity`, at `now`.
pub fn validate(
    wire: WireForecast,
    source: &str,
    quantity: Quantity,
    now: DateTime<Utc>,
    limits: ForecastLimits,
) -> Result<Forecast, ForecastError> {
    let sensor = SensorKey::parse(&wire.sensor).map_err(|error| ForecastError::BadSensor {
        sensor: wire.sensor.clone(),
        error,
    })?;
    if wire.values.is_empty() {
        return Err(ForecastError::NoValues);
    }
    let unit =
        Unit::parse(&wire.unit).map_err(|_| ForecastError::UnknownUnit(wire.unit.clone()))?;
    let canonical = quantity.canonical_unit();
    let convert = |index: usize, value: f64| -> Result<f64, ForecastError> {
        let converted = unit
            .convert(value, canonical)
            .ok_or(ForecastError::UnitMismatch { unit, quantity })?;
        let (low, high) = quantity.range();
        if converted.is_finite() && (low..=high).contains(&converted) {
            Ok(converted)
        } else {
            Err(ForecastError::OutOfRange {
                index,
                value,
                quantity,
                low,
                high,
            })
        }
    };
    let limit = now
        .checked_add_signed(limits.future_tolerance)
        .unwrap_or(DateTime::<Utc>::MAX_UTC);
    if wire.issued_at > limit {
        return Err(ForecastError::InFuture {
            issued_at: wire.issued_at,
            limit,
        });
    }
    let limit = now
        .checked_sub_signed(limits.max_age)
        .unwrap_or(DateTime::<Utc>::MIN_UTC);
    if wire.issued_at < limit {
        return Err(ForecastError::TooOld {
            issued_at: wire.issued_at,
            limit,
        });
    }
    let mut values = Vec::with_capacity(wire.values.len());
    let mut previous: Option<DateTime<Utc>> = None;
    for (index, v) in wire.values.into_iter().enumerate() {
        if previous.is_some_and(|p| v.valid_at <= p) {
            return Err(ForecastError::Unordered {
                index,
                valid_at: v.valid_at,
            });
        }
        previous = Some(v.valid_at);
        let horizon = wire
            .issued_at
            .checked_add_signed(limits.max_horizon)
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        if v.valid_at < wire.issued_at || v.valid_at > horizon {
            return Err(ForecastError::OutsideHorizon {
                index,
                valid_at: v.valid_at,
            });
        }
        let value = convert(index, v.value)?;
        let mut quantiles = Vec::with_capacity(v.quantiles.len());
        for (text, q) in v.quantiles {
            let bad = || ForecastError::BadQuantile {
                index,
                probability: text.clone(),
            };
            let probability: f64 = text.parse().map_err(|_| bad())?;
            if !(probability > 0.0 && probability < 1.0) {
                return Err(bad());
            }
            quantiles.push((probability, convert(index, q)?, text));
        }
        quantiles.sort_by(|a, b| a.0.total_cmp(&b.0));
        if let Some(pair) = quantiles
            .windows(2)
            .find(|w| w[1].1 < w[0].1 || w[1].0 == w[0].0)
        {
            return Err(ForecastError::BadQuantile {
                index,
                probability: pair[1].2.clone(),
            });
        }
        values.push(ForecastValue {
            valid_at: v.valid_at,
            value,
            quantiles: quantiles.into_iter().map(|(p, q, _)| (p, q)).collect(),
        });
    }
    Ok(Forecast {
        sensor,
        source: source.to_owned(),
        issued_at: wire.issued_at,
        values,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2023, 10, 20, 6, 5, 0).unwrap()
    }

    fn check(json: &str) -> Result<Forecast, ForecastError> {
        let limits = ForecastLimits::default();
        let wire = decode(json.as_bytes(), limits)?;
        validate(
            wire,
            "dmi",
            Quantity::parse("sea_level").unwrap(),
            now(),
            limits,
        )
    }

    const GOOD: &str = r#"{"sensor": "flensburg.sea_level", "issued_at": "2023-10-20T06:00:00Z",
        "unit": "cm", "values": [
            {"valid_at": "2023-10-20T07:00:00Z", "value": 112.0, "quantiles": {"0.9": 121.0, "0.1": 104.0}},
            {"valid_at": "2023-10-20T08:00:00Z", "value": 130.0}]}"#;

    #[test]
    fn a_forecast_reads_in_canonical_units_with_its_quantiles_in_order() {
        let f = check(GOOD).unwrap();
        assert_eq!(f.sensor.as_str(), "flensburg.sea_level");
        assert_eq!(f.source, "dmi");
        assert_eq!(f.values.len(), 2);
        assert!((f.values[0].value - 1.12).abs() < 1e-9);
        assert_eq!(f.values[0].quantiles.len(), 2);
        assert_eq!(f.values[0].quantiles[0].0, 0.1);
        assert!((f.values[0].quantiles[1].1 - 1.21).abs() < 1e-9);
        assert!(f.values[1].quantiles.is_empty());
    }

    #[test]
    fn every_fault_is_refused_with_its_own_code() {
        let cases = [
            (GOOD.replace("\"unit\"", "\"units\""), "malformed"),
            (GOOD.replace("flensburg.sea_level", "no key!"), "unknown_sensor"),
            (GOOD.replace("\"cm\"", "\"furlong\""), "unknown_unit"),
            (GOOD.replace("\"cm\"", "\"degC\""), "unit_mismatch"),
            (GOOD.replace("130.0", "1e9"), "out_of_range"),
            (GOOD.replace("08:00:00Z", "07:00:00Z"), "unordered"),
            (GOOD.replace("07:00:00Z", "05:00:00Z"), "outside_horizon"),
            (GOOD.replace("2023-10-20T08", "2023-11-20T08"), "outside_horizon"),
            (GOOD.replace("\"0.9\"", "\"1.5\""), "bad_quantile"),
            (GOOD.replace("121.0", "100.0"), "bad_quantile"),
            (GOOD.replace("T06:00:00Z", "T07:00:00Z"), "future"),
            (
                GOOD.replace("2023-10-20T06:00:00Z", "2023-10-01T06:00:00Z"),
                "outside_horizon",
            ),
            (
                r#"{"sensor": "s.x", "issued_at": "2023-10-20T06:00:00Z", "unit": "m", "values": []}"#
                    .to_owned(),
                "malformed",
            ),
        ];
        for (json, code) in cases {
            let refused = check(&json).expect_err(&json);
            assert_eq!(refused.code(), code, "{refused}: {json}");
        }
        let old = GOOD.replace("2023-10-20T0", "2023-09-10T0");
        assert_eq!(check(&old).unwrap_err().code(), "too_old");
        let limits = ForecastLimits {
            max_bytes: 10,
            ..ForecastLimits::default()
        };
        assert_eq!(
            decode(GOOD.as_bytes(), limits).unwrap_err().code(),
            "too_large"
        );
    }
}
