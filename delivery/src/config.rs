//! The `[delivery]` section, what delivery counts, its errors, and the jitter of its retries.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use serde::Deserialize;
use std::sync::Mutex;
use std::time::Duration;
use tidemark_model::duration;
use tidemark_model::network::{Network, TargetPolicy};
use tidemark_model::random::SeededRng;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveryConfig {
    /// Wait before the second attempt; each later wait doubles, with jitter.
    #[serde(default = "default_initial_backoff", with = "duration::serde_str")]
    pub initial_backoff: Duration,
    /// The longest wait between two attempts.
    #[serde(default = "default_max_backoff", with = "duration::serde_str")]
    pub max_backoff: Duration,
    /// How long after it was queued a delivery is given up (dead-lettered).
    #[serde(default = "default_horizon", with = "duration::serde_str")]
    pub horizon: Duration,
    /// Bound on one webhook request (connect and answer) and on waiting for an MQTT PUBACK.
    #[serde(default = "default_timeout", with = "duration::serde_str")]
    pub timeout: Duration,
    /// How long a claimed row stays with its dispatcher before another may take it. Must be
    /// longer than `timeout`.
    #[serde(default = "default_lease", with = "duration::serde_str")]
    pub lease: Duration,
    /// Deliveries in flight at once (to different targets; one target's go in order).
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Rows claimed per round.
    #[serde(default = "default_batch")]
    pub batch: i64,
    /// Longest sleep between two looks at the outbox when no notification arrives.
    #[serde(default = "default_poll_interval", with = "duration::serde_str")]
    pub poll_interval: Duration,
    /// Internal networks (CIDR) webhooks may reach anyway. Empty by default: loopback, private,
    /// link-local and metadata addresses are refused at registration and on every connection.
    #[serde(default)]
    pub allow_networks: Vec<String>,
    /// After a secret rotation, how long the old secret keeps signing beside the new one.
    #[serde(default = "default_rotation_grace", with = "duration::serde_str")]
    pub rotation_grace: Duration,
    /// MQTT client id of the alert publisher. Each process needs its own; without one it is
    /// `tidemark-alerts-<process id>`.
    #[serde(default)]
    pub mqtt_client_id: Option<String>,
    /// Where `tidemark delivery` serves `/metrics`, `/healthz` and `/readyz` (in `tidemark run`
    /// and `tidemark api` the API serves them).
    #[serde(default = "default_delivery_metrics_listen")]
    pub metrics_listen: String,
}

/// Time left in a claim's lease, beyond the request timeout, for recording an attempt's outcome.
pub(crate) const RECORD_MARGIN: Duration = Duration::from_millis(500);

const fn default_initial_backoff() -> Duration {
    Duration::from_secs(2)
}
const fn default_max_backoff() -> Duration {
    Duration::from_secs(600)
}
const fn default_horizon() -> Duration {
    Duration::from_secs(24 * 3600)
}
const fn default_timeout() -> Duration {
    Duration::from_secs(10)
}
const fn default_lease() -> Duration {
    Duration::from_secs(60)
}
const fn default_concurrency() -> usize {
    16
}
const fn default_batch() -> i64 {
    64
}
const fn default_poll_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_delivery_metrics_listen() -> String {
    "127.0.0.1:9093".to_owned()
}
const fn default_rotation_grace() -> Duration {
    Duration::from_secs(24 * 3600)
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            initial_backoff: default_initial_backoff(),
            max_backoff: default_max_backoff(),
            horizon: default_horizon(),
            timeout: default_timeout(),
            lease: default_lease(),
            concurrency: default_concurrency(),
            batch: default_batch(),
            poll_interval: default_poll_interval(),
            allow_networks: Vec::new(),
            rotation_grace: default_rotation_grace(),
            mqtt_client_id: None,
            metrics_listen: default_delivery_metrics_listen(),
        }
    }
}

impl DeliveryConfig {
    /// The alert publisher's MQTT client id.
    pub fn client_id(&self) -> String {
        self.mqtt_client_id
            .clone()
            .unwrap_or_else(|| format!("tidemark-alerts-{}", std::process::id()))
    }

    /// Checks what can be checked without I/O.
    pub fn validate(&self) -> Result<TargetPolicy, String> {
        if self.lease <= self.timeout + RECORD_MARGIN {
            return Err(format!(
                "delivery.lease ({:?}) must be longer than delivery.timeout ({:?}) and {:?} to \
                 record the outcome, so that an attempt ends within its claim",
                self.lease, self.timeout, RECORD_MARGIN
            ));
        }
        if self.initial_backoff.is_zero() || self.max_backoff < self.initial_backoff {
            return Err(
                "delivery.initial_backoff must be positive and at most delivery.max_backoff"
                    .to_owned(),
            );
        }
        if self.concurrency == 0 || self.batch <= 0 {
            return Err("delivery.concurrency and delivery.batch must be positive".to_owned());
        }
        let allow = self
            .allow_networks
            .iter()
            .map(|n| Network::parse(n).map_err(|e| format!("delivery.allow_networks: {e}")))
            .collect::<Result<_, _>>()?;
        Ok(TargetPolicy { allow })
    }

