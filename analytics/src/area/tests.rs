//! The area evaluation on hand-made series.

use super::*;
use chrono::TimeZone;

fn start() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 7, 2, 12, 0, 0).unwrap()
}

fn samples(values: &[f64], every_minutes: i64) -> Vec<Sample> {
    values
        .iter()
        .enumerate()
        .map(|(i, v)| Sample::good(start() + Duration::minutes(every_minutes * i as i64), *v))
        .collect()
}

fn gauge(key: &str, values: &[f64]) -> LevelSensor {
    LevelSensor {
        key: key.into(),
        rule: LevelRule {
            thresholds: [1.0, 1.5, 2.0],
            falling: false,
            persistence: Duration::minutes(20),
            min_readings: 1,
            hysteresis: 0.1,
            hold: Duration::minutes(30),
        },
        qc: QcRules::default(),
        rate_window: Duration::hours(1),
        lead_time: Duration::minutes(30),
        rate_alert: None,
        expected_interval: Duration::minutes(10),
        samples: samples(values, 10),
        last_received: None,
    }
}

fn area(levels: Vec<LevelSensor>) -> AreaInput {
    AreaInput {
        key: "a".into(),
        levels,
        rains: vec![],
        upstream: vec![],
        forecasts: Vec::new(),
        forecast_use: super::forecast::ForecastUse::default(),
        stale_after_intervals: 3,
    }
}

fn kinds(events: &[AreaEvent]) -> Vec<(EventKind, Option<Severity>, Option<WarningKind>)> {
    events
        .iter()
        .map(|e| (e.kind, e.level.map(|l| l.severity), e.level.map(|l| l.kind)))
        .collect()
}

use EventKind::*;
use Severity::*;
use WarningKind::*;

#[test]
fn a_steady_rise_is_expected_before_it_is_observed() {
    // 10 cm per 10 minutes from 0.5 m to 1.3 m, then level. At 0.7 m, rising 0.6 m/h, the
    // alert at 1.0 m is 30 minutes away: within the lead time.
    let values: Vec<f64> = (0..24).map(|i| (0.5 + 0.1 * i as f64).min(1.3)).collect();
    let evaluation = evaluate(
        &area(vec![gauge("g", &values)]),
        start() + Duration::minutes(235),
    );
    let events = events(&evaluation, None, None, false);
    assert_eq!(events[0].kind, Raised);
    assert_eq!(events[0].at, start() + Duration::minutes(20));
    assert_eq!(events[0].level.unwrap().kind, Expected);
    let first_observed = events
        .iter()
        .find(|e| e.level.is_some_and(|l| l.kind == Observed))
        .unwrap();
    assert!(events[0].at < first_observed.at, "projection raises early");
    assert_eq!(events[0].trigger.as_ref().unwrap().cause, "projection");
}

#[test]
fn each_gauge_reports_its_level_rate_and_next_crossing() {
    // 1.1 m for 50 minutes (an alert once persistent), then rising 6 cm per 10 minutes.
    let values: Vec<f64> = (0..16)
        .map(|i| 1.1 + 0.06 * (i as f64 - 5.0).max(0.0))
        .collect();
    let evaluation = evaluate(
        &area(vec![gauge("g", &values), gauge("flat", &[0.4; 8])]),
        start() + Duration::minutes(150),
    );
    let rising = &evaluation.trends[0];
    assert_eq!(rising.sensor, "g");
    assert_eq!(rising.at, start() + Duration::minutes(150));
    assert!((rising.value - 1.7).abs() < 1e-9);
    assert_eq!(rising.severity, Some(Warning));
    let rate = rising.rate.unwrap();
    assert!((rate - 0.36).abs() < 1e-9, "6 cm per 10 minutes: {rate}");
    // Above 1.5 m for 30 minutes: a Warning. The next threshold, 2.0 m, is 0.3 m away at
    // 0.36 m/h: 50 minutes.
    let (next, at) = rising.projected.unwrap();
    assert_eq!(next, Severe);
    let off = at - (start() + Duration::minutes(150 + 50));
    assert!(off.num_milliseconds().abs() <= 1, "{at}");
    let flat = &evaluation.trends[1];
    assert_eq!((flat.severity, flat.projected), (None, None));
    assert!(flat.rate.unwrap().abs() < 1e-9);
}

