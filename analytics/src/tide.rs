//! The astronomical tide of a gauge from a harmonic analysis of its own history.
//!
//! The water level is modelled as a mean plus a sum of tidal constituents, each a cosine of a
//! fixed angular speed: `h(t) = z0 + Σ A_k cos(ω_k t − g_k)`, with `t` in hours since the
//! analysis's epoch (the first reading). Writing each constituent as `a_k cos ω_k t + b_k sin ω_k t`
//! makes the model linear in `z0, a_k, b_k`, which a least-squares fit over the readings gives
//! (the normal equations, solved by a Cholesky factorisation with ndarray). The amplitude is
//! `A_k = √(a_k² + b_k²)` and the phase `g_k = atan2(b_k, a_k)`, relative to the epoch. There are no
//! nodal corrections: over the weeks to months analysed they change amplitudes by a few percent.
//!
//! The constituents and their speeds are those of the standard tables (Pugh, *Tides, Surges and
//! Mean Sea-Level*, table 4.2; the speeds are the sums of the astronomical frequencies they are
//! named for). Constituents closer in speed than the record can separate (by the Rayleigh
//! criterion, S2 and K2, or K1 and P1, need about 183 days) are kept, and a small ridge term keeps
//! the fit determined: their shares of the tide are then not told apart, but the predicted tide
//! still is. At least [`MIN_DAYS`] of readings are required.
//!
//! [`nowcast`] adds the present surge to the predicted tide, decaying with a time scale.

use chrono::{DateTime, Utc};
use ndarray::{Array1, Array2};

/// A tidal constituent: its name and its angular speed in degrees per hour.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Constituent {
    pub name: &'static str,
    pub degrees_per_hour: f64,
}

/// The constituents analysed: the main semidiurnal and diurnal ones and the quarter-diurnal M4,
/// which shallow water makes.
pub const CONSTITUENTS: [Constituent; 9] = [
    Constituent {
        name: "M2",
        degrees_per_hour: 28.984_104_2,
    },
    Constituent {
        name: "S2",
        degrees_per_hour: 30.0,
    },
    Constituent {
        name: "N2",
        degrees_per_hour: 28.439_729_5,
    },
    Constituent {
        name: "K2",
        degrees_per_hour: 30.082_137_3,
    },
    Constituent {
        name: "K1",
        degrees_per_hour: 15.041_068_6,
    },
    Constituent {
        name: "O1",
        degrees_per_hour: 13.943_035_6,
    },
    Constituent {
        name: "P1",
        degrees_per_hour: 14.958_931_4,
    },
    Constituent {
        name: "Q1",
        degrees_per_hour: 13.398_660_9,
    },
    Constituent {
        name: "M4",
        degrees_per_hour: 57.968_208_4,
    },
];

/// The shortest record analysed, in days.
pub const MIN_DAYS: i64 = 30;

/// One constituent as the analysis found it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fitted {
    pub constituent: Constituent,
    /// In the readings' unit.
    pub amplitude: f64,
    /// Degrees, 0 to 360, relative to the epoch.
    pub phase_degrees: f64,
}

