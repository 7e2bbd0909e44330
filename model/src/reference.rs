//! Reference data as it is written in files: devices, stations and sensors. Pure data and checks;
//! the store loads it into the database.

use crate::{duration, DeviceId, Quantity, SensorKey};
use serde::Deserialize;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ReferenceError {
    #[error("{path}: {cause}")]
    Parse {
        path: String,
        cause: toml::de::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

/// The contents of one reference file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReferenceData {
    #[serde(default)]
    pub devices: Vec<DeviceRecord>,
    #[serde(default)]
    pub stations: Vec<StationRecord>,
    #[serde(default)]
    pub sensors: Vec<SensorRecord>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceRecord {
    /// The device id: its MQTT client id and the last level of its readings topic.
    pub key: String,
    #[serde(default)]
    pub name: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StationRecord {
    pub key: String,
    pub name: String,
    /// What kind of station: `river_gauge`, `tide_gauge`, `rain_gauge`, `meter`, `container`, ...
    pub kind: String,
    /// WGS84 longitude, degrees east.
    pub lon: f64,
    /// WGS84 latitude, degrees north.
    pub lat: f64,
    /// The official municipality code (Danish kommunekode) where known. A station loaded again
    /// without one keeps the code it has (a replay knows no codes).
    #[serde(default)]
    pub municipality_code: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SensorRecord {
    pub key: String,
    /// The key of the device that publishes this sensor's readings.
    pub device: String,
    /// The key of the station the sensor stands at, if any.
    #[serde(default)]
    pub station: Option<String>,
    /// One of the quantity names of the model (`water_level`, `rainfall`, ...).
    pub quantity: String,
    #[serde(default)]
    pub name: String,
    /// How often the sensor reports.
    #[serde(default = "default_interval", with = "duration::serde_str")]
    pub expected_interval: Duration,
}

const fn default_interval() -> Duration {
    Duration::from_secs(15 * 60)
}

impl ReferenceData {
    /// Adds another file's records after this one's.
    pub fn extend(&mut self, other: ReferenceData) {
        self.devices.extend(other.devices);
        self.stations.extend(other.stations);
        self.sensors.extend(other.sensors);
    }

    pub fn from_toml(path: &str, text: &str) -> Result<ReferenceData, ReferenceError> {
        let data: ReferenceData = toml::from_str(text).map_err(|cause| ReferenceError::Parse {
            path: path.to_owned(),
            cause,
        })?;
        data.validate()
            .map_err(|e| ReferenceError::Invalid(format!("{path}: {e}")))?;
        Ok(data)
    }

    /// Pure checks: identifiers, quantities and coordinates.
    pub fn validate(&self) -> Result<(), String> {
        for device in &self.devices {
            DeviceId::parse(&device.key).map_err(|e| format!("device {:?}: {e}", device.key))?;
        }
        for station in &self.stations {
            SensorKey::parse(&station.key)
                .map_err(|e| format!("station {:?}: {e}", station.key))?;
            if !(-180.0..=180.0).contains(&station.lon) || !(-90.0..=90.0).contains(&station.lat) {
                return Err(format!(
                    "station {:?}: lon {} / lat {} is not a WGS84 position",
                    station.key, station.lon, station.lat
                ));
            }
        }
        for sensor in &self.sensors {
            SensorKey::parse(&sensor.key).map_err(|e| format!("sensor {:?}: {e}", sensor.key))?;
            Quantity::parse(&sensor.quantity)
                .map_err(|e| format!("sensor {:?}: {e}", sensor.key))?;
            if sensor.expected_interval.is_zero() {
                return Err(format!(
                    "sensor {:?}: expected_interval must be positive",
                    sensor.key
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_checks_files() {
        let good = r#"
            [[devices]]
            key = "gauge-1"
            [[stations]]
            key = "flensburg"
            name = "Flensburg"
            kind = "tide_gauge"
            lon = 9.434
            lat = 54.796
            [[sensors]]
            key = "flensburg.sea_level"
            device = "gauge-1"
            station = "flensburg"
            quantity = "sea_level"
            expected_interval = "10m"
        "#;
        let data = ReferenceData::from_toml("good.toml", good).unwrap();
        assert_eq!(data.sensors[0].expected_interval, Duration::from_secs(600));

        let cases = [
            (
                good.replace("sea_level\"\n", "sea_levle\"\n"),
                "unknown quantity",
            ),
            (
                good.replace("lat = 54.796", "lat = 154.796"),
                "not a WGS84 position",
            ),
            (
                good.replace("key = \"gauge-1\"", "key = \"gauge 1\""),
                "device \"gauge 1\"",
            ),
            (
                good.replace("[[devices]]", "[[devices]]\ncolour = 1"),
                "unknown field `colour`",
            ),
        ];
        for (text, expected) in cases {
            let error = ReferenceData::from_toml("bad.toml", &text)
                .unwrap_err()
                .to_string();
            assert!(
                error.contains(expected),
                "{error} should contain {expected}"
            );
        }
    }
}
