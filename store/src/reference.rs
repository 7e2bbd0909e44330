//! Reference data: devices, stations and sensors. Loaded idempotently from TOML files in `config/`
//! (at start and by `tidemark migrate`), and read by ingest as a [`Directory`].

use crate::{Context, Result, Store};
use serde::Deserialize;
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use tidemark_model::validate::SensorSpec;
use tidemark_model::{duration, DeviceId, Quantity, SensorKey};

#[derive(Debug, thiserror::Error)]
pub enum ReferenceError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: String,
        source: toml::de::Error,
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
    /// The official municipality code (Danish kommunekode) where known.
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
    pub fn from_toml(path: &str, text: &str) -> Result<ReferenceData, ReferenceError> {
        let data: ReferenceData = toml::from_str(text).map_err(|source| ReferenceError::Parse {
            path: path.to_owned(),
            source,
        })?;
        data.validate()
            .map_err(|e| ReferenceError::Invalid(format!("{path}: {e}")))?;
        Ok(data)
    }

    pub fn from_file(path: &str) -> Result<ReferenceData, ReferenceError> {
        let text = std::fs::read_to_string(path).map_err(|source| ReferenceError::Read {
            path: path.to_owned(),
            source,
        })?;
        ReferenceData::from_toml(path, &text)
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

/// What ingest needs to know to accept a reading.
#[derive(Debug, Clone, Default)]
pub struct Directory {
    pub devices: HashSet<DeviceId>,
    /// Sensor key to its database id and spec.
    pub sensors: HashMap<SensorKey, (i32, SensorSpec)>,
}

impl Store {
    /// Upserts a file's devices, stations and sensors in one transaction and tells listeners
    /// (`NOTIFY reference_changed`).
    pub async fn apply_reference(&self, data: &ReferenceData) -> Result<()> {
        data.validate().map_err(ReferenceError::Invalid)?;
        let mut client = self.client().await?;
        let tx = client.transaction().await.context("begin reference data")?;
        for device in &data.devices {
            tx.execute(
                "INSERT INTO devices (key, name) VALUES ($1, $2) \
                 ON CONFLICT (key) DO UPDATE SET name = EXCLUDED.name, updated_at = now() \
                 WHERE devices.name IS DISTINCT FROM EXCLUDED.name",
                &[&device.key, &device.name],
            )
            .await
            .context("upserting a device")?;
        }
        for station in &data.stations {
            tx.execute(
                "INSERT INTO stations (key, name, kind, lon, lat, municipality_code) \
                 VALUES ($1, $2, $3, $4, $5, $6) \
                 ON CONFLICT (key) DO UPDATE SET name = EXCLUDED.name, kind = EXCLUDED.kind, \
                 lon = EXCLUDED.lon, lat = EXCLUDED.lat, municipality_code = EXCLUDED.municipality_code, \
                 updated_at = now()",
                &[
                    &station.key,
                    &station.name,
                    &station.kind,
                    &station.lon,
                    &station.lat,
                    &station.municipality_code,
                ],
            )
            .await
            .context("upserting a station")?;
        }
        for sensor in &data.sensors {
            let interval_secs = sensor.expected_interval.as_secs_f64();
            let written = tx
                .execute(
                    "INSERT INTO sensors (key, device_id, station_id, quantity, name, expected_interval) \
                     SELECT $1, d.id, s.id, $4, $5, make_interval(secs => $6) \
                     FROM devices d LEFT JOIN stations s ON s.key = $3 \
                     WHERE d.key = $2 AND ($3::text IS NULL OR s.id IS NOT NULL) \
                     ON CONFLICT (key) DO UPDATE SET device_id = EXCLUDED.device_id, \
                     station_id = EXCLUDED.station_id, quantity = EXCLUDED.quantity, name = EXCLUDED.name, \
                     expected_interval = EXCLUDED.expected_interval, updated_at = now()",
                    &[
                        &sensor.key,
                        &sensor.device,
                        &sensor.station,
                        &sensor.quantity,
                        &sensor.name,
                        &interval_secs,
                    ],
                )
                .await
                .context("upserting a sensor")?;
            if written == 0 {
                return Err(ReferenceError::Invalid(format!(
                    "sensor {:?} names device {:?} or station {:?}, which do not exist",
                    sensor.key, sensor.device, sensor.station
                ))
                .into());
            }
        }
        tx.batch_execute("NOTIFY reference_changed")
            .await
            .context("notifying reference_changed")?;
        tx.commit().await.context("commit reference data")?;
        Ok(())
    }

    /// Every enabled device and every sensor with its device and quantity.
    pub async fn directory(&self) -> Result<Directory> {
        let client = self.client().await?;
        let mut directory = Directory::default();
        for row in client
            .query("SELECT key FROM devices WHERE enabled", &[])
            .await
            .context("loading devices")?
        {
            let key: String = row.get(0);
            match DeviceId::parse(&key) {
                Ok(id) => {
                    directory.devices.insert(id);
                }
                Err(error) => {
                    tracing::warn!(device = %key, %error, "skipping device with an invalid key")
                }
            }
        }
        for row in client
            .query(
                "SELECT s.id, s.key, d.key, s.quantity FROM sensors s JOIN devices d ON d.id = s.device_id",
                &[],
            )
            .await
            .context("loading sensors")?
        {
            let (id, key, device, quantity): (i32, String, String, String) =
                (row.get(0), row.get(1), row.get(2), row.get(3));
            let parsed = SensorKey::parse(&key)
                .map_err(|e| e.to_string())
                .and_then(|k| Ok((k, DeviceId::parse(&device).map_err(|e| e.to_string())?)))
                .and_then(|(k, d)| Ok((k, d, Quantity::parse(&quantity).map_err(|e| e.to_string())?)));
            match parsed {
                Ok((key, device, quantity)) => {
                    directory
                        .sensors
                        .insert(key, (id, SensorSpec { device, quantity }));
                }
                Err(error) => tracing::warn!(sensor = %key, %error, "skipping sensor with invalid reference data"),
            }
        }
        Ok(directory)
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
