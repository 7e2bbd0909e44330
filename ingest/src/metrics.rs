//! What ingest counts, exposed in the Prometheus text format.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tidemark_model::RejectReason;

pub type ReasonLabels = Vec<(&'static str, &'static str)>;

pub struct Metrics {
    /// MQTT messages received (including redeliveries).
    pub messages_received: Counter,
    /// MQTT messages the broker sent again (the DUP flag): it had no acknowledgement for them.
    pub messages_redelivered: Counter,
    /// Readings newly stored.
    pub readings_stored: Counter,
    /// Readings already stored, absorbed by the unique key (redeliveries).
    pub readings_duplicate: Counter,
    pub forecasts_stored: Counter,
    pub forecasts_duplicate: Counter,
    /// Rejected messages or entries, by reason code.
    pub rejected: Family<ReasonLabels, Counter>,
    /// Committed batches.
    pub batches: Counter,
    /// Time to write and commit one batch.
    pub batch_seconds: Histogram,
    /// Failed database writes that were retried.
    pub write_retries: Counter,
    /// Messages the database refused for good whose rejection could not be stored either: they
    /// were acknowledged so as not to stall everyone else, and logged.
    pub rejections_unstored: Counter,
    /// Payload bytes received and not yet committed.
    pub buffered_bytes: Gauge,
    /// MQTT connection errors (each followed by a reconnect).
    pub mqtt_errors: Counter,
    /// MQTT acknowledgements written, and the writes (flushes) that carried them.
    pub mqtt_acks_sent: Counter,
    pub mqtt_ack_writes: Counter,
    /// 1 while the broker has confirmed the readings subscription on the current connection.
    pub subscribed: Gauge,
    /// TimescaleDB jobs on `readings` whose last run by the scheduler failed.
    pub timescaledb_jobs_failing: Gauge,
    /// TimescaleDB jobs run by ingest's maintenance because the scheduler's runs failed.
    pub timescaledb_jobs_run_here: Counter,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Metrics {
        let metrics = Metrics {
            messages_received: Counter::default(),
            messages_redelivered: Counter::default(),
            readings_stored: Counter::default(),
            readings_duplicate: Counter::default(),
            forecasts_stored: Counter::default(),
            forecasts_duplicate: Counter::default(),
            rejected: Family::default(),
            batches: Counter::default(),
            batch_seconds: Histogram::new(exponential_buckets(0.000_5, 2.0, 16)),
            write_retries: Counter::default(),
            rejections_unstored: Counter::default(),
            buffered_bytes: Gauge::default(),
            mqtt_errors: Counter::default(),
            mqtt_acks_sent: Counter::default(),
            mqtt_ack_writes: Counter::default(),
            subscribed: Gauge::default(),
            timescaledb_jobs_failing: Gauge::default(),
            timescaledb_jobs_run_here: Counter::default(),
        };
        for code in RejectReason::CODES
            .iter()
            .chain(crate::message::INGEST_CODES.iter())
            .chain(tidemark_model::forecast::ForecastError::CODES.iter())
        {
            let _ = metrics.rejected.get_or_create(&vec![("reason", code)]);
        }
        let ingest = registry.sub_registry_with_prefix("tidemark_ingest");
        ingest.register(
            "messages_received",
            "MQTT messages received",
            metrics.messages_received.clone(),
        );
        ingest.register(
            "messages_redelivered",
            "MQTT messages the broker sent again for want of an acknowledgement",
            metrics.messages_redelivered.clone(),
        );
        ingest.register(
            "readings_stored",
            "Readings newly stored",
            metrics.readings_stored.clone(),
        );
        ingest.register(
            "readings_duplicate",
            "Readings already stored, absorbed by the unique key",
            metrics.readings_duplicate.clone(),
        );
        ingest.register(
            "forecasts_stored",
            "Forecast issues newly stored",
            metrics.forecasts_stored.clone(),
        );
        ingest.register(
            "forecasts_duplicate",
            "Forecast issues received again and absorbed",
            metrics.forecasts_duplicate.clone(),
        );
        ingest.register(
            "rejected",
            "Rejected messages or entries by reason",
            metrics.rejected.clone(),
        );
        ingest.register("batches", "Committed batches", metrics.batches.clone());
        ingest.register(
            "batch_seconds",
            "Time to write and commit one batch",
            metrics.batch_seconds.clone(),
        );
        ingest.register(
            "write_retries",
            "Database writes retried",
            metrics.write_retries.clone(),
        );
        ingest.register(
            "rejections_unstored",
            "Refused messages acknowledged although not even their rejection could be stored",
            metrics.rejections_unstored.clone(),
        );
        ingest.register(
            "buffered_bytes",
            "Payload bytes received and not yet committed",
            metrics.buffered_bytes.clone(),
        );
        ingest.register(
            "mqtt_errors",
            "MQTT connection errors",
            metrics.mqtt_errors.clone(),
        );
        ingest.register(
            "mqtt_acks_sent",
            "MQTT acknowledgements written after their messages committed",
            metrics.mqtt_acks_sent.clone(),
        );
        ingest.register(
            "mqtt_ack_writes",
            "Writes to the MQTT connection that carried acknowledgements (all queued at the time)",
            metrics.mqtt_ack_writes.clone(),
        );
        ingest.register(
            "timescaledb_jobs_failing",
            "TimescaleDB jobs on readings whose last scheduled run failed",
            metrics.timescaledb_jobs_failing.clone(),
        );
        ingest.register(
            "timescaledb_jobs_run_here",
            "TimescaleDB jobs run by ingest's maintenance because the scheduler's runs failed",
            metrics.timescaledb_jobs_run_here.clone(),
        );
        ingest.register(
            "subscribed",
            "1 while the readings subscription is confirmed",
            metrics.subscribed.clone(),
        );
        metrics
    }

    pub fn rejected_count(&self, code: &'static str) -> u64 {
        self.rejected.get_or_create(&vec![("reason", code)]).get()
    }
}
