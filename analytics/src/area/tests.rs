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

fn timelines(steps: &[Steps]) -> Vec<Timeline<'_>> {
    steps.iter().map(|s| Timeline::whole(s)).collect()
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
                    push_step(&mut kept, None, step.clone());
                }
                kept
            })
            .collect();
        left_out +=
            sources.iter().map(Vec::len).sum::<usize>() - kept.iter().map(Vec::len).sum::<usize>();
        let now = start() + Duration::minutes(random(1200) as i64);
        let since = DateTime::<Utc>::MIN_UTC;
        assert_eq!(
            combine(&timelines(&kept), since, now),
            combine(&timelines(&sources), since, now),
            "case {case}"
        );
    }
    assert!(left_out > 1000, "{left_out} entries left out");
}

/// The area's stale changes from a scan of every level sensor's readings.
fn stale_by_scan(area: &AreaInput, now: DateTime<Utc>) -> Vec<(DateTime<Utc>, bool)> {
    let gaps: Vec<Vec<Gap>> = (area.levels.iter())
        .map(|sensor| gaps(&sensor.samples, stale_limit(area, sensor)).collect())
        .collect();
    stale_changes(area, &gaps, now)
}

/// An area of a level gauge and a rain gauge with `len` readings each of [`wandering`].
fn wandering_area(random: &mut impl FnMut(u64) -> u64, len: usize) -> AreaInput {
    let mut level = gauge("level", &[]);
    level.samples = wandering(random, len, false);
    let rain = rain_gauge(wandering(random, len, true));
    AreaInput {
        rains: vec![rain],
        ..area(vec![level])
    }
}

/// A rain gauge with DMI's rules, held an hour.
fn rain_gauge(samples: Vec<Sample>) -> RainSensor {
    RainSensor {
        key: "rain".into(),
        rules: crate::rain::dmi_rules(),
        hold: Duration::hours(1),
        samples,
    }
}

/// The area with each sensor's first `n` readings.
fn first_readings(area: &AreaInput, n: usize) -> AreaInput {
    let level = |s: &LevelSensor| LevelSensor {
        key: s.key.clone(),
        samples: s.samples[..n].to_vec(),
        ..*s
    };
    AreaInput {
        key: area.key.clone(),
        levels: area.levels.iter().map(level).collect(),
        rains: (area.rains.iter())
            .map(|r| RainSensor {
                key: r.key.clone(),
                rules: r.rules.clone(),
                hold: r.hold,
                samples: r.samples[..n].to_vec(),
            })
            .collect(),
        upstream: (area.upstream.iter())
            .map(|u| Upstream {
                sensor: level(&u.sensor),
                travel_time: u.travel_time,
            })
            .collect(),
        forecasts: Vec::new(),
        forecast_use: area.forecast_use,
        stale_after_intervals: area.stale_after_intervals,
    }
}

/// The area's timeline worked out in one pass over each source's readings, its timelines whole.
fn one_pass(area: &AreaInput, now: DateTime<Utc>) -> Steps {
    let level = |sensor: &LevelSensor, observed_only: bool| -> Steps {
        let flags = quality::check(&sensor.samples, &sensor.qc);
        let usable: Vec<Sample> = quality::usable_with(&sensor.samples, &flags)
            .into_iter()
            .map(|s| Sample {
                value: s.value * sensor.rule.sign(),
                ..s
            })
            .collect();
        let mut steps = Steps::new();
        let mut fold = LevelFold::default();
        let lists = (None, &mut steps);
        take_level(
            sensor,
            observed_only,
            &mut fold,
            &usable,
            lists,
            &mut Vec::new(),
        );
        steps
    };
    let mut sources: Vec<Steps> = area.levels.iter().map(|s| level(s, false)).collect();
    for rain in &area.rains {
        let mut steps = Steps::new();
        take_rain(rain, &mut Vec::new(), &mut None, &rain.samples, &mut steps);
        sources.push(steps);
    }
    for upstream in &area.upstream {
        let observed = level(&upstream.sensor, true);
        let steps = observed
            .iter()
            .map(|step| downstream(step, upstream.travel_time));
        sources.push(steps.collect());
    }
    combine(&timelines(&sources), DateTime::<Utc>::MIN_UTC, now)
}

