//! What the unit tests share.

/// A small deterministic generator (a 64-bit linear congruential one), so that a test's random
/// series are the same on every run.
pub(crate) struct Lcg(pub(crate) u64);

impl Lcg {
    /// The next number, below `below`.
    pub(crate) fn next(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % below
    }
}
