//! The shipped scenarios, run through the engine without a broker: they parse, they are
//! deterministic, and their processes do what the physics says.

// Tests say what they expect by unwrapping: a failure is the test failing.
#![allow(clippy::unwrap_used)]

use chrono::{DateTime, TimeZone, Utc};
use std::collections::BTreeMap;
use std::path::PathBuf;
use tidemark_model::time::{to_local, DENMARK_STANDARD_HOURS};
use tidemark_model::wire::{decode, Limits};
use tidemark_sensors_sim::engine::{Engine, Publication};
use tidemark_sensors_sim::scenario::{self, Faults, Scenario};

fn folder() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../config/scenarios")
}

fn load(name: &str) -> Scenario {
    Scenario::from_file(&folder().join(format!("{name}.toml"))).unwrap()
}

fn without_faults(mut scenario: Scenario) -> Scenario {
    for device in &mut scenario.devices {
        device.faults = Faults::default();
    }
    scenario
}

fn start() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 12, 0, 0, 0).unwrap()
}

fn run(scenario: &Scenario, seed: u64) -> Vec<Publication> {
    let mut engine = Engine::new(scenario, seed, start());
    engine.advance(start() + chrono::Duration::from_std(scenario.duration).unwrap())
}

/// Every reading of every well-formed message, by sensor, in time order.
fn series(publications: &[Publication]) -> BTreeMap<String, Vec<(DateTime<Utc>, f64)>> {
    let mut out: BTreeMap<String, Vec<(DateTime<Utc>, f64)>> = BTreeMap::new();
    for publication in publications.iter().filter(|p| !p.malformed && !p.duplicate) {
        for entry in decode(&publication.payload, Limits::default()).unwrap() {
            let reading = entry.unwrap();
            out.entry(reading.sensor.to_string())
                .or_default()
                .push((reading.ts, reading.value));
        }
    }
    out
}

fn peak_time(points: &[(DateTime<Utc>, f64)]) -> DateTime<Utc> {
    points.iter().max_by(|a, b| a.1.total_cmp(&b.1)).unwrap().0
}

#[test]
fn every_shipped_scenario_parses_and_runs() {
    let names = scenario::list(&folder());
    for expected in ["baseline", "city", "cloudburst", "storm-surge"] {
        assert!(
            names.contains(&expected.to_owned()),
            "{expected} in {names:?}"
        );
    }
    for name in names {
        let scenario = load(&name);
        let publications = run(&scenario, scenario.seed);
        assert!(!publications.is_empty(), "{name} publishes");
        let readings: usize = publications
            .iter()
            .filter(|p| !p.duplicate)
            .map(|p| p.readings)
            .sum();
        let mut engine = Engine::new(&scenario, scenario.seed, start());
        engine.advance(start() + chrono::Duration::from_std(scenario.duration).unwrap());
        assert_eq!(
            engine.report().readings,
            readings as u64,
            "{name}: the report counts what was sent"
        );
        // Every well-formed message decodes, and every value is within its physical range.
        series(&publications);
    }
}

#[test]
fn the_same_seed_gives_the_same_readings() {
    let scenario = load("cloudburst");
    assert_eq!(run(&scenario, 7), run(&scenario, 7));
    assert_ne!(run(&scenario, 7), run(&scenario, 8));
}

#[test]
fn a_cloudburst_raises_the_sewer_then_the_river_upstream_then_downstream() {
    let scenario = without_faults(load("cloudburst"));
    let series = series(&run(&scenario, 1));
    let rain = &series["aarhus-viby.rainfall"];
    // More than 15 mm in 30 minutes (six 5-minute readings) somewhere in the run.
    let worst_half_hour = rain
        .windows(6)
        .map(|w| w.iter().map(|p| p.1).sum::<f64>())
        .fold(0.0, f64::max);
    assert!(worst_half_hour > 15.0, "{worst_half_hour} mm in 30 min");
    let storm = start() + chrono::Duration::hours(6);
    let sewer = peak_time(&series["aarhus-c.sewer_level"]);
    let upstream = peak_time(&series["aarhus-aa-aarslev.level"]);
    let downstream = peak_time(&series["aarhus-aa-city.level"]);
    assert!(
        sewer > storm && sewer < upstream,
        "sewer {sewer}, upstream {upstream}"
    );
    let lag = (downstream - upstream).num_minutes();
    assert!(
        (100..=160).contains(&lag),
        "the wave takes about the 2 h travel time: {lag} min"
    );
    let upstream_rise = series["aarhus-aa-aarslev.level"]
        .iter()
        .map(|p| p.1)
        .fold(0.0, f64::max)
        - 0.85;
    assert!(
        upstream_rise > 0.3,
        "the river rises markedly: {upstream_rise} m"
    );
}

