//! What the fuzz targets check, shared with the regression test that replays their seed corpus and
//! every crash they have found (`model/tests/fuzz_regressions.rs`).
//!
//! - A payload, whatever its bytes, decodes to readings or to errors without panicking; every
//!   reading the validator then accepts has a finite value within its quantity's range.
//! - A topic, whatever its bytes, parses or fails without panicking; a readings topic that parses
//!   names a device whose own topic is the same string again.

use chrono::DateTime;
use std::time::Duration;
use tidemark_model::topic::ReadingsTopics;
use tidemark_model::validate::{validate, SensorSpec, TimeRules};
use tidemark_model::wire::{decode, Limits};
use tidemark_model::{DeviceId, Quantity};

pub fn payload(data: &[u8]) {
    let Ok(entries) = decode(data, Limits::default()) else {
        return;
    };
    let device = DeviceId::parse("gauge-1").expect("a valid device key");
    let now = DateTime::from_timestamp(1_800_000_000, 0).expect("a valid instant");
    let rules = TimeRules {
        future_tolerance: Duration::from_secs(600),
        max_age: Duration::from_secs(400 * 86_400),
    };
    for quantity in [Quantity::SeaLevel, Quantity::WaterFlow] {
        let spec = SensorSpec {
            device: device.clone(),
            quantity,
        };
        for entry in entries.iter().flatten() {
            if let Ok(reading) = validate(entry.clone(), &device, Some(&spec), now, rules) {
                let (low, high) = quantity.range();
                assert!(
                    reading.value.is_finite() && (low..=high).contains(&reading.value),
                    "accepted {} for {quantity:?}",
                    reading.value
                );
            }
        }
    }
}

pub fn topic(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let topics = ReadingsTopics::new("tidemark/v1").expect("a valid prefix");
    if let Ok(device) = topics.device_of(&text) {
        assert_eq!(topics.for_device(&device), text);
    }
    if let Ok(other) = ReadingsTopics::new(&text) {
        let _ = other.filter(Some("ingest"));
        let _ = other.filter(None);
    }
}
