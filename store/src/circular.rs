//! The circular data bank's records: material flows posted by waste operators, the container
//! registry, and the collections and overflows analytics find in containers' readings.

use crate::coordination::{self, Notice};
use crate::{Context, Result, Store};
use chrono::{DateTime, NaiveDate, Utc};

/// A material-flow record to store; validated by the caller (codes, tonnes, period).
#[derive(Debug, Clone, PartialEq)]
pub struct NewFlow {
    pub period_from: NaiveDate,
    /// The last day of the period, inclusive.
    pub period_to: NaiveDate,
    pub municipality: String,
    /// As the List of Waste writes it (`20 01 01`).
    pub waste_code: String,
    pub tonnes: f64,
    /// `preparing_for_reuse`, `recycling`, `other_recovery` or `landfill`.
    pub treatment: String,
    pub facility: String,
}

/// A stored record.
#[derive(Debug, Clone, PartialEq)]
pub struct FlowRow {
    pub id: i64,
    pub flow: NewFlow,
    pub posted_by: String,
    pub posted_at: DateTime<Utc>,
}

/// Why a set of records was not stored.
#[derive(Debug, Clone, PartialEq)]
pub enum FlowRefusal {
    /// Record `index` of the set names a municipality that does not exist.
    UnknownMunicipality { index: usize },
    /// Record `index` overlaps a stored record (`existing`) or an earlier one of the same set
    /// for the same municipality, code, treatment and facility.
    Overlaps { index: usize, existing: Option<i64> },
}

/// Which records to read.
#[derive(Debug, Clone, Default)]
pub struct FlowFilter {
    pub municipality: Option<String>,
    pub waste_code: Option<String>,
    /// Records whose period overlaps `[from, to]`.
    pub from: Option<NaiveDate>,
    pub to: Option<NaiveDate>,
}

fn same_stream(a: &NewFlow, b: &NewFlow) -> bool {
    a.municipality == b.municipality
        && a.waste_code == b.waste_code
        && a.treatment == b.treatment
        && a.facility == b.facility
}

fn overlap(a: &NewFlow, b: &NewFlow) -> bool {
    a.period_from <= b.period_to && b.period_from <= a.period_to
}

impl Store {
    /// Stores a set of records, all or none, with an audit entry. Overlapping records are refused
    /// (within the set, and against stored ones under a lock per municipality, so two operators
    /// posting at once cannot both get the same period in).
    pub async fn post_material_flows(
        &self,
        flows: &[NewFlow],
        posted_by: &str,
        audit: &crate::audit::Audit,
    ) -> Result<std::result::Result<Vec<i64>, FlowRefusal>> {
        for (i, a) in flows.iter().enumerate() {
            if flows[..i]
                .iter()
                .any(|b| same_stream(a, b) && overlap(a, b))
            {
                return Ok(Err(FlowRefusal::Overlaps {
                    index: i,
                    existing: None,
                }));
            }
        }
        let mut client = self.client().await?;
        let tx = client.transaction().await.context("begin material flows")?;
        let mut municipalities: Vec<&str> = flows.iter().map(|f| f.municipality.as_str()).collect();
        municipalities.sort_unstable();
        municipalities.dedup();
        // In a fixed order, so that two sets for the same municipalities cannot deadlock.
        for m in &municipalities {
            coordination::lock_material_flows(&tx, m).await?;
        }
        let mut ids = Vec::with_capacity(flows.len());
        for (index, f) in flows.iter().enumerate() {
            let known = tx
                .query_opt(
                    "SELECT 1 FROM municipalities WHERE code = $1",
                    &[&f.municipality],
                )
                .await
                .context("looking up a municipality")?;
            if known.is_none() {
                return Ok(Err(FlowRefusal::UnknownMunicipality { index }));
            }
            let clash = tx
                .query_opt(
                    "SELECT id FROM material_flows WHERE municipality_code = $1 AND waste_code = $2 \
                     AND treatment = $3 AND facility = $4 AND period_from <= $6 AND $5 <= period_to LIMIT 1",
                    &[
                        &f.municipality,
                        &f.waste_code,
                        &f.treatment,
                        &f.facility,
                        &f.period_from,
                        &f.period_to,
                    ],
                )
                .await
                .context("looking for overlapping material flows")?;
            if let Some(row) = clash {
                return Ok(Err(FlowRefusal::Overlaps {
                    index,
                    existing: Some(row.get(0)),
                }));
            }
            let id: i64 = tx
                .query_one(
                    "INSERT INTO material_flows (period_from, period_to, municipality_code, waste_code, \
                     tonnes, treatment, facility, posted_by) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
                    &[
                        &f.period_from,
                        &f.period_to,
                        &f.municipality,
                        &f.waste_code,
                        &f.tonnes,
                        &f.treatment,
                        &f.facility,
                        &posted_by,
                    ],
                )
                .await
                .context("storing a material flow")?
                .get(0);
            ids.push(id);
        }
        crate::audit::record(&tx, audit).await?;
        tx.commit().await.context("commit material flows")?;
        Ok(Ok(ids))
    }

