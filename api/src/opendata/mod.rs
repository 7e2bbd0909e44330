//! Open data: stations (JSON or GeoJSON), the latest value of every sensor, and a sensor's readings,
//! raw (paged by time or by arrival, streamed) or aggregated on the server into time buckets.
//!
//! Formats are chosen by `format=` or, failing that, the `Accept` header: JSON (the default), CSV
//! (`text/csv`), and GeoJSON (`application/geo+json`) where there is geometry.

pub mod latest_cache;
#[cfg(feature = "parquet")]
pub mod parquet_export;

pub mod aggregate;
pub mod latest;
pub mod municipalities;
pub mod query;
pub mod raw;
pub mod readings;
pub mod stations;
pub mod written;

use crate::state::ApiState;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// The open data routes, each with its documentation.
pub fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(stations::stations))
        .routes(routes!(stations::station))
        .routes(routes!(latest::latest))
        .routes(routes!(readings::readings))
        .routes(routes!(municipalities::municipalities))
        .routes(routes!(municipalities::municipality))
        .routes(routes!(municipalities::flood_areas))
}

#[cfg(test)]
mod tests {
    use super::{aggregate::*, query::*, stations::*};
    use chrono::TimeZone;
    use chrono::{DateTime, Duration as ChronoDuration, Utc};
    use std::collections::HashMap;
    use tidemark_store::flood::TrendRow;
    use tidemark_store::opendata::{BucketRow, RawOrder, RawReading};

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 26, 12, 0, 0).unwrap()
    }

    /// A sensor read every 10 minutes whose latest reading is `age` minutes old (stale after 30)
    /// and arrived `received` minutes ago.
    fn received(key: &str, age: i64, received: i64) -> SensorBody {
        SensorBody {
            key: key.to_owned(),
            quantity: "water_level".to_owned(),
            unit: "m",
            name: String::new(),
            expected_interval_seconds: 600,
            latest: Some(LatestReading {
                ts: now() - ChronoDuration::minutes(age),
                value: 1.0,
                quality: 0,
                received_at: now() - ChronoDuration::minutes(received),
                stale: age > 30,
            }),
        }
    }

    fn sensor(key: &str, latest: Option<bool>) -> SensorBody {
        match latest {
            Some(true) => received(key, 45, 45),
            Some(false) => received(key, 5, 5),
            None => SensorBody {
                latest: None,
                ..received(key, 0, 0)
            },
        }
    }

    fn trend(key: &str, severity: Option<i16>) -> (String, TrendRow) {
        let row = TrendRow {
            sensor_key: key.to_owned(),
            at: Utc::now(),
            value: 1.0,
            severity: severity.and_then(tidemark_model::warning::Severity::from_level),
            rate_per_hour: None,
            projected: None,
        };
        (key.to_owned(), row)
    }

    #[test]
    fn a_station_takes_its_most_severe_sensor_and_silence_overrides_it() {
        let trends: HashMap<String, TrendRow> =
            [trend("a", Some(1)), trend("b", Some(3)), trend("c", None)]
                .into_iter()
                .collect();
        let state = |sensors: &[SensorBody]| station_state(sensors, &trends, now());
        assert_eq!(state(&[]), "no_data");
        assert_eq!(state(&[sensor("a", None)]), "no_data");
        assert_eq!(state(&[sensor("c", Some(false))]), "normal");
        assert_eq!(
            state(&[sensor("x", Some(false))]),
            "normal",
            "no thresholds"
        );
        assert_eq!(state(&[sensor("a", Some(false))]), "alert");
        assert_eq!(
            state(&[sensor("a", Some(false)), sensor("b", Some(false))]),
            "severe"
        );
        assert_eq!(
            state(&[sensor("b", Some(false)), sensor("c", Some(true))]),
            "stale",
            "a silent sensor is never an all-clear, nor a warning to trust"
        );
        assert_eq!(
            state(&[received("b", 240, 1)]),
            "severe",
            "hours-old readings still arriving (a replay) are not silence"
        );
    }

    fn row(minute: u32, avg: f64) -> BucketRow {
        BucketRow {
            start: Utc.with_ymd_and_hms(2024, 1, 1, 0, minute, 0).unwrap(),
            count: 2,
            sum: avg * 2.0,
            min: avg,
            max: avg,
            first: avg,
            last: avg,
            flagged: 0,
            quality: 0,
        }
    }

    #[test]
    fn empty_buckets_are_omitted_nulled_or_interpolated_within_the_gap() {
        let from = Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0).unwrap();
        let to = from + ChronoDuration::minutes(10);
        let bucket = ChronoDuration::minutes(1);
        let stored = vec![row(0, 1.0), row(3, 4.0), row(9, 10.0)];
        assert_eq!(
            fill_buckets(&stored, &[], from, to, bucket, "omit", 3).len(),
            3
        );
        let nulls = fill_buckets(&stored, &[], from, to, bucket, "null", 3);
        assert_eq!(nulls.len(), 10);
        assert!(matches!(nulls[1], Filled::Empty(_)));
        let filled = fill_buckets(&stored, &[], from, to, bucket, "interpolate", 3);
        let interpolated: Vec<f64> = filled
            .iter()
            .filter_map(|f| match f {
                Filled::Interpolated(_, v) => Some(*v),
                _ => None,
            })
            .collect();
        // 0..3 is a gap of two buckets (interpolated); 3..9 a gap of five (left empty).
        assert_eq!(interpolated, [2.0, 3.0]);
        assert!(matches!(filled[5], Filled::Empty(_)));
    }

    #[test]
    fn cursors_round_trip_and_junk_is_refused() {
        let reading = RawReading {
            ts: Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0).unwrap(),
            value: 1.0,
            quality: 0,
            received_at: Utc.with_ymd_and_hms(2024, 1, 2, 0, 0, 0).unwrap(),
        };
        let time = RawOrder::Time {
            from: reading.ts,
            to: reading.ts,
            after: None,
        };
        let arrival = RawOrder::Arrival {
            since: reading.ts,
            after: None,
        };
        assert_eq!(
            decode_cursor(&encode_cursor(&time, &reading)),
            Some(('t', reading.ts.timestamp_micros(), None))
        );
        assert_eq!(
            decode_cursor(&encode_cursor(&arrival, &reading)),
            Some((
                'a',
                reading.received_at.timestamp_micros(),
                Some(reading.ts.timestamp_micros())
            ))
        );
        for junk in ["", "!!!", "dA", "eDEyMw"] {
            assert_eq!(decode_cursor(junk), None, "{junk}");
        }
    }
}
