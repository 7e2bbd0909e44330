//! Forecasts: who may issue them (`forecast_sources`), each issue once (`forecast_issues`, with a
//! fingerprint that tells a redelivery from a conflicting re-issue), its values (`forecasts`), the
//! reads analytics and the API need, and retention.

use crate::coordination::{self, Notice};
use crate::{Context, Result, Store};
use chrono::{DateTime, Utc};
use std::collections::{BTreeMap, HashSet};
use tidemark_model::forecast::ForecastValue;
use tokio_postgres::Transaction;

/// An issue to store: a validated forecast with its sensor's id.
#[derive(Debug, Clone, PartialEq)]
pub struct ForecastRow {
    pub sensor_id: i32,
    pub source: String,
    pub issued_at: DateTime<Utc>,
    pub values: Vec<ForecastValue>,
}

impl ForecastRow {
    /// A hash of the values (FNV-1a over valid times, values and quantiles), so that a
    /// redelivered issue is told from another issue with the same key.
    pub fn fingerprint(&self) -> i64 {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        let mut eat = |bytes: [u8; 8]| {
            for b in bytes {
                hash ^= u64::from(b);
                hash = hash.wrapping_mul(0x0100_0000_01b3);
            }
        };
        for v in &self.values {
            eat(v.valid_at.timestamp_micros().to_le_bytes());
            eat(v.value.to_bits().to_le_bytes());
            for (p, q) in &v.quantiles {
                eat(p.to_bits().to_le_bytes());
                eat(q.to_bits().to_le_bytes());
            }
        }
        hash as i64
    }
}

/// What storing one issue did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    New,
    /// The same issue again (a redelivery): nothing changed.
    Duplicate,
    /// An issue with the same sensor, source and issue time but other values: refused, the first
    /// one stands.
    Conflict,
}

/// A stored issue, as analytics and the API read it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredForecast {
    pub sensor_key: String,
    pub source: String,
    /// Tidemark's own nowcast.
    pub builtin: bool,
    pub issued_at: DateTime<Utc>,
    pub received_at: DateTime<Utc>,
    pub values: Vec<ForecastValue>,
}

/// Writes issues in the caller's transaction and announces the new ones when it commits.
pub(crate) async fn write_forecasts(
    tx: &Transaction<'_>,
    rows: &[ForecastRow],
) -> Result<Vec<Stored>> {
    let mut outcome = Vec::with_capacity(rows.len());
    let mut sensors = Vec::new();
    for row in rows {
        let fingerprint = row.fingerprint();
        let inserted = tx
            .execute(
                "INSERT INTO forecast_issues (sensor_id, source, issued_at, value_count, fingerprint) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                &[
                    &row.sensor_id,
                    &row.source,
                    &row.issued_at,
                    &(row.values.len() as i32),
                    &fingerprint,
                ],
            )
            .await
            .context("storing a forecast issue")?;
        if inserted == 0 {
            let stored: i64 = tx
                .query_one(
                    "SELECT fingerprint FROM forecast_issues \
                     WHERE sensor_id = $1 AND source = $2 AND issued_at = $3",
                    &[&row.sensor_id, &row.source, &row.issued_at],
                )
                .await
                .context("reading a stored forecast issue")?
                .get(0);
            outcome.push(if stored == fingerprint {
                Stored::Duplicate
            } else {
                Stored::Conflict
            });
            continue;
        }
        let valid: Vec<DateTime<Utc>> = row.values.iter().map(|v| v.valid_at).collect();
        let values: Vec<f64> = row.values.iter().map(|v| v.value).collect();
        let quantiles: Vec<Option<serde_json::Value>> = row
            .values
            .iter()
            .map(|v| {
                (!v.quantiles.is_empty()).then(|| {
                    v.quantiles
                        .iter()
                        .map(|(p, q)| (p.to_string(), serde_json::json!(q)))
                        .collect::<serde_json::Map<_, _>>()
                        .into()
                })
            })
            .collect();
        tx.execute(
            "INSERT INTO forecasts (sensor_id, source, issued_at, valid_at, value, quantiles) \
             SELECT $1, $2, $3, v, x, q FROM unnest($4::timestamptz[], $5::float8[], $6::jsonb[]) AS u(v, x, q)",
            &[&row.sensor_id, &row.source, &row.issued_at, &valid, &values, &quantiles],
        )
        .await
        .context("storing forecast values")?;
        sensors.push(row.sensor_id);
        outcome.push(Stored::New);
    }
    sensors.sort_unstable();
    sensors.dedup();
    for chunk in sensors.chunks(crate::readings::SENSORS_PER_NOTIFICATION) {
        coordination::notify(
            tx.client(),
            &Notice::ForecastsCommitted {
                sensors: chunk.to_vec(),
            },
        )
        .await?;
    }
    Ok(outcome)
}

fn quantiles_of(value: Option<serde_json::Value>) -> Vec<(f64, f64)> {
    let mut out: Vec<(f64, f64)> = value
        .and_then(|v| v.as_object().cloned())
        .map(|map| {
            map.iter()
                .filter_map(|(p, q)| Some((p.parse().ok()?, q.as_f64()?)))
                .collect()
        })
        .unwrap_or_default();
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}

