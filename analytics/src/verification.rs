//! Warning verification: for a period, per flood area and severity, how many threshold crossings
//! were warned of (hits) or not (misses), how many warnings came to nothing (false alarms), and the
//! lead time of the hits (positive: the warning came before the crossing).

use chrono::{DateTime, Duration, Utc};
use std::collections::BTreeMap;

/// An up-crossing of a severity's threshold at a sensor.
#[derive(Debug, Clone, PartialEq)]
pub struct ObservedCrossing {
    pub sensor: String,
    pub severity: i16,
    pub at: DateTime<Utc>,
}

/// A recorded warning event of an area.
#[derive(Debug, Clone, PartialEq)]
pub struct IssuedEvent {
    pub area: String,
    /// raised, changed, lifted (others are ignored).
    pub kind: String,
    pub severity: Option<i16>,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Score {
    pub hits: u32,
    pub misses: u32,
    pub false_alarms: u32,
    /// Lead times of the hits, minutes.
    pub lead_minutes: Vec<i64>,
}

impl Score {
    pub fn hit_rate(&self) -> Option<f64> {
        let events = self.hits + self.misses;
        (events > 0).then(|| f64::from(self.hits) / f64::from(events))
    }

    pub fn mean_lead_minutes(&self) -> Option<f64> {
        (!self.lead_minutes.is_empty())
            .then(|| self.lead_minutes.iter().sum::<i64>() as f64 / self.lead_minutes.len() as f64)
    }
}

/// The periods each severity (or higher) was in force in an area: `(from, until)`.
fn in_force(
    events: &[&IssuedEvent],
    severity: i16,
    end: DateTime<Utc>,
) -> Vec<(DateTime<Utc>, DateTime<Utc>)> {
    let mut periods = Vec::new();
    let mut since: Option<DateTime<Utc>> = None;
    for event in events {
        let reaches =
            matches!(event.kind.as_str(), "raised" | "changed") && event.severity >= Some(severity);
        match (since, reaches) {
            (None, true) => since = Some(event.at),
            (Some(from), false)
                if matches!(event.kind.as_str(), "raised" | "changed" | "lifted") =>
            {
                periods.push((from, event.at));
                since = None;
            }
            _ => {}
        }
    }
    if let Some(from) = since {
        periods.push((from, end));
    }
    periods
}

/// Scores every area and severity. A crossing is a hit when a warning of its severity or higher
/// was in force at some moment from before it up to `grace` after it; a period in force with no
/// crossing of its severity from its start to its end is a false alarm.
pub fn verify(
    areas: &BTreeMap<String, Vec<String>>,
    crossings: &[ObservedCrossing],
    events: &[IssuedEvent],
    grace: Duration,
    end: DateTime<Utc>,
) -> BTreeMap<(String, i16), Score> {
    let mut scores: BTreeMap<(String, i16), Score> = BTreeMap::new();
    for (area, sensors) in areas {
        let area_events: Vec<&IssuedEvent> = events.iter().filter(|e| &e.area == area).collect();
        for severity in 1..=3i16 {
            let periods = in_force(&area_events, severity, end);
            let area_crossings: Vec<&ObservedCrossing> = crossings
                .iter()
                .filter(|c| c.severity == severity && sensors.contains(&c.sensor))
                .collect();
            let score = scores.entry((area.clone(), severity)).or_default();
            for crossing in &area_crossings {
                let warned = periods
                    .iter()
                    .find(|(from, until)| *from <= crossing.at + grace && *until >= crossing.at);
                match warned {
                    Some((from, _)) => {
                        score.hits += 1;
                        score.lead_minutes.push((crossing.at - *from).num_minutes());
                    }
                    None => score.misses += 1,
                }
            }
            for (from, until) in &periods {
                let confirmed = area_crossings
                    .iter()
                    .any(|c| c.at + grace >= *from && c.at <= *until);
                if !confirmed {
                    score.false_alarms += 1;
                }
            }
        }
    }
    scores.retain(|_, s| s.hits + s.misses + s.false_alarms > 0);
    scores
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(h: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2023, 10, 20, h, 0, 0).unwrap()
    }

    fn event(kind: &str, severity: Option<i16>, h: u32) -> IssuedEvent {
        IssuedEvent {
            area: "a".into(),
            kind: kind.into(),
            severity,
            at: at(h),
        }
    }

    fn crossing(severity: i16, h: u32) -> ObservedCrossing {
        ObservedCrossing {
            sensor: "s".into(),
            severity,
            at: at(h),
        }
    }

    #[test]
    fn hits_misses_false_alarms_and_lead_times() {
        let areas = BTreeMap::from([("a".to_owned(), vec!["s".to_owned()])]);
        let events = vec![
            // An alert that came to nothing.
            event("raised", Some(1), 1),
            event("lifted", Some(1), 2),
            // An alert two hours ahead of its crossing, escalated to a warning after its crossing.
            event("raised", Some(1), 4),
            event("changed", Some(2), 7),
            event("lifted", Some(2), 10),
        ];
        let crossings = vec![crossing(1, 6), crossing(2, 7), crossing(3, 8)];
        let scores = verify(&areas, &crossings, &events, Duration::minutes(30), at(23));
        let alert = &scores[&("a".to_owned(), 1)];
        assert_eq!((alert.hits, alert.misses, alert.false_alarms), (1, 0, 1));
        assert_eq!(alert.lead_minutes, [120]);
        let warning = &scores[&("a".to_owned(), 2)];
        assert_eq!(
            (warning.hits, warning.misses, warning.false_alarms),
            (1, 0, 0)
        );
        assert_eq!(warning.lead_minutes, [0]);
        let severe = &scores[&("a".to_owned(), 3)];
        assert_eq!(
            (severe.hits, severe.misses),
            (0, 1),
            "the severe crossing was never warned of"
        );
        assert_eq!(severe.hit_rate(), Some(0.0));
        assert_eq!(alert.hit_rate(), Some(1.0));
    }
}
