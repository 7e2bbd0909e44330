//! `tidemark`: a thin CLI over the stages' `run` functions.

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::process::ExitCode;
use tidemark::config::Config;
use tokio_util::sync::CancellationToken;

/// Tidemark: MQTT sensor readings into PostgreSQL/TimescaleDB, flood warnings and open data.
#[derive(Parser)]
#[command(
    version,
    about,
    long_about = None,
    after_help = "The benchmarks are a binary of their own: tidemark-bench (cargo run --release -p tidemark-bench -- --help)."
)]
struct Cli {
    #[command(flatten)]
    files: tidemark::config::ConfigArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run every stage in one process (migrates first).
    Run,
    /// Run the ingest stage alone (serves /metrics on ingest.metrics_listen).
    Ingest,
    /// Run the HTTP API and the delivery of warnings alone (no ingest, no analytics).
    Api,
    /// Run the analytics stage alone: flood risk, quality checks, circular and utility
    /// statistics (serves /metrics on analytics.metrics_listen). Several may share a database.
    Analytics,
    /// Run the delivery of warnings alone: webhooks and MQTT alerts from the outbox (serves
    /// /metrics on delivery.metrics_listen). Several may share a database.
    Delivery,
    /// Manage API keys (shown once at creation; only a hash is stored).
    Keys {
        #[command(subcommand)]
        what: tidemark::keys::KeysCommand,
    },
    /// Create or upgrade the database schema and load the reference and flood data, then exit.
    Migrate,
    /// Run simulated devices from a scenario file, publishing over MQTT.
    Sim(tidemark::sim::SimArgs),
    /// Publish a recorded data set over MQTT as its devices would have.
    Replay(tidemark::sim::ReplayArgs),
    /// Score the warnings of a period against the threshold crossings the gauges measured.
    Verify(tidemark::verify::VerifyArgs),
    /// Import readings from a CSV or Parquet file through ingest's checks and write, exactly
    /// once however often it runs; refused rows are kept with their reasons.
    Import(tidemark::import::ImportArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tidemark::app::init_logging();
    let config = match cli.files.load() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("tidemark: {error}");
            return ExitCode::from(2);
        }
    };
    // A command's own arguments that cannot be used are a usage error too, like a bad
    // configuration: exit code 2, before anything connects.
    if let Command::Verify(args) = &cli.command {
        if let Err(error) = args.parse() {
            eprintln!("tidemark: {error:#}");
            return ExitCode::from(2);
        }
    }
    if let Command::Import(args) = &cli.command {
        if let Err(error) = args.parse() {
            eprintln!("tidemark: {error:#}");
            return ExitCode::from(2);
        }
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("tidemark: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(execute(cli.command, config, &cli.files.config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("tidemark: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn execute(
    command: Command,
    config: Config,
    config_file: &std::path::Path,
) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    tokio::spawn(tidemark::app::cancel_on_signal(shutdown.clone()));
    match command {
        Command::Run => tidemark::app::run(&config, shutdown).await,
        Command::Ingest => tidemark::app::ingest(&config, shutdown).await,
        Command::Api => tidemark::app::api(&config, shutdown).await,
        Command::Analytics => tidemark::app::analytics(&config, shutdown).await,
        Command::Delivery => tidemark::app::delivery(&config, shutdown).await,
        Command::Keys { what } => tidemark::keys::run(&config.database, what).await,
        Command::Import(args) => {
            let s = tidemark::import::run(&config, &args).await?;
            println!(
                "{}: {} rows, {} readings ({} stored, {} already stored, {} conflicting), \
                 {} refused, {} empty cells{}",
                args.file.display(),
                s.rows,
                s.readings,
                s.stored,
                s.duplicates,
                s.conflicts,
                s.rejected,
                s.empty,
                if args.dry_run {
                    "; dry run, nothing written"
                } else {
                    ""
                }
            );
            Ok(())
        }
        Command::Migrate => {
            let mode = tidemark::app::migrate(&config)
                .await
                .with_context(|| format!("migrating {}", config.database.url))?;
            println!("database {} migrated; storage: {mode}", config.database.url);
            Ok(())
        }
        Command::Sim(args) => {
            let path = tidemark::sim::scenario_path(config_file, &args.scenario);
            let scenario = tidemark_sensors_sim::scenario::Scenario::from_file(&path)
                .with_context(|| {
                    format!(
                        "scenarios beside the configuration: {}",
                        tidemark::sim::scenario_names(config_file).join(", ")
                    )
                })?;
            let report = tidemark::sim::simulate(
                &config.database,
                &config.mqtt,
                &scenario,
                &args,
                &shutdown,
            )
            .await?;
            println!(
                "scenario {}: {} messages, {} readings, {} malformed, {} duplicates, {} readings dropped, {} spikes, {} stuck",
                scenario.name, report.messages, report.readings, report.malformed, report.duplicates,
                report.dropped, report.spikes, report.stuck
            );
            Ok(())
        }
        Command::Replay(args) => {
            let format = tidemark_sensors_sim::replay::Format::parse(&args.format)
                .map_err(anyhow::Error::msg)?;
            let recording = tidemark_sensors_sim::replay::read(format, &args.file)?;
            let report =
                tidemark::sim::replay(&config.database, &config.mqtt, &recording, &args, &shutdown)
                    .await?;
            println!(
                "replayed {}: {} messages, {} readings, {} forecast issues, timestamps shifted by {} s, {} rows without a value skipped",
                args.file.display(),
                report.messages,
                report.readings,
                report.forecasts,
                report.shift.num_seconds(),
                recording.skipped
            );
            Ok(())
        }
        Command::Verify(args) => tidemark::verify::run(&config.database, &args).await,
    }
}
