//! The circular data bank's records: material flows posted by waste operators.

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
            tx.execute(
                "SELECT pg_advisory_xact_lock(hashtext('material_flows:' || $1))",
                &[m],
            )
            .await
            .context("locking a municipality's material flows")?;
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
