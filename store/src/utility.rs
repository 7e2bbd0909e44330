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
