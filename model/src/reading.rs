//! A validated reading, in its sensor's canonical unit.

use crate::id::SensorKey;
use chrono::{DateTime, Utc};

/// Quality flags, a bit set stored with each reading. Zero means good.
///
/// The low byte is what the device said; higher bits are set by Tidemark's own data-quality checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Quality(pub i16);

impl Quality {
    pub const GOOD: Quality = Quality(0);
    /// The device marked the value as doubtful ("probably good", "suspect").
    pub const DEVICE_SUSPECT: Quality = Quality(1);
    /// The device marked the value as bad. It is stored, never used to raise a warning.
    pub const DEVICE_BAD: Quality = Quality(1 << 1);
    /// Tidemark's data-quality checks: an isolated value far from its neighbours.
    pub const SPIKE: Quality = Quality(1 << 8);
    /// Tidemark's data-quality checks: the same value repeated for too long.
    pub const STUCK: Quality = Quality(1 << 9);
    /// Tidemark's data-quality checks: outside the sensor's own plausible range.
    pub const OUT_OF_RANGE: Quality = Quality(1 << 10);

    /// Whether a value with these flags may be used to raise a warning: good or merely suspect.
    pub fn is_usable(self) -> bool {
        self.0 & !Self::DEVICE_SUSPECT.0 == 0
    }

    pub fn contains(self, other: Quality) -> bool {
        self.0 & other.0 == other.0
    }

    pub fn with(self, other: Quality) -> Quality {
        Quality(self.0 | other.0)
    }

    pub fn is_good(self) -> bool {
        self.0 == 0
    }
}

/// One accepted reading.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    pub sensor: SensorKey,
    pub ts: DateTime<Utc>,
    /// In the sensor's quantity's canonical unit.
    pub value: f64,
    pub quality: Quality,
}
