//! From one MQTT message to rows: decoding, validation and the rejection records. Pure: no I/O.

use chrono::{DateTime, Utc};
use tidemark_model::topic::ReadingsTopics;
use tidemark_model::validate::{self, TimeRules};
use tidemark_model::wire::{self, Limits};
use tidemark_model::{RejectReason, Rejection};
use tidemark_store::readings::ReadingRow;
use tidemark_store::reference::Directory;

/// The reason code of a message whose rows the database refused for good (a data exception, an
/// integrity violation or a program limit), isolated from the rest of its batch.
pub const STORAGE_REFUSED: &str = "storage_refused";

/// Reason codes ingest assigns besides validation's ([`RejectReason::CODES`]).
pub const INGEST_CODES: [&str; 2] = [tidemark_store::readings::CONFLICT, STORAGE_REFUSED];

/// The rules a message is judged by.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    pub time: TimeRules,
    pub limits: Limits,
    pub forecast: tidemark_model::forecast::ForecastLimits,
}

/// One refusal: of the whole message (`entry: None`) or of one of its entries.
#[derive(Debug, Clone, PartialEq)]
pub struct Refused {
    pub entry: Option<usize>,
    pub reason_code: &'static str,
    pub reason: String,
}

/// What one message turned into. The payload is not copied: the caller keeps the message.
#[derive(Debug, Default, PartialEq)]
pub struct Processed {
    /// The publishing device, where the topic names one.
    pub device: Option<String>,
    pub readings: Vec<ReadingRow>,
    /// The entry of the message each reading came from, parallel to `readings`.
    pub entries: Vec<u32>,
    pub refusals: Vec<Refused>,
    /// Some rejection depended on the directory (unknown device or sensor, wrong device), so a
    /// fresher directory might judge the message differently.
    pub depends_on_directory: bool,
    /// A forecast issue, from a message on a forecast topic.
    pub forecast: Option<tidemark_store::forecasts::ForecastRow>,
}

impl Processed {
    /// Bytes this message adds to a batch's rejections when stored: its payload once and the
    /// reasons, or nothing if nothing of it was refused.
    pub fn rejection_bytes(&self, payload_len: usize) -> usize {
        if self.refusals.is_empty() {
            return 0;
        }
        payload_len
            + self
                .refusals
                .iter()
                .map(|r| r.reason.len() + 64)
                .sum::<usize>()
    }
}

