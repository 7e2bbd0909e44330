//! The physical processes behind simulated sensors. Pure functions of time and state; randomness
//! comes from the caller's seeded generator so that a run is reproducible.

use crate::scenario::{Storm, Surge};
use chrono::{DateTime, Datelike, Timelike, Utc};
use std::f64::consts::PI;
use tidemark_model::random::SeededRng;
use tidemark_model::time::{to_local, DENMARK_STANDARD_HOURS};

/// Hours since local midnight in Denmark (CET/CEST), with fractions.
pub fn local_hour(t: DateTime<Utc>) -> f64 {
    let local = to_local(t, DENMARK_STANDARD_HOURS);
    f64::from(local.hour()) + f64::from(local.minute()) / 60.0 + f64::from(local.second()) / 3600.0
}

fn is_weekend(t: DateTime<Utc>) -> bool {
    to_local(t, DENMARK_STANDARD_HOURS)
        .weekday()
        .number_from_monday()
        >= 6
}

fn bump(x: f64, centre: f64, width: f64) -> f64 {
    (-((x - centre) / width).powi(2) / 2.0).exp()
}

/// A standard normal draw (Box-Muller).
pub fn gaussian(rng: &mut SeededRng) -> f64 {
    let u1: f64 = rng.unit().max(f64::MIN_POSITIVE);
    let u2: f64 = rng.unit();
    (-2.0 * u1.ln()).sqrt() * (2.0 * PI * u2).cos()
}

/// One storm cell with absolute times.
#[derive(Debug, Clone)]
pub struct Cell {
    pub start: DateTime<Utc>,
    pub hours: f64,
    pub total_mm: f64,
}

impl Cell {
    pub fn from_storm(start: DateTime<Utc>, storm: &Storm) -> Cell {
        Cell {
            start: start + chrono::Duration::from_std(storm.start).unwrap_or_default(),
            hours: storm.duration.as_secs_f64() / 3600.0,
            total_mm: storm.total_mm,
        }
    }

    /// Intensity in mm/h at `t`: a triangle over the cell's life whose area is its total.
    pub fn intensity(&self, t: DateTime<Utc>) -> f64 {
        let hours = (t - self.start).num_milliseconds() as f64 / 3.6e6;
        if hours < 0.0 || hours > self.hours || self.hours <= 0.0 {
            return 0.0;
        }
        let peak = 2.0 * self.total_mm / self.hours;
        let half = self.hours / 2.0;
        peak * (1.0 - (hours - half).abs() / half)
    }

    pub fn is_over(&self, t: DateTime<Utc>) -> bool {
        (t - self.start).num_milliseconds() as f64 / 3.6e6 > self.hours
    }
}

/// Rain: scheduled cells, plus random cells started at `storms_per_day` on average.
#[derive(Debug, Clone, Default)]
pub struct Rain {
    pub cells: Vec<Cell>,
    pub storms_per_day: f64,
    pub mean_storm_mm: f64,
    /// The intensity over the last step, mm/h.
    pub intensity: f64,
    /// Depth since the last publication, mm.
    pub accumulated: f64,
}

impl Rain {
    pub fn step(&mut self, t: DateTime<Utc>, step_hours: f64, rng: &mut SeededRng) {
        if self.storms_per_day > 0.0 && rng.unit() < self.storms_per_day * step_hours / 24.0 {
            let total = -self.mean_storm_mm * rng.unit().max(1e-9).ln();
            self.cells.push(Cell {
                start: t,
                hours: rng.range(0.3..1.5),
                total_mm: total,
            });
        }
        self.intensity = self.cells.iter().map(|c| c.intensity(t)).sum();
        self.accumulated += self.intensity * step_hours;
        self.cells.retain(|c| !c.is_over(t) || c.start > t);
    }

    /// The depth to report, and a fresh start for the next interval.
    pub fn take(&mut self) -> f64 {
        std::mem::take(&mut self.accumulated)
    }
}

/// A linear reservoir: storage S (mm) fed by rain P (mm/h), draining at S/k.
#[derive(Debug, Clone, Copy, Default)]
pub struct Reservoir {
    pub storage: f64,
}

