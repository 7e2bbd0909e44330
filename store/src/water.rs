//! Water networks: leak rules for district meters, the minimum night flow analytics find each
//! night, and the leaks they suspect.

use crate::{Context, Result, Store};
use chrono::{DateTime, NaiveDate, NaiveTime, Utc};

/// A district meter's leak rule.
#[derive(Debug, Clone, PartialEq)]
pub struct LeakRuleRow {
    pub sensor_key: String,
    /// The night window, Danish local time.
    pub night_start: NaiveTime,
    pub night_end: NaiveTime,
    pub baseline_nights: i32,
    /// A share of the baseline (0.2: 20 % above it).
    pub margin: f64,
    pub nights: i32,
}

/// One night's minimum flow.
#[derive(Debug, Clone, PartialEq)]
pub struct NightFlowRow {
    pub night: NaiveDate,
    pub min_value: f64,
    pub at: DateTime<Utc>,
    pub samples: i32,
}

/// A suspected leak.
#[derive(Debug, Clone, PartialEq)]
pub struct LeakRow {
    pub sensor_key: String,
    pub since: NaiveDate,
    pub raised_on: NaiveDate,
    pub baseline: f64,
    pub night_flow: f64,
    pub found_at: DateTime<Utc>,
}

impl Store {
    /// Creates or replaces a leak rule, with an audit entry, announced on
    /// [`crate::flood::FLOOD_SETUP_CHANGED`] (the channel analytics reload their setup on).
    pub async fn put_leak_rule(
        &self,
        rule: &LeakRuleRow,
        audit: &crate::audit::Audit,
    ) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.context("begin leak rule")?;
        tx.execute(
            "INSERT INTO leak_rules (sensor_key, night_start, night_end, baseline_nights, margin, nights) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (sensor_key) DO UPDATE SET \
             night_start = EXCLUDED.night_start, night_end = EXCLUDED.night_end, \
             baseline_nights = EXCLUDED.baseline_nights, margin = EXCLUDED.margin, \
             nights = EXCLUDED.nights, updated_at = now()",
            &[
                &rule.sensor_key,
                &rule.night_start,
                &rule.night_end,
                &rule.baseline_nights,
                &rule.margin,
                &rule.nights,
            ],
        )
        .await
        .context("storing a leak rule")?;
        crate::audit::commit_change(tx, audit, crate::flood::FLOOD_SETUP_CHANGED).await
    }

    pub async fn leak_rules(&self) -> Result<Vec<LeakRuleRow>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT sensor_key, night_start, night_end, baseline_nights, margin, nights \
                 FROM leak_rules ORDER BY sensor_key",
                &[],
            )
            .await
            .context("reading leak rules")?;
        Ok(rows
            .iter()
            .map(|r| LeakRuleRow {
                sensor_key: r.get(0),
                night_start: r.get(1),
                night_end: r.get(2),
                baseline_nights: r.get(3),
                margin: r.get(4),
                nights: r.get(5),
            })
            .collect())
    }

    /// Replaces a meter's night minima from `from_night` on and records a suspected leak, if one
    /// was found (once per first night), in one transaction.
    pub async fn store_night_flow(
        &self,
        sensor: &str,
        from_night: NaiveDate,
        minima: &[NightFlowRow],
        leak: Option<&LeakRow>,
    ) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.context("begin night flow")?;
        tx.execute(
            "DELETE FROM night_flow WHERE sensor_key = $1 AND night >= $2",
            &[&sensor, &from_night],
        )
        .await
        .context("clearing night flow")?;
        for m in minima.iter().filter(|m| m.night >= from_night) {
            tx.execute(
                "INSERT INTO night_flow (sensor_key, night, min_value, at, samples) VALUES ($1, $2, $3, $4, $5)",
                &[&sensor, &m.night, &m.min_value, &m.at, &m.samples],
            )
            .await
            .context("storing a night's flow")?;
        }
        if let Some(l) = leak {
            tx.execute(
                "INSERT INTO leak_suspicions (sensor_key, since, raised_on, baseline, night_flow) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (sensor_key, since) DO NOTHING",
                &[&sensor, &l.since, &l.raised_on, &l.baseline, &l.night_flow],
            )
            .await
            .context("recording a suspected leak")?;
        }
        tx.commit().await.context("commit night flow")
    }

    /// A meter's night minima in `[from, to]`, oldest first.
    pub async fn night_flow(
        &self,
        sensor: &str,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<Vec<NightFlowRow>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT night, min_value, at, samples FROM night_flow \
                 WHERE sensor_key = $1 AND night >= $2 AND night <= $3 ORDER BY night",
                &[&sensor, &from, &to],
            )
            .await
            .context("reading night flow")?;
        Ok(rows
            .iter()
            .map(|r| NightFlowRow {
                night: r.get(0),
                min_value: r.get(1),
                at: r.get(2),
                samples: r.get(3),
            })
            .collect())
    }

    /// Suspected leaks, newest first, of one meter or all.
    pub async fn leaks(&self, sensor: Option<&str>) -> Result<Vec<LeakRow>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT sensor_key, since, raised_on, baseline, night_flow, found_at FROM leak_suspicions \
                 WHERE ($1::text IS NULL OR sensor_key = $1) ORDER BY since DESC, sensor_key",
                &[&sensor],
            )
            .await
            .context("reading suspected leaks")?;
        Ok(rows
            .iter()
            .map(|r| LeakRow {
                sensor_key: r.get(0),
                since: r.get(1),
                raised_on: r.get(2),
                baseline: r.get(3),
                night_flow: r.get(4),
                found_at: r.get(5),
            })
            .collect())
    }
}
