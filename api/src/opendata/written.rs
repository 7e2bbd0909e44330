//! Aggregated buckets already written as JSON, kept by what they were written from.
//!
//! A long series' answer is mostly its buckets' JSON, and most of the API's CPU for it goes into
//! formatting their numbers. Past days hardly ever change, and the same series is asked for again
//! and again (dashboards, open-data clients polling a sensor's year). So the page writer writes a
//! series in groups of [`GROUP`] aligned buckets (a UTC day of hourly buckets) and keeps each
//! group's bytes here, under a hash of everything the writer reads to write them: each bucket's
//! start, counts, quality, state and the numbers asked for.
//!
//! A group of a packed day of hourly buckets (`readings_1h_days`) is kept instead under the digest
//! of the day's hours, which the database keeps with them, so that the API reads a held day's
//! 32-byte digest rather than its hours ([`WrittenBuckets::day_key`]).
//!
//! Nothing is ever invalidated: a group whose rows changed (a late reading, a new rollup) hashes to
//! a new key and is written afresh, and its old bytes are never asked for again and go when room is
//! needed. The hash is XXH3's 128 bits with a seed drawn when the process starts, so no one can
//! choose readings that collide with another group's key.
//!
//! The cache holds at most `api.bucket_cache` bytes (counting each entry's bookkeeping). When a new
//! group does not fit, entries chosen at random make room: a cycle of series larger than the cache
//! (every sensor's year in turn) still finds a share of its groups, where evicting the oldest would
//! find none.

use chrono::{DateTime, Utc};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, Mutex};

/// Buckets per group: aligned to `GROUP` times the bucket length since 1970, so a UTC day of
/// hourly buckets, four hours of 10-minute ones. The longest bucket written is about 370 bytes, so
/// a group stays under 9 KiB.
pub const GROUP: i64 = 24;

/// What an entry costs beyond its bytes: the map's slot, the key list's, the shared allocation's
/// counts and the allocator's rounding, roughly.
const ENTRY_OVERHEAD: usize = 96;

/// What keeping `written` counts against the budget.
fn entry_cost(written: &[u8]) -> usize {
    written.len() + ENTRY_OVERHEAD
}

/// What a day's JSON is written with besides its buckets: the aggregates asked for (in the order
/// of the API's `AGGREGATES`), and whether hours without readings are written as empty buckets
/// (`fill=null`) or left out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub asked: [bool; 7],
    pub nulls: bool,
}

impl Shape {
    fn mask(self) -> u8 {
        (0..7).fold(0u8, |mask, i| mask | u8::from(self.asked[i]) << i)
    }
}

/// Written groups by key; see the module documentation.
pub struct WrittenBuckets {
    budget: usize,
    seed: u64,
    kept: Mutex<Kept>,
    hits: Counter,
    misses: Counter,
    bytes: Gauge,
}

#[derive(Default)]
struct Kept {
    by_key: HashMap<u128, Arc<[u8]>, BuildHasherDefault<KeyHasher>>,
    /// The keys of `by_key`, in no order, for choosing one at random.
    keys: Vec<u128>,
    bytes: usize,
    /// The state of the generator that picks what to evict.
    random: u64,
}

impl WrittenBuckets {
    /// A cache of at most `budget` bytes; 0 keeps nothing (and hashes nothing).
    pub fn new(budget: usize) -> WrittenBuckets {
        use std::hash::BuildHasher;
        let random = std::collections::hash_map::RandomState::new();
        WrittenBuckets {
            budget,
            seed: random.hash_one(0x5eed_u64),
            kept: Mutex::new(Kept {
                random: random.hash_one(0x5e1ec7_u64) | 1,
                ..Kept::default()
            }),
            hits: Counter::default(),
            misses: Counter::default(),
            bytes: Gauge::default(),
        }
    }

    /// Whether anything is kept at all.
    pub fn enabled(&self) -> bool {
        self.budget > 0
    }

    /// The key of a group written from `inputs` (the writer's inputs, in a fixed layout).
    pub fn key(&self, inputs: &[u8]) -> u128 {
        twox_hash::XxHash3_128::oneshot_with_seed(self.seed, inputs)
    }

    /// The key of the group written for a packed day of hourly buckets (starting at `day`) from
    /// hours whose SHA-256 is `digest` (see `tidemark_store::opendata::PackedDay`), in `shape`.
    /// Its first byte is one no key from [`WrittenBuckets::key`]'s inputs starts with (those start
    /// with the mask of the aggregates asked for, below 128), so the two kinds never meet.
    pub fn day_key(&self, day: DateTime<Utc>, digest: &[u8; 32], shape: Shape) -> u128 {
        let mut inputs = [0u8; 3 + 8 + 32];
        inputs[0] = 0xff;
        inputs[1] = shape.mask();
        inputs[2] = u8::from(shape.nulls);
        inputs[3..11].copy_from_slice(&day.timestamp_micros().to_le_bytes());
        inputs[11..].copy_from_slice(digest);
        self.key(&inputs)
    }

    /// The bytes kept under each of `keys`, where any, found under one lock (a page's groups are
    /// looked up together: locking, counting and sharing each group apart cost more than copying
    /// it, each atomic operation waiting for the copies before it to be written).
    pub fn find(&self, keys: &[u128]) -> Vec<Option<Arc<[u8]>>> {
        if keys.is_empty() {
            return Vec::new();
        }
        let found: Vec<Option<Arc<[u8]>>> = {
            let kept = self.lock();
            keys.iter()
                .map(|key| kept.by_key.get(key).cloned())
                .collect()
        };
        let hits = found.iter().filter(|f| f.is_some()).count() as u64;
        self.hits.inc_by(hits);
        self.misses.inc_by(keys.len() as u64 - hits);
        found
    }

