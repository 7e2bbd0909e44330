//! `tidemark import FILE --mapping MAPPING`: a CSV or Parquet file of readings through ingest's
//! checks and batch write, with a progress line on long files.

use anyhow::Context;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tidemark_ingest::import::{self, Mapping, Options, Position, Summary};
use tidemark_model::validate::TimeRules;
use tidemark_store::Store;

use crate::config::Config;

#[derive(Debug, Clone, clap::Args)]
pub struct ImportArgs {
    /// The CSV or Parquet file.
    pub file: PathBuf,
    /// The mapping of the file's columns to sensor, time, value, unit and quality (TOML; see the
    /// README's "Importing files").
    #[arg(long)]
    pub mapping: PathBuf,
    /// Check every row and report, writing nothing.
    #[arg(long)]
    pub dry_run: bool,
}

impl ImportArgs {
    /// The mapping, read and checked: an error here is a usage error, found before anything
    /// connects.
    pub fn parse(&self) -> anyhow::Result<Mapping> {
        let text = std::fs::read_to_string(&self.mapping)
            .with_context(|| format!("cannot read {}", self.mapping.display()))?;
        let mapping = Mapping::parse(&text)
            .map_err(|e| anyhow::anyhow!("{}: {e}", self.mapping.display()))?;
        import::format_of(&self.file, &mapping).map_err(anyhow::Error::msg)?;
        Ok(mapping)
    }
}

/// A progress line on standard error: redrawn in place on a terminal, every ten seconds
/// otherwise (a log).
struct ProgressLine {
    started: Instant,
    shown: Option<Instant>,
    terminal: bool,
}

impl ProgressLine {
    fn show(&mut self, position: Position, summary: &Summary) {
        let every = if self.terminal {
            Duration::from_millis(200)
        } else {
            Duration::from_secs(10)
        };
        if self.shown.is_some_and(|at| at.elapsed() < every) {
            return;
        }
        self.shown = Some(Instant::now());
        let share = if position.total > 0 {
            (position.done as f64 / position.total as f64 * 100.0).min(100.0)
        } else {
            0.0
        };
        let seconds = self.started.elapsed().as_secs_f64().max(1e-3);
        let width = 30;
        let filled = ((share / 100.0) * width as f64).round() as usize;
        let line = format!(
            "[{}{}] {share:5.1} %  {} rows  {:.0} rows/s  {} rejected",
            "#".repeat(filled),
            "-".repeat(width - filled),
            summary.rows,
            summary.rows as f64 / seconds,
            summary.rejected + summary.conflicts,
        );
        let mut err = std::io::stderr().lock();
        if self.terminal {
            let _ = write!(err, "\r{line}");
        } else {
            let _ = writeln!(err, "{line}");
        }
        let _ = err.flush();
    }
}

pub async fn run(config: &Config, args: &ImportArgs) -> anyhow::Result<Summary> {
    let mapping = args.parse()?;
    let store = Store::connect(&config.database)
        .await
        .with_context(|| format!("connecting to {}", config.database.url))?;
    let options = Options {
        dry_run: args.dry_run,
        batch: 10_000,
        time_rules: TimeRules {
            future_tolerance: config.ingest.future_tolerance,
            // History of any age, but none that retention would drop at once.
            max_age: config.database.retention.unwrap_or(Duration::MAX),
        },
    };
    let mut line = ProgressLine {
        started: Instant::now(),
        shown: None,
        terminal: std::io::stderr().is_terminal(),
    };
    let summary = import::import(
        &store,
        &args.file,
        &mapping,
        options,
        |position, summary| line.show(position, summary),
    )
    .await?;
    if line.terminal && line.shown.is_some() {
        eprintln!();
    }
    Ok(summary)
}