#[test]
fn a_fast_rise_raises_an_expected_alert_below_every_threshold() {
    // 6 cm per 10 minutes (0.36 m/h) from 0.2 m: far below the 1.0 m alert, but fast.
    let values: Vec<f64> = (0..8).map(|i| 0.2 + 0.06 * i as f64).collect();
    let mut sensor = gauge("g", &values);
    sensor.lead_time = Duration::zero();
    let quiet = evaluate(
        &area(vec![gauge("g", &values)]),
        start() + Duration::minutes(75),
    );
    assert!(
        quiet.steps.iter().all(|(_, level, _)| level.is_none()),
        "no rate threshold, no alert"
    );
    sensor.rate_alert = Some(0.3);
    let evaluation = evaluate(&area(vec![sensor]), start() + Duration::minutes(75));
    let events = events(&evaluation, None, None, false);
    assert_eq!(kinds(&events)[0], (Raised, Some(Alert), Some(Expected)));
    assert_eq!(events[0].trigger.as_ref().unwrap().cause, "rate");
    assert_eq!(
        events[0].at,
        start() + Duration::minutes(20),
        "three readings make a trend"
    );
}

#[test]
fn the_highest_station_rules_the_area_and_silence_is_stale_not_clear() {
    let high = gauge("high", &[1.6, 1.6, 1.6, 1.6, 1.6, 1.6]);
    let low = gauge("low", &[1.1, 1.1, 1.1, 1.1, 1.1, 1.1, 1.1, 1.1, 1.1, 1.1]);
    let evaluation = evaluate(&area(vec![high, low]), start() + Duration::hours(2));
    let got = kinds(&events(&evaluation, None, None, false));
    assert_eq!(
        got,
        vec![
            (Raised, Some(Warning), Some(Observed)),
            // "high" stops reporting after 50 minutes; stale after three missed intervals.
            (Stale, Some(Warning), Some(Observed)),
        ]
    );
    let stale_at = events(&evaluation, None, None, false)[1].at;
    assert_eq!(stale_at, start() + Duration::minutes(50 + 30));
}

#[test]
fn a_spike_is_flagged_for_storage_and_raises_nothing() {
    let values = [0.5, 0.52, 0.51, 16.71, 0.53, 0.52, 0.54];
    let evaluation = evaluate(
        &area(vec![gauge("g", &values)]),
        start() + Duration::minutes(60),
    );
    assert!(evaluation.steps.iter().all(|(_, level, _)| level.is_none()));
    assert_eq!(
        evaluation.flags,
        vec![(
            "g".to_owned(),
            start() + Duration::minutes(30),
            Quality::SPIKE
        )]
    );
}

#[test]
fn only_events_after_the_recorded_ones_are_new() {
    let values = [1.1, 1.1, 1.1, 1.1, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5];
    let evaluation = evaluate(
        &area(vec![gauge("g", &values)]),
        start() + Duration::minutes(95),
    );
    let all = events(&evaluation, None, None, false);
    assert_eq!(
        kinds(&all).iter().map(|k| k.0).collect::<Vec<_>>(),
        [Raised, Lifted]
    );
    let raised = all[0].clone();
    let rest = events(&evaluation, Some(raised.at), raised.level, false);
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].kind, Lifted);
    assert!(events(&evaluation, Some(all[1].at), None, false).is_empty());
}

#[test]
fn a_stale_report_made_before_a_burst_arrived_is_corrected() {
    let values = [1.1; 12];
    let evaluation = evaluate(
        &area(vec![gauge("g", &values)]),
        start() + Duration::minutes(115),
    );
    assert!(evaluation.stale.is_empty());
    // Recorded earlier, from the first half: raised, then stale at 12:50 + 30 min.
    let recorded_stale_at = start() + Duration::minutes(80);
    let warning = Some(Level {
        severity: Alert,
        kind: Observed,
    });
    let events = events(&evaluation, Some(recorded_stale_at), warning, true);
    assert_eq!(kinds(&events), vec![(Fresh, Some(Alert), Some(Observed))]);
    assert_eq!(
        events[0].at,
        start() + Duration::minutes(110),
        "at the newest reading"
    );
}

#[test]
fn rain_and_upstream_raise_alerts() {
    let rain = RainSensor {
        key: "r".into(),
        rules: rain::dmi_rules(),
        hold: Duration::hours(1),
        samples: samples(
            &[[0.0, 3.0, 6.0, 6.0, 2.0].as_slice(), &[0.0; 36]].concat(),
            5,
        ),
    };
    let upstream = Upstream {
        sensor: gauge("up", &[1.2, 1.2, 1.2, 1.2]),
        travel_time: Duration::hours(2),
    };
    let input = AreaInput {
        key: "a".into(),
        levels: vec![],
        rains: vec![rain],
        upstream: vec![upstream],
        forecasts: Vec::new(),
        forecast_use: super::forecast::ForecastUse::default(),
        stale_after_intervals: 3,
    };
    let evaluation = evaluate(&input, start() + Duration::hours(3));
    let events = events(&evaluation, None, None, false);
    assert_eq!(
        kinds(&events).iter().map(|k| k.0).collect::<Vec<_>>(),
        [Raised, Lifted, Raised]
    );
    assert_eq!(events[0].trigger.as_ref().unwrap().cause, "rain");
    // 17 mm lies in the 30-minute window until 12:30; the alert holds an hour past that.
    assert_eq!(events[1].at, start() + Duration::minutes(90));
    assert_eq!(
        events[0].at,
        start() + Duration::minutes(20),
        "17 mm in 30 minutes"
    );
    let from_upstream = events
        .iter()
        .find(|e| e.trigger.as_ref().is_some_and(|t| t.cause == "upstream"))
        .unwrap();
    assert_eq!(
        from_upstream.at,
        start() + Duration::minutes(20) + Duration::hours(2)
    );
    assert_eq!(from_upstream.level.unwrap().kind, Expected);
}

