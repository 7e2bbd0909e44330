//! Utility statistics read straight from the readings: the summary of a meter's series (count,
//! mean, peak and when it occurred) and its load-duration curve. Usable readings only: flagged
//! ones are counted and left out.

use crate::rollup::USABLE;
use crate::{Context, Result, Store};
use chrono::{DateTime, Utc};

/// A sensor's usable readings over a range, summarised.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub count: i64,
    /// Readings left out for their quality flags.
    pub flagged: i64,
    pub mean: Option<f64>,
    pub min: Option<f64>,
    /// The highest value and the first time it was reached.
    pub peak: Option<(DateTime<Utc>, f64)>,
}

/// Most points of a load-duration curve read in full.
pub const MAX_CURVE: i64 = 100_000;

impl Store {
    /// The summary of `sensor`'s readings in `[from, to)`; `None` when there is no such sensor.
    pub async fn utility_summary(
        &self,
        sensor: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Option<Summary>> {
        let client = self.client().await?;
        let Some(id) = client
            .query_opt("SELECT id FROM sensors WHERE key = $1", &[&sensor])
            .await
            .context("looking up a sensor")?
            .map(|r| r.get::<_, i32>(0))
        else {
            return Ok(None);
        };
        let totals = client
            .query_one(
                &format!(
                    "SELECT count(*) FILTER (WHERE {USABLE}), count(*) FILTER (WHERE NOT {USABLE}), \
                            avg(r.value) FILTER (WHERE {USABLE}), min(r.value) FILTER (WHERE {USABLE}) \
                     FROM readings r WHERE r.sensor_id = $1 AND r.ts >= $2 AND r.ts < $3"
                ),
                &[&id, &from, &to],
            )
            .await
            .context("summarising readings")?;
        let peak = client
            .query_opt(
                &format!(
                    "SELECT r.ts, r.value FROM readings r \
                     WHERE r.sensor_id = $1 AND r.ts >= $2 AND r.ts < $3 AND {USABLE} \
                     ORDER BY r.value DESC, r.ts LIMIT 1"
                ),
                &[&id, &from, &to],
            )
            .await
            .context("finding the peak")?;
        Ok(Some(Summary {
            count: totals.get(0),
            flagged: totals.get(1),
            mean: totals.get(2),
            min: totals.get(3),
            peak: peak.map(|r| (r.get(0), r.get(1))),
        }))
    }

    /// The load-duration curve of `sensor`'s usable readings in `[from, to)`: the values from
    /// highest to lowest, at most [`MAX_CURVE`] of them.
    pub async fn load_duration(
        &self,
        sensor: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<f64>> {
        let client = self.client().await?;
        let rows = client
            .query(
                &format!(
                    "SELECT r.value FROM readings r JOIN sensors s ON s.id = r.sensor_id \
                     WHERE s.key = $1 AND r.ts >= $2 AND r.ts < $3 AND {USABLE} \
                     ORDER BY r.value DESC LIMIT $4"
                ),
                &[&sensor, &from, &to, &MAX_CURVE],
            )
            .await
            .context("reading a load-duration curve")?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }
}

/// The calendar a consumption is counted by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    /// UTC hours.
    Hour,
    /// Danish local days and months.
    Day,
    Month,
}

impl Period {
    fn unit_and_zone(self) -> (&'static str, &'static str) {
        match self {
            Period::Hour => ("hour", "UTC"),
            Period::Day => ("day", "Europe/Copenhagen"),
            Period::Month => ("month", "Europe/Copenhagen"),
        }
    }
}

/// Energy used in one period, summed over meters.
#[derive(Debug, Clone, PartialEq)]
pub struct Consumption {
    pub start: DateTime<Utc>,
    pub used: f64,
    /// Meters that counted in this period.
    pub meters: i64,
    /// Meters whose register fell (a reset or a replaced meter), left out of this period.
    pub resets: i64,
}

/// Which meters' registers to read.
#[derive(Debug, Clone, Default)]
pub struct MeterFilter {
    pub sensor: Option<String>,
    /// Meters at stations in this municipality...
    pub municipality: Option<String>,
    /// ...or in this area, `[min_lon, min_lat, max_lon, max_lat]` (both: in both)...
    pub bbox: Option<[f64; 4]>,
    /// ...measuring this register quantity.
    pub quantity: Option<String>,
}

impl Store {
    /// Energy used per period from meter registers: for each meter, the rise of its register from
    /// the last usable reading of the previous period (or before `from`) to the last usable reading
    /// of this one, summed over the meters.
    pub async fn register_consumption(
        &self,
        meters: &MeterFilter,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        period: Period,
    ) -> Result<Vec<Consumption>> {
        let client = self.client().await?;
        let (unit, zone) = period.unit_and_zone();
        let rows = client
            .query(
                &format!(
                    "WITH m AS (SELECT se.id FROM sensors se LEFT JOIN stations st ON st.id = se.station_id \
                         WHERE ($1::text IS NULL OR se.key = $1) AND ($2::text IS NULL OR st.municipality_code = $2) \
                           AND ($3::text IS NULL OR se.quantity = $3) \
                           AND ($8::float8[] IS NULL OR (st.lon BETWEEN $8[1] AND $8[3] AND st.lat BETWEEN $8[2] AND $8[4]))), \
                     last AS (SELECT DISTINCT ON (r.sensor_id, b) r.sensor_id, \
                                date_trunc($6, r.ts AT TIME ZONE $7) AT TIME ZONE $7 AS b, r.value \
                              FROM readings r JOIN m ON m.id = r.sensor_id \
                              WHERE r.ts >= $4 AND r.ts < $5 AND {USABLE} \
                              ORDER BY r.sensor_id, b, r.ts DESC), \
                     opening AS (SELECT m.id AS sensor_id, \
                                   (SELECT r.value FROM readings r WHERE r.sensor_id = m.id AND r.ts < $4 AND {USABLE} \
                                    ORDER BY r.ts DESC LIMIT 1) AS value FROM m), \
                     steps AS (SELECT l.sensor_id, l.b, \
                                 l.value - COALESCE(lag(l.value) OVER (PARTITION BY l.sensor_id ORDER BY l.b), o.value) AS used \
                               FROM last l JOIN opening o USING (sensor_id)) \
                     SELECT b, COALESCE(sum(used) FILTER (WHERE used >= 0), 0), \
                            count(*) FILTER (WHERE used >= 0), count(*) FILTER (WHERE used < 0) \
                     FROM steps WHERE used IS NOT NULL GROUP BY b ORDER BY b"
                ),
                &[
                    &meters.sensor,
                    &meters.municipality,
                    &meters.quantity,
                    &from,
                    &to,
                    &unit,
                    &zone,
                    &meters.bbox.map(|b| b.to_vec()),
                ],
            )
            .await
            .context("reading meter registers")?;
        Ok(rows
            .iter()
            .map(|r| Consumption {
                start: r.get(0),
                used: r.get(1),
                meters: r.get(2),
                resets: r.get(3),
            })
            .collect())
    }
}
