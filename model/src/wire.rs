//! Wire formats, version 1. Decoding is pure and total: any byte string yields readings or a specific
//! error, never a panic.
//!
//! Two formats are accepted on the same topic and told apart by their shape:
//!
//! - **Tidemark JSON v1**: one reading `{"sensor": "...", "ts": "RFC 3339", "value": 1.23, "unit": "m"}`
//!   (optionally `"quality": "good" | "suspect" | "bad"`), or a batch `{"readings": [ ... ]}`.
//! - **SenML JSON** (RFC 8428): an array of records with base name, base time, base unit and base value.
//!   Every reading must resolve to an absolute time: a SenML time below 2^28 is relative to the moment
//!   of receipt, and a redelivered message would then be stored twice under two timestamps, so it is
//!   refused rather than guessed.
//!
//! A message that cannot be read at all is an `Err`; in a readable message each entry decodes on its
//! own, so one bad entry does not cost its neighbours.

use crate::id::{IdError, SensorKey};
use crate::reading::Quality;
use crate::unit::Unit;
use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use std::borrow::Cow;

/// A reading as the device sent it: named, timed and in the device's unit.
#[derive(Debug, Clone, PartialEq)]
pub struct WireReading {
    pub sensor: SensorKey,
    pub ts: DateTime<Utc>,
    pub value: f64,
    pub unit: Unit,
    pub quality: Quality,
}

/// Bounds on what one message may hold.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_bytes: usize,
    pub max_readings: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: 256 * 1024,
            max_readings: 1000,
        }
    }
}

/// SenML times below this are relative to "now" (RFC 8428 section 4.5.3).
pub const SENML_RELATIVE_TIME_LIMIT: f64 = 268_435_456.0;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    #[error("empty payload")]
    Empty,
    #[error("payload is {size} bytes; at most {max} are accepted")]
    TooLarge { size: usize, max: usize },
    #[error("invalid JSON at line {line} column {column}: {detail}")]
    InvalidJson {
        line: usize,
        column: usize,
        detail: String,
    },
    #[error("expected a Tidemark JSON object with \"sensor\" or \"readings\", or a SenML array")]
    UnexpectedShape,
    #[error("the message holds no readings")]
    NoReadings,
    #[error("the message holds {count} readings; at most {max} are accepted")]
    TooManyReadings { count: usize, max: usize },
    #[error("missing field {field:?}")]
    MissingField { field: &'static str },
    #[error("field {field:?} must be {expected}")]
    WrongType {
        field: &'static str,
        expected: &'static str,
    },
    #[error("unknown field {field:?}")]
    UnknownField { field: String },
    #[error("bad sensor name {name:?}: {error}")]
    BadSensorKey { name: String, error: IdError },
    #[error(
        "bad timestamp {value:?}: expected RFC 3339 with an offset, e.g. 2023-10-20T21:40:00Z"
    )]
    BadTimestamp { value: String },
    #[error("unknown unit {0:?}")]
    UnknownUnit(String),
    #[error("bad quality {0:?}: expected \"good\", \"suspect\" or \"bad\"")]
    BadQuality(String),
    #[error("SenML field {field:?} must be understood and is not supported")]
    SenmlMustUnderstand { field: String },
    #[error(
        "SenML time {time} is relative to receipt; send an absolute time (seconds since 1970)"
    )]
    SenmlRelativeTime { time: f64 },
    #[error("SenML record has no numeric value \"v\"")]
    SenmlNoNumericValue,
}

impl DecodeError {
    fn from_json(error: serde_json::Error) -> DecodeError {
        DecodeError::InvalidJson {
            line: error.line(),
            column: error.column(),
            detail: error.to_string(),
        }
    }
}

/// Each entry of a readable message, decoded on its own, in message order.
pub type Entries = Vec<Result<WireReading, DecodeError>>;

