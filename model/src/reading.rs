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

    /// The flags set, by name (`["good"]` for none); unknown bits as their numbers.
    pub fn names(self) -> Vec<String> {
        const NAMES: [(Quality, &str); 5] = [
            (Quality::DEVICE_SUSPECT, "device_suspect"),
            (Quality::DEVICE_BAD, "device_bad"),
            (Quality::SPIKE, "spike"),
            (Quality::STUCK, "stuck"),
            (Quality::OUT_OF_RANGE, "out_of_range"),
        ];
        if self.is_good() {
            return vec!["good".to_owned()];
        }
        let mut names = Vec::new();
        for bit in 0..16 {
            let flag = Quality(((1u16 << bit) as i16) & self.0);
            if flag.0 == 0 {
                continue;
            }
            match NAMES.iter().find(|(q, _)| *q == flag) {
                Some((_, name)) => names.push((*name).to_owned()),
                None => names.push(format!("flag_{}", 1u32 << bit)),
            }
        }
        names
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

#[cfg(test)]
mod tests {
    use super::Quality;

    #[test]
    fn flags_are_named() {
        assert_eq!(Quality::GOOD.names(), ["good"]);
        assert_eq!(
            Quality::DEVICE_SUSPECT.with(Quality::SPIKE).names(),
            ["device_suspect", "spike"]
        );
        assert_eq!(Quality(1 << 4).names(), ["flag_16"]);
    }
}
