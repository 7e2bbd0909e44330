//! Threshold severities with persistence and hysteresis, modelled on the UK Environment Agency
//! scheme: Flood Alert, Flood Warning, Severe Flood Warning, and "no longer in force" when lifted.
//!
//! Raising to a severity needs the value at or above its threshold for `persistence` (and for at
//! least `min_readings` consecutive usable readings). Lowering needs the value below the current
//! severity's threshold minus `hysteresis` for `hold`; it then drops to the highest severity whose
//! threshold minus hysteresis the value still reaches, or is lifted. A gap in the data changes
//! nothing: only readings move the state.

use chrono::{DateTime, Duration, Utc};

pub use tidemark_model::warning::Severity;

/// A severity's place in a rule's arrays (alert first).
fn index(severity: Severity) -> usize {
    severity.level() as usize - 1
}

/// One sensor's level thresholds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LevelRule {
    /// Alert, Warning and Severe thresholds: rising, or falling when `falling` is set.
    pub thresholds: [f64; 3],
    /// The thresholds point downwards (a drought): a value at or below one reaches it, and
    /// hysteresis counts upwards.
    pub falling: bool,
    pub persistence: Duration,
    pub min_readings: u32,
    pub hysteresis: f64,
    pub hold: Duration,
}

impl LevelRule {
    /// 1 for rising thresholds, -1 for falling ones: a value times this is what a rising rule
    /// compares.
    pub fn sign(&self) -> f64 {
        if self.falling {
            -1.0
        } else {
            1.0
        }
    }

    /// The same rule on values multiplied by [`LevelRule::sign`]: a falling rule becomes a rising
    /// one on negated values, so that one machine serves both directions.
    pub fn oriented(&self) -> LevelRule {
        let sign = self.sign();
        LevelRule {
            thresholds: self.thresholds.map(|t| t * sign),
            falling: false,
            ..*self
        }
    }

    pub fn threshold(&self, severity: Severity) -> f64 {
        self.thresholds[index(severity)]
    }

    /// The highest severity whose threshold (less `margin`) `value` reaches.
    fn reached(&self, value: f64, margin: f64) -> Option<Severity> {
        Severity::ALL
            .into_iter()
            .rev()
            .find(|s| value >= self.threshold(*s) - margin)
    }

    pub fn validate(&self) -> Result<(), String> {
        let [a, w, s] = self.thresholds;
        let finite = a.is_finite() && w.is_finite() && s.is_finite();
        let (falling, rising) = (finite && a > w && w > s, finite && a < w && w < s);
        if self.falling && !falling {
            return Err(format!(
                "falling thresholds must fall: alert {a} > warning {w} > severe {s}"
            ));
        }
        if !self.falling && !rising {
            return Err(format!(
                "thresholds must rise: alert {a} < warning {w} < severe {s} (or set direction = \
                 \"falling\" for thresholds that point downwards)"
            ));
        }
        if self.hysteresis < 0.0
            || self.persistence < Duration::zero()
            || self.hold < Duration::zero()
        {
            return Err("persistence, hold and hysteresis must not be negative".into());
        }
        Ok(())
    }
}

/// A change of severity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    pub from: Option<Severity>,
    pub to: Option<Severity>,
    pub at: DateTime<Utc>,
}

/// The state of one sensor's severity.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LevelState {
    pub severity: Option<Severity>,
    /// Per severity: when the current run at or above its threshold began, and its length.
    above: [Option<(DateTime<Utc>, u32)>; 3],
    /// When the value last went below the current severity's threshold less hysteresis.
    below_since: Option<DateTime<Utc>>,
}

impl LevelState {
    /// Takes one usable reading, in time order, and returns the change it causes, if any. The
    /// rule rises: a falling one is given [`LevelRule::oriented`], with the values negated.
    pub fn observe(&mut self, rule: &LevelRule, ts: DateTime<Utc>, value: f64) -> Option<Change> {
        debug_assert!(!rule.falling, "observe takes an oriented rule");
        for severity in Severity::ALL {
            let run = &mut self.above[index(severity)];
            *run = if value >= rule.threshold(severity) {
                Some(run.map_or((ts, 1), |(since, n)| (since, n + 1)))
            } else {
                None
            };
        }
        let persistent = Severity::ALL.into_iter().rev().find(|s| {
            self.above[index(*s)].is_some_and(|(since, n)| {
                ts - since >= rule.persistence && n >= rule.min_readings.max(1)
            })
        });
        if persistent > self.severity {
            self.below_since = None;
            return self.change(persistent, ts);
        }
        let current = self.severity?;
        if value >= rule.threshold(current) - rule.hysteresis {
            self.below_since = None;
            return None;
        }
        let since = *self.below_since.get_or_insert(ts);
        if ts - since < rule.hold {
            return None;
        }
        self.below_since = None;
        let lower = rule
            .reached(value, rule.hysteresis)
            .filter(|s| *s < current);
        self.change(lower, ts)
    }