/// Decodes one MQTT payload.
pub fn decode(payload: &[u8], limits: Limits) -> Result<Entries, DecodeError> {
    if payload.is_empty() {
        return Err(DecodeError::Empty);
    }
    if payload.len() > limits.max_bytes {
        return Err(DecodeError::TooLarge {
            size: payload.len(),
            max: limits.max_bytes,
        });
    }
    let first = payload.iter().find(|b| !b.is_ascii_whitespace());
    if first == Some(&b'{') {
        if let Some(entries) = decode_tidemark_fast(payload, limits) {
            return Ok(entries);
        }
    }
    let document: Value = serde_json::from_slice(payload).map_err(DecodeError::from_json)?;
    match document {
        Value::Array(records) => {
            check_count(records.len(), limits)?;
            Ok(decode_senml(&records))
        }
        Value::Object(object) if object.contains_key("readings") => {
            if let Some(field) = object.keys().find(|k| k.as_str() != "readings") {
                return Err(DecodeError::UnknownField {
                    field: field.clone(),
                });
            }
            let Some(Value::Array(items)) = object.get("readings") else {
                return Err(DecodeError::WrongType {
                    field: "readings",
                    expected: "an array",
                });
            };
            check_count(items.len(), limits)?;
            Ok(items
                .iter()
                .map(|item| match item {
                    Value::Object(entry) => decode_tidemark(entry),
                    _ => Err(DecodeError::WrongType {
                        field: "readings[]",
                        expected: "an object",
                    }),
                })
                .collect())
        }
        Value::Object(object) if object.contains_key("sensor") => {
            Ok(vec![decode_tidemark(&object)])
        }
        _ => Err(DecodeError::UnexpectedShape),
    }
}

fn check_count(count: usize, limits: Limits) -> Result<(), DecodeError> {
    if count == 0 {
        return Err(DecodeError::NoReadings);
    }
    if count > limits.max_readings {
        return Err(DecodeError::TooManyReadings {
            count,
            max: limits.max_readings,
        });
    }
    Ok(())
}

fn string_field<'a>(
    object: &'a Map<String, Value>,
    field: &'static str,
) -> Result<Option<&'a str>, DecodeError> {
    match object.get(field) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(DecodeError::WrongType {
            field,
            expected: "a string",
        }),
    }
}

fn number_field(
    object: &Map<String, Value>,
    field: &'static str,
) -> Result<Option<f64>, DecodeError> {
    match object.get(field) {
        None => Ok(None),
        Some(Value::Number(n)) => n.as_f64().map(Some).ok_or(DecodeError::WrongType {
            field,
            expected: "a number",
        }),
        Some(_) => Err(DecodeError::WrongType {
            field,
            expected: "a number",
        }),
    }
}

fn required<T>(value: Option<T>, field: &'static str) -> Result<T, DecodeError> {
    value.ok_or(DecodeError::MissingField { field })
}

fn sensor_key(name: &str) -> Result<SensorKey, DecodeError> {
    SensorKey::parse(name).map_err(|error| DecodeError::BadSensorKey {
        name: name.to_owned(),
        error,
    })
}

fn unit(symbol: &str) -> Result<Unit, DecodeError> {
    Unit::parse(symbol).map_err(|e| DecodeError::UnknownUnit(e.0))
}

const TIDEMARK_FIELDS: [&str; 5] = ["sensor", "ts", "value", "unit", "quality"];

fn decode_tidemark(object: &Map<String, Value>) -> Result<WireReading, DecodeError> {
    if let Some(field) = object
        .keys()
        .find(|k| !TIDEMARK_FIELDS.contains(&k.as_str()))
    {
        return Err(DecodeError::UnknownField {
            field: field.clone(),
        });
    }
    let sensor = required(string_field(object, "sensor")?, "sensor")?;
    let ts = required(string_field(object, "ts")?, "ts")?;
    let value = required(number_field(object, "value")?, "value")?;
    let unit = required(string_field(object, "unit")?, "unit")?;
    let quality = string_field(object, "quality")?;
    build_tidemark(sensor, ts, value, unit, quality)
}