/// Decodes and validates one message received on `topic` at `received_at`.
pub fn process(
    topic: &str,
    payload: &[u8],
    received_at: DateTime<Utc>,
    topics: &ReadingsTopics,
    directory: &Directory,
    rules: Rules,
) -> Processed {
    if topics.is_forecast(topic) {
        return crate::forecast::process(
            topic,
            payload,
            received_at,
            topics,
            directory,
            rules.forecast,
        );
    }
    let mut out = Processed::default();
    let mut refused = Vec::new();
    let mut reject = |rejection: Rejection| {
        out.depends_on_directory |= matches!(
            rejection.reason,
            RejectReason::UnknownDevice(_)
                | RejectReason::UnknownSensor(_)
                | RejectReason::WrongDevice { .. }
        );
        refused.push(Refused {
            entry: rejection.entry,
            reason_code: rejection.reason.code(),
            reason: rejection.to_string(),
        });
    };
    let whole = |reason| Rejection {
        reason,
        entry: None,
    };

    let device = match topics.device_of(topic) {
        Ok(device) => device,
        Err(error) => {
            reject(whole(RejectReason::BadTopic(error)));
            out.refusals = refused;
            return out;
        }
    };
    out.device = Some(device.as_str().to_owned());
    if !directory.devices.contains(&device) {
        reject(whole(RejectReason::UnknownDevice(device.clone())));
        out.refusals = refused;
        return out;
    }
    let entries = match wire::decode(payload, rules.limits) {
        Ok(entries) => entries,
        Err(error) => {
            reject(whole(RejectReason::Malformed(error)));
            out.refusals = refused;
            return out;
        }
    };
    let mut readings = Vec::with_capacity(entries.len());
    let mut from = Vec::with_capacity(entries.len());
    for (index, entry) in entries.into_iter().enumerate() {
        let checked = entry.map_err(RejectReason::Malformed).and_then(|wire| {
            let known = directory.sensors.get(&wire.sensor);
            let spec = known.map(|(_, spec)| spec);
            let id = known.map(|(id, _)| *id);
            validate::validate(wire, &device, spec, received_at, rules.time)
                .map(|reading| (id.expect("validate accepts only known sensors"), reading))
        });
        match checked {
            Ok((sensor_id, reading)) => {
                readings.push(ReadingRow {
                    sensor_id,
                    ts: reading.ts,
                    value: reading.value,
                    quality: reading.quality.0,
                });
                from.push(index as u32);
            }
            Err(reason) => reject(Rejection {
                reason,
                entry: Some(index),
            }),
        }
    }
    out.readings = readings;
    out.entries = from;
    out.refusals = refused;
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tidemark_model::validate::SensorSpec;
    use tidemark_model::{DeviceId, Quantity, SensorKey};

    fn directory() -> Directory {
        let mut directory = Directory::default();
        for device in ["gauge-a", "gauge-b"] {
            directory.devices.insert(DeviceId::parse(device).unwrap());
        }
        let spec = |device: &str| SensorSpec {
            device: DeviceId::parse(device).unwrap(),
            quantity: Quantity::WaterLevel,
        };
        directory
            .sensors
            .insert(SensorKey::parse("a.level").unwrap(), (1, spec("gauge-a")));
        directory
            .sensors
            .insert(SensorKey::parse("b.level").unwrap(), (2, spec("gauge-b")));
        directory
    }

    fn rules() -> Rules {
        Rules {
            time: TimeRules {
                future_tolerance: Duration::from_secs(600),
                max_age: Duration::from_secs(86_400),
            },
            limits: Limits::default(),
            forecast: tidemark_model::forecast::ForecastLimits::default(),
        }
    }

    /// (topic, payload, stored readings, rejection codes with entries, depends on the directory)
    type Case<'a> = (
        &'a str,
        &'a str,
        usize,
        Vec<(&'static str, Option<usize>)>,
        bool,
    );

    #[test]
    fn table() {
        let topics = ReadingsTopics::new("tidemark/v1").unwrap();
        let now = DateTime::parse_from_rfc3339("2026-01-01T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let good =
            r#"{"sensor": "a.level", "ts": "2026-01-01T11:50:00Z", "value": 150, "unit": "cm"}"#;
        let mixed = r#"{"readings": [
            {"sensor": "a.level", "ts": "2026-01-01T11:50:00Z", "value": 1.5, "unit": "m"},
            {"sensor": "b.level", "ts": "2026-01-01T11:50:00Z", "value": 1.5, "unit": "m"},
            {"sensor": "a.level", "ts": "2026-01-01T13:00:00Z", "value": 1.5, "unit": "m"},
            {"sensor": "a.level", "ts": "2026-01-01T11:40:00Z", "value": 1.5, "unit": "kg"},
            {"sensor": "nope", "ts": "2026-01-01T11:40:00Z", "value": 1.5, "unit": "m"}
        ]}"#;
        let cases: Vec<Case> = vec![
            ("tidemark/v1/readings/gauge-a", good, 1, vec![], false),
            (
                "tidemark/v1/readings/gauge-z",
                good,
                0,
                vec![("unknown_device", None)],
                true,
            ),
            (
                "tidemark/v1/readings/a/b",
                good,
                0,
                vec![("bad_topic", None)],
                false,
            ),
            (
                "tidemark/v1/readings/gauge-a",
                "{",
                0,
                vec![("malformed", None)],
                false,
            ),
            (
                "tidemark/v1/readings/gauge-a",
                mixed,
                1,
                vec![
                    ("wrong_device", Some(1)),
                    ("future", Some(2)),
                    ("unit_mismatch", Some(3)),
                    ("unknown_sensor", Some(4)),
                ],
                true,
            ),
        ];
        for (topic, payload, stored, codes, depends) in cases {
            let out = process(
                topic,
                payload.as_bytes(),
                now,
                &topics,
                &directory(),
                rules(),
            );
            assert_eq!(out.readings.len(), stored, "{topic} {payload}");
            let got: Vec<(&str, Option<usize>)> = out
                .refusals
                .iter()
                .map(|r| (r.reason_code, r.entry))
                .collect();
            assert_eq!(got, codes, "{topic} {payload}");
            assert_eq!(out.depends_on_directory, depends, "{topic} {payload}");
            assert_eq!(out.readings.len(), out.entries.len());
        }
        let out = process(
            "tidemark/v1/readings/gauge-a",
            good.as_bytes(),
            now,
            &topics,
            &directory(),
            rules(),
        );
        assert_eq!(out.readings[0].value, 1.5);
        assert_eq!(out.readings[0].sensor_id, 1);
    }
}
