//! The readings evaluations work on, carried over from one evaluation to the next.
//!
//! An evaluation looks at each of its sensors' readings over `analytics.lookback` (14 days by
//! default). Reading all of them for every area new readings touch would cost the database
//! thousands of rows per sensor for each new reading. The runner keeps each sensor's window
//! instead and reads from the database only what changed since: the readings of a committed
//! batch (from the earliest timestamp its notification names, so a late reading is read too),
//! and the readings whose quality flags changed. Whatever it cannot account for exactly is read
//! whole again: a sensor it has not kept, or kept for longer than `analytics.series_refresh`, and
//! every sensor after its notifications may have been missed.
//!
//! With each sensor's readings it keeps what evaluations worked out from them
//! ([`SensorProgress`]: its timelines up to a reading), so that the next evaluation goes on from
//! there. Whatever re-reads readings the progress was worked out from lets that progress go, and
//! so does letting go of the sensor.
//!
//! What it keeps is bounded: at most `analytics.series_cache_readings` readings, the sensors used
//! least recently let go first (they are read whole when next needed).

use crate::area::{Progress, SensorProgress};
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use tidemark_store::Store;

/// A reading as evaluations take it: time, value, quality flags.
pub type Reading = (DateTime<Utc>, f64, i16);

/// One sensor's kept readings.
#[derive(Debug)]
struct Kept {
    /// Every reading at or after this time is held, but for those at or after `changed`.
    from: DateTime<Utc>,
    /// In time order.
    readings: Vec<Reading>,
    /// The earliest time from which stored readings may differ from those held.
    changed: Option<DateTime<Utc>>,
    /// When the sensor was last read whole.
    read_whole_at: DateTime<Utc>,
    /// The [`SeriesCache::uses`] count when it was last asked for, to let go of the least used.
    used: u64,
    /// What evaluations worked out from the readings held.
    progress: SensorProgress,
}

/// See the module documentation.
#[derive(Debug)]
pub struct SeriesCache {
    sensors: HashMap<String, Kept>,
    /// Readings held in all.
    held: usize,
    max_held: usize,
    refresh: chrono::Duration,
    uses: u64,
    /// Readings read from the database, in all.
    read: u64,
}

impl SeriesCache {
    /// Holds at most `max_held` readings, each sensor read whole again after `refresh`.
    pub fn new(max_held: usize, refresh: std::time::Duration) -> SeriesCache {
        SeriesCache {
            sensors: HashMap::new(),
            held: 0,
            max_held,
            refresh: chrono::Duration::from_std(refresh).unwrap_or(chrono::Duration::MAX),
            uses: 0,
            read: 0,
        }
    }

    /// Stored readings of `sensor` at or after `from` may have changed (a committed batch, or
    /// quality flags set): they are read again before the next use.
    pub fn changed(&mut self, sensor: &str, from: DateTime<Utc>) {
        if let Some(kept) = self.sensors.get_mut(sensor) {
            kept.changed = Some(kept.changed.map_or(from, |c| c.min(from)));
        }
    }

    /// `sensor`'s readings are read whole before the next use.
    pub fn forget(&mut self, sensor: &str) {
        if let Some(kept) = self.sensors.remove(sensor) {
            self.held -= kept.readings.len();
        }
    }

    /// Every sensor is read whole before its next use.
    pub fn clear(&mut self) {
        self.sensors.clear();
        self.held = 0;
    }

    /// Readings read from the database so far.
    pub fn readings_read(&self) -> u64 {
        self.read
    }

    /// Readings held now.
    pub fn readings_held(&self) -> usize {
        self.held
    }

    /// Each sensor's readings at or after `start`, in time order, as [`Store::series`] would
    /// read them now: held ones, with what changed read again, in one query. `now` is the wall
    /// clock, for `refresh`. A sensor without readings is left out, as `Store::series` leaves it.
    pub async fn series(
        &mut self,
        store: &Store,
        sensors: &[String],
        start: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<HashMap<String, Vec<Reading>>, tidemark_store::Error> {
        self.uses += 1;
        // What to read, and from when: a sensor not held (or held from later than `start`, or for
        // too long) whole; a changed one from its change.
        let mut reads: Vec<(&str, DateTime<Utc>)> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for sensor in sensors {
            if !seen.insert(sensor) {
                continue;
            }
            let from = match self.sensors.get(sensor) {
                Some(kept) if kept.from <= start && now - kept.read_whole_at < self.refresh => {
                    match kept.changed {
                        Some(changed) => changed.max(start),
                        None => continue,
                    }
                }
                _ => {
                    self.forget(sensor);
                    start
                }
            };
            reads.push((sensor.as_str(), from));
        }
        let mut fresh = if reads.is_empty() {
            HashMap::new()
        } else {
            store.series_from(&reads).await?
        };
        for (sensor, from) in reads {
            let readings = fresh.remove(sensor).unwrap_or_default();
            tracing::trace!(sensor, %from, read = readings.len(), last = ?readings.last().map(|r| r.0), "kept readings read");
            self.read += readings.len() as u64;
            self.held += readings.len();
            match self.sensors.get_mut(sensor) {
                Some(kept) => {
                    let cut = kept.readings.partition_point(|r| r.0 < from);
                    self.held -= kept.readings.len() - cut;
                    kept.readings.truncate(cut);
                    kept.readings.extend(readings);
                    kept.changed = None;
                    kept.progress.changed(from);
                }
                None => {
                    self.sensors.insert(
                        sensor.to_owned(),
                        Kept {
                            from: start,
                            readings,
                            changed: None,
                            read_whole_at: now,
                            used: 0,
                            progress: SensorProgress::default(),
                        },
                    );
                }
            }
        }
        let mut out = HashMap::new();
        for sensor in sensors {
            let Some(kept) = self.sensors.get_mut(sensor) else {
                continue;
            };
            // The window moves on: what fell out of it is let go.
            let old = kept.readings.partition_point(|r| r.0 < start);
            kept.readings.drain(..old);
            self.held -= old;
            kept.from = kept.from.max(start);
            kept.used = self.uses;
            if !kept.readings.is_empty() {
                out.insert(sensor.clone(), kept.readings.clone());
            }
        }
        self.let_go();
        Ok(out)
    }

    /// What evaluations worked out from the readings of those of `sensors` held, taken out to
    /// go on from (and given back with [`SeriesCache::keep_progress`]).
    pub fn take_progress(&mut self, sensors: &[String]) -> Progress {
        sensors
            .iter()
            .filter_map(|sensor| {
                let kept = self.sensors.get_mut(sensor)?;
                let progress = std::mem::take(&mut kept.progress);
                (!progress.is_empty()).then(|| (sensor.clone(), progress))
            })
            .collect()
    }

    /// Keeps what evaluations worked out from the readings [`SeriesCache::series`] gave last, for
    /// the sensors still held.
    pub fn keep_progress(&mut self, progress: Progress) {
        for (sensor, progress) in progress {
            if let Some(kept) = self.sensors.get_mut(&sensor) {
                kept.progress = progress;
            }
        }
    }

    /// Lets go of the least recently used sensors until at most `max_held` readings are held.
    fn let_go(&mut self) {
        if self.held <= self.max_held {
            return;
        }
        let mut by_use: Vec<(u64, String)> = self
            .sensors
            .iter()
            .map(|(sensor, kept)| (kept.used, sensor.clone()))
            .collect();
        by_use.sort_unstable();
        for (_, sensor) in by_use {
            if self.held <= self.max_held {
                break;
            }
            self.forget(&sensor);
        }
    }
}