impl Reservoir {
    /// Advances one step and returns the outflow, mm/h.
    pub fn step(&mut self, rain_mm_per_h: f64, k_hours: f64, step_hours: f64) -> f64 {
        let k = k_hours.max(step_hours);
        self.storage += (rain_mm_per_h - self.storage / k) * step_hours;
        self.storage = self.storage.max(0.0);
        self.storage / k
    }
}

/// The daily swing of a river level: lowest in the afternoon (evaporation), highest at dawn.
pub fn diurnal(amplitude: f64, t: DateTime<Utc>) -> f64 {
    amplitude * (2.0 * PI * (local_hour(t) - 0.0) / 24.0).cos()
}

/// Astronomical tide (one semidiurnal constituent).
pub fn tide(amplitude: f64, period_hours: f64, t: DateTime<Utc>) -> f64 {
    let hours = t.timestamp() as f64 / 3600.0;
    amplitude * (2.0 * PI * hours / period_hours).cos()
}

/// Wind set-up of a surge: a smooth rise to `height` at `peak`, then a smooth fall.
pub fn surge(start: DateTime<Utc>, surge: &Surge, t: DateTime<Utc>) -> f64 {
    let peak = start + chrono::Duration::from_std(surge.peak).unwrap_or_default();
    let hours = (t - peak).num_milliseconds() as f64 / 3.6e6;
    let (rise, fall) = (
        surge.rise.as_secs_f64() / 3600.0,
        surge.fall.as_secs_f64() / 3600.0,
    );
    let shape = if hours < 0.0 {
        if -hours > rise {
            0.0
        } else {
            0.5 * (1.0 + (PI * hours / rise).cos())
        }
    } else if hours > fall {
        0.0
    } else {
        0.5 * (1.0 + (PI * hours / fall).cos())
    };
    surge.height * shape
}

/// Electrical load, kW: morning and evening peaks over a base, lower at weekends.
pub fn load(base: f64, peak: f64, weekend_factor: f64, t: DateTime<Utc>) -> f64 {
    let h = local_hour(t);
    let daily =
        base + peak * (0.7 * bump(h, 8.0, 1.5) + bump(h, 18.5, 2.0) + 0.3 * bump(h, 13.0, 3.0));
    if is_weekend(t) {
        daily * weekend_factor
    } else {
        daily
    }
}

/// Clear-sky photovoltaic output, kW, before clouds: a sine over the day's daylight hours, with the
/// day length from latitude and solar declination (Cooper's formula).
pub fn clear_sky(peak: f64, latitude: f64, t: DateTime<Utc>) -> f64 {
    let day = f64::from(t.ordinal());
    let declination = (23.44f64).to_radians() * (2.0 * PI * (284.0 + day) / 365.0).sin();
    let cos_hour_angle = (-latitude.to_radians().tan() * declination.tan()).clamp(-1.0, 1.0);
    let daylight = 2.0 * cos_hour_angle.acos().to_degrees() / 15.0;
    let solar_noon = 12.0 + f64::from(i32::from(tidemark_model::time::is_summer_time(t)));
    let sunrise = solar_noon - daylight / 2.0;
    let h = local_hour(t);
    if h <= sunrise || h >= sunrise + daylight {
        return 0.0;
    }
    // Higher sun in summer: scale by the noon elevation relative to the equinox's.
    let noon_elevation = (90.0 - latitude + declination.to_degrees())
        .to_radians()
        .sin()
        .max(0.0);
    peak * noon_elevation * (PI * (h - sunrise) / daylight).sin()
}

/// Outdoor air temperature, Cel: coldest before dawn, warmest mid-afternoon.
pub fn air_temperature(mean: f64, swing: f64, t: DateTime<Utc>) -> f64 {
    mean + swing * (2.0 * PI * (local_hour(t) - 9.0) / 24.0).sin()
}

