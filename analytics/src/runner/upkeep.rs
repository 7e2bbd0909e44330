//! The runner's work besides flood warnings: quality checks of ruled sensors, container collections
//! and overflows, and water meters' night flow and leak alerts.

use super::state::HISTORY_START;
use crate::messages;
use crate::quality::{self, QcRules};
use crate::series::Sample;
use crate::utility::{self, LeakRule, NightWindow};
use crate::waste::{self, ContainerRule};
use chrono::{DateTime, Utc};
use std::time::Duration;
use tidemark_model::warning::utility_alert_topic;
use tidemark_model::Quality;
use tidemark_store::circular::{CollectionRow, ContainerRow, ContainerState, OverflowRow};
use tidemark_store::flood::{QualityRuleRow, ThresholdRow};
use tidemark_store::water::{AlertText, LeakChange, LeakRow, LeakRuleRow, LeakState, NightFlowRow};
use tidemark_store::Store;

/// Runs the data-quality checks of sensors with a quality rule over their readings from `from` on,
/// and writes the flags that changed. Flags set earlier by these checks are judged afresh, so a
/// reading at the edge of an earlier batch loses a flag its later neighbours disprove.
pub(crate) async fn check_rule_sensors(
    store: &Store,
    rules: &[QualityRuleRow],
    from: DateTime<Utc>,
) -> Result<(), tidemark_store::Error> {
    if rules.is_empty() {
        return Ok(());
    }
    let keys: Vec<String> = rules.iter().map(|r| r.sensor_key.clone()).collect();
    let series = store.series(&keys, from).await?;
    for rule in rules {
        let Some(rows) = series.get(&rule.sensor_key) else {
            continue;
        };
        let fresh = samples(Some(rows));
        let qc = QcRules {
            plausible: (rule.plausible_low, rule.plausible_high),
            spike_floor: rule.spike_floor,
            stuck_run: usize::try_from(rule.stuck_run).unwrap_or(0),
            ..QcRules::default()
        };
        let changed: Vec<(DateTime<Utc>, i16)> = quality::check(&fresh, &qc)
            .into_iter()
            .zip(rows)
            .filter(|(flag, (_, _, stored))| flag.0 != *stored)
            .map(|(flag, (ts, _, _))| (*ts, flag.0))
            .collect();
        if !changed.is_empty() {
            let flagged = store.set_quality(&rule.sensor_key, &changed).await?;
            tracing::info!(stage = "analytics", sensor = %rule.sensor_key, flagged, "quality flags changed");
        }
    }
    Ok(())
}

/// How far before new readings a container's events are found again: a collection is read off the
/// fill level before it, and an overflow may have begun earlier.
pub(crate) const CONTAINER_LOOKBACK: chrono::Duration = chrono::Duration::days(2);

/// Finds the collections and overflow events of `containers` from `from` on (with
/// [`CONTAINER_LOOKBACK`] of readings before it) and replaces the stored ones.
pub(crate) async fn find_container_events(
    store: &Store,
    containers: &[ContainerRow],
    from: DateTime<Utc>,
) -> Result<(), tidemark_store::Error> {
    if containers.is_empty() {
        return Ok(());
    }
    let rule = ContainerRule::default();
    let since = if from > HISTORY_START + CONTAINER_LOOKBACK {
        from - CONTAINER_LOOKBACK
    } else {
        HISTORY_START
    };
    let keys: Vec<String> = containers
        .iter()
        .flat_map(|c| std::iter::once(c.fill_sensor.clone()).chain(c.weight_sensor.clone()))
        .collect();
    let series = store.series(&keys, since).await?;
    let now = Utc::now();
    for c in containers {
        let fill = samples(series.get(&c.fill_sensor));
        let collections = match &c.weight_sensor {
            Some(w) => waste::weighed_collections(&fill, &samples(series.get(w)), &rule),
            None => waste::collections(&fill, &rule),
        };
        let collections: Vec<CollectionRow> = collections
            .into_iter()
            .map(|k| CollectionRow {
                container: c.key.clone(),
                at: k.at,
                fill_before: k.before,
                fill_after: k.after,
                partial: k.partial,
                volume_litres: k.volume_litres(c.capacity_litres),
                mass_kg: k.mass_kg,
            })
            .collect();
        let overflows: Vec<OverflowRow> = waste::overflows(&fill, &rule, now)
            .into_iter()
            .map(|o| OverflowRow {
                container: c.key.clone(),
                from: o.from,
                until: o.until,
            })
            .collect();
        let latest = fill.iter().rev().find(|s| s.quality.is_usable());
        let state = ContainerState {
            fill: latest.map(|s| (s.value, s.ts)),
            fill_rate_per_hour: waste::fill_rate(&fill, &rule, now),
            full_at: waste::time_to_full(&fill, &rule, now),
            computed_at: now,
        };
        // Events are replaced from the start of the readings read, not before: an event found
        // only in part (its start before them) is left as it was.
        store
            .replace_container_events(&c.key, from, &collections, &overflows, &state)
            .await?;
    }
    Ok(())
}

/// Most leak changes (raises and lifts) recorded for one meter in one pass.
pub(crate) const MAX_LEAK_CHANGES: usize = 100;

