//! From one forecast message to an issue to store, or the reason it is refused. Pure: no I/O.

use crate::message::{Processed, Refused};
use chrono::{DateTime, Utc};
use tidemark_model::forecast::{self, ForecastError, ForecastLimits};
use tidemark_model::topic::ReadingsTopics;
use tidemark_store::forecasts::ForecastRow;
use tidemark_store::reference::Directory;

/// Decodes and validates a message received on a forecast topic.
pub fn process(
    topic: &str,
    payload: &[u8],
    received_at: DateTime<Utc>,
    topics: &ReadingsTopics,
    directory: &Directory,
    limits: ForecastLimits,
) -> Processed {
    let mut out = Processed::default();
    let refuse = |out: &mut Processed, code: &'static str, reason: String| {
        out.refusals.push(Refused {
            entry: None,
            reason_code: code,
            reason,
        });
    };
    let source = match topics.source_of(topic) {
        Ok(source) => source,
        Err(error) => {
            refuse(&mut out, "bad_topic", error.to_string());
            return out;
        }
    };
    out.device = Some(source.as_str().to_owned());
    match check(payload, source.as_str(), received_at, directory, limits) {
        Ok(row) => out.forecast = Some(row),
        Err(error) => {
            out.depends_on_directory = matches!(
                error,
                ForecastError::UnknownSource(_) | ForecastError::UnknownSensor(_)
            );
            refuse(&mut out, error.code(), error.to_string());
        }
    }
    out
}

/// A forecast from `source` checked against the directory: the source registered, the sensor
/// known, the values in its quantity's canonical unit.
pub fn check(
    payload: &[u8],
    source: &str,
    now: DateTime<Utc>,
    directory: &Directory,
    limits: ForecastLimits,
) -> Result<ForecastRow, ForecastError> {
    if !directory.sources.contains(source) {
        return Err(ForecastError::UnknownSource(source.to_owned()));
    }
    let wire = forecast::decode(payload, limits)?;
    let known = tidemark_model::SensorKey::parse(&wire.sensor)
        .ok()
        .and_then(|key| directory.sensors.get(&key));
    let Some((sensor_id, spec)) = known else {
        return Err(ForecastError::UnknownSensor(wire.sensor.clone()));
    };
    let forecast = forecast::validate(wire, source, spec.quantity, now, limits)?;
    Ok(ForecastRow {
        sensor_id: *sensor_id,
        source: forecast.source,
        issued_at: forecast.issued_at,
        values: forecast.values,
    })
}