    /// Stored records, oldest period first.
    pub async fn material_flows(&self, filter: &FlowFilter) -> Result<Vec<FlowRow>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT id, period_from, period_to, municipality_code, waste_code, tonnes, treatment, \
                        facility, posted_by, posted_at FROM material_flows \
                 WHERE ($1::text IS NULL OR municipality_code = $1) AND ($2::text IS NULL OR waste_code = $2) \
                   AND ($3::date IS NULL OR period_to >= $3) AND ($4::date IS NULL OR period_from <= $4) \
                 ORDER BY period_from, municipality_code, waste_code, treatment, id",
                &[&filter.municipality, &filter.waste_code, &filter.from, &filter.to],
            )
            .await
            .context("reading material flows")?;
        Ok(rows
            .iter()
            .map(|r| FlowRow {
                id: r.get(0),
                flow: NewFlow {
                    period_from: r.get(1),
                    period_to: r.get(2),
                    municipality: r.get(3),
                    waste_code: r.get(4),
                    tonnes: r.get(5),
                    treatment: r.get(6),
                    facility: r.get(7),
                },
                posted_by: r.get(8),
                posted_at: r.get(9),
            })
            .collect())
    }
}

/// A container of the registry.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerRow {
    pub key: String,
    pub name: String,
    pub lon: f64,
    pub lat: f64,
    pub capacity_litres: f64,
    pub waste_code: String,
    pub fraction: String,
    pub municipality: Option<String>,
    pub fill_sensor: String,
    pub weight_sensor: Option<String>,
}

/// A collection analytics found in a container's readings.
#[derive(Debug, Clone, PartialEq)]
pub struct CollectionRow {
    pub container: String,
    pub at: DateTime<Utc>,
    pub fill_before: f64,
    pub fill_after: f64,
    pub partial: bool,
    pub volume_litres: f64,
    pub mass_kg: Option<f64>,
}

/// A spell a container stayed full for longer than allowed.
#[derive(Debug, Clone, PartialEq)]
pub struct OverflowRow {
    pub container: String,
    pub from: DateTime<Utc>,
    pub until: Option<DateTime<Utc>>,
}

/// A container's state as analytics last saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerState {
    /// The latest usable fill level (percent) and when it was read.
    pub fill: Option<(f64, DateTime<Utc>)>,
    /// Percentage points per hour over the current filling phase.
    pub fill_rate_per_hour: Option<f64>,
    /// When the container is expected to be full.
    pub full_at: Option<DateTime<Utc>>,
    pub computed_at: DateTime<Utc>,
}

/// Which containers' events to read.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    pub container: Option<String>,
    pub municipality: Option<String>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
}

/// Why a container was not stored.
#[derive(Debug, Clone, PartialEq)]
pub enum ContainerRefusal {
    UnknownSensor(String),
    UnknownMunicipality(String),
}

