//! Simulated forecasts: issued every `every` from a known truth (a scenario's, or a replayed
//! recording's), `horizon` ahead at `step`, with an error that grows with lead time.
//!
//! The error model (seeded, so a run repeats): the error at lead time `h` is `sd(h) * z(h)`.
//! `sd` is linear in `h` through the two given points (by default 0.10 m at 12 h and 0.25 m at
//! 36 h) and never below `floor`. `z` is a first-order autoregressive process along the lead time
//! with unit variance and the given correlation time (6 h by default): a forecast errs by a smooth
//! bias that wanders, as a model run does, not by independent noise at every step. Each issue
//! draws its own `z`, from one generator seeded by `seed`, so the same truth and seed give the
//! same forecasts.

use crate::engine::Publication;
use crate::process::gaussian;
use chrono::{DateTime, Duration, SecondsFormat, Utc};
use tidemark_model::random::SeededRng;

/// How forecasts are issued and how wrong they are.
#[derive(Debug, Clone)]
pub struct ForecastPlan {
    pub every: Duration,
    pub horizon: Duration,
    pub step: Duration,
    /// Error standard deviation, in the sensor's canonical unit, at two lead times.
    pub sd: [(Duration, f64); 2],
    pub floor: f64,
    pub correlation: Duration,
    pub seed: u64,
}

impl Default for ForecastPlan {
    fn default() -> Self {
        ForecastPlan {
            every: Duration::hours(6),
            horizon: Duration::hours(48),
            step: Duration::minutes(10),
            sd: [(Duration::hours(12), 0.10), (Duration::hours(36), 0.25)],
            floor: 0.02,
            correlation: Duration::hours(6),
            seed: 1,
        }
    }
}

impl ForecastPlan {
    /// The error standard deviation at lead time `lead`.
    pub fn sd_at(&self, lead: Duration) -> f64 {
        let [(h1, s1), (h2, s2)] = self.sd;
        let hours = |d: Duration| d.num_seconds() as f64 / 3600.0;
        let slope = if h2 == h1 {
            0.0
        } else {
            (s2 - s1) / (hours(h2) - hours(h1))
        };
        (s1 + slope * (hours(lead) - hours(h1))).max(self.floor)
    }
}

/// One simulated issue, ready to publish: the issue time, and the JSON (version 1).
#[derive(Debug, Clone, PartialEq)]
pub struct SimulatedIssue {
    pub sensor: String,
    pub issued_at: DateTime<Utc>,
    pub values: Vec<(DateTime<Utc>, f64)>,
}

impl SimulatedIssue {
    /// The documented forecast JSON, with times moved by `shift`.
    pub fn payload(&self, unit: &str, shift: Duration) -> Vec<u8> {
        let stamp = |t: DateTime<Utc>| (t + shift).to_rfc3339_opts(SecondsFormat::Secs, true);
        let values: Vec<serde_json::Value> = self
            .values
            .iter()
            .map(|(at, value)| {
                serde_json::json!({"valid_at": stamp(*at), "value": (value * 1000.0).round() / 1000.0})
            })
            .collect();
        serde_json::json!({
            "sensor": self.sensor, "issued_at": stamp(self.issued_at), "unit": unit, "values": values,
        })
        .to_string()
        .into_bytes()
    }

    /// The issue as a message of fleet member `source`, at its (unshifted) issue time.
    pub fn publication(&self, source: usize, unit: &str, shift: Duration) -> Publication {
        Publication {
            device: source,
            at: self.issued_at,
            payload: self.payload(unit, shift),
            readings: 0,
            malformed: false,
            duplicate: false,
        }
    }
}

/// The truth at `t`, linearly between the recorded points around it when they are at most
/// `max_gap` apart; `None` outside the record or across a longer gap.
fn truth_at(truth: &[(DateTime<Utc>, f64)], t: DateTime<Utc>, max_gap: Duration) -> Option<f64> {
    let after = truth.partition_point(|(at, _)| *at < t);
    let (t1, v1) = *truth.get(after)?;
    if t1 == t {
        return Some(v1);
    }
    let (t0, v0) = *truth.get(after.checked_sub(1)?)?;
    if t1 - t0 > max_gap {
        return None;
    }
    let f = (t - t0).num_milliseconds() as f64 / (t1 - t0).num_milliseconds() as f64;
    Some(v0 + f * (v1 - v0))
}

