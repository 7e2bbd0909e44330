//! The flood-risk core on the recorded Baltic storm surge of October 2023, without a database: the
//! numbers a warning will be raised from.

use crate::support::repo;
use chrono::{DateTime, Duration, TimeZone, Utc};
use tidemark_analytics::freshness::is_stale;
use tidemark_analytics::level::{LevelRule, LevelState, Severity};
use tidemark_analytics::quality::{usable, QcRules};
use tidemark_analytics::series::Sample;
use tidemark_model::Quality;
use tidemark_sensors_sim::replay::{read, Format};

fn gauge(sensor: &str) -> Vec<Sample> {
    let file = repo("tests/fixtures/baltic-surge-2023/sea_level_10min.csv");
    read(Format::BalticSurge, &file)
        .unwrap()
        .points
        .into_iter()
        .filter(|p| p.sensor == sensor)
        .map(|p| Sample {
            ts: p.ts,
            value: p.value,
            quality: match p.quality {
                None => Quality::GOOD,
                Some("suspect") => Quality::DEVICE_SUSPECT,
                Some(_) => Quality::DEVICE_BAD,
            },
        })
        .collect()
}

/// The German storm-surge classes for the Baltic coast (BSH), metres above mean water: 1.00 storm
/// surge, 1.50 severe, 2.00 very severe; here Alert, Warning and Severe.
fn bsh_rule() -> LevelRule {
    LevelRule {
        thresholds: [1.00, 1.50, 2.00],
        falling: false,
        persistence: Duration::minutes(20),
        min_readings: 1,
        hysteresis: 0.10,
        hold: Duration::hours(1),
    }
}

fn utc(d: u32, h: u32, m: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2023, 10, d, h, m, 0).unwrap()
}

/// Severity after every usable sample.
fn replay(samples: &[Sample], rule: &LevelRule) -> Vec<(DateTime<Utc>, Option<Severity>)> {
    let mut state = LevelState::default();
    usable(samples, &QcRules::default())
        .iter()
        .map(|s| {
            state.observe(rule, s.ts, s.value);
            (s.ts, state.severity)
        })
        .collect()
}

#[test]
fn flensburg_escalates_through_all_three_severities_and_is_lifted_only_after_the_hold() {
    let rule = bsh_rule();
    let samples = gauge("flensburg.sea_level");
    let timeline = replay(&samples, &rule);
    for severity in Severity::ALL {
        let first_at_or_above = samples
            .iter()
            .find(|s| s.value >= rule.threshold(severity))
            .unwrap()
            .ts;
        let raised = timeline
            .iter()
            .find(|(_, s)| *s >= Some(severity))
            .unwrap()
            .0;
        assert!(
            raised <= first_at_or_above + rule.persistence,
            "{} raised at {raised}, first sample at or above at {first_at_or_above}",
            severity.name()
        );
    }
    let at_peak = timeline
        .iter()
        .find(|(ts, _)| *ts == utc(20, 21, 40))
        .unwrap()
        .1;
    assert_eq!(
        at_peak,
        Some(Severity::Severe),
        "in force at the 2.270 m peak"
    );
    // Lifted only after an hour below 0.90 m.
    let lifted = timeline
        .iter()
        .skip_while(|(_, s)| s.is_none())
        .find(|(_, s)| s.is_none())
        .unwrap()
        .0;
    let first_below = samples
        .iter()
        .filter(|s| s.ts > utc(20, 21, 40))
        .find(|s| s.value < 0.90)
        .unwrap()
        .ts;
    assert!(
        lifted >= first_below + rule.hold,
        "lifted {lifted}, first below {first_below}"
    );
    assert!(samples
        .iter()
        .filter(|s| s.ts >= first_below && s.ts <= lifted)
        .all(|s| s.value < 0.90));
}

#[test]
fn kiel_holtenau_never_reaches_severe_and_kappeln_goes_stale_in_force() {
    let kiel = replay(&gauge("kiel-holtenau.sea_level"), &bsh_rule());
    assert!(kiel.iter().any(|(_, s)| *s == Some(Severity::Warning)));
    assert!(
        kiel.iter().all(|(_, s)| *s < Some(Severity::Severe)),
        "peak 1.953 m"
    );

    let kappeln = gauge("kappeln.sea_level");
    let timeline = replay(&kappeln, &bsh_rule());
    let silent_from = utc(20, 12, 20);
    let (last_ts, last_severity) = *timeline
        .iter()
        .take_while(|(ts, _)| *ts <= silent_from)
        .last()
        .unwrap();
    assert_eq!(last_ts, silent_from);
    assert_eq!(
        last_severity,
        Some(Severity::Warning),
        "in force at 1.639 m when the gauge fell silent"
    );
    // Hours later, with no data, it is stale; nothing in the data has lifted it.
    let later = utc(20, 21, 0);
    assert!(is_stale(Some(last_ts), later, Duration::minutes(10), 3));
    assert!(!timeline
        .iter()
        .any(|(ts, _)| *ts > silent_from && *ts < later));
}

#[test]
fn an_injected_spike_flagged_good_by_the_device_raises_nothing_and_is_flagged() {
    let mut samples: Vec<Sample> = gauge("flensburg.sea_level")
        .into_iter()
        .filter(|s| s.ts < utc(18, 0, 0))
        .collect();
    let quiet = replay(&samples, &bsh_rule());
    assert!(
        quiet.iter().all(|(_, s)| s.is_none()),
        "nothing before the surge"
    );
    let spike_at = samples.len() / 2;
    samples[spike_at].value = 16.71;
    let flags = tidemark_analytics::quality::check(&samples, &QcRules::default());
    assert!(flags[spike_at].contains(Quality::SPIKE));
    assert_eq!(
        flags.iter().filter(|q| q.contains(Quality::SPIKE)).count(),
        1
    );
    assert!(
        replay(&samples, &bsh_rule())
            .iter()
            .all(|(_, s)| s.is_none()),
        "the spike raises nothing"
    );
}
