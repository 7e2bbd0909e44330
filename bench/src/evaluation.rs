//! `tidemark-bench evaluation`: what one area's evaluation costs in memory, apart from the
//! database, the broker and the other stages: the part of a warning's latency that grows with
//! the look-back and with the number of areas evaluated at once.
//!
//! The area is the analytics benchmark's: a water-level gauge whose thresholds switch on every
//! reading, with a history of quiet 10-minute readings (and, with `--rain-gauges`, a rain gauge
//! with light showers), up to now. It is evaluated over and over on one thread, in rounds, each
//! evaluation timed on its own. Before each, every gauge gets a new reading 10 minutes after its
//! last (the level gauge's above and below its thresholds in turn, as the analytics benchmark's
//! triggers are), and the look-back moves on with them. Each evaluation works its timeline out
//! anew from the readings, or with `--carry-over` goes on from what the one before carried over,
//! as the analytics runner does.

use crate::analytics::{shower, tide};
use crate::ingest::{percentile, process_cpu_seconds, spread};
use chrono::{DateTime, Duration, Utc};
use std::time::Instant;
use tidemark_analytics::area::forecast::ForecastUse;
use tidemark_analytics::area::{self, AreaInput, LevelSensor, RainSensor};
use tidemark_analytics::level::LevelRule;
use tidemark_analytics::quality::QcRules;
use tidemark_analytics::rain;
use tidemark_analytics::series::Sample;

#[derive(Debug, Clone, clap::Args)]
pub(crate) struct EvaluationBenchArgs {
    /// Each gauge's 10-minute readings before now.
    #[arg(long, default_value = "13d")]
    pub history: String,
    /// Gives the area a rain gauge as well, as `tidemark-bench analytics --rain-gauges` does.
    #[arg(long)]
    pub rain_gauges: bool,
    /// Evaluations per round.
    #[arg(long, default_value_t = 2_000)]
    pub evaluations: usize,
    /// Rounds.
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Each evaluation goes on from what the one before carried over, rather than working the
    /// timeline out anew from the readings.
    #[arg(long)]
    pub carry_over: bool,
}

pub(crate) fn evaluation(args: EvaluationBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.evaluations > 0 && args.rounds > 0,
        "--evaluations and --rounds must be positive"
    );
    let history = tidemark_model::duration::parse(&args.history)?;
    let readings = (history.as_secs() / 600) as i64;
    // Microseconds, as the database keeps them.
    let now = Utc::now();
    let now = DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap_or(now);
    let series = |value: fn(i64) -> f64| -> Vec<Sample> {
        (1..=readings)
            .rev()
            .map(|i| Sample::good(now - Duration::minutes(10 * i), value(i)))
            .collect()
    };
    let mut input = AreaInput {
        key: "bench-area".into(),
        levels: vec![LevelSensor {
            key: "bench-gauge.level".into(),
            // The analytics benchmark's thresholds (`analytics::register`).
            rule: LevelRule {
                thresholds: [1.0, 1.5, 2.0],
                falling: false,
                persistence: Duration::zero(),
                min_readings: 1,
                hysteresis: 0.0,
                hold: Duration::zero(),
            },
            qc: QcRules {
                spike_floor: 100.0,
                plausible: (-10.0, 10.0),
                ..QcRules::default()
            },
            rate_window: Duration::hours(1),
            lead_time: Duration::zero(),
            rate_alert: None,
            expected_interval: Duration::hours(1),
            samples: series(tide),
            last_received: Some(now),
        }],
        rains: if args.rain_gauges {
            vec![RainSensor {
                key: "bench-gauge.rain".into(),
                rules: rain::dmi_rules(),
                hold: Duration::hours(1),
                samples: series(shower),
            }]
        } else {
            Vec::new()
        },
        upstream: Vec::new(),
        forecasts: Vec::new(),
        forecast_use: ForecastUse {
            horizon: Duration::hours(24),
            max_age: Duration::hours(6),
            until: now,
        },
        stale_after_intervals: 3,
    };
    println!(
        "tidemark-bench evaluation: one area, {} of 10-minute readings ({readings} a gauge){}, {} evaluations x {} rounds on one thread, {}",
        args.history,
        if args.rain_gauges { ", a level and a rain gauge" } else { ", a level gauge" },
        args.evaluations,
        args.rounds,
        if args.carry_over { "each going on from the one before" } else { "each anew" },
    );
    let look_back = Duration::minutes(10 * readings);
    let mut carried = area::Progress::new();
    let mut next = 0i64;
    let (mut p50s, mut p99s, mut cpus) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=args.rounds {
        let mut times = Vec::with_capacity(args.evaluations);
        let cpu_before = process_cpu_seconds(std::process::id());
        let mut steps = 0;
        for _ in 0..args.evaluations {
            // A new reading for each gauge, and the look-back moved on (as the kept readings
            // are), outside the time measured.
            next += 1;
            let now = now + Duration::minutes(10 * next);
            let level = &mut input.levels[0].samples;
            level.push(Sample::good(now, if next % 2 == 0 { 2.5 } else { 0.2 }));
            let from = now - look_back;
            let old = level.partition_point(|s| s.ts < from);
            level.drain(..old);
            input.levels[0].last_received = Some(now);
            for rain in &mut input.rains {
                rain.samples.push(Sample::good(now, shower(next)));
                let old = rain.samples.partition_point(|s| s.ts < from);
                rain.samples.drain(..old);
            }
            let started = Instant::now();
            let evaluation = if args.carry_over {
                area::evaluate_carried(&input, now, from, &mut carried)
            } else {
                area::evaluate(&input, now)
            };
            times.push(started.elapsed().as_secs_f64() * 1e3);
            steps += evaluation.steps.len();
        }
        let cpu = process_cpu_seconds(std::process::id()) - cpu_before;
        times.sort_by(f64::total_cmp);
        let (p50, p99) = (percentile(&times, 0.50), percentile(&times, 0.99));
        let cpu_ms = cpu * 1e3 / args.evaluations as f64;
        println!(
            "round {round}: p50 {p50:.3} ms, p99 {p99:.3} ms an evaluation; CPU {cpu_ms:.3} ms an evaluation ({} timeline steps)",
            steps / args.evaluations
        );
        p50s.push(p50);
        p99s.push(p99);
        cpus.push(cpu_ms);
    }
    println!(
        "p50: median {}; p99: median {}; CPU an evaluation: median {}",
        spread(&p50s, "ms", 3),
        spread(&p99s, "ms", 3),
        spread(&cpus, "ms", 3)
    );
    Ok(())
}