fn build_tidemark(
    sensor: &str,
    raw_ts: &str,
    value: f64,
    unit_symbol: &str,
    quality: Option<&str>,
) -> Result<WireReading, DecodeError> {
    let sensor = sensor_key(sensor)?;
    let ts = DateTime::parse_from_rfc3339(raw_ts)
        .map_err(|_| DecodeError::BadTimestamp {
            value: raw_ts.to_owned(),
        })?
        .with_timezone(&Utc);
    let unit = unit(unit_symbol)?;
    let quality = match quality {
        None | Some("good") => Quality::GOOD,
        Some("suspect") => Quality::DEVICE_SUSPECT,
        Some("bad") => Quality::DEVICE_BAD,
        Some(other) => return Err(DecodeError::BadQuality(other.to_owned())),
    };
    Ok(WireReading {
        sensor,
        ts,
        value,
        unit,
        quality,
    })
}

/// One Tidemark JSON reading exactly as the format defines it, borrowed from the payload.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TidemarkFields<'a> {
    #[serde(borrow)]
    sensor: Cow<'a, str>,
    #[serde(borrow)]
    ts: Cow<'a, str>,
    value: f64,
    #[serde(borrow)]
    unit: Cow<'a, str>,
    #[serde(borrow, default)]
    quality: Option<Cow<'a, str>>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TidemarkBatch<'a> {
    #[serde(borrow)]
    readings: Vec<TidemarkFields<'a>>,
}

impl TidemarkFields<'_> {
    fn build(&self) -> Result<WireReading, DecodeError> {
        build_tidemark(
            &self.sensor,
            &self.ts,
            self.value,
            &self.unit,
            self.quality.as_deref(),
        )
    }
}

/// The fast path for well-formed Tidemark JSON: typed deserialisation without building a JSON tree.
/// `None` sends the payload down the general path, which names the fault precisely.
fn decode_tidemark_fast(payload: &[u8], limits: Limits) -> Option<Entries> {
    let is_batch = payload.windows(10).any(|w| w == b"\"readings\"");
    if is_batch {
        let batch: TidemarkBatch = serde_json::from_slice(payload).ok()?;
        let count = batch.readings.len();
        if count == 0 || count > limits.max_readings {
            return None;
        }
        Some(batch.readings.iter().map(TidemarkFields::build).collect())
    } else {
        let single: TidemarkFields = serde_json::from_slice(payload).ok()?;
        Some(vec![single.build()])
    }
}

/// Base fields carried from one SenML record to the next.
#[derive(Default)]
struct SenmlBase<'a> {
    name: &'a str,
    time: f64,
    unit: Option<&'a str>,
    value: f64,
}

fn decode_senml(records: &[Value]) -> Entries {
    let mut base = SenmlBase::default();
    records
        .iter()
        .map(|record| match record {
            Value::Object(record) => decode_senml_record(record, &mut base),
            _ => Err(DecodeError::WrongType {
                field: "SenML record",
                expected: "an object",
            }),
        })
        .collect()
}

fn decode_senml_record<'a>(
    record: &'a Map<String, Value>,
    base: &mut SenmlBase<'a>,
) -> Result<WireReading, DecodeError> {
    if let Some(field) = record.keys().find(|k| k.ends_with('_')) {
        return Err(DecodeError::SenmlMustUnderstand {
            field: field.clone(),
        });
    }
    // Base fields apply to this record and the ones after it, even when this record is itself bad.
    if let Some(name) = string_field(record, "bn")? {
        base.name = name;
    }
    if let Some(time) = number_field(record, "bt")? {
        base.time = time;
    }
    if let Some(unit) = string_field(record, "bu")? {
        base.unit = Some(unit);
    }
    if let Some(value) = number_field(record, "bv")? {
        base.value = value;
    }
    number_field(record, "bver")?;

    let name = format!("{}{}", base.name, string_field(record, "n")?.unwrap_or(""));
    if name.is_empty() {
        return Err(DecodeError::MissingField { field: "n" });
    }
    let sensor = sensor_key(&name)?;
    let time = base.time + number_field(record, "t")?.unwrap_or(0.0);
    if !time.is_finite() {
        return Err(DecodeError::BadTimestamp {
            value: time.to_string(),
        });
    }
    if time < SENML_RELATIVE_TIME_LIMIT {
        return Err(DecodeError::SenmlRelativeTime { time });
    }
    let ts = senml_time(time)?;
    let value = match number_field(record, "v")? {
        Some(v) => base.value + v,
        None => return Err(DecodeError::SenmlNoNumericValue),
    };
    let symbol = match string_field(record, "u")? {
        Some(symbol) => symbol,
        None => required(base.unit, "u")?,
    };
    Ok(WireReading {
        sensor,
        ts,
        value,
        unit: unit(symbol)?,
        quality: Quality::GOOD,
    })
}

