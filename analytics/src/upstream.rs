//! Upstream propagation: a threshold crossing at an upstream gauge raises an alert downstream once
//! the flood wave's travel time has passed.

use chrono::{DateTime, Duration, Utc};

/// A link in a river network: from an upstream gauge to a downstream flood area.
#[derive(Debug, Clone, PartialEq)]
pub struct Link {
    pub upstream_sensor: String,
    pub downstream_area: String,
    pub travel_time: Duration,
}

/// When a crossing at the upstream gauge is due downstream.
pub fn due_downstream(link: &Link, crossed_at: DateTime<Utc>) -> DateTime<Utc> {
    crossed_at + link.travel_time
}

/// The downstream areas whose alert is due at `now` from crossings seen upstream.
pub fn due_areas<'a>(
    links: &'a [Link],
    crossings: &[(String, DateTime<Utc>)],
    now: DateTime<Utc>,
) -> Vec<&'a str> {
    let mut areas: Vec<&str> = links
        .iter()
        .filter(|link| {
            crossings.iter().any(|(sensor, at)| {
                *sensor == link.upstream_sensor && due_downstream(link, *at) <= now
            })
        })
        .map(|link| link.downstream_area.as_str())
        .collect();
    areas.sort_unstable();
    areas.dedup();
    areas
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn timing() {
        let links = vec![
            Link {
                upstream_sensor: "aarslev.level".into(),
                downstream_area: "aarhus-c".into(),
                travel_time: Duration::hours(2),
            },
            Link {
                upstream_sensor: "aarslev.level".into(),
                downstream_area: "aarhus-havn".into(),
                travel_time: Duration::hours(3),
            },
        ];
        let crossed = Utc.with_ymd_and_hms(2026, 7, 2, 18, 0, 0).unwrap();
        let crossings = vec![("aarslev.level".to_owned(), crossed)];
        let cases = [
            (90, vec![]),
            (120, vec!["aarhus-c"]),
            (200, vec!["aarhus-c", "aarhus-havn"]),
        ];
        for (minutes, expected) in cases {
            assert_eq!(
                due_areas(&links, &crossings, crossed + Duration::minutes(minutes)),
                expected
            );
        }
    }
}