/// A gauge's tide: the mean level and its constituents from an epoch.
#[derive(Debug, Clone, PartialEq)]
pub struct Tide {
    pub epoch: DateTime<Utc>,
    pub mean: f64,
    pub constituents: Vec<Fitted>,
    /// The root mean square of the readings less the fitted tide: the surge and the noise.
    pub residual_rms: f64,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TideError {
    #[error("a harmonic analysis needs at least {MIN_DAYS} days of readings; these span {0:.1}")]
    TooShort(f64),
    #[error("the readings do not determine the tide (too few, or all at one time)")]
    Undetermined,
}

/// Hours from `epoch` to `t`.
fn hours(epoch: DateTime<Utc>, t: DateTime<Utc>) -> f64 {
    (t - epoch).num_milliseconds() as f64 / 3_600_000.0
}

/// The row of the design matrix at `t` hours: 1, then cos and sin of each constituent.
fn row(t: f64) -> impl Iterator<Item = f64> {
    std::iter::once(1.0).chain(CONSTITUENTS.iter().flat_map(move |c| {
        let angle = (c.degrees_per_hour * t).to_radians();
        [angle.cos(), angle.sin()]
    }))
}

/// Fits the tide to readings `(time, level)` in time order (gaps allowed) spanning at least
/// [`MIN_DAYS`].
pub fn analyse(readings: &[(DateTime<Utc>, f64)]) -> Result<Tide, TideError> {
    let (Some(first), Some(last)) = (readings.first(), readings.last()) else {
        return Err(TideError::Undetermined);
    };
    let span_days = hours(first.0, last.0) / 24.0;
    if span_days < MIN_DAYS as f64 {
        return Err(TideError::TooShort(span_days));
    }
    let epoch = first.0;
    let n = 1 + 2 * CONSTITUENTS.len();
    let mut normal = Array2::<f64>::zeros((n, n));
    let mut right = Array1::<f64>::zeros(n);
    for &(at, level) in readings {
        let x: Array1<f64> = row(hours(epoch, at)).collect();
        // XᵀX and Xᵀy, a reading at a time: the design matrix is never held whole.
        for i in 0..n {
            right[i] += x[i] * level;
            for j in 0..=i {
                normal[[i, j]] += x[i] * x[j];
            }
        }
    }
    for i in 0..n {
        for j in 0..i {
            normal[[j, i]] = normal[[i, j]];
        }
    }
    // A ridge of a millionth of the mean diagonal: it keeps constituents the record cannot
    // separate from making the system singular, and moves a determined fit by far less than the
    // readings' precision.
    let ridge = 1e-6 * normal.diag().sum() / n as f64;
    for i in 1..n {
        normal[[i, i]] += ridge;
    }
    let beta = solve_symmetric(normal, right).ok_or(TideError::Undetermined)?;
    let constituents: Vec<Fitted> = CONSTITUENTS
        .iter()
        .enumerate()
        .map(|(k, c)| {
            let (a, b) = (beta[1 + 2 * k], beta[2 + 2 * k]);
            Fitted {
                constituent: *c,
                amplitude: a.hypot(b),
                phase_degrees: b.atan2(a).to_degrees().rem_euclid(360.0),
            }
        })
        .collect();
    let mut tide = Tide {
        epoch,
        mean: beta[0],
        constituents,
        residual_rms: 0.0,
    };
    let squares: f64 = readings
        .iter()
        .map(|(at, level)| (level - tide.at(*at)).powi(2))
        .sum();
    tide.residual_rms = (squares / readings.len() as f64).sqrt();
    Ok(tide)
}

impl Tide {
    /// The predicted astronomical tide at `t`.
    pub fn at(&self, t: DateTime<Utc>) -> f64 {
        let t = hours(self.epoch, t);
        self.mean
            + self
                .constituents
                .iter()
                .map(|f| {
                    f.amplitude
                        * (f.constituent.degrees_per_hour * t - f.phase_degrees)
                            .to_radians()
                            .cos()
                })
                .sum::<f64>()
    }

