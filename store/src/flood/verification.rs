//! What warning verification reads: each flood area's level sensors with their thresholds and
//! usable readings, and the area's recorded warning events, in the model's types. The scoring
//! itself is `tidemark_model::verification`.

use super::*;
use crate::rollup::USABLE;
use tidemark_model::verification::{IssuedEvent, SensorSeries, Thresholds};

/// A flood area as verification reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct AreaRecord {
    pub key: String,
    pub name: String,
    /// Its level sensors (those with thresholds), with their usable readings in the period.
    pub sensors: Vec<SensorSeries>,
    /// Its raised, changed and lifted events, in order, from before the period (so that what was
    /// in force when it began is known) to its end.
    pub events: Vec<IssuedEvent>,
}

impl Store {
    /// Every flood area (or one) with what verification needs between `from` and `to`.
    pub async fn verification_records(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        area: Option<&str>,
    ) -> Result<Vec<AreaRecord>> {
        let setup = self.flood_setup().await?;
        let thresholds: HashMap<&str, &ThresholdRow> = setup
            .thresholds
            .iter()
            .map(|t| (t.sensor_key.as_str(), t))
            .collect();
        let areas: Vec<&AreaRow> = setup
            .areas
            .iter()
            .filter(|a| area.is_none_or(|key| a.key == key))
            .collect();
        let keys: Vec<String> = areas
            .iter()
            .flat_map(|a| a.sensors.iter())
            .filter(|s| thresholds.contains_key(s.as_str()))
            .cloned()
            .collect();
        let area_keys: Vec<&str> = areas.iter().map(|a| a.key.as_str()).collect();
        let client = self.client().await?;
        let rows = client
            .query(
                &format!(
                    "SELECT s.key, r.ts, r.value FROM readings r JOIN sensors s ON s.id = r.sensor_id \
                     WHERE s.key = ANY($1) AND r.ts >= $2 AND r.ts < $3 AND {USABLE} ORDER BY s.key, r.ts"
                ),
                &[&keys, &from, &to],
            )
            .await
            .context("reading the period's readings")?;
        let mut readings: HashMap<String, Vec<(DateTime<Utc>, f64)>> = HashMap::new();
        for row in rows {
            readings
                .entry(row.get(0))
                .or_default()
                .push((row.get(1), row.get(2)));
        }
        // Each area's events from its last raise before the period, so a warning in force when
        // the period began counts from when it was raised.
        let rows = client
            .query(
                "SELECT e.area_key, e.kind, e.severity, e.at FROM warning_events e \
                 WHERE e.category = 'flood' AND e.area_key = ANY($1) AND e.at < $3 \
                 AND e.kind IN ('raised', 'changed', 'lifted') \
                 AND e.at >= COALESCE((SELECT max(p.at) FROM warning_events p WHERE p.area_key = e.area_key \
                     AND p.kind = 'raised' AND p.at < $2), $2) \
                 ORDER BY e.area_key, e.at, e.id",
                &[&area_keys, &from, &to],
            )
            .await
            .context("reading the period's warning events")?;
        let mut events: HashMap<String, Vec<IssuedEvent>> = HashMap::new();
        for row in &rows {
            events.entry(row.get(0)).or_default().push(IssuedEvent {
                kind: term(row, 1, EventKind::parse)?,
                severity: opt_severity(row, 2)?,
                at: row.get(3),
            });
        }
        Ok(areas
            .into_iter()
            .map(|a| AreaRecord {
                key: a.key.clone(),
                name: a.name.clone(),
                sensors: a
                    .sensors
                    .iter()
                    .filter_map(|s| {
                        let t = thresholds.get(s.as_str())?;
                        Some(SensorSeries {
                            sensor: s.clone(),
                            thresholds: Thresholds {
                                levels: [t.alert, t.warning, t.severe],
                                persistence: chrono::Duration::from_std(t.persistence)
                                    .unwrap_or_else(|_| chrono::Duration::zero()),
                                min_readings: u32::try_from(t.min_readings).unwrap_or(1),
                            },
                            readings: readings.get(s).cloned().unwrap_or_default(),
                        })
                    })
                    .collect(),
                events: events.remove(&a.key).unwrap_or_default(),
            })
            .collect())
    }
}
