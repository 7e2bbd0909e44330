//! `tidemark verify`: how the warnings of a period fared against the flood events the gauges
//! measured (`tidemark_model::verification` says how events are found and matched).

use anyhow::Context;
use chrono::{DateTime, Duration, Utc};
use std::collections::BTreeMap;
use tidemark_model::verification::{score_area, Score, Tally};
use tidemark_model::warning::Severity;
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

/// Scores per (area, severity) for a period, from the readings and the recorded warnings.
pub async fn scores(
    database: &DatabaseConfig,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    grace: Duration,
) -> anyhow::Result<BTreeMap<(String, Severity), Score>> {
    anyhow::ensure!(from < to, "the period must start before it ends");
    let store = Store::connect(database).await?;
    let mut scores = BTreeMap::new();
    for area in store.verification_records(from, to, None).await? {
        for (severity, score) in score_area(&area.sensors, &area.events, grace, to) {
            scores.insert((area.key.clone(), severity), score);
        }
    }
    Ok(scores)
}

pub async fn run(database: &DatabaseConfig, args: &VerifyArgs) -> anyhow::Result<()> {
    let (from, to, grace) = args.parse()?;
    let scores = scores(database, from, to, grace).await?;
    println!("warning verification {from} to {to} (grace {})", args.grace);
    println!(
        "{:<24} {:<8} {:>5} {:>7} {:>12} {:>15}",
        "area", "severity", "hits", "misses", "false alarms", "mean lead (min)"
    );
    let mut total = Tally::default();
    for ((area, severity), score) in &scores {
        let tally = score.tally();
        total = total + tally;
        println!(
            "{:<24} {:<8} {:>5} {:>7} {:>12} {:>15}",
            area,
            severity.name(),
            tally.hits,
            tally.misses,
            tally.false_alarms,
            score
                .mean_lead_minutes()
                .map_or("-".into(), |m| format!("{m:.0}")),
        );
    }
    if scores.is_empty() {
        println!("no flood events and no warnings in the period");
    } else {
        let rate = |r: Option<f64>| r.map_or("-".into(), |r| format!("{r:.2}"));
        println!(
            "probability of detection {}, false alarm ratio {}, critical success index {}",
            rate(total.probability_of_detection()),
            rate(total.false_alarm_ratio()),
            rate(total.critical_success_index()),
        );
    }
    Ok(())
}
