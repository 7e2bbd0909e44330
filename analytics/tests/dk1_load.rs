//! The utility statistics on a real year: West Denmark's hourly load in 2019
//! (`tests/fixtures/dk1-load-2019`), checked against figures computed here from the CSV itself.

// Tests say what they expect by unwrapping: a failure is the test failing.
#![allow(clippy::unwrap_used)]

use chrono::{DateTime, NaiveDateTime, Utc};
use tidemark_analytics::quality::{check, QcRules};
use tidemark_analytics::series::Sample;
use tidemark_analytics::utility::{duration_point, load_duration, mean, peak};

/// (time, value) of one series of the file.
fn series(item: &str) -> Vec<(DateTime<Utc>, f64)> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/dk1-load-2019/load_hourly.csv"
    );
    let text = std::fs::read_to_string(path).expect("the DK1 fixture");
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(',').collect();
            (fields[1] == item).then(|| {
                let ts = NaiveDateTime::parse_from_str(fields[0], "%Y-%m-%d %H:%M:%S")
                    .unwrap()
                    .and_utc();
                (ts, fields[4].parse::<f64>().unwrap())
            })
        })
        .collect()
}

fn samples(rows: &[(DateTime<Utc>, f64)]) -> Vec<Sample> {
    rows.iter().map(|(ts, v)| Sample::good(*ts, *v)).collect()
}

#[test]
fn the_2019_load_peak_mean_and_duration_curve() {
    let rows = series("Load Actual");
    assert_eq!(rows.len(), 8760);
    let actual = samples(&rows);
    let top = peak(&actual).unwrap();
    assert_eq!(top.value, 3424.0);
    let expected_at = rows.iter().find(|(_, v)| *v == 3424.0).unwrap().0;
    assert_eq!(top.at, expected_at);
    assert_eq!(mean(&actual).unwrap().round(), 2327.0);

    // The curve is the year's values from highest to lowest.
    let mut sorted: Vec<f64> = rows.iter().map(|(_, v)| *v).collect();
    sorted.sort_by(|a, b| b.partial_cmp(a).unwrap());
    let curve = load_duration(&actual);
    assert_eq!(curve, sorted);
    assert_eq!(curve.first(), Some(&3424.0));
    assert_eq!(curve.last(), Some(&1411.0));
    // The load exceeded for half the year is the median hour.
    assert_eq!(duration_point(&curve, 0.5), Some(sorted[4379]));
}

#[test]
fn the_forecasts_suspect_zeros_are_flagged_not_averaged_in() {
    let rows = series("Load Forecast");
    assert_eq!(rows.len(), 8760);
    let mut forecast = samples(&rows);
    // A load forecast for a whole bidding zone is never below 500 MW, and its hour-to-hour
    // swings reach several hundred MW (the daily peaks): only a jump of 1,000 MW off its
    // neighbours is a spike.
    let rules = QcRules {
        plausible: (500.0, 10_000.0),
        spike_floor: 1_000.0,
        stuck_run: 0,
        ..QcRules::default()
    };
    let flags = check(&forecast, &rules);
    for (sample, flag) in forecast.iter_mut().zip(flags) {
        sample.quality = flag;
    }
    let zeros = rows.iter().filter(|(_, v)| *v == 0.0).count();
    assert!(zeros > 0, "the data set's suspect zeros");
    let out_of_range = forecast
        .iter()
        .filter(|s| s.quality.contains(tidemark_model::Quality::OUT_OF_RANGE))
        .count();
    assert_eq!(
        out_of_range,
        rows.iter().filter(|(_, v)| *v < 500.0).count()
    );
    assert!(out_of_range >= zeros);
    // The mean leaves every flagged hour out.
    let kept: Vec<f64> = forecast
        .iter()
        .filter(|s| s.quality.is_usable())
        .map(|s| s.value)
        .collect();
    let expected = kept.iter().sum::<f64>() / kept.len() as f64;
    let got = mean(&forecast).unwrap();
    assert!((got - expected).abs() < 1e-9);
    // The quality checks flag exactly the data set's suspect hours: the two zeros, and one
    // forecast of 4,952 MW in a year whose actual load never passed 3,424 MW.
    let flagged: Vec<(String, f64)> = forecast
        .iter()
        .filter(|s| !s.quality.is_usable())
        .map(|s| (s.ts.format("%Y-%m-%d %H:%M").to_string(), s.value))
        .collect();
    assert_eq!(
        flagged,
        [
            ("2019-05-01 15:00".to_owned(), 0.0),
            ("2019-05-01 16:00".to_owned(), 0.0),
            ("2019-11-04 07:00".to_owned(), 4952.0),
        ]
    );
    assert!(peak(&forecast).unwrap().value < 4952.0);
    assert!(load_duration(&forecast).iter().all(|v| *v >= 500.0));
}
