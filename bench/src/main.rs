//! `tidemark-bench`: the benchmarks, each against private services it starts itself (a
//! Mosquitto on a free loopback port and a fresh database on the test server), never against the
//! configured ones (`evaluation` needs none). Build with `cargo build --release -p tidemark-bench`.

mod analytics;
mod api;
mod delivery;
mod evaluation;
mod forecasts;
mod ingest;

use clap::{Parser, Subcommand};
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

/// Measure Tidemark's throughput and latency.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    /// The benchmarks take their stage settings from the configuration and replace the addresses
    /// of the database and the broker with their own.
    #[command(flatten)]
    files: tidemark::config::ConfigArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Publish readings through a private broker into a fresh database and report readings/s,
    /// publish-to-commit latency and ingest RSS, beside the broker's and the database's ceilings.
    Ingest(ingest::IngestBenchArgs),
    /// Time from the commit of a threshold-crossing reading to the commit of its warning event,
    /// with ingest loaded at full speed.
    Analytics(analytics::AnalyticsBenchArgs),
    /// What one flood area's evaluation costs on one thread, apart from the database and the
    /// other stages, with a look-back of history.
    Evaluation(evaluation::EvaluationBenchArgs),
    /// Time from a forecast issue's commit to the commit of the warning event it changes, with
    /// forecasts for many sensors issued in rounds while ingest is loaded.
    Forecasts(forecasts::ForecastBenchArgs),
    /// Time from a warning event's commit to its receipt by a webhook receiver, by many
    /// Server-Sent Events clients and by an MQTT subscriber.
    Delivery(delivery::DeliveryBenchArgs),
    /// Latency and throughput of the open data API over a large table (50 million readings by
    /// default), beside the database's own time for the same queries.
    Api(api::ApiBenchArgs),
    /// The ingest stage exactly as `tidemark ingest` runs it: the process the ingest benchmark
    /// measures.
    #[command(hide = true)]
    IngestStage,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tidemark::app::init_logging();
    let config = match cli.files.load() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("tidemark-bench: {error}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("tidemark-bench: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let shutdown = CancellationToken::new();
    let result = runtime.block_on(async {
        tokio::spawn(tidemark::app::cancel_on_signal(shutdown.clone()));
        match cli.command {
            Command::Ingest(args) => ingest::ingest(&config, &cli.files.config, args).await,
            Command::Analytics(args) => analytics::analytics(&config, args).await,
            Command::Evaluation(args) => evaluation::evaluation(args),
            Command::Delivery(args) => delivery::delivery(&config, args).await,
            Command::Forecasts(args) => forecasts::forecasts(&config, args).await,
            Command::Api(args) => api::api(&config, args).await,
            Command::IngestStage => tidemark::app::ingest(&config, shutdown).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("tidemark-bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}
