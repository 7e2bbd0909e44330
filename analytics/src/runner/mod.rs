//! The flood-risk runner: LISTENs for `readings_committed`, evaluates the flood areas the new
//! readings touch, sweeps every area periodically (for staleness and holds that end without new
//! readings), and records the resulting warning events with their outbox rows.

pub mod config;
pub mod evaluation;
pub mod nowcast;
pub mod series_cache;
pub mod state;
pub mod upkeep;

pub use config::AnalyticsConfig;
pub use state::{Error, Metrics, Settings};

use evaluation::evaluate_areas;
use state::{Model, HISTORY_START};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use tidemark_store::circular::ContainerRow;
use tidemark_store::coordination::{Channel, Notice, ReadingsCommitted};
use tidemark_store::flood::QualityRuleRow;
use tidemark_store::water::LeakRuleRow;
use tidemark_store::{notify, Store};
use tokio_util::sync::CancellationToken;
use upkeep::{check_rule_sensors, find_container_events, find_night_flow};

/// How many areas of a sweep go with each turn of the runner. Under load, a part of 500 areas
/// took 150 to 300 ms to record, and every area new readings touched waited behind it.
const SWEPT_AT_ONCE: usize = 100;

/// Runs until `shutdown`.
pub async fn run(
    settings: Settings,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let store = Store::connect(&settings.database).await?;
    // Quality findings change rollup days too; the refresher stops when this function returns.
    let refresher_stop = shutdown.child_token();
    let _refresher = refresher_stop.clone().drop_guard();
    tokio::spawn({
        let store = store.clone();
        let every = settings.database.rollup_refresh;
        async move {
            store
                .keep_rollups_fresh(every, refresher_stop.cancelled_owned())
                .await
        }
    });
    // Listening before the setup is read, so that no change falls between the two.
    let channels = [
        Channel::ReadingsCommitted,
        Channel::ReadingsFlagged,
        Channel::FloodSetupChanged,
        Channel::ForecastsCommitted,
    ];
    let mut listener = notify::listen(&settings.database, &channels).await?;
    let mut model = Model::load(&store).await?;
    tracing::info!(areas = model.setup.areas.len(), "analytics started");
    if let Err(error) = check_rule_sensors(&store, &model.quality_rules, HISTORY_START).await {
        tracing::warn!(%error, "quality checks failed");
    }
    if let Err(error) = find_container_events(&store, &model.containers, HISTORY_START).await {
        tracing::warn!(%error, "container events failed");
    }
    if let Err(error) = find_night_flow(
        &store,
        &model.leak_rules,
        HISTORY_START,
        &settings.topic_prefix,
    )
    .await
    {
        tracing::warn!(%error, "night flow failed");
    }
    let mut pending: BTreeSet<String> = BTreeSet::new();
    // Areas of a sweep not evaluated yet: every area at start, then every `sweep_interval`.
    let mut swept: BTreeSet<String> = model.setup.areas.iter().map(|a| a.key.clone()).collect();
    let mut nowcasts = nowcast::Nowcasts::default();
    // Gauges with new readings since the last look at their nowcasts.
    let mut nowcast_due: BTreeSet<String> = BTreeSet::new();
    // Readings committed before the listener started announce no nowcast: every gauge is looked
    // at once now (each is issued only when due).
    let gauges: Vec<String> = model
        .setup
        .thresholds
        .iter()
        .map(|t| t.sensor_key.clone())
        .collect();
    if let Err(error) = nowcasts
        .issue(&store, &model, &settings, &gauges, chrono::Utc::now())
        .await
    {
        tracing::warn!(%error, "nowcast failed");
    }
    let memos = evaluation::ForecastMemos::default();
    // Each sensor's readings over the look-back, kept from one evaluation to the next: only what
    // the notifications say changed is read again.
    let mut kept = series_cache::SeriesCache::new(
        settings.analytics.series_cache_readings,
        settings.analytics.series_refresh,
    );
    let mut sweep = tokio::time::interval(settings.analytics.sweep_interval);
    sweep.tick().await;
    loop {
        // The areas touched since the last evaluation are evaluated together: their readings
        // read at once, their events recorded in one transaction. A sweep goes a small part at
        // a time after them, so that new readings wait behind one small part at most, never
        // behind a whole sweep.
        let mut areas: Vec<String> = std::mem::take(&mut pending).into_iter().collect();
        for _ in 0..SWEPT_AT_ONCE {
            let Some(area) = swept.pop_first() else { break };
            if !areas.contains(&area) {
                areas.push(area);
            }
        }
        evaluate_areas(
            &store, &model, &settings, &areas, &metrics, &memos, &mut kept,
        )
        .await;
        // Nowcasts after the warnings: a new issue announces itself and is evaluated in turn.
        if !nowcast_due.is_empty() {
            let gauges: Vec<String> = std::mem::take(&mut nowcast_due).into_iter().collect();
            match nowcasts
                .issue(&store, &model, &settings, &gauges, chrono::Utc::now())
                .await
            {
                Ok(0) => {}
                Ok(issued) => tracing::info!(issued, "nowcasts issued"),
                Err(error) => tracing::warn!(%error, "nowcast failed"),
            }
        }
        // Notifications that came while the turn above ran were gathered for as long as it took:
        // they are taken at once, without waiting `debounce` for more.
        let queued = listener.ready();
        let notifications = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            _ = sweep.tick() => {
                swept.extend(model.setup.areas.iter().map(|a| a.key.clone()));
                (!queued.is_empty()).then_some(queued)
            }
            _ = std::future::ready(()), if !queued.is_empty() => Some(queued),
            notification = listener.recv() => {
                let Some(first) = notification else {
                    tracing::warn!("the readings listener closed; reconnecting");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    match notify::listen(&settings.database, &channels).await {
                        Ok(fresh) => listener = fresh,
                        Err(error) => tracing::warn!(%error, "cannot listen for readings"),
                    }
                    // Readings may have been missed meanwhile: look at everything, read whole.
                    kept.clear();
                    pending.extend(model.setup.areas.iter().map(|a| a.key.clone()));
                    continue;
                };
                let mut notifications = vec![first];
                let deadline = tokio::time::Instant::now() + settings.analytics.debounce;
                while let Ok(Some(more)) = tokio::time::timeout_at(deadline, listener.recv()).await {
                    notifications.push(more);
                }
                Some(notifications)
            }
            // The rest of a sweep, when nothing else is waiting.
            _ = std::future::ready(()), if !swept.is_empty() => None,
        };
        let Some(notifications) = notifications else {
            continue;
        };
        // A changed setup (over the API, or a migrate) is reloaded, and every area looked at.
        if notifications.contains(&Notice::FloodSetupChanged) {
            // Thresholds may have changed what old issues mean: read them all again.
            memos.forget();
            // Sensors may have been renamed or replaced: their readings are read whole.
            kept.clear();
            match Model::load(&store).await {
                Ok(fresh) => {
                    // Only new or changed containers and rules are looked at again.
                    let changed = new_or_changed(&fresh.containers, &model.containers);
                    let changed_quality =
                        new_or_changed(&fresh.quality_rules, &model.quality_rules);
                    let changed_rules = new_or_changed(&fresh.leak_rules, &model.leak_rules);
                    model = fresh;
                    tracing::info!(areas = model.setup.areas.len(), "flood setup reloaded");
                    // A new or changed quality rule applies to the whole history.
                    if let Err(error) =
                        check_rule_sensors(&store, &changed_quality, HISTORY_START).await
                    {
                        tracing::warn!(%error, "quality checks failed");
                    }
                    if let Err(error) = find_container_events(&store, &changed, HISTORY_START).await
                    {
                        tracing::warn!(%error, "container events failed");
                    }
                    if let Err(error) = find_night_flow(
                        &store,
                        &changed_rules,
                        HISTORY_START,
                        &settings.topic_prefix,
                    )
                    .await
                    {
                        tracing::warn!(%error, "night flow failed");
                    }
                }
                Err(error) => tracing::warn!(%error, "cannot reload the flood setup"),
            }
            pending.extend(model.setup.areas.iter().map(|a| a.key.clone()));
        }
        let forecast_ids: BTreeSet<i32> = notifications
            .iter()
            .flat_map(|n| match n {
                Notice::ForecastsCommitted { sensors } => sensors.clone(),
                _ => Vec::new(),
            })
            .collect();
        // Flags set elsewhere (another analytics process) are not dated: read whole.
        for notice in &notifications {
            if let Notice::ReadingsFlagged { sensor_key } = notice {
                kept.forget(sensor_key);
            }
        }
        let batches: Vec<ReadingsCommitted> = notifications
            .into_iter()
            .filter_map(|n| match n {
                Notice::ReadingsCommitted(batch) => Some(batch),
                _ => None,
            })
            .collect();
        let ids: BTreeSet<i32> = batches
            .iter()
            .flat_map(|b| b.sensors.iter().copied())
            .collect();
        if ids.iter().any(|id| !model.by_id.contains_key(id)) {
            match Model::load(&store).await {
                Ok(fresh) => model = fresh,
                Err(error) => tracing::warn!(%error, "cannot reload the flood setup"),
            }
        }
        // A batch's readings, late ones too, are read again from its earliest.
        for batch in &batches {
            for id in &batch.sensors {
                if let Some(key) = model.by_id.get(id) {
                    kept.changed(key, batch.from);
                }
            }
        }
        // The sensors with new readings.
        let keys: BTreeSet<&str> = ids
            .iter()
            .filter_map(|id| model.by_id.get(id).map(String::as_str))
            .collect();
        // Sensors with a quality rule are checked from a day before the earliest new reading,
        // so that a reading is judged again once its later neighbours have come.
        let earliest = batches.iter().map(|b| b.from).min();
        let ruled: Vec<QualityRuleRow> = model
            .quality_rules
            .iter()
            .filter(|r| keys.contains(r.sensor_key.as_str()))
            .cloned()
            .collect();
        if let (Some(earliest), false) = (earliest, ruled.is_empty()) {
            let from = earliest - chrono::Duration::days(1);
            // The checks may flag readings from `from` on.
            for rule in &ruled {
                kept.changed(&rule.sensor_key, from);
            }
            if let Err(error) = check_rule_sensors(&store, &ruled, from).await {
                tracing::warn!(%error, "quality checks failed");
            }
        }
        let touched: Vec<ContainerRow> = model
            .containers
            .iter()
            .filter(|c| {
                keys.contains(c.fill_sensor.as_str())
                    || c.weight_sensor.as_deref().is_some_and(|w| keys.contains(w))
            })
            .cloned()
            .collect();
        if let (Some(earliest), false) = (earliest, touched.is_empty()) {
            if let Err(error) = find_container_events(&store, &touched, earliest).await {
                tracing::warn!(%error, "container events failed");
            }
        }
        let metered: Vec<LeakRuleRow> = model
            .leak_rules
            .iter()
            .filter(|r| keys.contains(r.sensor_key.as_str()))
            .cloned()
            .collect();
        if let (Some(earliest), false) = (earliest, metered.is_empty()) {
            if let Err(error) =
                find_night_flow(&store, &metered, earliest, &settings.topic_prefix).await
            {
                tracing::warn!(%error, "night flow failed");
            }
        }
        nowcast_due.extend(keys.iter().map(|key| key.to_string()));
        for id in ids.into_iter().chain(forecast_ids) {
            if let Some(key) = model.by_id.get(&id) {
                pending.extend(model.areas_of(key));
            }
        }
    }
    tracing::info!("analytics stopped");
    Ok(())
}

/// The entries of `fresh` that `before` does not hold as they are: new ones and changed ones.
fn new_or_changed<T: Clone + PartialEq>(fresh: &[T], before: &[T]) -> Vec<T> {
    fresh
        .iter()
        .filter(|x| !before.contains(x))
        .cloned()
        .collect()
}
