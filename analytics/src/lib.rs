//! Flood risk, the warning lifecycle, and circular-material and utility statistics.
//!
//! # Layout
//!
//! The numerical core, pure functions over series, tested without a database:
//!
//! - [`series`]: [`Sample`], a reading as the analytics see it.
//! - [`quality`]: data-quality checks run before anything else: spikes (a Hampel filter), stuck
//!   values, the sensor's own plausible range, and the device's flags.
//! - [`level`]: threshold severities with persistence and hysteresis, as a state machine.
//! - [`trend`]: rate of rise by least squares, and the projected time to a threshold.
//! - [`tide`]: a gauge's astronomical tide from a harmonic analysis of its history (least squares
//!   over the main constituents), and its prediction.
//! - [`rain`]: rainfall accumulation over windows, against DMI's definitions.
//! - [`freshness`]: staleness of a station that has gone silent.
//! - [`upstream`]: when an upstream crossing reaches a downstream area.
//! - [`waste`]: container fill rate, time to full, collections, overflows, collection timing.
//! - [`utility`]: peaks, load-duration curves, night flow and leak suspicion.
//!
//! On top of them, with I/O:
//!
//! - [`setup`]: flood areas, thresholds, links and rain rules loaded from `config/flood/` files.
//! - [`geography`]: which municipalities a flood area concerns.
//! - [`area`]: an area's evaluation turned into warning events.
//! - [`messages`]: the events' texts in English and Danish.
//! - [`runner`]: LISTENs for `readings_committed`, evaluates the areas concerned and records their
//!   events, and keeps the container, night-flow, leak and trend tables.
//!
//! **Invariant:** nothing in the numerical core does I/O or reads the clock; time is always an
//! argument.

pub mod area;
pub mod freshness;
pub mod geography;
pub mod level;
pub mod messages;
pub mod quality;
pub mod rain;
pub mod runner;
pub mod series;
pub mod setup;
pub mod tide;
pub mod trend;
pub mod upstream;
pub mod utility;
pub mod waste;

#[cfg(test)]
mod testing;
