//! Seeded random numbers: xoshiro256** seeded through SplitMix64, so that the same seed gives the
//! same draws on every platform and with every version of every dependency (the simulator's
//! reproducible runs; delivery's retry jitter, seeded from the operating system).

use std::ops::Range;

/// A seeded generator of uniform draws.
#[derive(Debug, Clone)]
pub struct SeededRng {
    state: [u64; 4],
}

impl SeededRng {
    pub fn seed_from_u64(seed: u64) -> SeededRng {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        SeededRng {
            state: [next(), next(), next(), next()],
        }
    }

    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.state;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `range`.
    pub fn range(&mut self, range: Range<f64>) -> f64 {
        range.start + (range.end - range.start) * self.unit()
    }

    /// Uniform among `0..n` (`n` positive).
    pub fn index(&mut self, n: usize) -> usize {
        ((self.unit() * n as f64) as usize).min(n.saturating_sub(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_repeat_by_seed_and_spread_evenly() {
        let draws = |seed| {
            let mut rng = SeededRng::seed_from_u64(seed);
            (0..10_000).map(|_| rng.unit()).collect::<Vec<f64>>()
        };
        assert_eq!(draws(7), draws(7));
        assert_ne!(draws(7), draws(8));
        let sample = draws(7);
        assert!(sample.iter().all(|u| (0.0..1.0).contains(u)));
        let mean = sample.iter().sum::<f64>() / sample.len() as f64;
        assert!((mean - 0.5).abs() < 0.02, "mean {mean}");
        let mut buckets = [0u32; 10];
        for u in &sample {
            buckets[(u * 10.0) as usize] += 1;
        }
        assert!(
            buckets.iter().all(|b| (850..1150).contains(b)),
            "{buckets:?}"
        );
        let mut rng = SeededRng::seed_from_u64(1);
        assert!((0..1000).all(|_| rng.index(3) < 3));
        assert!((0..1000).all(|_| (0.5..1.5).contains(&rng.range(0.5..1.5))));
    }
}
