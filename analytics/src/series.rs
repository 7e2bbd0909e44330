//! A reading as the analytics see it.

use chrono::{DateTime, Utc};
use tidemark_model::Quality;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub ts: DateTime<Utc>,
    /// In the sensor's canonical unit.
    pub value: f64,
    pub quality: Quality,
}

impl Sample {
    pub fn good(ts: DateTime<Utc>, value: f64) -> Sample {
        Sample {
            ts,
            value,
            quality: Quality::GOOD,
        }
    }
}

/// Hours between two instants, with fractions.
pub fn hours_between(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    (to - from).num_milliseconds() as f64 / 3.6e6
}