fn senml_time(seconds: f64) -> Result<DateTime<Utc>, DecodeError> {
    let bad = || DecodeError::BadTimestamp {
        value: seconds.to_string(),
    };
    // Beyond about 8e15 s an f64 no longer resolves microseconds; such a time is absurd anyway.
    if seconds.abs() > 1e15 {
        return Err(bad());
    }
    let micros = (seconds * 1e6).round() as i64;
    DateTime::from_timestamp_micros(micros).ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decode_one(payload: &str) -> Result<WireReading, DecodeError> {
        let mut entries = decode(payload.as_bytes(), Limits::default())?;
        assert_eq!(entries.len(), 1, "{payload}");
        entries.remove(0)
    }

    fn ts(raw: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(raw)
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn tidemark_single() {
        let got = decode_one(
            r#"{"sensor": "flensburg.sea", "ts": "2023-10-20T23:40:00+02:00", "value": 227, "unit": "cm"}"#,
        )
        .unwrap();
        assert_eq!(got.sensor.as_str(), "flensburg.sea");
        assert_eq!(got.ts, ts("2023-10-20T21:40:00Z"));
        assert_eq!(got.value, 227.0);
        assert_eq!(got.unit, Unit::Centimetre);
        assert_eq!(got.quality, Quality::GOOD);
    }

    #[test]
    fn tidemark_batch_decodes_entries_independently() {
        let entries = decode(
            br#"{"readings": [
                {"sensor": "a", "ts": "2023-10-20T21:40:00Z", "value": 1, "unit": "m", "quality": "suspect"},
                {"sensor": "b", "ts": "yesterday", "value": 1, "unit": "m"},
                {"sensor": "c", "ts": "2023-10-20T21:40:00Z", "value": 2.5, "unit": "m"}
            ]}"#,
            Limits::default(),
        )
        .unwrap();
        assert_eq!(entries.len(), 3);
        assert_eq!(
            entries[0].as_ref().unwrap().quality,
            Quality::DEVICE_SUSPECT
        );
        assert!(matches!(entries[1], Err(DecodeError::BadTimestamp { .. })));
        assert_eq!(entries[2].as_ref().unwrap().value, 2.5);
    }

    #[test]
    fn senml_resolves_base_fields() {
        let entries = decode(
            br#"[{"bn": "aarhus.", "bt": 1.7e9, "bu": "mm", "n": "rain", "v": 1.2},
                 {"n": "rain", "t": 600, "v": 0.4},
                 {"n": "level", "u": "cm", "t": 600, "v": 112}]"#,
            Limits::default(),
        )
        .unwrap();
        let readings: Vec<WireReading> = entries.into_iter().map(Result::unwrap).collect();
        assert_eq!(readings[0].sensor.as_str(), "aarhus.rain");
        assert_eq!(readings[0].ts.timestamp(), 1_700_000_000);
        assert_eq!(readings[1].ts.timestamp(), 1_700_000_600);
        assert_eq!(readings[1].unit, Unit::Millimetre);
        assert_eq!(readings[2].sensor.as_str(), "aarhus.level");
        assert_eq!(readings[2].unit, Unit::Centimetre);
    }

    #[test]
    fn faults_map_to_their_errors() {
        let cases: &[(&str, DecodeError)] = &[
            ("", DecodeError::Empty),
            ("42", DecodeError::UnexpectedShape),
            (r#"{"value": 1}"#, DecodeError::UnexpectedShape),
            ("[]", DecodeError::NoReadings),
            (r#"{"readings": []}"#, DecodeError::NoReadings),
            (
                r#"{"readings": {}}"#,
                DecodeError::WrongType {
                    field: "readings",
                    expected: "an array",
                },
            ),
            (
                r#"{"readings": [], "extra": 1}"#,
                DecodeError::UnknownField {
                    field: "extra".into(),
                },
            ),
        ];
        for (payload, expected) in cases {
            assert_eq!(
                decode(payload.as_bytes(), Limits::default()).as_ref().err(),
                Some(expected),
                "{payload}"
            );
        }
        assert!(matches!(
            decode(b"{not json", Limits::default()),
            Err(DecodeError::InvalidJson { line: 1, .. })
        ));
        let limits = Limits {
            max_bytes: 12,
            max_readings: 2,
        };
        assert_eq!(
            decode(b"[{}, {}, {}]", limits),
            Err(DecodeError::TooManyReadings { count: 3, max: 2 })
        );
        assert_eq!(
            decode(&[b' '; 13], limits),
            Err(DecodeError::TooLarge { size: 13, max: 12 })
        );
    }

    #[test]
    fn entry_faults_map_to_their_errors() {
        let good = r#""sensor": "s", "ts": "2023-10-20T21:40:00Z", "value": 1, "unit": "m""#;
        let cases: Vec<(String, DecodeError)> = vec![
            (
                r#"{"sensor": "s"}"#.into(),
                DecodeError::MissingField { field: "ts" },
            ),
            (
                r#"{"sensor": "s", "ts": "2023-10-20T21:40:00Z", "unit": "m"}"#.into(),
                DecodeError::MissingField { field: "value" },
            ),
            (
                r#"{"sensor": "s", "ts": "2023-10-20T21:40:00Z", "value": 1}"#.into(),
                DecodeError::MissingField { field: "unit" },
            ),
            (
                r#"{"sensor": "s", "ts": "2023-10-20T21:40:00Z", "value": "1", "unit": "m"}"#
                    .into(),
                DecodeError::WrongType {
                    field: "value",
                    expected: "a number",
                },
            ),
            (
                r#"{"sensor": 7, "ts": "2023-10-20T21:40:00Z", "value": 1, "unit": "m"}"#.into(),
                DecodeError::WrongType {
                    field: "sensor",
                    expected: "a string",
                },
            ),
            (
                r#"{"sensor": "s", "ts": "2023-10-20 21:40", "value": 1, "unit": "m"}"#.into(),
                DecodeError::BadTimestamp {
                    value: "2023-10-20 21:40".into(),
                },
            ),
            (
                r#"{"sensor": "s", "ts": "2023-10-20T21:40:00Z", "value": 1, "unit": "ft"}"#.into(),
                DecodeError::UnknownUnit("ft".into()),
            ),
            (
                format!(r#"{{{good}, "quality": "great"}}"#),
                DecodeError::BadQuality("great".into()),
            ),
            (
                format!(r#"{{{good}, "colour": "blue"}}"#),
                DecodeError::UnknownField {
                    field: "colour".into(),
                },
            ),
            (
                r#"{"sensor": "a/b", "ts": "2023-10-20T21:40:00Z", "value": 1, "unit": "m"}"#
                    .into(),
                DecodeError::BadSensorKey {
                    name: "a/b".into(),
                    error: IdError::BadCharacter { found: '/' },
                },
            ),
            (
                r#"[{"n": "s", "t": 1.7e9, "u": "m"}]"#.into(),
                DecodeError::SenmlNoNumericValue,
            ),
            (
                r#"[{"n": "s", "t": 1.7e9, "vs": "x", "u": "m"}]"#.into(),
                DecodeError::SenmlNoNumericValue,
            ),
            (
                r#"[{"n": "s", "t": -5, "v": 1, "u": "m"}]"#.into(),
                DecodeError::SenmlRelativeTime { time: -5.0 },
            ),
            (
                r#"[{"n": "s", "v": 1, "u": "m"}]"#.into(),
                DecodeError::SenmlRelativeTime { time: 0.0 },
            ),
            (
                r#"[{"t": 1.7e9, "v": 1, "u": "m"}]"#.into(),
                DecodeError::MissingField { field: "n" },
            ),
            (
                r#"[{"n": "s", "t": 1.7e9, "v": 1}]"#.into(),
                DecodeError::MissingField { field: "u" },
            ),
            (
                r#"[{"n": "s", "t": 1.7e9, "v": 1, "u": "m", "ttl_": 5}]"#.into(),
                DecodeError::SenmlMustUnderstand {
                    field: "ttl_".into(),
                },
            ),
            (
                r#"[{"n": "s", "t": 1e300, "v": 1, "u": "m"}]"#.into(),
                DecodeError::BadTimestamp {
                    value: 1e300.to_string(),
                },
            ),
        ];
        for (payload, expected) in cases {
            assert_eq!(decode_one(&payload), Err(expected), "{payload}");
        }
    }

    /// The general path alone, for comparison with the fast path.
    fn decode_general(payload: &str) -> Entries {
        let Value::Object(object) = serde_json::from_str(payload).unwrap() else {
            panic!("an object")
        };
        match object.get("readings") {
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| decode_tidemark(item.as_object().unwrap()))
                .collect(),
            _ => vec![decode_tidemark(&object)],
        }
    }

    #[test]
    fn fast_and_general_paths_agree() {
        let payloads = [
            r#"{"sensor": "a", "ts": "2023-10-20T21:40:00Z", "value": 1, "unit": "m"}"#,
            r#"{"sensor": "a", "ts": "2023-10-20T21:40:00+02:00", "value": -1.5e2, "unit": "cm", "quality": "bad"}"#,
            r#"{"sensor": "a\u002eb", "ts": "2023-10-20T21:40:00.123456Z", "value": 0.1, "unit": "mm"}"#,
            r#"{"sensor": "a/b", "ts": "2023-10-20T21:40:00Z", "value": 1, "unit": "m"}"#,
            r#"{"sensor": "a", "ts": "noon", "value": 1, "unit": "m"}"#,
            r#"{"sensor": "a", "ts": "2023-10-20T21:40:00Z", "value": 1, "unit": "ft"}"#,
            r#"{"readings": [{"sensor": "a", "ts": "2023-10-20T21:40:00Z", "value": 1, "unit": "m"},
                             {"sensor": "b", "ts": "2023-10-20T21:50:00Z", "value": 2, "unit": "m", "quality": "suspect"}]}"#,
        ];
        for payload in payloads {
            let fast = decode_tidemark_fast(payload.as_bytes(), Limits::default())
                .unwrap_or_else(|| panic!("fast path takes {payload}"));
            assert_eq!(fast, decode_general(payload), "{payload}");
        }
        // Anything the typed path cannot read goes to the general path, which names the fault.
        for payload in [
            r#"{"sensor": "a", "ts": "2023-10-20T21:40:00Z", "value": "1", "unit": "m"}"#,
            r#"{"sensor": "a", "ts": "2023-10-20T21:40:00Z", "value": 1, "unit": "m", "x": 1}"#,
            r#"{"readings": []}"#,
        ] {
            assert!(
                decode_tidemark_fast(payload.as_bytes(), Limits::default()).is_none(),
                "{payload}"
            );
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(&bytes, Limits::default());
        }

        #[test]
        fn arbitrary_json_shaped_text_never_panics(text in r#"[\[\]{}":,0-9a-z .e+\-_]{0,200}"#) {
            let _ = decode(text.as_bytes(), Limits::default());
        }

        #[test]
        fn tidemark_round_trips(value in -1e6f64..1e6, secs in 0i64..4_000_000_000) {
            let ts = DateTime::from_timestamp(secs, 0).unwrap();
            let payload = format!(
                r#"{{"sensor": "s1", "ts": "{}", "value": {value}, "unit": "m"}}"#,
                ts.to_rfc3339()
            );
            let reading = decode_one(&payload).unwrap();
            prop_assert_eq!(reading.ts, ts);
            prop_assert_eq!(reading.value, value);
        }
    }
}
