//! `tidemark sim` and `tidemark replay`: register what a scenario or recording needs, then publish
//! it through the broker as its devices would.

use anyhow::Context;
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tidemark_model::broker::BrokerConfig;
use tidemark_model::reference::ReferenceData;
use tidemark_sensors_sim::engine::{Engine, Report};
use tidemark_sensors_sim::forecast::ForecastPlan;
use tidemark_sensors_sim::publish::{self, Fleet, Pace};
use tidemark_sensors_sim::replay::{self, Recording};
use tidemark_sensors_sim::scenario::{self, Scenario};
use tidemark_store::{DatabaseConfig, Store};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, clap::Args)]
pub struct SimArgs {
    /// A scenario name from config/scenarios/ (baseline, cloudburst, storm-surge, city), or a path
    /// to a scenario file.
    #[arg(long)]
    pub scenario: String,
    /// Seed of the random processes and faults; the scenario's own seed by default.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Simulated seconds per wall-clock second: 1 is real time, 600 runs ten minutes a second, 0
    /// runs as fast as the broker takes the messages.
    #[arg(long, default_value_t = 1.0)]
    pub speed: f64,
    /// Simulated time to cover (e.g. 6h, 2d); the scenario's own duration by default.
    #[arg(long)]
    pub duration: Option<String>,
    /// A file of `device:password` lines for brokers that require a login.
    #[arg(long)]
    pub passwords: Option<PathBuf>,
    #[command(flatten)]
    pub forecasts: ForecastArgs,
}

#[derive(Debug, Clone, clap::Args)]
pub struct ReplayArgs {
    /// The recorded data file (for calder, a file or a folder of them).
    pub file: PathBuf,
    /// baltic-surge, calder, edinburgh-bins or dk1-load.
    #[arg(long)]
    pub format: String,
    /// Recorded seconds per wall-clock second: 1 is real time, 0 as fast as the broker takes it.
    #[arg(long, default_value_t = 0.0)]
    pub speed: f64,
    /// Keep the recorded timestamps instead of moving the replay to end now.
    #[arg(long)]
    pub no_shift: bool,
    /// A file of `device:password` lines for brokers that require a login.
    #[arg(long)]
    pub passwords: Option<PathBuf>,
    #[command(flatten)]
    pub forecasts: ForecastArgs,
}

/// Simulated forecasts beside a replay (see the README's Forecasts section for the error model).
#[derive(Debug, Clone, clap::Args)]
pub struct ForecastArgs {
    /// Also issue simulated forecasts of every water and sea level in the recording, from the
    /// recording itself with an error that grows with lead time.
    #[arg(long = "forecasts")]
    pub enabled: bool,
    /// How often a forecast is issued.
    #[arg(long = "forecast-every", default_value = "6h")]
    pub every: String,
    /// How far ahead each forecast runs.
    #[arg(long = "forecast-horizon", default_value = "48h")]
    pub horizon: String,
    /// Seed of the forecast errors.
    #[arg(long = "forecast-seed", default_value_t = 1)]
    pub seed: u64,
    /// The source the forecasts are issued as (registered if new; over MQTT it logs in as this
    /// user, with its password from `--passwords`).
    #[arg(long = "forecast-source", default_value = "sim")]
    pub source: String,
}

impl Default for ForecastArgs {
    fn default() -> Self {
        ForecastArgs {
            enabled: false,
            every: "6h".into(),
            horizon: "48h".into(),
            seed: 1,
            source: "sim".into(),
        }
    }
}

impl ForecastArgs {
    fn plan(&self) -> anyhow::Result<ForecastPlan> {
        let duration = |text: &str, what: &str| -> anyhow::Result<chrono::Duration> {
            let parsed = tidemark_model::duration::parse(text)
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("--forecast-{what} {text:?}"))?;
            anyhow::ensure!(
                !parsed.is_zero(),
                "--forecast-{what} must be more than zero"
            );
            Ok(chrono::Duration::from_std(parsed)?)
        };
        Ok(ForecastPlan {
            every: duration(&self.every, "every")?,
            horizon: duration(&self.horizon, "horizon")?,
            seed: self.seed,
            ..ForecastPlan::default()
        })
    }
}

/// Where a scenario name points: a file as given, or `<config folder>/scenarios/<name>.toml`.
pub fn scenario_path(config_file: &Path, name: &str) -> PathBuf {
    let given = PathBuf::from(name);
    if given.extension().is_some_and(|e| e == "toml") || given.exists() {
        return given;
    }
    config_file
        .parent()
        .unwrap_or(Path::new("."))
        .join("scenarios")
        .join(format!("{name}.toml"))
}

/// The simulated start that makes a run of `duration` at `speed` end now, with no reading stamped
/// after the moment it is published.
pub fn start_for(duration: Duration, speed: f64, now: DateTime<Utc>) -> DateTime<Utc> {
    let span = chrono::Duration::from_std(duration).unwrap_or_default();
    let wall = if speed > 0.0 {
        chrono::Duration::milliseconds((span.num_milliseconds() as f64 / speed) as i64)
    } else {
        chrono::Duration::zero()
    };
    now + wall - span
}

async fn register(database: &DatabaseConfig, reference: &ReferenceData) -> anyhow::Result<()> {
    let store = Store::connect(database)
        .await
        .with_context(|| format!("connecting to {} to register devices", database.url))?;
    store.apply_reference(reference).await?;
    Ok(())
}