impl Store {
    /// Stores one issue on its own (the API's path), announcing it when new.
    pub async fn store_forecast(&self, row: &ForecastRow) -> Result<Stored> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.context("begin forecast")?;
        let outcome = write_forecasts(&tx, std::slice::from_ref(row)).await?;
        tx.commit().await.context("commit forecast")?;
        Ok(outcome[0])
    }

    /// The sources that may issue forecasts.
    pub async fn forecast_sources(&self) -> Result<HashSet<String>> {
        let client = self.client().await?;
        let rows = client
            .query("SELECT name FROM forecast_sources", &[])
            .await
            .context("listing forecast sources")?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Registers a source (idempotent).
    pub async fn add_forecast_source(&self, name: &str, label: &str) -> Result<()> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO forecast_sources (name, label) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
                &[&name, &label],
            )
            .await
            .context("adding a forecast source")?;
        Ok(())
    }

    /// Every issue of the sensors issued at or after `from`, by sensor, source and issue time.
    /// Quantiles are left out: analytics warn on the central value.
    pub async fn forecasts_since(
        &self,
        sensor_keys: &[String],
        from: DateTime<Utc>,
    ) -> Result<Vec<StoredForecast>> {
        let client = self.client().await?;
        // One row per issue, its values as two arrays: a fraction of the rows (and their
        // decoding) that one row per value takes.
        let rows = client
            .query(
                "SELECT s.key, i.source, fs.builtin, i.issued_at, i.received_at, v.at, v.value \
                 FROM sensors s \
                 JOIN forecast_issues i ON i.sensor_id = s.id AND i.issued_at >= $2 \
                 JOIN forecast_sources fs ON fs.name = i.source \
                 CROSS JOIN LATERAL (SELECT array_agg(f.valid_at ORDER BY f.valid_at) AS at, \
                     array_agg(f.value ORDER BY f.valid_at) AS value FROM forecasts f \
                     WHERE f.sensor_id = i.sensor_id AND f.source = i.source \
                       AND f.issued_at = i.issued_at) v \
                 WHERE s.key = ANY($1) \
                 ORDER BY s.key, i.source, i.issued_at",
                &[&sensor_keys, &from],
            )
            .await
            .context("reading forecasts")?;
        Ok(rows
            .iter()
            .map(|r| {
                let at: Vec<DateTime<Utc>> = r.get::<_, Option<_>>(5).unwrap_or_default();
                let value: Vec<f64> = r.get::<_, Option<_>>(6).unwrap_or_default();
                StoredForecast {
                    sensor_key: r.get(0),
                    source: r.get(1),
                    builtin: r.get(2),
                    issued_at: r.get(3),
                    received_at: r.get(4),
                    values: at
                        .into_iter()
                        .zip(value)
                        .map(|(valid_at, value)| ForecastValue {
                            valid_at,
                            value,
                            quantiles: Vec::new(),
                        })
                        .collect(),
                }
            })
            .collect())
    }

    /// The issues of each sensor issued at or after its start, without their values: `(sensor,
    /// source, built in, issued at)`, by sensor, source and issue time.
    pub async fn forecast_issues_from(
        &self,
        starts: &[(&str, DateTime<Utc>)],
    ) -> Result<Vec<(String, String, bool, DateTime<Utc>)>> {
        let keys: Vec<&str> = starts.iter().map(|s| s.0).collect();
        let froms: Vec<DateTime<Utc>> = starts.iter().map(|s| s.1).collect();
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT s.key, i.source, fs.builtin, i.issued_at \
                 FROM unnest($1::text[], $2::timestamptz[]) AS q(k, from_at) \
                 JOIN sensors s ON s.key = q.k \
                 JOIN forecast_issues i ON i.sensor_id = s.id AND i.issued_at >= q.from_at \
                 JOIN forecast_sources fs ON fs.name = i.source \
                 ORDER BY s.key, i.source, i.issued_at",
                &[&keys, &froms],
            )
            .await
            .context("reading forecast issues")?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect())
    }

    /// The values `(valid at, value)` of the issues named `(sensor, source, issued at)`, in the
    /// order named (an issue not stored has none).
    pub async fn forecast_values(
        &self,
        issues: &[(&str, &str, DateTime<Utc>)],
    ) -> Result<Vec<Vec<(DateTime<Utc>, f64)>>> {
        let sensors: Vec<&str> = issues.iter().map(|i| i.0).collect();
        let sources: Vec<&str> = issues.iter().map(|i| i.1).collect();
        let issued: Vec<DateTime<Utc>> = issues.iter().map(|i| i.2).collect();
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT q.n, v.at, v.value \
                 FROM unnest($1::text[], $2::text[], $3::timestamptz[]) WITH ORDINALITY AS q(k, src, iss, n) \
                 JOIN sensors s ON s.key = q.k \
                 CROSS JOIN LATERAL (SELECT array_agg(f.valid_at ORDER BY f.valid_at) AS at, \
                     array_agg(f.value ORDER BY f.valid_at) AS value FROM forecasts f \
                     WHERE f.sensor_id = s.id AND f.source = q.src AND f.issued_at = q.iss) v",
                &[&sensors, &sources, &issued],
            )
            .await
            .context("reading forecast values")?;
        let mut out = vec![Vec::new(); issues.len()];
        for row in rows {
            let n: i64 = row.get(0);
            let at: Vec<DateTime<Utc>> = row.get::<_, Option<_>>(1).unwrap_or_default();
            let value: Vec<f64> = row.get::<_, Option<_>>(2).unwrap_or_default();
            if let Some(slot) = usize::try_from(n - 1).ok().and_then(|i| out.get_mut(i)) {
                *slot = at.into_iter().zip(value).collect();
            }
        }
        Ok(out)
    }

    /// The time of each sensor's latest issue from each source, without its values: `(sensor,
    /// source, built in, issued at)`.
    pub async fn latest_issue_times(
        &self,
        sensor_keys: &[String],
    ) -> Result<Vec<(String, String, bool, DateTime<Utc>)>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT s.key, i.source, fs.builtin, max(i.issued_at) \
                 FROM forecast_issues i JOIN sensors s ON s.id = i.sensor_id \
                 JOIN forecast_sources fs ON fs.name = i.source \
                 WHERE s.key = ANY($1) GROUP BY s.key, i.source, fs.builtin",
                &[&sensor_keys],
            )
            .await
            .context("reading the latest issues' times")?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect())
    }

    /// A sensor's latest issue from each source, or the issue at `issued_at`, with quantiles.
    pub async fn latest_forecasts(
        &self,
        sensor_key: &str,
        source: Option<&str>,
        issued_at: Option<DateTime<Utc>>,
    ) -> Result<Vec<StoredForecast>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "WITH chosen AS ( \
                   SELECT DISTINCT ON (i.source) i.sensor_id, i.source, i.issued_at, i.received_at \
                   FROM forecast_issues i JOIN sensors s ON s.id = i.sensor_id \
                   WHERE s.key = $1 AND ($2::text IS NULL OR i.source = $2) \
                     AND ($3::timestamptz IS NULL OR i.issued_at = $3) \
                   ORDER BY i.source, i.issued_at DESC) \
                 SELECT $1::text, c.source, fs.builtin, c.issued_at, c.received_at, f.valid_at, \
                   f.value, f.quantiles \
                 FROM chosen c JOIN forecast_sources fs ON fs.name = c.source \
                 JOIN forecasts f ON f.sensor_id = c.sensor_id AND f.source = c.source \
                   AND f.issued_at = c.issued_at \
                 ORDER BY c.source, f.valid_at",
                &[&sensor_key, &source, &issued_at],
            )
            .await
            .context("reading the latest forecasts")?;
        Ok(group(rows.iter().map(|r| {
            (
                (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)),
                ForecastValue {
                    valid_at: r.get(5),
                    value: r.get(6),
                    quantiles: quantiles_of(r.get(7)),
                },
            )
        })))
    }

    /// Deletes the issues made before `cutoff`; returns how many.
    pub async fn expire_forecasts(&self, cutoff: DateTime<Utc>) -> Result<u64> {
        let mut client = self.client().await?;
        let tx = client
            .transaction()
            .await
            .context("begin forecast retention")?;
        let issues = tx
            .execute(
                "DELETE FROM forecast_issues WHERE issued_at < $1",
                &[&cutoff],
            )
            .await
            .context("expiring forecast issues")?;
        // The same DELETE in both modes (on a hypertable it touches only the old chunks), so
        // that retention is one statement whichever mode the database is in.
        tx.execute("DELETE FROM forecasts WHERE issued_at < $1", &[&cutoff])
            .await
            .context("expiring forecasts")?;
        if issues > 0 {
            // A sensor's latest issue may be among them: answers that show it have changed.
            coordination::notify(
                tx.client(),
                &Notice::ForecastsCommitted {
                    sensors: Vec::new(),
                },
            )
            .await?;
        }
        tx.commit().await.context("commit forecast retention")?;
        Ok(issues)
    }
}

type IssueKey = (String, String, bool, DateTime<Utc>, DateTime<Utc>);

/// Rows in issue order into issues.
fn group(rows: impl Iterator<Item = (IssueKey, ForecastValue)>) -> Vec<StoredForecast> {
    let mut out: BTreeMap<(String, String, DateTime<Utc>), StoredForecast> = BTreeMap::new();
    for ((sensor_key, source, builtin, issued_at, received_at), value) in rows {
        out.entry((sensor_key.clone(), source.clone(), issued_at))
            .or_insert_with(|| StoredForecast {
                sensor_key,
                source,
                builtin,
                issued_at,
                received_at,
                values: Vec::new(),
            })
            .values
            .push(value);
    }
    out.into_values().collect()
}
