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