fn passwords(path: &Option<PathBuf>) -> anyhow::Result<HashMap<String, String>> {
    match path {
        Some(path) => Ok(publish::read_passwords(&path.display().to_string())?),
        None => Ok(HashMap::new()),
    }
}

/// Runs a scenario: registers it, publishes until its duration is covered or shutdown.
pub async fn simulate(
    database: &DatabaseConfig,
    broker: &BrokerConfig,
    scenario: &Scenario,
    args: &SimArgs,
    shutdown: &CancellationToken,
) -> anyhow::Result<Report> {
    let duration = match &args.duration {
        Some(raw) => tidemark_model::duration::parse(raw)?,
        None => scenario.duration,
    };
    anyhow::ensure!(
        args.speed >= 0.0 && args.speed.is_finite(),
        "--speed must be 0 or more"
    );
    register(database, &scenario.reference()).await?;
    let seed = args.seed.unwrap_or(scenario.seed);
    let start = start_for(duration, args.speed, Utc::now());
    let mut engine = Engine::new(scenario, seed, start);
    let passwords = passwords(&args.passwords)?;
    let mut fleet = Fleet::connect(broker, &engine.device_ids(), &passwords)?;
    tracing::info!(scenario = %scenario.name, seed, %start, speed = args.speed, "simulation started");
    let end = start + chrono::Duration::from_std(duration)?;
    let mut forecasts = Vec::new();
    if args.forecasts.enabled {
        let plan = args.forecasts.plan()?;
        let index =
            add_forecast_source(database, broker, &mut fleet, &args.forecasts, &passwords).await?;
        // The truth the forecasts aim at: the same scenario, seed and start, run ahead.
        let truth = Engine::new(scenario, seed, start).levels_until(end + plan.horizon);
        let mut rng = tidemark_model::random::SeededRng::seed_from_u64(plan.seed);
        for (sensor, series) in truth {
            for issue in tidemark_sensors_sim::forecast::issues(&sensor, &series, &plan, &mut rng) {
                if issue.issued_at > end {
                    continue;
                }
                forecasts.push(issue.publication(index, "m", chrono::Duration::zero()));
            }
        }
        forecasts.sort_by_key(|f| f.at);
    }
    let report = publish::run_simulation(
        &mut engine,
        &mut fleet,
        end,
        Pace { speed: args.speed },
        forecasts,
        shutdown,
    )
    .await?;
    fleet.finish(Duration::from_secs(120)).await?;
    Ok(report)
}

/// Registers the simulated forecasts' source and connects it as one more member of the fleet;
/// returns its index.
async fn add_forecast_source(
    database: &DatabaseConfig,
    broker: &BrokerConfig,
    fleet: &mut Fleet,
    args: &ForecastArgs,
    passwords: &HashMap<String, String>,
) -> anyhow::Result<usize> {
    let source = tidemark_model::DeviceId::parse(&args.source)
        .map_err(anyhow::Error::msg)
        .context("--forecast-source")?;
    Store::connect(database)
        .await?
        .add_forecast_source(source.as_str(), "simulated forecasts")
        .await?;
    Ok(fleet.add_source(
        broker,
        &source,
        passwords.get(source.as_str()).map_or("", String::as_str),
    )?)
}

/// What a replay published.
#[derive(Debug, Clone, Copy)]
pub struct ReplayReport {
    pub messages: u64,
    pub readings: u64,
    /// Simulated forecast issues published.
    pub forecasts: u64,
    pub shift: chrono::Duration,
}

/// Replays a recording: registers it, publishes it paced by `speed`, shifted to end now.
pub async fn replay(
    database: &DatabaseConfig,
    broker: &BrokerConfig,
    recording: &Recording,
    args: &ReplayArgs,
    shutdown: &CancellationToken,
) -> anyhow::Result<ReplayReport> {
    anyhow::ensure!(
        args.speed >= 0.0 && args.speed.is_finite(),
        "--speed must be 0 or more"
    );
    let (first, last) = recording
        .span()
        .context("the recording holds no readings")?;
    let shift = if args.no_shift {
        chrono::Duration::zero()
    } else {
        replay::align_end(first, last, args.speed, Utc::now())
    };
    register(database, &recording.reference).await?;
    let mut messages = recording.messages(shift);
    let readings = messages.iter().map(|m| m.readings as u64).sum();
    let passwords = passwords(&args.passwords)?;
    let mut fleet = Fleet::connect(broker, &recording.devices, &passwords)?;
    let mut forecasts = 0;
    if args.forecasts.enabled {
        let plan = args.forecasts.plan()?;
        let index =
            add_forecast_source(database, broker, &mut fleet, &args.forecasts, &passwords).await?;
        let issued = recording.forecasts(&plan, index, shift);
        forecasts = issued.len() as u64;
        // Each issue after the readings of its time: a forecaster issues from what it has seen.
        messages.extend(issued);
        messages.sort_by_key(|m| (m.at, m.device == index));
    }
    let sent =
        publish::run_timed(messages, &mut fleet, Pace { speed: args.speed }, shutdown).await?;
    fleet.finish(Duration::from_secs(120)).await?;
    Ok(ReplayReport {
        messages: sent,
        readings,
        forecasts,
        shift,
    })
}

/// The names of the scenarios beside the configuration.
pub fn scenario_names(config_file: &Path) -> Vec<String> {
    scenario::list(
        &config_file
            .parent()
            .unwrap_or(Path::new("."))
            .join("scenarios"),
    )
}