#[test]
fn the_rate_at_each_reading_is_the_same_from_its_window_as_from_all_before_it() {
    // Irregular steps (1 to 12 minutes and some odd microseconds, some readings at the window's
    // very edge) over two weeks.
    let mut ts = start();
    let mut series = Vec::new();
    for i in 0..3_000u32 {
        ts += Duration::minutes(i64::from(1 + (i * 7 + i / 13) % 12));
        let odd = if i % 17 == 0 {
            Duration::microseconds(i64::from(i % 997))
        } else {
            Duration::zero()
        };
        let value = 1.0 + (f64::from(i) / 40.0).sin() + f64::from(i % 5) * 0.01;
        series.push(Sample::good(ts + odd, value));
    }
    // The same readings with a few out of order, and with one time finer than a microsecond: the
    // walk then looks at all the readings before each one.
    let mut shuffled = series.clone();
    shuffled.swap(100, 101);
    let mut fine = series.clone();
    fine[7].ts += Duration::nanoseconds(1);
    for (name, series) in [
        ("in order", &series),
        ("out of order", &shuffled),
        ("finer", &fine),
    ] {
        for window in [
            Duration::minutes(30),
            Duration::hours(1),
            Duration::hours(6),
            Duration::microseconds(3_600_000_123),
        ] {
            let mut walk = RateWalk::new(series, window);
            assert_eq!(walk.counted.is_some(), name == "in order");
            let mut compared = 0;
            for i in 0..series.len() {
                let whole = trend::rate_of_rise(&series[..=i], series[i].ts, window);
                assert_eq!(walk.at(i), whole, "{name}, window {window}, reading {i}");
                compared += usize::from(whole.is_some());
            }
            assert!(compared > 2_000, "rates were worked out ({compared})");
        }
    }
}

#[test]
fn leaving_out_quiet_entries_after_quiet_ones_changes_no_area_timeline() {
    // The same timelines on every run.
    let mut lcg = crate::testing::Lcg(11);
    let mut random = move |below: u64| lcg.next(below);
    let levels = [
        None,
        Some(Level {
            severity: Severity::Alert,
            kind: WarningKind::Expected,
        }),
        Some(Level {
            severity: Severity::Alert,
            kind: WarningKind::Observed,
        }),
        Some(Level {
            severity: Severity::Warning,
            kind: WarningKind::Observed,
        }),
    ];
    let mut left_out = 0;
    for case in 0..200 {
        // Three sources, mostly quiet, with runs of levels; times on a coarse grid so that
        // sources often share them, and a trigger whose value differs at every entry.
        let sources: Vec<Steps> = (0..3)
            .map(|source| {
                let mut at = start();
                let mut level = None;
                (0..60)
                    .map(|i| {
                        at += Duration::minutes(random(3) as i64 * 10);
                        if random(6) == 0 {
                            level = levels[random(4) as usize];
                        }
                        let trigger = level.map(|_| Trigger {
                            sensor: format!("s{source}"),
                            cause: "level",
                            value: i as f64,
                            threshold: 1.0,
                            rate: None,
                            expected_at: None,
                            forecast: None,
                        });
                        (at, level, trigger)
                    })
                    .collect()
            })
            .collect();
        let kept: Vec<Steps> = sources
            .iter()
            .map(|steps| {
                let mut kept = Steps::new();
                for step in steps {
                    push_step(&mut kept, step.clone());
                }
                kept
            })
            .collect();
        left_out +=
            sources.iter().map(Vec::len).sum::<usize>() - kept.iter().map(Vec::len).sum::<usize>();
        let now = start() + Duration::minutes(random(1200) as i64);
        assert_eq!(combine(&kept, now), combine(&sources, now), "case {case}");
    }
    assert!(left_out > 1000, "{left_out} entries left out");
}