#[test]
fn a_leak_raises_the_night_minimum() {
    let scenario = without_faults(load("city"));
    let series = series(&run(&scenario, 3));
    let night_minimum = |points: &[(DateTime<Utc>, f64)], night: u32| {
        points
            .iter()
            .filter(|(ts, _)| {
                let local = to_local(*ts, DENMARK_STANDARD_HOURS);
                let day =
                    (local.date() - to_local(start(), DENMARK_STANDARD_HOURS).date()).num_days();
                day == i64::from(night) && (2..4).contains(&chrono::Timelike::hour(&local))
            })
            .map(|p| p.1)
            .fold(f64::INFINITY, f64::min)
    };
    let bolbro = &series["odense-bolbro.water_flow"];
    let vollsmose = &series["odense-vollsmose.water_flow"];
    let (before, after) = (night_minimum(bolbro, 1), night_minimum(bolbro, 4));
    assert!(
        after - before > 1.5,
        "the leak (2.5 l/s from hour 50) shows at night: {before} -> {after}"
    );
    let (before, after) = (night_minimum(vollsmose, 1), night_minimum(vollsmose, 4));
    assert!(
        (after - before).abs() < 1.5,
        "no leak, no rise: {before} -> {after}"
    );
}

#[test]
fn a_collection_round_empties_a_container_and_one_overflows() {
    let scenario = without_faults(load("city"));
    let series = series(&run(&scenario, 5));
    let residual = &series["banegaard-residual.fill_level"];
    let drops = residual
        .windows(2)
        .filter(|w| w[0].1 > 40.0 && w[1].1 < 5.0)
        .count();
    assert!(
        drops >= 2,
        "collections every 48 h empty the container: {drops}"
    );
    let food = &series["banegaard-food.fill_level"];
    assert!(
        food.iter().any(|p| p.1 > 100.0),
        "the food container overflows between rounds"
    );
    let weights = &series["banegaard-residual.weight"];
    assert!(weights
        .iter()
        .all(|p| p.1 >= 0.0 && p.1 <= 2500.0 * 0.12 * 1.2 + 1e-9));
}

#[test]
fn a_storm_surge_reaches_its_height() {
    let scenario = without_faults(load("storm-surge"));
    let series = series(&run(&scenario, 2));
    let aabenraa = &series["aabenraa-havn.sea_level"];
    let peak = aabenraa.iter().map(|p| p.1).fold(f64::MIN, f64::max);
    assert!((1.65..2.1).contains(&peak), "{peak}");
    let when = peak_time(aabenraa) - start();
    assert!((22..=26).contains(&when.num_hours()), "{when}");
}

#[test]
fn faults_are_injected_and_counted() {
    let scenario = load("cloudburst");
    let mut engine = Engine::new(&scenario, scenario.seed, start());
    let publications = engine.advance(start() + chrono::Duration::days(4));
    let report = engine.report();
    assert!(
        report.malformed > 0 && report.duplicates > 0 && report.dropped > 0,
        "{report:?}"
    );
    assert!(report.spikes > 0 && report.stuck > 0, "{report:?}");
    let malformed: Vec<&Publication> = publications.iter().filter(|p| p.malformed).collect();
    assert_eq!(malformed.len() as u64, report.malformed);
    assert!(malformed
        .iter()
        .all(|p| decode(&p.payload, Limits::default()).is_err()));
    let distinct: std::collections::HashSet<&Vec<u8>> =
        malformed.iter().map(|p| &p.payload).collect();
    assert_eq!(
        distinct.len(),
        malformed.len(),
        "each malformed payload is distinct"
    );
    // The skewed clock shows in the timestamps: 40 s behind.
    let city = series(&publications)["aarhus-aa-city.level"][0].0;
    assert_eq!(chrono::Timelike::second(&city), 20);
}
