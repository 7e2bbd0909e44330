//! The human-readable text of a warning event, in English and Danish: what, where, how high, the
//! trend, since when.

use crate::area::{AreaEvent, EventKind, Trigger};
use crate::level::Severity;
use crate::utility::LeakSuspicion;
use chrono::{DateTime, NaiveDate, Utc};
use tidemark_model::warning::Category;

fn when(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M UTC").to_string()
}

/// How a level moves towards its thresholds: up for a flood, down for a drought.
#[derive(Clone, Copy)]
struct Words {
    moving_en: &'static str,
    moving_da: &'static str,
    /// "at or above" / "at or below".
    reached_en: &'static str,
    reached_da: &'static str,
    /// What a forecast expects the level to do.
    expect_en: &'static str,
    expect_da: &'static str,
}

const RISING: Words = Words {
    moving_en: "rising",
    moving_da: "stiger",
    reached_en: "at or above",
    reached_da: "på eller over",
    expect_en: "to reach",
    expect_da: "når",
};

const FALLING: Words = Words {
    moving_en: "falling",
    moving_da: "falder",
    reached_en: "at or below",
    reached_da: "på eller under",
    expect_en: "to fall to",
    expect_da: "falder til",
};

fn cause_en(t: &Trigger, w: Words) -> String {
    // Rates are told as speeds: "falling 0.05 m/h", not "falling -0.05 m/h".
    let rate = t.rate.unwrap_or_default().abs();
    match t.cause {
        "projection" => format!(
            "{} reads {:.2} m and is {} {:.2} m/h; it is expected to reach {:.2} m by {}",
            t.sensor,
            t.value,
            w.moving_en,
            rate,
            t.threshold,
            t.expected_at.map(when).unwrap_or_default()
        ),
        "rain" => format!(
            "{:.1} mm of rain at {}, more than {:.0} mm",
            t.value, t.sensor, t.threshold
        ),
        "rate" => format!(
            "{} reads {:.2} m and is {} {:.2} m/h, faster than {:.2} m/h",
            t.sensor,
            t.value,
            w.moving_en,
            rate,
            t.threshold.abs()
        ),
        "forecast" => {
            format!(
                "the {} forecast issued {} expects {} {} {:.2} m (the {:.2} m threshold) from {}",
                t.forecast.as_ref().map_or("", |f| f.source.as_str()),
                t.forecast
                    .as_ref()
                    .map(|f| when(f.issued_at))
                    .unwrap_or_default(),
                t.sensor,
                w.expect_en,
                t.value,
                t.threshold,
                t.expected_at.map(when).unwrap_or_default()
            )
        }
        "upstream" => format!(
            "water at upstream gauge {} ({:.2} m) is expected to arrive by {}",
            t.sensor,
            t.value,
            t.expected_at.map(when).unwrap_or_default()
        ),
        _ => format!(
            "{} reads {:.2} m, {} the {:.2} m threshold",
            t.sensor, t.value, w.reached_en, t.threshold
        ),
    }
}

fn cause_da(t: &Trigger, w: Words) -> String {
    let rate = t.rate.unwrap_or_default().abs();
    match t.cause {
        "projection" => format!(
            "{} måler {:.2} m og {} {:.2} m/t; ventes at nå {:.2} m senest {}",
            t.sensor,
            t.value,
            w.moving_da,
            rate,
            t.threshold,
            t.expected_at.map(when).unwrap_or_default()
        ),
        "rain" => format!(
            "{:.1} mm regn ved {}, mere end {:.0} mm",
            t.value, t.sensor, t.threshold
        ),
        "rate" => format!(
            "{} måler {:.2} m og {} {:.2} m/t, hurtigere end {:.2} m/t",
            t.sensor,
            t.value,
            w.moving_da,
            rate,
            t.threshold.abs()
        ),
        "forecast" => format!(
            "prognosen fra {} udsendt {} venter at {} {} {:.2} m (tærsklen på {:.2} m) fra {}",
            t.forecast.as_ref().map_or("", |f| f.source.as_str()),
            t.forecast
                .as_ref()
                .map(|f| when(f.issued_at))
                .unwrap_or_default(),
            t.sensor,
            w.expect_da,
            t.value,
            t.threshold,
            t.expected_at.map(when).unwrap_or_default()
        ),
        "upstream" => format!(
            "vandet ved {} opstrøms ({:.2} m) ventes at nå frem senest {}",
            t.sensor,
            t.value,
            t.expected_at.map(when).unwrap_or_default()
        ),
        _ => format!(
            "{} måler {:.2} m, {} tærsklen på {:.2} m",
            t.sensor, t.value, w.reached_da, t.threshold
        ),
    }
}

