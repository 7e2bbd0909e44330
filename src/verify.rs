//! `tidemark verify`: how the warnings of a period fared against what the gauges measured.

use anyhow::Context;
use chrono::{DateTime, Duration, Utc};
use std::collections::BTreeMap;
use tidemark_analytics::verification::{self, IssuedEvent, ObservedCrossing, Score};
use tidemark_store::{DatabaseConfig, Store};

#[derive(Debug, Clone, clap::Args)]
pub struct VerifyArgs {
    /// Start of the period (RFC 3339).
    #[arg(long)]
    pub from: String,
    /// End of the period (RFC 3339); now by default.
    #[arg(long)]
    pub to: Option<String>,
    /// How long after a crossing a warning still counts as a hit (e.g. 1h).
    #[arg(long, default_value = "1h")]
    pub grace: String,
}

fn instant(raw: &str, flag: &str) -> anyhow::Result<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(raw)
        .map(|t| t.with_timezone(&Utc))
        .with_context(|| {
            format!("--{flag} {raw:?} is not an RFC 3339 time such as 2023-10-18T00:00:00Z")
        })
}

impl VerifyArgs {
    /// The period and grace, parsed: an error here is a usage error, found before anything
    /// connects.
    pub fn parse(&self) -> anyhow::Result<(DateTime<Utc>, DateTime<Utc>, Duration)> {
        let from = instant(&self.from, "from")?;
        let to = match &self.to {
            Some(raw) => instant(raw, "to")?,
            None => Utc::now(),
        };
        if to <= from {
            anyhow::bail!("--to ({to}) must be later than --from ({from})");
        }
        let grace = tidemark_model::duration::parse(&self.grace)
            .map_err(|e| anyhow::anyhow!("--grace {:?}: {e}", self.grace))?;
        Ok((from, to, chrono::Duration::from_std(grace)?))
    }
}

/// Scores per (area, severity) for a period.
pub async fn scores(
    database: &DatabaseConfig,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    grace: Duration,
) -> anyhow::Result<BTreeMap<(String, i16), Score>> {
    anyhow::ensure!(from < to, "the period must start before it ends");
    let store = Store::connect(database).await?;
    let areas: BTreeMap<String, Vec<String>> = store
        .flood_setup()
        .await?
        .areas
        .into_iter()
        .map(|a| (a.key, a.sensors))
        .collect();
    let crossings: Vec<ObservedCrossing> = store
        .up_crossings(from, to)
        .await?
        .into_iter()
        .map(|(sensor, severity, at)| ObservedCrossing {
            sensor,
            severity: severity.level(),
            at,
        })
        .collect();
    let events: Vec<IssuedEvent> = store
        .events_between(from, to)
        .await?
        .into_iter()
        .map(|e| IssuedEvent {
            area: e.area_key,
            kind: e.kind.name().to_owned(),
            severity: e.severity.map(|s| s.level()),
            at: e.at,
        })
        .collect();
    Ok(verification::verify(&areas, &crossings, &events, grace, to))
}

pub async fn run(database: &DatabaseConfig, args: &VerifyArgs) -> anyhow::Result<()> {
    let (from, to, grace) = args.parse()?;
    let scores = scores(database, from, to, grace).await?;
    println!("warning verification {from} to {to} (grace {})", args.grace);
    println!(
        "{:<24} {:<8} {:>5} {:>7} {:>12} {:>9} {:>15}",
        "area", "severity", "hits", "misses", "false alarms", "hit rate", "mean lead (min)"
    );
    for ((area, severity), score) in &scores {
        let name =
            tidemark_model::warning::Severity::from_level(*severity).map_or("?", |s| s.name());
        println!(
            "{:<24} {:<8} {:>5} {:>7} {:>12} {:>9} {:>15}",
            area,
            name,
            score.hits,
            score.misses,
            score.false_alarms,
            score
                .hit_rate()
                .map_or("-".into(), |r| format!("{:.0} %", r * 100.0)),
            score
                .mean_lead_minutes()
                .map_or("-".into(), |m| format!("{m:.0}")),
        );
    }
    if scores.is_empty() {
        println!("no crossings and no warnings in the period");
    }
    Ok(())
}