impl Store {
    /// Creates or replaces a container, with an audit entry, announced on
    /// [`Channel::FloodSetupChanged`] (the channel analytics reload their setup on).
    pub async fn put_container(
        &self,
        c: &ContainerRow,
        audit: &crate::audit::Audit,
    ) -> Result<std::result::Result<(), ContainerRefusal>> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.context("begin container")?;
        for sensor in std::iter::once(&c.fill_sensor).chain(c.weight_sensor.as_ref()) {
            let known = tx
                .query_opt("SELECT 1 FROM sensors WHERE key = $1", &[sensor])
                .await
                .context("looking up a sensor")?;
            if known.is_none() {
                return Ok(Err(ContainerRefusal::UnknownSensor(sensor.clone())));
            }
        }
        if let Some(code) = &c.municipality {
            let known = tx
                .query_opt("SELECT 1 FROM municipalities WHERE code = $1", &[code])
                .await
                .context("looking up a municipality")?;
            if known.is_none() {
                return Ok(Err(ContainerRefusal::UnknownMunicipality(code.clone())));
            }
        }
        tx.execute(
            "INSERT INTO containers (key, name, lon, lat, capacity_litres, waste_code, fraction, \
             municipality_code, fill_sensor, weight_sensor) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
             ON CONFLICT (key) DO UPDATE SET name = EXCLUDED.name, lon = EXCLUDED.lon, lat = EXCLUDED.lat, \
             capacity_litres = EXCLUDED.capacity_litres, waste_code = EXCLUDED.waste_code, \
             fraction = EXCLUDED.fraction, municipality_code = EXCLUDED.municipality_code, \
             fill_sensor = EXCLUDED.fill_sensor, weight_sensor = EXCLUDED.weight_sensor, updated_at = now()",
            &[
                &c.key,
                &c.name,
                &c.lon,
                &c.lat,
                &c.capacity_litres,
                &c.waste_code,
                &c.fraction,
                &c.municipality,
                &c.fill_sensor,
                &c.weight_sensor,
            ],
        )
        .await
        .context("storing a container")?;
        crate::audit::commit_change(tx, audit, Notice::FloodSetupChanged).await?;
        Ok(Ok(()))
    }

    /// Each container's state, by key (containers analytics have not looked at yet are missing).
    pub async fn container_states(
        &self,
    ) -> Result<std::collections::HashMap<String, ContainerState>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT container_key, fill_level, fill_at, fill_rate_per_hour, full_at, computed_at \
                 FROM container_state",
                &[],
            )
            .await
            .context("reading container states")?;
        Ok(rows
            .iter()
            .map(|r| {
                let level: Option<f64> = r.get(1);
                let at: Option<DateTime<Utc>> = r.get(2);
                (
                    r.get(0),
                    ContainerState {
                        fill: level.zip(at),
                        fill_rate_per_hour: r.get(3),
                        full_at: r.get(4),
                        computed_at: r.get(5),
                    },
                )
            })
            .collect())
    }

    /// The registry, by key.
    pub async fn containers(&self) -> Result<Vec<ContainerRow>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT key, name, lon, lat, capacity_litres, waste_code, fraction, municipality_code, \
                        fill_sensor, weight_sensor FROM containers ORDER BY key",
                &[],
            )
            .await
            .context("reading containers")?;
        Ok(rows
            .iter()
            .map(|r| ContainerRow {
                key: r.get(0),
                name: r.get(1),
                lon: r.get(2),
                lat: r.get(3),
                capacity_litres: r.get(4),
                waste_code: r.get(5),
                fraction: r.get(6),
                municipality: r.get(7),
                fill_sensor: r.get(8),
                weight_sensor: r.get(9),
            })
            .collect())
    }

    /// Replaces a container's collections and overflow events from `from` on with those found
    /// again, and its state, in one transaction.
    pub async fn replace_container_events(
        &self,
        container: &str,
        from: DateTime<Utc>,
        collections: &[CollectionRow],
        overflows: &[OverflowRow],
        state: &ContainerState,
    ) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client
            .transaction()
            .await
            .context("begin container events")?;
        tx.execute(
            "INSERT INTO container_state (container_key, fill_level, fill_at, fill_rate_per_hour, full_at, computed_at) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (container_key) DO UPDATE SET \
             fill_level = EXCLUDED.fill_level, fill_at = EXCLUDED.fill_at, \
             fill_rate_per_hour = EXCLUDED.fill_rate_per_hour, full_at = EXCLUDED.full_at, \
             computed_at = EXCLUDED.computed_at",
            &[
                &container,
                &state.fill.map(|f| f.0),
                &state.fill.map(|f| f.1),
                &state.fill_rate_per_hour,
                &state.full_at,
                &state.computed_at,
            ],
        )
        .await
        .context("storing a container's state")?;
        tx.execute(
            "DELETE FROM container_collections WHERE container_key = $1 AND at >= $2",
            &[&container, &from],
        )
        .await
        .context("clearing collections")?;
        tx.execute(
            "DELETE FROM container_overflows WHERE container_key = $1 AND (from_ts >= $2 OR until_ts IS NULL OR until_ts >= $2)",
            &[&container, &from],
        )
        .await
        .context("clearing overflows")?;
        for c in collections.iter().filter(|c| c.at >= from) {
            tx.execute(
                "INSERT INTO container_collections (container_key, at, fill_before, fill_after, partial, \
                 volume_litres, mass_kg) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                &[
                    &container,
                    &c.at,
                    &c.fill_before,
                    &c.fill_after,
                    &c.partial,
                    &c.volume_litres,
                    &c.mass_kg,
                ],
            )
            .await
            .context("storing a collection")?;
        }
        for o in overflows
            .iter()
            .filter(|o| o.from >= from || o.until.is_none_or(|u| u >= from))
        {
            tx.execute(
                "INSERT INTO container_overflows (container_key, from_ts, until_ts) VALUES ($1, $2, $3) \
                 ON CONFLICT (container_key, from_ts) DO UPDATE SET until_ts = EXCLUDED.until_ts",
                &[&container, &o.from, &o.until],
            )
            .await
            .context("storing an overflow")?;
        }
        tx.commit().await.context("commit container events")
    }

    /// Collections, oldest first.
    pub async fn collections(&self, filter: &EventFilter) -> Result<Vec<CollectionRow>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT c.container_key, c.at, c.fill_before, c.fill_after, c.partial, c.volume_litres, c.mass_kg \
                 FROM container_collections c JOIN containers k ON k.key = c.container_key \
                 WHERE ($1::text IS NULL OR c.container_key = $1) AND ($2::text IS NULL OR k.municipality_code = $2) \
                   AND ($3::timestamptz IS NULL OR c.at >= $3) AND ($4::timestamptz IS NULL OR c.at < $4) \
                 ORDER BY c.at, c.container_key",
                &[&filter.container, &filter.municipality, &filter.from, &filter.to],
            )
            .await
            .context("reading collections")?;
        Ok(rows
            .iter()
            .map(|r| CollectionRow {
                container: r.get(0),
                at: r.get(1),
                fill_before: r.get(2),
                fill_after: r.get(3),
                partial: r.get(4),
                volume_litres: r.get(5),
                mass_kg: r.get(6),
            })
            .collect())
    }

    /// Overflow events overlapping the filter's range, oldest first.
    pub async fn overflows(&self, filter: &EventFilter) -> Result<Vec<OverflowRow>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT o.container_key, o.from_ts, o.until_ts \
                 FROM container_overflows o JOIN containers k ON k.key = o.container_key \
                 WHERE ($1::text IS NULL OR o.container_key = $1) AND ($2::text IS NULL OR k.municipality_code = $2) \
                   AND ($3::timestamptz IS NULL OR o.until_ts IS NULL OR o.until_ts >= $3) \
                   AND ($4::timestamptz IS NULL OR o.from_ts < $4) \
                 ORDER BY o.from_ts, o.container_key",
                &[&filter.container, &filter.municipality, &filter.from, &filter.to],
            )
            .await
            .context("reading overflows")?;
        Ok(rows
            .iter()
            .map(|r| OverflowRow {
                container: r.get(0),
                from: r.get(1),
                until: r.get(2),
            })
            .collect())
    }
}