/// `(english, danish)` for an event in `area`, a flood or a drought area (`category`).
pub fn compose(area: &str, category: Category, event: &AreaEvent) -> (String, String) {
    let severity = event.level.map(|l| l.severity).unwrap_or(Severity::Alert);
    let at = when(event.at);
    let words = if category == Category::Drought {
        FALLING
    } else {
        RISING
    };
    let title_en = |s: Severity| category.severity_name(s);
    let title_da = |s: Severity| category.severity_name_da(s);
    match event.kind {
        EventKind::Raised | EventKind::Changed => {
            let (en, da) = match &event.trigger {
                Some(trigger) => (cause_en(trigger, words), cause_da(trigger, words)),
                None => (String::new(), String::new()),
            };
            (
                format!("{} for {area}: {en}. Since {at}.", title_en(severity)),
                format!("{} for {area}: {da}. Siden {at}.", title_da(severity)),
            )
        }
        EventKind::Lifted => (
            format!(
                "{} for {area} is no longer in force ({at}).",
                title_en(severity)
            ),
            format!(
                "{} for {area} er ikke længere gældende ({at}).",
                title_da(severity)
            ),
        ),
        EventKind::Stale => (
            format!(
                "{area}: the stations have stopped reporting (stale as of {at}); the {} stays in force.",
                title_en(severity)
            ),
            format!(
                "{area}: målestationerne har stoppet med at sende data (forældet fra {at}); {} gælder fortsat.",
                title_da(severity).to_lowercase()
            ),
        ),
        EventKind::Fresh => (
            format!("{area}: data is arriving again ({at})."),
            format!("{area}: der kommer data igen ({at})."),
        ),
        // Recorded by the API and the dispatcher, never by an evaluation.
        EventKind::Acknowledged | EventKind::Undelivered => (
            format!("{} for {area}: {} ({at}).", title_en(severity), event.kind),
            format!("{} for {area}: {} ({at}).", title_da(severity), event.kind),
        ),
    }
}

/// `(english, danish)` for a suspected leak raised on a district meter, with the meter's unit.
pub fn leak_raised(meter: &str, leak: &LeakSuspicion, unit: &str) -> (String, String) {
    (
        format!(
            "Suspected leak at district meter {meter}: the minimum night flow has been above its baseline of {:.2} {unit} since the night of {}, reaching {:.2} {unit} on the night of {}.",
            leak.baseline, leak.since, leak.night_flow, leak.raised_on
        ),
        format!(
            "Mistanke om lækage ved distriktsmåler {meter}: det mindste natforbrug har ligget over basislinjen på {:.2} {unit} siden natten til {} og nåede {:.2} {unit} natten til {}.",
            leak.baseline, leak.since, leak.night_flow, leak.raised_on
        ),
    )
}

/// `(english, danish)` for a suspected leak that ended on `night` at `flow`.
pub fn leak_ended(meter: &str, night: NaiveDate, flow: f64, unit: &str) -> (String, String) {
    (
        format!(
            "The suspected leak at district meter {meter} is no longer in force: the minimum night flow was back at {flow:.2} {unit} on the night of {night}."
        ),
        format!(
            "Mistanken om lækage ved distriktsmåler {meter} er ikke længere gældende: det mindste natforbrug var igen {flow:.2} {unit} natten til {night}."
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::area::{Level, WarningKind};
    use chrono::TimeZone;

    #[test]
    fn both_languages_say_what_where_how_high_and_since_when() {
        let event = AreaEvent {
            kind: EventKind::Raised,
            at: Utc.with_ymd_and_hms(2023, 10, 20, 21, 40, 0).unwrap(),
            level: Some(Level {
                severity: Severity::Severe,
                kind: WarningKind::Observed,
            }),
            trigger: Some(Trigger {
                sensor: "flensburg.sea_level".into(),
                cause: "level",
                value: 2.27,
                threshold: 2.0,
                rate: None,
                expected_at: None,
                forecast: None,
            }),
        };
        let (en, da) = compose("Flensburg Fjord", Category::Flood, &event);
        assert_eq!(
            en,
            "Severe Flood Warning for Flensburg Fjord: flensburg.sea_level reads 2.27 m, at or above the 2.00 m threshold. Since 2023-10-20 21:40 UTC."
        );
        assert_eq!(
            da,
            "Alvorligt oversvømmelsesvarsel for Flensburg Fjord: flensburg.sea_level måler 2.27 m, på eller over tærsklen på 2.00 m. Siden 2023-10-20 21:40 UTC."
        );
        let lifted = AreaEvent {
            kind: EventKind::Lifted,
            ..event
        };
        assert!(compose("Flensburg Fjord", Category::Flood, &lifted)
            .0
            .contains("no longer in force"));
        assert!(compose("Flensburg Fjord", Category::Flood, &lifted)
            .1
            .contains("ikke længere gældende"));
    }

    #[test]
    fn leak_messages_name_the_meter_the_nights_and_the_flows() {
        let date = |d: u32| NaiveDate::from_ymd_opt(2026, 5, d).unwrap();
        let leak = LeakSuspicion {
            since: date(20),
            raised_on: date(22),
            baseline: 10.5,
            night_flow: 14.0,
        };
        let (en, da) = leak_raised("Bolbro", &leak, "L/s");
        assert_eq!(
            en,
            "Suspected leak at district meter Bolbro: the minimum night flow has been above its baseline of 10.50 L/s since the night of 2026-05-20, reaching 14.00 L/s on the night of 2026-05-22."
        );
        assert!(da.starts_with("Mistanke om lækage ved distriktsmåler Bolbro"));
        assert!(da.contains("10.50 L/s") && da.contains("2026-05-20"));
        let (en, da) = leak_ended("Bolbro", date(27), 10.2, "L/s");
        assert!(
            en.contains("no longer in force")
                && en.contains("10.20 L/s")
                && en.contains("2026-05-27")
        );
        assert!(da.contains("ikke længere gældende") && da.contains("2026-05-27"));
    }
}
