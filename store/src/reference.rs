//! Reference data: devices, stations and sensors. Loaded idempotently from TOML files in `config/`
//! (at start and by `tidemark migrate`), and read by ingest as a [`Directory`].

use crate::coordination::{self, Notice};
use crate::{Context, Result, Store};
use std::collections::{HashMap, HashSet};
use tidemark_model::validate::SensorSpec;
use tidemark_model::{DeviceId, Quantity, SensorKey};

pub use tidemark_model::reference::{
    DeviceRecord, ReferenceData, ReferenceError, SensorRecord, StationRecord,
};

/// Reads and checks a reference file.
pub fn read_file(path: &str) -> Result<ReferenceData, crate::Error> {
    let text = std::fs::read_to_string(path).map_err(|cause| crate::Error::ReadFile {
        path: path.to_owned(),
        cause,
    })?;
    Ok(ReferenceData::from_toml(path, &text)?)
}

/// What ingest needs to know to accept a reading.
#[derive(Debug, Clone, Default)]
pub struct Directory {
    pub devices: HashSet<DeviceId>,
    /// Sensor key to its database id and spec.
    pub sensors: HashMap<SensorKey, (i32, SensorSpec)>,
    /// The sources that may issue forecasts.
    pub sources: HashSet<String>,
}

impl Store {
    /// Upserts a file's devices, stations and sensors in one transaction and tells listeners
    /// (`NOTIFY reference_changed`).
    pub async fn apply_reference(&self, data: &ReferenceData) -> Result<()> {
        self.apply_reference_audited(data, None).await
    }

    /// [`Store::apply_reference`] with an audit entry written in the same transaction.
    pub async fn apply_reference_audited(
        &self,
        data: &ReferenceData,
        audit: Option<&crate::audit::Audit>,
    ) -> Result<()> {
        data.validate().map_err(ReferenceError::Invalid)?;
        let mut client = self.client().await?;
        let tx = client.transaction().await.context("begin reference data")?;
        if let Some(audit) = audit {
            crate::audit::record(&tx, audit).await?;
        }
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
                 lon = EXCLUDED.lon, lat = EXCLUDED.lat, \
                 municipality_code = COALESCE(EXCLUDED.municipality_code, stations.municipality_code), \
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
        coordination::notify(tx.client(), &Notice::ReferenceChanged).await?;
        tx.commit().await.context("commit reference data")?;
        Ok(())
    }

    /// Whether the device with this key is enabled; `None` when there is no such device.
    pub async fn device_enabled(&self, key: &str) -> Result<Option<bool>> {
        let client = self.client().await?;
        Ok(client
            .query_opt("SELECT enabled FROM devices WHERE key = $1", &[&key])
            .await
            .context("looking up a device")?
            .map(|r| r.get(0)))
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
            .query("SELECT name FROM forecast_sources", &[])
            .await
            .context("loading forecast sources")?
        {
            directory.sources.insert(row.get(0));
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

/// A sensor with what analytics needs to know about it.
#[derive(Debug, Clone, PartialEq)]
pub struct SensorInfo {
    pub id: i32,
    pub key: String,
    pub quantity: String,
    pub expected_interval: std::time::Duration,
    /// `(lon, lat)` of its station, if it has one.
    pub position: Option<(f64, f64)>,
}

impl Store {
    /// Every sensor with its quantity, reporting interval and position.
    pub async fn sensor_catalog(&self) -> Result<Vec<SensorInfo>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT s.id, s.key, s.quantity, extract(epoch FROM s.expected_interval)::float8, st.lon, st.lat \
                 FROM sensors s LEFT JOIN stations st ON st.id = s.station_id",
                &[],
            )
            .await
            .context("loading the sensor catalog")?;
        Ok(rows
            .iter()
            .map(|r| {
                let lon: Option<f64> = r.get(4);
                let lat: Option<f64> = r.get(5);
                SensorInfo {
                    id: r.get(0),
                    key: r.get(1),
                    quantity: r.get(2),
                    expected_interval: std::time::Duration::from_secs_f64(
                        r.get::<_, f64>(3).max(1.0),
                    ),
                    position: lon.zip(lat),
                }
            })
            .collect())
    }
}