/// Issues for one sensor from its truth (points in time order), at every multiple of `every`
/// (from the Unix epoch) within the truth's span. A value is given only where the truth is
/// known, so the last issues end with the record.
pub fn issues(
    sensor: &str,
    truth: &[(DateTime<Utc>, f64)],
    plan: &ForecastPlan,
    rng: &mut SeededRng,
) -> Vec<SimulatedIssue> {
    let (Some(first), Some(last)) = (truth.first(), truth.last()) else {
        return Vec::new();
    };
    let every = plan.every.num_seconds().max(60);
    let start = first.0.timestamp().div_euclid(every) * every + every;
    let rho =
        (-(plan.step.num_seconds() as f64) / plan.correlation.num_seconds().max(1) as f64).exp();
    let innovation = (1.0 - rho * rho).sqrt();
    let mut out = Vec::new();
    let mut at = start;
    while at <= last.0.timestamp() {
        let issued_at = DateTime::<Utc>::from_timestamp(at, 0).expect("a time within the record");
        let mut z = gaussian(rng);
        let mut values = Vec::new();
        let mut lead = plan.step;
        while lead <= plan.horizon {
            let valid_at = issued_at + lead;
            let Some(value) = truth_at(truth, valid_at, Duration::hours(1)) else {
                break;
            };
            values.push((valid_at, value + plan.sd_at(lead) * z));
            z = rho * z + innovation * gaussian(rng);
            lead += plan.step;
        }
        if !values.is_empty() {
            out.push(SimulatedIssue {
                sensor: sensor.to_owned(),
                issued_at,
                values,
            });
        }
        at += every;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn truth(days: i64) -> Vec<(DateTime<Utc>, f64)> {
        let start = Utc.with_ymd_and_hms(2023, 10, 15, 0, 3, 0).unwrap();
        (0..days * 144)
            .map(|i| (start + Duration::minutes(10 * i), 0.5))
            .collect()
    }

    #[test]
    fn issues_come_every_six_hours_with_values_only_where_the_truth_is_known() {
        let plan = ForecastPlan::default();
        let issues = issues(
            "a.level",
            &truth(3),
            &plan,
            &mut SeededRng::seed_from_u64(7),
        );
        // From 06:00 on the first day to 18:00 on the third: 11 issues.
        assert_eq!(issues.len(), 11);
        assert_eq!(
            issues[0].issued_at,
            Utc.with_ymd_and_hms(2023, 10, 15, 6, 0, 0).unwrap()
        );
        assert_eq!(issues[0].values.len(), 288, "48 hours at 10 minutes");
        let last = issues.last().unwrap();
        assert!(last.values.last().unwrap().0 <= truth(3).last().unwrap().0);
        assert_eq!(
            issues,
            super::issues(
                "a.level",
                &truth(3),
                &plan,
                &mut SeededRng::seed_from_u64(7)
            ),
            "the same seed gives the same forecasts"
        );
    }

    #[test]
    fn the_error_grows_with_lead_time_as_configured() {
        let plan = ForecastPlan::default();
        assert!((plan.sd_at(Duration::hours(12)) - 0.10).abs() < 1e-12);
        assert!((plan.sd_at(Duration::hours(36)) - 0.25).abs() < 1e-12);
        assert!((plan.sd_at(Duration::zero()) - 0.025).abs() < 1e-12);
        // Over many issues, the spread of the error at 12 h and 36 h is near the model's.
        let mut rng = SeededRng::seed_from_u64(11);
        let truth = truth(200);
        let issues = issues("a.level", &truth, &plan, &mut rng);
        let spread = |lead_steps: usize| {
            let errors: Vec<f64> = issues
                .iter()
                .filter_map(|i| i.values.get(lead_steps - 1).map(|v| v.1 - 0.5))
                .collect();
            (errors.iter().map(|e| e * e).sum::<f64>() / errors.len() as f64).sqrt()
        };
        let (at12, at36) = (spread(72), spread(216));
        assert!((at12 - 0.10).abs() < 0.015, "{at12}");
        assert!((at36 - 0.25).abs() < 0.035, "{at36}");
    }
}