/// A random series every 10 minutes (now and then a gap of 40 or 70 minutes): a random walk
/// through the thresholds, with spikes, stuck runs, readings the device marks bad and values out
/// of range.
fn wandering(random: &mut impl FnMut(u64) -> u64, len: usize, rain: bool) -> Vec<Sample> {
    let mut at = start();
    let mut value: f64 = if rain { 0.0 } else { 0.8 };
    let mut stuck = 0;
    (0..len)
        .map(|_| {
            at += Duration::minutes(match random(30) {
                0 => 70,
                1 => 40,
                _ => 10,
            });
            if rain {
                let heavy = random(15) == 0;
                return Sample::good(at, random(if heavy { 90 } else { 4 }) as f64 / 10.0);
            }
            if stuck > 0 {
                stuck -= 1;
                return Sample::good(at, value);
            }
            if random(60) == 0 {
                stuck = 14;
            }
            value = (value + (random(21) as f64 - 10.0) / 40.0).clamp(0.0, 2.6);
            let mut sample = Sample::good(at, value);
            match random(40) {
                0 => sample.value += 3.0,
                1 => sample.quality = Quality::DEVICE_BAD,
                2 => sample.value = 40.0,
                _ => {}
            }
            sample
        })
        .collect()
}

#[test]
fn carrying_timelines_over_gives_what_evaluating_the_readings_gives() {
    let mut lcg = crate::testing::Lcg(23);
    let mut random = move |below: u64| lcg.next(below);
    let (mut compared, mut carried_on, mut flags_seen) = (0, 0, 0);
    for case in 0..24 {
        let len = 260;
        let mut level = gauge("level", &[]);
        level.samples = wandering(&mut random, len, false);
        level.rule.persistence = Duration::minutes(random(3) as i64 * 10);
        level.rule.hold = Duration::minutes(random(4) as i64 * 10);
        level.rule.hysteresis = random(3) as f64 * 0.05;
        level.rate_alert = (random(2) == 0).then_some(0.9);
        level.qc.plausible = (-5.0, 10.0);
        let mut falling = gauge("falling", &[]);
        falling.samples = wandering(&mut random, len, false);
        falling.rule.thresholds = [1.2, 0.8, 0.3];
        falling.rule.falling = true;
        let mut up = gauge("up", &[]);
        up.samples = wandering(&mut random, len, false);
        let rain = rain_gauge(wandering(&mut random, len, true));
        let mut whole = AreaInput {
            rains: vec![rain],
            upstream: vec![Upstream {
                sensor: up,
                travel_time: Duration::minutes(40),
            }],
            ..area(vec![level, falling])
        };
        // The readings arrive a few at a time; now and then one already taken is changed (the
        // progress is told, as the readings' cache tells it).
        let mut carried = Progress::new();
        let mut reported: Vec<(String, DateTime<Utc>, Quality)> = Vec::new();
        let mut upto = 0;
        while upto < len {
            if upto > 0 && random(15) == 0 {
                let changed = &mut whole.levels[0].samples[random(upto as u64) as usize];
                changed.value += 0.5;
                if let Some(progress) = carried.get_mut("level") {
                    progress.changed(changed.ts);
                }
            }
            // Now and then the stations' stale limit changes.
            if random(25) == 0 {
                whole.stale_after_intervals = 2 + random(4) as i32;
            }
            upto = (upto + 1 + random(12) as usize).min(len);
            let input = first_readings(&whole, upto);
            let now = input.levels[0].samples[upto - 1].ts + Duration::minutes(5);
            carried_on += usize::from(carried.values().any(|p| !p.is_empty()));
            let fresh = evaluate(&input, now);
            let going_on = evaluate_carried(&input, now, DateTime::<Utc>::MIN_UTC, &mut carried);
            assert_eq!(going_on.steps, fresh.steps, "case {case}, {upto} readings");
            assert_eq!(going_on.steps, one_pass(&input, now), "case {case}, {upto}");
            assert_eq!(going_on.crossings, fresh.crossings, "case {case}, {upto}");
            assert_eq!(going_on.trends, fresh.trends, "case {case}, {upto}");
            assert_eq!(going_on.stale, fresh.stale, "case {case}, {upto}");
            assert_eq!(
                going_on.stale,
                stale_by_scan(&input, now),
                "case {case}, {upto}"
            );
            assert_eq!(going_on.latest, fresh.latest, "case {case}, {upto}");
            for flag in &going_on.flags {
                assert!(fresh.flags.contains(flag), "case {case}, {upto}: {flag:?}");
            }
            reported.extend(going_on.flags);
            compared += 1;
        }
        // Every flag the readings end with was reported once its neighbours had come.
        let end = whole.levels[0].samples[len - 1].ts;
        for flag in &evaluate(&whole, end).flags {
            assert!(
                reported.contains(flag),
                "case {case}: {flag:?} never reported"
            );
            flags_seen += 1;
        }
    }
    assert!(compared > 500, "{compared} evaluations compared");
    assert!(
        carried_on > 450,
        "{carried_on} evaluations went on from what was carried"
    );
    assert!(flags_seen > 100, "{flags_seen} flags");
}