    fn change(&mut self, to: Option<Severity>, at: DateTime<Utc>) -> Option<Change> {
        let from = std::mem::replace(&mut self.severity, to);
        (from != to).then_some(Change { from, to, at })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn rule() -> LevelRule {
        LevelRule {
            thresholds: [1.0, 1.5, 2.0],
            falling: false,
            persistence: Duration::minutes(20),
            min_readings: 1,
            hysteresis: 0.1,
            hold: Duration::minutes(30),
        }
    }

    /// Runs 10-minute samples through the machine; returns (sample index, new severity).
    fn run(rule: &LevelRule, values: &[f64]) -> Vec<(usize, Option<Severity>)> {
        let start = Utc.with_ymd_and_hms(2023, 10, 20, 0, 0, 0).unwrap();
        let mut state = LevelState::default();
        values
            .iter()
            .enumerate()
            .filter_map(|(i, v)| {
                state
                    .observe(rule, start + Duration::minutes(10 * i as i64), *v)
                    .map(|c| (i, c.to))
            })
            .collect()
    }

    use Severity::*;

    /// (values every 10 minutes, expected changes as (sample index, new severity))
    type Case = (Vec<f64>, Vec<(usize, Option<Severity>)>);

    #[test]
    fn table() {
        let cases: Vec<Case> = vec![
            // Persistence: 20 minutes at or above 1.0 (three samples) before the alert.
            (vec![0.9, 1.0, 1.05, 1.1, 1.2], vec![(3, Some(Alert))]),
            // A brief excursion does not persist.
            (vec![0.9, 1.1, 1.2, 0.9, 1.1, 0.9], vec![]),
            // Escalation through all three, each after its own persistence.
            (
                vec![1.0, 1.1, 1.2, 1.5, 1.6, 1.7, 2.0, 2.1, 2.2, 2.1],
                vec![(2, Some(Alert)), (5, Some(Warning)), (8, Some(Severe))],
            ),
            // A jump straight past two thresholds raises the highest persistent one.
            (vec![2.1, 2.2, 2.3], vec![(2, Some(Severe))]),
            // Hysteresis: 0.95 is below 1.0 but not below 0.9; no lowering.
            (
                vec![1.0, 1.1, 1.2, 0.95, 0.95, 0.95, 0.95, 0.95],
                vec![(2, Some(Alert))],
            ),
            // Lowering needs 30 minutes below 0.9: lifted at the fourth low sample.
            (
                vec![1.0, 1.1, 1.2, 0.8, 0.8, 0.8, 0.8, 0.8],
                vec![(2, Some(Alert)), (6, None)],
            ),
            // A rebound during the hold restarts it.
            (
                vec![1.0, 1.1, 1.2, 0.8, 0.8, 1.0, 0.8, 0.8, 0.8, 0.8],
                vec![(2, Some(Alert)), (9, None)],
            ),
            // From severe down to warning, then lifted.
            (
                vec![2.0, 2.1, 2.2, 1.6, 1.6, 1.6, 1.6, 0.5, 0.5, 0.5, 0.5],
                vec![(2, Some(Severe)), (6, Some(Warning)), (10, None)],
            ),
        ];
        for (values, expected) in cases {
            assert_eq!(run(&rule(), &values), expected, "{values:?}");
        }
    }

    #[test]
    fn a_reading_count_can_be_required_as_well() {
        let counted = LevelRule {
            persistence: Duration::zero(),
            min_readings: 4,
            ..rule()
        };
        assert_eq!(run(&counted, &[1.1, 1.1, 1.1, 1.1]), vec![(3, Some(Alert))]);
    }

    #[test]
    fn thresholds_must_rise() {
        assert!(rule().validate().is_ok());
        let bad = LevelRule {
            thresholds: [1.5, 1.0, 2.0],
            ..rule()
        };
        assert!(bad.validate().is_err());
        let falling = LevelRule {
            thresholds: [2.0, 1.5, 1.0],
            falling: true,
            ..rule()
        };
        assert!(falling.validate().is_ok());
        assert!(LevelRule {
            thresholds: [1.0, 1.5, 2.0],
            ..falling
        }
        .validate()
        .unwrap_err()
        .contains("must fall"));
    }

    /// A falling rule is the rising machine on negated values: a groundwater level sinking
    /// through 2.0, 1.5 and 1.0 m raises alert, warning and severe, and recovering above the
    /// threshold plus the hysteresis for the hold lowers it.
    #[test]
    fn falling_thresholds_mirror_rising_ones() {
        let falling = LevelRule {
            thresholds: [2.0, 1.5, 1.0],
            falling: true,
            ..rule()
        }
        .oriented();
        let levels = [
            2.1, 2.0, 1.95, 1.9, 1.5, 1.4, 1.3, 1.3, 1.7, 1.7, 1.7, 1.7, 2.2, 2.2, 2.2, 2.2,
        ];
        let negated: Vec<f64> = levels.iter().map(|v| -v).collect();
        assert_eq!(
            run(&falling, &negated),
            vec![
                (3, Some(Alert)),
                (6, Some(Warning)),
                (11, Some(Alert)),
                (15, None)
            ]
        );
    }
}