/// Finds the minimum night flow of each district meter with a leak rule, from a little more than
/// the rule's baseline and run of nights before `from` (the whole history from [`HISTORY_START`]),
/// and stores the nights with what they show: new suspected leaks (raised as leak alerts on
/// `<prefix>/utility-alerts/<municipality>/<meter>`) and the end of open ones (lifting them).
pub(crate) async fn find_night_flow(
    store: &Store,
    rules: &[LeakRuleRow],
    from: DateTime<Utc>,
    topic_prefix: &str,
) -> Result<(), tidemark_store::Error> {
    for rule in rules {
        let lookback = chrono::Duration::days(i64::from(rule.baseline_nights + rule.nights) + 2);
        let since = if from > HISTORY_START + lookback {
            from - lookback
        } else {
            HISTORY_START
        };
        let series = store
            .series(std::slice::from_ref(&rule.sensor_key), since)
            .await?;
        let window = NightWindow {
            start: rule.night_start,
            end: rule.night_end,
            standard_hours: tidemark_model::time::DENMARK_STANDARD_HOURS,
        };
        let minima = utility::night_minima(&samples(series.get(&rule.sensor_key)), &window);
        // The first night read may lack its early hours; it is left as stored.
        let first_full = (since + chrono::Duration::days(1)).date_naive();
        let rows: Vec<NightFlowRow> = minima
            .iter()
            .map(|m| NightFlowRow {
                night: m.night,
                min_value: m.value,
                at: m.at,
                samples: i32::try_from(m.samples).unwrap_or(i32::MAX),
            })
            .collect();
        let label = store.meter_label(&rule.sensor_key).await?;
        let name = label.as_ref().map_or(rule.sensor_key.as_str(), |l| &l.name);
        let unit = label
            .as_ref()
            .and_then(|l| tidemark_model::Quantity::parse(&l.quantity).ok())
            .map_or("", |q| q.canonical_unit().symbol());
        // Changes in order, each against the state the ones before left: nights that show a leak
        // begin and end are a raise and then a lift. Every change moves past the nights of the
        // one before, so this ends; the bound is a guard, not a limit any real history reaches.
        let mut state = store.leak_state(&rule.sensor_key).await?;
        let mut changes = Vec::new();
        while changes.len() < MAX_LEAK_CHANGES {
            let Some(change) = next_leak_change(rule, &state, &minima, name, unit) else {
                break;
            };
            state.apply(&change);
            changes.push(change);
        }
        let meter = &rule.sensor_key;
        store
            .store_night_flow(meter, first_full, &rows, &changes, |code| {
                utility_alert_topic(topic_prefix, code, meter)
            })
            .await?;
    }
    Ok(())
}

/// What a meter's nights show against its suspicions (`state`): the end of the open one, or else
/// a new one after the last one ended. `name` and `unit` are the meter's, for the messages.
pub(crate) fn next_leak_change(
    rule: &LeakRuleRow,
    state: &LeakState,
    minima: &[utility::NightMinimum],
    name: &str,
    unit: &str,
) -> Option<LeakChange> {
    if let Some(open) = &state.open {
        let end = utility::leak_end(minima, open.baseline, rule.margin, open.raised_on)?;
        tracing::info!(stage = "analytics", sensor = %rule.sensor_key, since = %open.since, ended = %end.night, "suspected leak ended");
        let (message_en, message_da) = messages::leak_ended(name, end.night, end.value, unit);
        return Some(LeakChange::Ended {
            since: open.since,
            night: end.night,
            night_flow: end.value,
            alert: AlertText {
                at: end.at,
                message_en,
                message_da,
            },
        });
    }
    // A new suspicion is looked for only after the last one ended, with a baseline of the nights
    // since then, so that an old leak is never raised again.
    let fresh: Vec<utility::NightMinimum> = minima
        .iter()
        .filter(|m| state.last_ended.is_none_or(|ended| m.night >= ended))
        .cloned()
        .collect();
    let rule_of_nights = LeakRule {
        baseline_nights: usize::try_from(rule.baseline_nights).unwrap_or(1),
        margin: rule.margin,
        nights: usize::try_from(rule.nights).unwrap_or(1),
    };
    let leak = utility::leak_suspicion(&fresh, &rule_of_nights)?;
    tracing::warn!(stage = "analytics", sensor = %rule.sensor_key, since = %leak.since, "suspected leak");
    let at = fresh
        .iter()
        .find(|m| m.night == leak.raised_on)
        .map_or_else(Utc::now, |m| m.at);
    let (message_en, message_da) = messages::leak_raised(name, &leak, unit);
    Some(LeakChange::Raised {
        leak: LeakRow {
            sensor_key: rule.sensor_key.clone(),
            since: leak.since,
            raised_on: leak.raised_on,
            baseline: leak.baseline,
            night_flow: leak.night_flow,
            found_at: Utc::now(),
            ended_on: None,
            warning_id: None,
        },
        alert: AlertText {
            at,
            message_en,
            message_da,
        },
    })
}

pub(crate) fn samples(series: Option<&Vec<(DateTime<Utc>, f64, i16)>>) -> Vec<Sample> {
    series
        .map(|rows| {
            rows.iter()
                .map(|(ts, value, quality)| Sample {
                    ts: *ts,
                    value: *value,
                    quality: Quality(*quality),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The data-quality checks a level sensor's thresholds set (a flood evaluation and a nowcast judge
/// its readings alike).
pub(crate) fn threshold_qc(t: &ThresholdRow) -> QcRules {
    QcRules {
        spike_floor: t.spike_floor,
        plausible: (t.plausible_low, t.plausible_high),
        ..QcRules::default()
    }
}

pub(crate) fn chrono(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}