#[test]
fn a_moving_window_keeps_the_timeline_from_its_start_and_no_more() {
    let mut lcg = crate::testing::Lcg(31);
    let mut random = move |below: u64| lcg.next(below);
    let mut compared = 0;
    for case in 0..12 {
        let len = 400;
        let whole = wandering_area(&mut random, len);
        let mut carried = Progress::new();
        let mut upto = 0;
        while upto < len {
            upto = (upto + 1 + random(12) as usize).min(len);
            let input = first_readings(&whole, upto);
            let now = input.levels[0].samples[upto - 1].ts + Duration::minutes(5);
            let from = now - Duration::hours(8);
            let fresh = evaluate(&input, now);
            let windowed = evaluate_carried(&input, now, from, &mut carried);
            // The same level at every time from the window's start on, and the same changes
            // after it. (The state at the start is given with the trigger then, where the
            // whole timeline gives the one that raised it.)
            let times =
                (fresh.steps.iter().chain(&windowed.steps)).map(|(at, _, _)| (*at).max(from));
            let level = |steps: &Steps, t| Timeline::whole(steps).at(t).map(|(level, _)| level);
            for t in times {
                assert_eq!(
                    level(&windowed.steps, t),
                    level(&fresh.steps, t),
                    "case {case}, {upto} readings, at {t}"
                );
                compared += 1;
            }
            assert!(windowed.steps.iter().all(|(at, _, _)| *at >= from));
            for step in windowed.steps.iter().filter(|(at, _, _)| *at > from) {
                assert!(fresh.steps.contains(step), "case {case}, {upto}: {step:?}");
            }
            // The stale changes of the readings in the window, as the runner reads them.
            let mut in_window = first_readings(&whole, upto);
            for level in &mut in_window.levels {
                level.samples.retain(|s| s.ts >= from);
            }
            assert_eq!(
                windowed.stale,
                stale_by_scan(&in_window, now),
                "case {case}, {upto}"
            );
            let recent: Vec<&Crossing> = fresh.crossings.iter().filter(|c| c.at >= from).collect();
            assert_eq!(windowed.crossings.iter().collect::<Vec<_>>(), recent);
            // What is carried reaches back no further than the window.
            for progress in carried.values() {
                for steps in (progress.levels.iter().map(|p| &p.steps))
                    .chain(progress.rain.as_ref().map(|p| &p.steps))
                {
                    assert!(steps.iter().skip(1).all(|(at, _, _)| *at > from));
                }
            }
        }
    }
    assert!(compared > 1_000, "{compared} states compared");
}

#[test]
fn readings_out_of_time_order_are_evaluated_anew_each_time() {
    let mut lcg = crate::testing::Lcg(41);
    let mut random = move |below: u64| lcg.next(below);
    let mut compared = 0;
    for case in 0..20 {
        let len = 120;
        let mut whole = wandering_area(&mut random, len);
        // A reading out of place in each: a late one stored after its successors.
        for samples in [&mut whole.levels[0].samples, &mut whole.rains[0].samples] {
            let i = 20 + random(60) as usize;
            samples[i..i + 5].rotate_left(1);
        }
        let mut carried = Progress::new();
        let mut upto = 0;
        while upto < len {
            upto = (upto + 1 + random(8) as usize).min(len);
            let input = first_readings(&whole, upto);
            let now = input.levels[0].samples[upto - 1].ts + Duration::hours(2);
            let going_on = evaluate_carried(&input, now, DateTime::<Utc>::MIN_UTC, &mut carried);
            let fresh = evaluate(&input, now);
            assert_eq!(going_on.steps, fresh.steps, "case {case}, {upto} readings");
            assert_eq!(going_on.stale, fresh.stale, "case {case}, {upto}");
            compared += 1;
        }
    }
    assert!(compared > 300, "{compared} evaluations compared");
}
