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
            severity,
            at,
        })
        .collect();
    let events: Vec<IssuedEvent> = store
        .events_between(from, to)
        .await?
        .into_iter()
        .map(|e| IssuedEvent {
            area: e.area_key,
            kind: e.kind,
            severity: e.severity,
            at: e.at,
        })
        .collect();
    Ok(verification::verify(&areas, &crossings, &events, grace, to))
}

pub async fn run(database: &DatabaseConfig, args: &VerifyArgs) -> anyhow::Result<()> {
    let from = instant(&args.from, "from")?;
    let to = match &args.to {
        Some(raw) => instant(raw, "to")?,
        None => Utc::now(),
    };
    let grace = chrono::Duration::from_std(tidemark_model::duration::parse(&args.grace)?)?;
    let scores = scores(database, from, to, grace).await?;
    println!("warning verification {from} to {to} (grace {})", args.grace);
    println!(
        "{:<24} {:<8} {:>5} {:>7} {:>12} {:>9} {:>15}",
        "area", "severity", "hits", "misses", "false alarms", "hit rate", "mean lead (min)"
    );
    for ((area, severity), score) in &scores {
        let name = ["", "alert", "warning", "severe"][*severity as usize];
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