    /// The wait before attempt `failed + 1`: exponential, capped, with "equal jitter" (between
    /// half the step and the whole step) so that many failing rows do not retry in lockstep.
    /// `fraction` (0 to 1) places the wait within its band; the dispatcher draws it from [`Jitter`].
    pub fn backoff(&self, failed: i32, fraction: f64) -> Duration {
        let exponent = failed.clamp(1, 30) as u32 - 1;
        let step = self
            .initial_backoff
            .saturating_mul(1u32 << exponent.min(20))
            .min(self.max_backoff);
        let half = step / 2;
        half + half.mul_f64(fraction.clamp(0.0, 1.0))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("delivery configuration: {0}")]
    Config(String),
    #[error("cannot build the webhook client: {0}")]
    Client(reqwest::Error),
    #[error(transparent)]
    Store(#[from] tidemark_store::Error),
}

type ChannelLabels = Vec<(&'static str, String)>;

/// What delivery counts.
pub struct Metrics {
    /// Deliveries confirmed by their channel.
    pub delivered: Family<ChannelLabels, Counter>,
    /// Attempts that failed (each is retried or dead-lettered).
    pub failed_attempts: Family<ChannelLabels, Counter>,
    /// Deliveries given up: the operator alert.
    pub dead_letters: Family<ChannelLabels, Counter>,
    /// Seconds from the event's commit to its confirmed delivery.
    pub delivery_seconds: Histogram,
    /// Attempts whose claim another dispatcher had taken over by the time they were recorded.
    pub lost_claims: Counter,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Metrics {
        let metrics = Metrics {
            delivered: Family::default(),
            failed_attempts: Family::default(),
            dead_letters: Family::default(),
            delivery_seconds: Histogram::new(exponential_buckets(0.005, 2.0, 16)),
            lost_claims: Counter::default(),
        };
        for channel in ["webhook", "mqtt"] {
            let labels = vec![("channel", channel.to_owned())];
            let _ = metrics.dead_letters.get_or_create(&labels);
            let _ = metrics.delivered.get_or_create(&labels);
            let _ = metrics.failed_attempts.get_or_create(&labels);
        }
        let delivery = registry.sub_registry_with_prefix("tidemark_delivery");
        delivery.register(
            "delivered",
            "Deliveries confirmed by their channel",
            metrics.delivered.clone(),
        );
        delivery.register(
            "failed_attempts",
            "Delivery attempts that failed",
            metrics.failed_attempts.clone(),
        );
        delivery.register(
            "dead_letters",
            "Deliveries given up after the retry horizon",
            metrics.dead_letters.clone(),
        );
        delivery.register(
            "lost_claims",
            "Attempts not recorded because another dispatcher had taken the row over",
            metrics.lost_claims.clone(),
        );
        delivery.register(
            "delivery_seconds",
            "Seconds from a warning event's commit to its confirmed delivery",
            metrics.delivery_seconds.clone(),
        );
        metrics
    }
}

/// Uniform draws in [0, 1) for backoff jitter, from a generator seeded by the operating system,
/// so that dispatchers in different processes do not retry in step.
pub struct Jitter {
    rng: Mutex<SeededRng>,
}

impl Jitter {
    pub fn new() -> Jitter {
        let mut seed = [0u8; 8];
        // Without the system's randomness the process id still sets dispatchers apart.
        if getrandom::fill(&mut seed).is_err() {
            seed = u64::from(std::process::id()).to_le_bytes();
        }
        Jitter {
            rng: Mutex::new(SeededRng::seed_from_u64(u64::from_le_bytes(seed))),
        }
    }

    pub fn next(&self) -> f64 {
        self.rng.lock().unwrap_or_else(|e| e.into_inner()).unit()
    }
}

impl Default for Jitter {
    fn default() -> Jitter {
        Jitter::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn backoff_doubles_within_jitter_and_caps() {
        let config = DeliveryConfig {
            initial_backoff: Duration::from_secs(2),
            max_backoff: Duration::from_secs(60),
            ..DeliveryConfig::default()
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for (failed, step) in [(1, 2), (2, 4), (3, 8), (4, 16), (5, 32), (6, 60), (40, 60)] {
            for _ in 0..100 {
                let wait = config.backoff(failed, rng.random::<f64>());
                let step = Duration::from_secs(step);
                assert!(wait >= step / 2 && wait <= step, "{failed}: {wait:?}");
            }
        }
    }

    #[test]
    fn jitter_stays_within_its_band_and_varies() {
        let jitter = Jitter::new();
        let draws: Vec<f64> = (0..1000).map(|_| jitter.next()).collect();
        assert!(draws.iter().all(|f| (0.0..1.0).contains(f)));
        let low = draws.iter().filter(|f| **f < 0.5).count();
        assert!((350..650).contains(&low), "{low} of 1000 below one half");
    }

    #[test]
    fn validation_names_the_problem() {
        let short_lease = DeliveryConfig {
            lease: Duration::from_secs(5),
            ..DeliveryConfig::default()
        };
        assert!(short_lease.validate().unwrap_err().contains("lease"));
        let bad_network = DeliveryConfig {
            allow_networks: vec!["10.0.0.0/99".to_owned()],
            ..DeliveryConfig::default()
        };
        assert!(bad_network
            .validate()
            .unwrap_err()
            .contains("allow_networks"));
        assert!(DeliveryConfig::default().validate().is_ok());
    }
}
