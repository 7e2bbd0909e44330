//! The `[analytics]` section.

use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;
use tidemark_model::duration;

/// The `[analytics]` section of the configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnalyticsConfig {
    /// Flood files (areas, links, thresholds, rain rules), relative to the base configuration
    /// file's folder.
    #[serde(default)]
    pub flood_files: Vec<PathBuf>,
    /// The municipality layer (GeoJSON with KOMKODE and KOMNAVN), relative likewise.
    #[serde(default = "default_municipalities")]
    pub municipalities: PathBuf,
    /// An area outside every municipality goes to the nearest one within this distance, km.
    #[serde(default = "default_nearest_km")]
    pub nearest_municipality_km: f64,
    /// How far back an evaluation reads.
    #[serde(default = "default_lookback", with = "duration::serde_str")]
    pub lookback: Duration,
    /// At most this many readings are kept between evaluations (see [`super::series_cache`]).
    #[serde(default = "default_series_cache_readings")]
    pub series_cache_readings: usize,
    /// A kept sensor's readings are read whole again after this long.
    #[serde(default = "default_series_refresh", with = "duration::serde_str")]
    pub series_refresh: Duration,
    /// How often every area is evaluated, new readings or not.
    #[serde(default = "default_sweep", with = "duration::serde_str")]
    pub sweep_interval: Duration,
    /// A station is stale after this many expected intervals without a reading.
    #[serde(default = "default_stale_after")]
    pub stale_after_intervals: i32,
    /// How long notifications are gathered before evaluating.
    #[serde(default = "default_debounce", with = "duration::serde_str")]
    pub debounce: Duration,
    /// How long a rainfall alert stays after the rain last exceeded a rule.
    #[serde(default = "default_rain_hold", with = "duration::serde_str")]
    pub rain_hold: Duration,
    /// A forecast issue is current for at most this long (a later issue of its source replaces
    /// it sooner).
    #[serde(default = "default_forecast_max_age", with = "duration::serde_str")]
    pub forecast_max_age: Duration,
    /// The nowcast of a tide gauge without another forecast is issued this often (in the time of
    /// its readings).
    #[serde(default = "default_nowcast_every", with = "duration::serde_str")]
    pub nowcast_every: Duration,
    /// The time scale over which the nowcast lets the present surge fade into the tide.
    #[serde(default = "default_nowcast_decay", with = "duration::serde_str")]
    pub nowcast_decay: Duration,
    /// How much of a gauge's history its harmonic analysis uses (at least 30 days are needed).
    #[serde(default = "default_nowcast_history", with = "duration::serde_str")]
    pub nowcast_history: Duration,
    /// How often a gauge's tide is fitted again.
    #[serde(default = "default_nowcast_refit", with = "duration::serde_str")]
    pub nowcast_refit: Duration,
    /// Where `tidemark analytics` serves `/metrics`, `/healthz` and `/readyz` (in `tidemark run`
    /// the API serves them).
    #[serde(default = "default_analytics_metrics_listen")]
    pub metrics_listen: String,
}

impl Default for AnalyticsConfig {
    fn default() -> Self {
        AnalyticsConfig {
            flood_files: Vec::new(),
            municipalities: default_municipalities(),
            nearest_municipality_km: default_nearest_km(),
            lookback: default_lookback(),
            series_cache_readings: default_series_cache_readings(),
            series_refresh: default_series_refresh(),
            sweep_interval: default_sweep(),
            stale_after_intervals: default_stale_after(),
            debounce: default_debounce(),
            rain_hold: default_rain_hold(),
            forecast_max_age: default_forecast_max_age(),
            nowcast_every: default_nowcast_every(),
            nowcast_decay: default_nowcast_decay(),
            nowcast_history: default_nowcast_history(),
            nowcast_refit: default_nowcast_refit(),
            metrics_listen: default_analytics_metrics_listen(),
        }
    }
}

pub(crate) fn default_municipalities() -> PathBuf {
    PathBuf::from("reference/dk-kommuner/kommuner.geojson")
}

pub(crate) const fn default_nearest_km() -> f64 {
    25.0
}

pub(crate) const fn default_lookback() -> Duration {
    Duration::from_secs(14 * 86_400)
}

/// About 240 MB at most: two weeks of 10-minute readings of about 5,000 sensors (a national
/// network of 2,000 flood areas, each with a level and a rain gauge, is about 4,000).
pub(crate) const fn default_series_cache_readings() -> usize {
    10_000_000
}

pub(crate) const fn default_series_refresh() -> Duration {
    Duration::from_secs(15 * 60)
}

pub(crate) const fn default_sweep() -> Duration {
    Duration::from_secs(60)
}

pub(crate) const fn default_stale_after() -> i32 {
    3
}

pub(crate) const fn default_debounce() -> Duration {
    Duration::from_millis(20)
}

pub(crate) fn default_analytics_metrics_listen() -> String {
    "127.0.0.1:9092".to_owned()
}

pub(crate) const fn default_rain_hold() -> Duration {
    Duration::from_secs(3600)
}

pub(crate) const fn default_forecast_max_age() -> Duration {
    Duration::from_secs(12 * 3600)
}

pub(crate) const fn default_nowcast_every() -> Duration {
    Duration::from_secs(3600)
}

pub(crate) const fn default_nowcast_decay() -> Duration {
    Duration::from_secs(12 * 3600)
}

pub(crate) const fn default_nowcast_history() -> Duration {
    Duration::from_secs(60 * 86_400)
}

pub(crate) const fn default_nowcast_refit() -> Duration {
    Duration::from_secs(86_400)
}