/// Water demand of a supply district, l/s: a night minimum around 03:30, a morning peak and a
/// broad daytime use.
pub fn water_demand(night_minimum: f64, day_peak: f64, t: DateTime<Utc>) -> f64 {
    let h = local_hour(t);
    let shape =
        (0.6 * bump(h, 7.5, 1.2) + 0.5 * bump(h, 19.0, 2.0) + 0.45 * bump(h, 13.0, 3.5)).min(1.0);
    night_minimum + (day_peak - night_minimum) * shape
}

/// A waste container's contents.
#[derive(Debug, Clone, Default)]
pub struct ContainerState {
    /// Fill level, % of capacity (over 100: overflowing).
    pub fill: f64,
    pub collections: u64,
    pub overflowing_steps: u64,
}

impl ContainerState {
    /// Fills at `rate` %/h (varying around it), up to 120 %.
    pub fn fill(&mut self, rate: f64, step_hours: f64, rng: &mut SeededRng) {
        self.fill = (self.fill + rate * rng.range(0.5..1.5) * step_hours).min(120.0);
        if self.fill > 100.0 {
            self.overflowing_steps += 1;
        }
    }

    /// A collection round empties the container, leaving a little behind.
    pub fn collect(&mut self, rng: &mut SeededRng) {
        self.fill = rng.range(0.0..3.0);
        self.collections += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(h: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 14, h, 0, 0).unwrap()
    }

    #[test]
    fn a_storm_cell_delivers_its_total() {
        let cell = Cell {
            start: at(0),
            hours: 0.5,
            total_mm: 18.0,
        };
        let minutes: f64 = (0..40)
            .map(|m| cell.intensity(at(0) + chrono::Duration::minutes(m)) / 60.0)
            .sum();
        assert!((minutes - 18.0).abs() < 0.1, "{minutes}");
        // More than 15 mm in 30 minutes: a cloudburst by DMI's definition.
        assert!(minutes > 15.0);
    }

    #[test]
    fn a_reservoir_lags_and_returns() {
        let mut reservoir = Reservoir::default();
        let mut outflows = Vec::new();
        for minute in 0..600 {
            let rain = if minute < 30 { 36.0 } else { 0.0 };
            outflows.push(reservoir.step(rain, 2.0, 1.0 / 60.0));
        }
        let peak = outflows
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .unwrap()
            .0;
        assert!(
            peak >= 29,
            "the outflow peaks when the rain stops, not before ({peak})"
        );
        assert!(outflows[599] < outflows[peak] / 10.0, "and drains away");
    }

    #[test]
    fn a_surge_peaks_at_its_height() {
        let surge_spec = Surge {
            peak: std::time::Duration::from_secs(10 * 3600),
            height: 1.8,
            rise: std::time::Duration::from_secs(8 * 3600),
            fall: std::time::Duration::from_secs(12 * 3600),
        };
        assert!((surge(at(0), &surge_spec, at(10)) - 1.8).abs() < 1e-9);
        assert_eq!(surge(at(0), &surge_spec, at(1)), 0.0);
        assert!(surge(at(0), &surge_spec, at(6)) > 0.0);
    }

    #[test]
    fn profiles_have_their_shape() {
        // Night water use is the minimum; noon use is well above it.
        assert!(water_demand(2.0, 10.0, at(2)) < water_demand(2.0, 10.0, at(12)));
        assert!((water_demand(2.0, 10.0, at(2)) - 2.0).abs() < 0.5);
        // No sun at night in January in Denmark; some at noon.
        assert_eq!(clear_sky(5.0, 56.0, at(22)), 0.0);
        assert!(clear_sky(5.0, 56.0, at(11)) > 0.0);
        // Load peaks in the evening rather than at night.
        assert!(load(100.0, 50.0, 0.8, at(17)) > load(100.0, 50.0, 0.8, at(2)));
    }

    #[test]
    fn a_collection_empties_a_container() {
        let mut rng = SeededRng::seed_from_u64(1);
        let mut container = ContainerState::default();
        for _ in 0..100 {
            container.fill(2.0, 1.0, &mut rng);
        }
        assert!(container.fill > 100.0);
        assert!(container.overflowing_steps > 0);
        container.collect(&mut rng);
        assert!(container.fill < 3.0);
        assert_eq!(container.collections, 1);
    }
}