    pub fn constituent(&self, name: &str) -> Option<&Fitted> {
        self.constituents
            .iter()
            .find(|f| f.constituent.name == name)
    }
}

/// A gauge's nowcast: the astronomical tide plus the present surge (the latest observation less
/// the tide then), which decays exponentially with the time scale `decay`, from `observed.0` for
/// `horizon` in steps of `step`. A surge is weather, which the tide does not know: the nowcast
/// keeps what is observed now and lets it fade towards the tide, at a pace the caller sets.
pub fn nowcast(
    tide: &Tide,
    observed: (DateTime<Utc>, f64),
    decay: chrono::Duration,
    horizon: chrono::Duration,
    step: chrono::Duration,
) -> Vec<(DateTime<Utc>, f64)> {
    let (t0, level) = observed;
    let surge = level - tide.at(t0);
    let scale = decay.num_seconds().max(1) as f64;
    let step = step.max(chrono::Duration::minutes(1));
    let mut out = Vec::new();
    let mut t = t0 + step;
    while t <= t0 + horizon {
        let factor = (-((t - t0).num_seconds() as f64) / scale).exp();
        out.push((t, tide.at(t) + surge * factor));
        t += step;
    }
    out
}

/// Solves `a x = b` for a symmetric positive definite `a` by Cholesky factorisation; None when
/// `a` is not positive definite.
fn solve_symmetric(a: Array2<f64>, b: Array1<f64>) -> Option<Array1<f64>> {
    let n = b.len();
    let mut l = Array2::<f64>::zeros((n, n));
    for i in 0..n {
        for j in 0..=i {
            let sum: f64 = (0..j).map(|k| l[[i, k]] * l[[j, k]]).sum();
            if i == j {
                let d = a[[i, i]] - sum;
                if d <= 0.0 || !d.is_finite() {
                    return None;
                }
                l[[i, j]] = d.sqrt();
            } else {
                l[[i, j]] = (a[[i, j]] - sum) / l[[j, j]];
            }
        }
    }
    // L y = b, then Lᵀ x = y.
    let mut y = Array1::<f64>::zeros(n);
    for i in 0..n {
        let sum: f64 = (0..i).map(|k| l[[i, k]] * y[k]).sum();
        y[i] = (b[i] - sum) / l[[i, i]];
    }
    let mut x = Array1::<f64>::zeros(n);
    for i in (0..n).rev() {
        let sum: f64 = (i + 1..n).map(|k| l[[k, i]] * x[k]).sum();
        x[i] = (y[i] - sum) / l[[i, i]];
    }
    Some(x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Duration, TimeZone};
    use tidemark_model::random::SeededRng;

    /// The constituents' periods in hours, from the tables rather than from [`CONSTITUENTS`], so
    /// that the synthetic tide checks the speeds the analysis uses.
    fn period(name: &str) -> f64 {
        match name {
            "M2" => 12.420_601_2,
            "S2" => 12.0,
            "N2" => 12.658_347_5,
            "K1" => 23.934_469_7,
            "O1" => 25.819_341_7,
            "M4" => 6.210_300_6,
            other => panic!("no period for {other}"),
        }
    }

    /// The synthetic tide at `t` hours.
    fn truth(parts: &[(&str, f64, f64)], t: f64) -> f64 {
        0.12 + parts
            .iter()
            .map(|(name, amplitude, phase)| {
                amplitude * (360.0 / period(name) * t - phase).to_radians().cos()
            })
            .sum::<f64>()
    }

    /// A synthetic record: `days` of 10-minute readings of a mean of 0.12, the given
    /// constituents `(name, amplitude, phase)` and noise of `noise` (a sum of uniforms), seeded.
    fn synthetic(days: i64, parts: &[(&str, f64, f64)], noise: f64) -> Vec<(DateTime<Utc>, f64)> {
        let epoch = Utc.with_ymd_and_hms(2023, 9, 1, 0, 0, 0).unwrap();
        let mut rng = SeededRng::seed_from_u64(7);
        (0..=days * 144)
            .map(|i| {
                let at = epoch + Duration::minutes(10 * i);
                let jitter: f64 = (0..4).map(|_| rng.range(-1.0..1.0)).sum::<f64>() / 2.0;
                (at, truth(parts, i as f64 / 6.0) + noise * jitter)
            })
            .collect()
    }

    fn angle_between(a: f64, b: f64) -> f64 {
        let d = (a - b).rem_euclid(360.0);
        d.min(360.0 - d)
    }

    #[test]
    fn a_month_recovers_m2_within_a_centimetre_and_two_degrees() {
        let parts = [
            ("M2", 0.50, 40.0),
            ("S2", 0.17, 95.0),
            ("N2", 0.10, 20.0),
            ("K1", 0.09, 210.0),
            ("O1", 0.07, 300.0),
            ("M4", 0.03, 150.0),
        ];
        let record = synthetic(30, &parts, 0.03);
        let tide = analyse(&record).unwrap();
        let m2 = tide.constituent("M2").unwrap();
        assert!((m2.amplitude - 0.50).abs() < 0.01, "{m2:?}");
        assert!(angle_between(m2.phase_degrees, 40.0) < 2.0, "{m2:?}");
        let o1 = tide.constituent("O1").unwrap();
        assert!((o1.amplitude - 0.07).abs() < 0.01, "{o1:?}");
        assert!((tide.mean - 0.12).abs() < 0.01, "{}", tide.mean);
        // What is left is the noise: its standard deviation is 0.03 × √(4/3) / 2 ≈ 0.017.
        assert!(tide.residual_rms < 0.02, "{}", tide.residual_rms);
        // The tide predicted a week past the record.
        let later = record.last().unwrap().0 + Duration::days(7);
        let t = (later - record[0].0).num_minutes() as f64 / 60.0;
        let truth = truth(&parts, t);
        assert!(
            (tide.at(later) - truth).abs() < 0.05,
            "{} against {truth}",
            tide.at(later)
        );
    }

    #[test]
    fn the_nowcast_starts_at_the_observed_surge_and_decays_to_the_tide() {
        let record = synthetic(30, &[("M2", 0.4, 10.0)], 0.0);
        let tide = analyse(&record).unwrap();
        let now = record.last().unwrap().0;
        // A 0.8 m surge on top of the tide.
        let observed = (now, tide.at(now) + 0.8);
        let hour = Duration::hours(1);
        let series = nowcast(
            &tide,
            observed,
            Duration::hours(6),
            Duration::hours(48),
            hour,
        );
        assert_eq!(series.len(), 48);
        assert_eq!(series[0].0, now + hour);
        let surge_at = |i: usize| series[i].1 - tide.at(series[i].0);
        assert!((surge_at(0) - 0.8 * (-1.0f64 / 6.0).exp()).abs() < 1e-9);
        assert!(
            (surge_at(5) - 0.8 * (-1.0f64).exp()).abs() < 1e-9,
            "one time scale: 1/e"
        );
        assert!(surge_at(47).abs() < 0.001, "two days on, the tide alone");
    }

    #[test]
    fn gaps_are_allowed_and_short_records_refused() {
        let mut record = synthetic(40, &[("M2", 0.3, 300.0)], 0.0);
        // Ten days missing in the middle.
        record.retain(|(at, _)| {
            let day = (*at - Utc.with_ymd_and_hms(2023, 9, 1, 0, 0, 0).unwrap()).num_days();
            !(10..20).contains(&day)
        });
        let m2 = *analyse(&record).unwrap().constituent("M2").unwrap();
        assert!((m2.amplitude - 0.3).abs() < 0.001, "{m2:?}");
        assert!(angle_between(m2.phase_degrees, 300.0) < 0.5, "{m2:?}");
        assert!(matches!(
            analyse(&synthetic(29, &[("M2", 0.3, 0.0)], 0.0)),
            Err(TideError::TooShort(_))
        ));
        assert_eq!(analyse(&[]), Err(TideError::Undetermined));
    }
}
