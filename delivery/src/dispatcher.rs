//! The outbox dispatcher: claims due rows with a lease, delivers each target's rows in order,
//! and records every attempt with what follows from it.

use crate::config::{DeliveryConfig, Error, Jitter, Metrics, RECORD_MARGIN};
use crate::{mqtt, webhook};
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tidemark_model::network::TargetPolicy;
use tidemark_model::warning::alert_topic_prefixes;
use tidemark_store::outbox::{Attempt, AttemptNext, Claimed};
use tidemark_store::{DatabaseConfig, Store};
use tokio_util::sync::CancellationToken;

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
    policy: Arc<TargetPolicy>,
    http: reqwest::Client,
    alerts: mqtt::AlertPublisher,
    /// Where alerts may be published: flood warnings and utility alerts.
    alert_prefixes: [String; 2],
    public_url: String,
    metrics: Arc<Metrics>,
    jitter: Jitter,
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
            alert_prefixes: alert_topic_prefixes(topic_prefix),
            public_url: public_url.to_owned(),
            metrics,
            jitter: Jitter::new(),
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
                let wait = self.config.backoff(claimed.attempt, self.jitter.next());
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
        let body = serde_json::to_vec(&event.body(&self.public_url)).unwrap_or_default();
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
        let payload = serde_json::to_vec(&current.body(&self.public_url)).unwrap_or_default();
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
            &[tidemark_store::coordination::Channel::WarningsChanged],
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