    /// Keeps each group's bytes under its key, evicting entries at random until it fits. A group
    /// larger than a sixteenth of the budget is not kept: it would evict too much at once. A key
    /// already kept keeps its bytes (the same inputs wrote the same bytes).
    pub fn keep(&self, groups: impl IntoIterator<Item = (u128, Arc<[u8]>)>) {
        let mut kept = self.lock();
        for (key, written) in groups {
            let cost = entry_cost(&written);
            if cost > self.budget / 16 || kept.by_key.contains_key(&key) {
                continue;
            }
            while kept.bytes + cost > self.budget && !kept.keys.is_empty() {
                // xorshift64: enough to spread evictions, no dependency.
                let mut x = kept.random;
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                kept.random = x;
                let at = (x % kept.keys.len() as u64) as usize;
                let gone = kept.keys.swap_remove(at);
                if let Some(bytes) = kept.by_key.remove(&gone) {
                    kept.bytes -= entry_cost(&bytes);
                }
            }
            kept.by_key.insert(key, written);
            kept.keys.push(key);
            kept.bytes += cost;
        }
        self.bytes.set(kept.bytes as i64);
    }

    /// Groups found and not found, and the bytes kept.
    pub fn figures(&self) -> (u64, u64, usize) {
        (self.hits.get(), self.misses.get(), self.lock().bytes)
    }

    /// Adds the cache's figures to `registry`, as `tidemark_api_written_buckets_*`.
    pub fn register(&self, registry: &mut Registry) {
        let registry = registry.sub_registry_with_prefix("tidemark_api_written_buckets");
        registry.register(
            "hits",
            "Groups of aggregated buckets whose JSON was found already written",
            self.hits.clone(),
        );
        registry.register(
            "misses",
            "Groups of aggregated buckets written afresh",
            self.misses.clone(),
        );
        registry.register(
            "bytes",
            "Bytes of written buckets kept, with their bookkeeping (at most api.bucket_cache)",
            self.bytes.clone(),
        );
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Kept> {
        // A panic while holding the lock leaves a consistent map (every step above keeps it so).
        self.kept
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The keys are already uniform hashes: their low 64 bits are the map's hash.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u128(&mut self, key: u128) {
        self.0 = key as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl WrittenBuckets {
        fn get(&self, key: u128) -> Option<Arc<[u8]>> {
            self.find(&[key]).pop().flatten()
        }

        fn put(&self, key: u128, written: &[u8]) {
            self.keep([(key, Arc::from(written))]);
        }
    }

    #[test]
    fn what_is_put_is_found_and_the_budget_holds() {
        let cache = WrittenBuckets::new(64 * 1024);
        let group = |i: u32| vec![i as u8; 1000 + i as usize % 7];
        cache.put(cache.key(b"a"), &group(1));
        assert_eq!(cache.get(cache.key(b"a")).as_deref(), Some(&group(1)[..]));
        assert!(cache.get(cache.key(b"b")).is_none());
        assert_eq!(cache.figures().0, 1);
        assert_eq!(cache.figures().1, 1);
        // A key already kept keeps its first bytes (the same inputs write the same bytes).
        cache.put(cache.key(b"a"), &group(2));
        assert_eq!(cache.get(cache.key(b"a")).as_deref(), Some(&group(1)[..]));
        // Far more than fits: the bytes kept stay within the budget, and the ones kept are intact.
        for i in 0..1000u32 {
            cache.put(cache.key(&i.to_le_bytes()), &group(i));
            assert!(cache.figures().2 <= 64 * 1024, "{:?}", cache.figures());
        }
        let intact = (0..1000u32)
            .filter(|i| {
                cache
                    .get(cache.key(&i.to_le_bytes()))
                    .is_some_and(|bytes| *bytes == group(*i)[..])
            })
            .count();
        // About 58 groups of about 1,100 bytes fit.
        assert!((50..=60).contains(&intact), "{intact}");
        // Asked for in a cycle of 100 groups, as a client walking through every sensor's year: a
        // share is found each time round (evicting the oldest would find none).
        let (found_before, _, _) = cache.figures();
        for _ in 0..10 {
            for i in 0..100u32 {
                let key = cache.key(&(5000 + i).to_le_bytes());
                if cache.get(key).is_none() {
                    cache.put(key, &group(i));
                }
            }
        }
        let found = cache.figures().0 - found_before;
        assert!((200..800).contains(&found), "{found} of 1000 found");
        let kept = cache.lock();
        assert_eq!(kept.keys.len(), kept.by_key.len());
    }

    #[test]
    fn nothing_is_kept_without_a_budget_or_past_a_sixteenth_of_it() {
        let off = WrittenBuckets::new(0);
        assert!(!off.enabled());
        off.put(off.key(b"a"), b"x");
        assert!(off.get(off.key(b"a")).is_none());
        let small = WrittenBuckets::new(16 * 1024);
        small.put(small.key(b"big"), &[0; 1024]);
        assert!(small.get(small.key(b"big")).is_none());
        small.put(small.key(b"fits"), &[0; 800]);
        assert!(small.get(small.key(b"fits")).is_some());
    }

    #[test]
    fn keys_differ_between_processes_and_inputs() {
        let (one, two) = (WrittenBuckets::new(1), WrittenBuckets::new(1));
        assert_ne!(one.key(b"same"), two.key(b"same"));
        assert_ne!(one.key(b"same"), one.key(b"other"));
        assert_eq!(one.key(b"same"), one.key(b"same"));
    }
}