impl Store {
    /// Sets a municipality's population, with an audit entry; `false` when there is no such
    /// municipality.
    pub async fn set_population(
        &self,
        code: &str,
        population: i32,
        audit: &crate::audit::Audit,
    ) -> Result<bool> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.context("begin population")?;
        let changed = tx
            .execute(
                "UPDATE municipalities SET population = $2 WHERE code = $1",
                &[&code, &population],
            )
            .await
            .context("setting a population")?;
        if changed == 0 {
            return Ok(false);
        }
        crate::audit::commit_change(tx, audit, Notice::ReferenceChanged).await?;
        Ok(true)
    }

    /// The populations given, by municipality code.
    pub async fn populations(&self) -> Result<std::collections::HashMap<String, i32>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT code, population FROM municipalities WHERE population IS NOT NULL",
                &[],
            )
            .await
            .context("reading populations")?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(from: &str, to: &str, facility: &str) -> NewFlow {
        NewFlow {
            period_from: from.parse().unwrap(),
            period_to: to.parse().unwrap(),
            municipality: "0751".into(),
            waste_code: "20 01 01".into(),
            tonnes: 1.0,
            treatment: "recycling".into(),
            facility: facility.into(),
        }
    }

    #[test]
    fn overlapping_periods_of_one_stream_clash() {
        let q1 = flow("2025-01-01", "2025-03-31", "A");
        for (other, clash) in [
            (flow("2025-03-31", "2025-06-30", "A"), true),
            (flow("2025-04-01", "2025-06-30", "A"), false),
            (flow("2024-10-01", "2025-01-01", "A"), true),
            (flow("2025-02-01", "2025-02-28", "B"), false),
        ] {
            assert_eq!(
                same_stream(&q1, &other) && overlap(&q1, &other),
                clash,
                "{other:?}"
            );
        }
    }
}
