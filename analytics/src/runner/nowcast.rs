//! Tidemark's own nowcast, for tide gauges no other source forecasts: the astronomical tide from a
//! harmonic analysis of the gauge's own history (`tide::analyse`, refitted daily in data time),
//! plus the present surge decaying with `analytics.nowcast_decay`, issued as source `nowcast`
//! every `analytics.nowcast_every` of readings. Rivers have no nowcast issue of their own: their
//! expected warnings come from the rate-of-rise projection (`area`).

use super::state::{Model, Settings};
use super::upkeep::{chrono, samples, threshold_qc};
use crate::quality;
use crate::tide::{self, Tide};
use chrono::{DateTime, Duration, Utc};
use std::collections::HashMap;
use tidemark_model::forecast::ForecastValue;
use tidemark_store::forecasts::ForecastRow;
use tidemark_store::Store;

/// The source name of the nowcast (registered by migration V17 as built in).
pub const SOURCE: &str = "nowcast";
/// How far ahead, and at what step, a nowcast runs.
const HORIZON: i64 = 48;
const STEP_MINUTES: i64 = 10;

/// What the runner keeps between nowcasts: each gauge's fitted tide (and the data time it was fitted
/// at) and its latest issue.
#[derive(Default)]
pub(crate) struct Nowcasts {
    tides: HashMap<String, (DateTime<Utc>, Option<Tide>)>,
    issued: HashMap<String, DateTime<Utc>>,
}

impl Nowcasts {
    /// Issues a nowcast for each of `sensors` that is a thresholded sea level gauge, is due, has
    /// the history a harmonic analysis needs, and has no current forecast from another source.
    /// Returns how many were stored.
    pub(crate) async fn issue(
        &mut self,
        store: &Store,
        model: &Model,
        settings: &Settings,
        sensors: &[String],
        now: DateTime<Utc>,
    ) -> Result<usize, tidemark_store::Error> {
        let every = chrono(settings.analytics.nowcast_every);
        let max_age = chrono(settings.analytics.forecast_max_age);
        let gauges: Vec<String> = sensors
            .iter()
            .filter(|key| {
                model
                    .sensors
                    .get(*key)
                    .is_some_and(|s| s.quantity == "sea_level")
                    && model.thresholds(key).is_some()
            })
            .cloned()
            .collect();
        if gauges.is_empty() {
            return Ok(0);
        }
        // Two cheap reads first, at once: a gauge whose newest reading is not yet due, or that
        // another source forecasts, costs nothing more. (They run after every evaluation with new
        // readings, and the next evaluation waits for them.)
        let (newest, issues) = tokio::try_join!(
            store.newest_readings(&gauges),
            store.latest_issue_times(&gauges)
        )?;
        for (sensor, source, _, at) in &issues {
            if source == SOURCE {
                self.issued.entry(sensor.clone()).or_insert(*at);
            }
        }
        let mut stored = 0;
        for key in &gauges {
            let (Some(info), Some(threshold), Some(newest)) = (
                model.sensors.get(key),
                model.thresholds(key),
                newest.get(key).map(|(ts, _)| ts),
            ) else {
                continue;
            };
            if self.issued.get(key).is_some_and(|at| *newest < *at + every) {
                continue;
            }
            let others = issues.iter().any(|(sensor, _, builtin, at)| {
                sensor == key && !builtin && *at + max_age > *newest
            });
            if others {
                continue;
            }
            let from = now - chrono(settings.analytics.nowcast_history);
            let series = store.series(std::slice::from_ref(key), from).await?;
            let usable = quality::usable(&samples(series.get(key)), &threshold_qc(threshold));
            let Some(last) = usable.last().copied() else {
                continue;
            };
            if self.issued.get(key).is_some_and(|at| last.ts < *at + every) {
                continue;
            }
            if issues.iter().any(|(sensor, _, builtin, at)| {
                sensor == key && !builtin && *at + max_age > last.ts
            }) {
                continue;
            }
            let refit = chrono(settings.analytics.nowcast_refit);
            let fitted = self.tides.get(key).filter(|(at, _)| last.ts - *at < refit);
            let tide = match fitted {
                Some((_, tide)) => tide.clone(),
                None => {
                    let points: Vec<(DateTime<Utc>, f64)> =
                        usable.iter().map(|s| (s.ts, s.value)).collect();
                    // Least squares over weeks of readings: off the async executor.
                    let fit = tokio::task::spawn_blocking(move || tide::analyse(&points))
                        .await
                        .ok()
                        .and_then(Result::ok);
                    self.tides.insert(key.clone(), (last.ts, fit.clone()));
                    fit
                }
            };
            let Some(tide) = tide else {
                continue;
            };
            let values = tide::nowcast(
                &tide,
                (last.ts, last.value),
                chrono(settings.analytics.nowcast_decay),
                Duration::hours(HORIZON),
                Duration::minutes(STEP_MINUTES),
            );
            let row = ForecastRow {
                sensor_id: info.id,
                source: SOURCE.to_owned(),
                issued_at: last.ts,
                values: values
                    .into_iter()
                    .filter(|(_, v)| v.is_finite())
                    .map(|(valid_at, value)| ForecastValue {
                        valid_at,
                        value,
                        quantiles: Vec::new(),
                    })
                    .collect(),
            };
            if row.values.is_empty() {
                continue;
            }
            store.store_forecast(&row).await?;
            self.issued.insert(key.clone(), last.ts);
            stored += 1;
        }
        Ok(stored)
    }
}
