//! Delivery of warning events from the outbox: the dispatcher, and the webhook and MQTT channels
//! it delivers over. (Server-Sent Events read the events themselves; see [`crate::sse`].)
//!
//! # Layout
//!
//! - [`DeliveryConfig`]: the `[delivery]` section.
//! - [`Dispatcher`]: claims due outbox rows with a lease, delivers them, records every attempt,
//!   retries with exponential backoff and jitter up to a horizon, then dead-letters.
//! - [`webhook`]: Standard Webhooks signing and verification, and the address guard.
//! - [`mqtt`]: retained QoS 1 alerts with their acknowledgement.
//!
//! **Invariant:** a row is marked delivered only after its channel confirmed it (a 2xx answer, a
//! PUBACK). A dispatcher that dies in between leaves the row claimed until its lease ends; then
//! it is sent again with the same id (`webhook-id`, the event id in the body), never lost.

pub mod mqtt;
pub mod webhook;

use crate::body::EventBody;
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use rand::{Rng, SeedableRng};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tidemark_model::duration;
use tidemark_store::delivery::{Attempt, AttemptNext, Claimed};
use tidemark_store::{DatabaseConfig, Store};
use tokio_util::sync::CancellationToken;

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
}

/// Time left in a claim's lease, beyond the request timeout, for recording an attempt's outcome.
const RECORD_MARGIN: Duration = Duration::from_millis(500);

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
    pub fn validate(&self) -> Result<webhook::TargetPolicy, String> {
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
            .map(|n| {
                webhook::Network::parse(n).map_err(|e| format!("delivery.allow_networks: {e}"))
            })
            .collect::<Result<_, _>>()?;
        Ok(webhook::TargetPolicy { allow })
    }

    /// The wait before attempt `failed + 1`: exponential, capped, with "equal jitter" (between
    /// half the step and the whole step) so that many failing rows do not retry in lockstep.
    pub fn backoff(&self, failed: i32, rng: &mut impl Rng) -> Duration {
        let exponent = failed.clamp(1, 30) as u32 - 1;
        let step = self
            .initial_backoff
            .saturating_mul(1u32 << exponent.min(20))
            .min(self.max_backoff);
        let half = step / 2;
        half + half.mul_f64(rng.random::<f64>())
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

/// How one attempt went, before the decision about the row.
struct Outcome {
    status: Option<i32>,
    result: Result<(), String>,
    /// The endpoint answered 410 Gone.
    gone: bool,
    /// Trying again cannot help (no such endpoint, not an alert topic).
    permanent: bool,
}

impl Outcome {
    fn ok(status: Option<i32>) -> Outcome {
        Outcome {
            status,
            result: Ok(()),
            gone: false,
            permanent: false,
        }
    }

    fn failed(error: impl Into<String>) -> Outcome {
        Outcome {
            status: None,
            result: Err(error.into()),
            gone: false,
            permanent: false,
        }
    }

    fn permanent(error: impl Into<String>) -> Outcome {
        Outcome {
            permanent: true,
            ..Outcome::failed(error)
        }
    }
}

/// Drains the outbox. Several dispatchers (in several processes) may share one database.
pub struct Dispatcher {
    store: Store,
    config: DeliveryConfig,
    policy: Arc<webhook::TargetPolicy>,
    http: reqwest::Client,
    alerts: mqtt::AlertPublisher,
    /// Where alerts may be published: flood warnings and utility alerts.
    alert_prefixes: [String; 2],
    public_url: String,
    metrics: Arc<Metrics>,
}

impl Dispatcher {
    pub fn new(
        store: Store,
        config: DeliveryConfig,
        alerts: mqtt::AlertPublisher,
        topic_prefix: &str,
        public_url: &str,
        metrics: Arc<Metrics>,
    ) -> Result<Dispatcher, Error> {
        let policy = Arc::new(config.validate().map_err(Error::Config)?);
        let http = webhook::client(policy.clone(), config.timeout).map_err(Error::Client)?;
        Ok(Dispatcher {
            store,
            config,
            policy,
            http,
            alerts,
            alert_prefixes: [
                format!("{topic_prefix}/alerts/"),
                format!("{topic_prefix}/utility-alerts/"),
            ],
            public_url: public_url.to_owned(),
            metrics,
        })
    }

    /// Delivers everything due at `now` once (retries that fall due later wait for a later call).
    /// Returns the number of attempts made.
    ///
    /// A round never outlives its lease: an attempt starts only while the claim has at least the
    /// request timeout (and a margin to record the outcome) left; rows that would not fit are given
    /// back and claimed again with a fresh lease.
    pub async fn run_once(&self, now: DateTime<Utc>) -> Result<usize, Error> {
        let mut attempts = 0;
        let round_started = Instant::now();
        loop {
            let claimed_at = Instant::now();
            // A claim's lease runs from when it is taken: `now` moved on by the time this round
            // has already taken.
            let claim_now =
                now + chrono::Duration::from_std(claimed_at - round_started).unwrap_or_default();
            let claimed = self
                .store
                .claim_deliveries(claim_now, self.config.lease, self.config.batch)
                .await?;
            let full = claimed.len() as i64 == self.config.batch;
            // The last instant an attempt may start and still be recorded within the lease.
            let last_start = (claimed_at + self.config.lease)
                .checked_sub(self.config.timeout + RECORD_MARGIN)
                .unwrap_or(claimed_at);
            // One target's deliveries go in event order; different targets in parallel.
            let mut by_target: BTreeMap<(String, String), Vec<Claimed>> = BTreeMap::new();
            for c in claimed {
                by_target
                    .entry((c.channel.clone(), c.target.clone()))
                    .or_default()
                    .push(c);
            }
            let results: Vec<Result<(usize, bool), Error>> =
                futures_util::stream::iter(by_target.into_values())
                    .map(|group| async move {
                        let mut made = 0;
                        for claimed in &group {
                            if Instant::now() > last_start {
                                break;
                            }
                            self.attempt(claimed, now).await?;
                            made += 1;
                        }
                        // Out of lease: the rest go back rather than be sent while another
                        // dispatcher may claim them.
                        let rest: Vec<(i64, i32)> = group[made..]
                            .iter()
                            .map(|c| (c.outbox_id, c.attempt))
                            .collect();
                        self.store.release_claims(&rest, now).await?;
                        Ok((made, !rest.is_empty()))
                    })
                    .buffer_unordered(self.config.concurrency)
                    .collect()
                    .await;
            let (mut any_released, mut made_now) = (false, 0);
            for result in results {
                let (made, released) = result?;
                made_now += made;
                any_released |= released;
            }
            attempts += made_now;
            // Claimed again only if this claim made progress: a claim that could not start a
            // single attempt in its lease waits for the next round.
            if (!full && !any_released) || made_now == 0 {
                return Ok(attempts);
            }
        }
    }

    async fn attempt(&self, claimed: &Claimed, now: DateTime<Utc>) -> Result<(), Error> {
        let started = Instant::now();
        let outcome = match claimed.channel.as_str() {
            "webhook" => self.send_webhook(claimed, now).await?,
            "mqtt" => self.send_mqtt(claimed).await?,
            other => Outcome::permanent(format!("unknown channel {other}")),
        };
        let latency = started.elapsed();
        let labels = vec![("channel", claimed.channel.clone())];
        let next = match (&outcome.result, outcome.gone) {
            (Ok(()), _) => AttemptNext::Delivered(now),
            (Err(_), true) => AttemptNext::Gone(now),
            (Err(_), false) if outcome.permanent => AttemptNext::Dead(now),
            (Err(_), false) => {
                let wait = self
                    .config
                    .backoff(claimed.attempt, &mut rand::rngs::SmallRng::from_os_rng());
                let next_at = now + chrono::Duration::from_std(wait).unwrap_or_default();
                let horizon = claimed.created_at
                    + chrono::Duration::from_std(self.config.horizon).unwrap_or_default();
                if next_at > horizon {
                    AttemptNext::Dead(now)
                } else {
                    AttemptNext::Retry(next_at)
                }
            }
        };
        let error = outcome.result.as_ref().err().cloned();
        let recorded = self
            .store
            .record_attempt(&Attempt {
                outbox_id: claimed.outbox_id,
                attempt: claimed.attempt,
                started_at: now,
                latency,
                status: outcome.status,
                error: error.clone(),
                next: next.clone(),
            })
            .await?;
        if !recorded {
            // Another dispatcher took the row over after this claim's lease ended; what it
            // records stands.
            self.metrics.lost_claims.inc();
            tracing::warn!(
                outbox = claimed.outbox_id, event = claimed.event_id, channel = %claimed.channel,
                "the claim ended before the attempt was recorded; another dispatcher has the row"
            );
            return Ok(());
        }
        match &next {
            AttemptNext::Delivered(_) => {
                self.metrics.delivered.get_or_create(&labels).inc();
                tracing::debug!(
                    outbox = claimed.outbox_id, event = claimed.event_id, channel = %claimed.channel,
                    "delivered"
                );
            }
            AttemptNext::Dead(_) | AttemptNext::Gone(_) => {
                self.metrics.dead_letters.get_or_create(&labels).inc();
                tracing::error!(
                    outbox = claimed.outbox_id, event = claimed.event_id, channel = %claimed.channel,
                    attempts = claimed.attempt, error = error.as_deref().unwrap_or(""),
                    "delivery given up"
                );
            }
            AttemptNext::Retry(at) => {
                self.metrics.failed_attempts.get_or_create(&labels).inc();
                tracing::warn!(
                    outbox = claimed.outbox_id, event = claimed.event_id, channel = %claimed.channel,
                    attempt = claimed.attempt, next = %at, error = error.as_deref().unwrap_or(""),
                    "delivery failed; will retry"
                );
            }
        }
        Ok(())
    }

    async fn send_webhook(&self, claimed: &Claimed, now: DateTime<Utc>) -> Result<Outcome, Error> {
        let Ok(id) = claimed.target.parse::<i64>() else {
            return Ok(Outcome::permanent(
                "the webhook target is not an endpoint id",
            ));
        };
        let Some(hook) = self.store.webhook(id).await? else {
            return Ok(Outcome::permanent("the endpoint was deleted"));
        };
        if hook.disabled_at.is_some() {
            return Ok(Outcome::permanent("the endpoint is disabled"));
        }
        let Some(event) = self.store.warning_event(claimed.event_id).await? else {
            return Ok(Outcome::permanent("the event is missing"));
        };
        let url = match self.policy.check_url(&hook.url) {
            Ok(url) => url,
            Err(refused) => return Ok(Outcome::permanent(refused.to_string())),
        };
        let body =
            serde_json::to_vec(&EventBody::new(&event, &self.public_url)).unwrap_or_default();
        let message_id = format!("evt_{}", event.id);
        // Signed as it is sent, by the clock receivers check it against: a round that has waited
        // on slow receivers never sends an old timestamp.
        let timestamp = Utc::now().timestamp();
        let mut secrets = vec![hook.secret.as_str()];
        if let (Some(previous), Some(until)) = (&hook.previous_secret, hook.previous_until) {
            if until > now {
                secrets.push(previous);
            }
        }
        let signature = webhook::sign(&secrets, &message_id, timestamp, &body);
        let response = self
            .http
            .post(url)
            .header("content-type", "application/json")
            .header("webhook-id", &message_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body)
            .send()
            .await;
        Ok(match response {
            Ok(response) => {
                let status = response.status();
                let code = Some(i32::from(status.as_u16()));
                if status.is_success() {
                    self.observe_latency(&event.recorded_at);
                    Outcome::ok(code)
                } else {
                    Outcome {
                        status: code,
                        gone: status == reqwest::StatusCode::GONE,
                        ..Outcome::failed(format!("the endpoint answered {status}"))
                    }
                }
            }
            Err(error) => Outcome::failed(error_chain(&error)),
        })
    }

    async fn send_mqtt(&self, claimed: &Claimed) -> Result<Outcome, Error> {
        if !self
            .alert_prefixes
            .iter()
            .any(|p| claimed.target.starts_with(p))
        {
            return Ok(Outcome::permanent(format!(
                "{} is not an alert topic",
                claimed.target
            )));
        }
        let Some(event) = self.store.warning_event(claimed.event_id).await? else {
            return Ok(Outcome::permanent("the event is missing"));
        };
        // The retained message is the current state of the area (or meter), so a late retry
        // never puts an older state back on the topic.
        let current = self.store.latest_event_like(&event).await?.unwrap_or(event);
        let payload =
            serde_json::to_vec(&EventBody::new(&current, &self.public_url)).unwrap_or_default();
        Ok(match self.alerts.publish(&claimed.target, payload).await {
            Ok(()) => {
                self.observe_latency(&current.recorded_at);
                Outcome::ok(None)
            }
            Err(error) => Outcome::failed(error.to_string()),
        })
    }

    fn observe_latency(&self, recorded_at: &DateTime<Utc>) {
        let seconds = (Utc::now() - *recorded_at).num_microseconds().unwrap_or(0) as f64 / 1e6;
        self.metrics.delivery_seconds.observe(seconds.max(0.0));
    }

    /// Delivers until `shutdown`: woken by each committed warning event, by the next retry
    /// falling due, and at least every `poll_interval`.
    pub async fn run(
        self,
        database: &DatabaseConfig,
        shutdown: CancellationToken,
    ) -> Result<(), Error> {
        let mut wakeups = tidemark_store::notify::Wakeups::new(
            database,
            &[tidemark_store::flood::WARNINGS_CHANGED],
        );
        while !shutdown.is_cancelled() {
            // Listening before the round, so an event committed during it wakes the next one.
            wakeups.ensure().await;
            let now = Utc::now();
            if let Err(error) = self.run_once(now).await {
                tracing::warn!(%error, "delivery round failed");
            }
            let next_due = self.store.next_due().await.ok().flatten();
            let wait = next_due
                .map(|at| (at - Utc::now()).to_std().unwrap_or(Duration::ZERO))
                .unwrap_or(self.config.poll_interval)
                .min(self.config.poll_interval);
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = wakeups.wait(wait) => {}
            }
        }
        Ok(())
    }
}

/// An error with its causes: reqwest keeps the useful part ("connection refused") in the chain.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut next = error.source();
    while let Some(cause) = next {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        next = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

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
                let wait = config.backoff(failed, &mut rng);
                let step = Duration::from_secs(step);
                assert!(wait >= step / 2 && wait <= step, "{failed}: {wait:?}");
            }
        }
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
