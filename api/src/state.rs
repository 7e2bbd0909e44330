//! The `[api]` configuration, what the handlers use of it, and the state every `/api/v1` route
//! shares.

use crate::hub as sse;
use crate::opendata::latest_cache;
use crate::warnings::cap;
use crate::{freshness, rate_limit};
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;
use tidemark_model::duration;
use tidemark_model::network::{Network, TargetPolicy};
use tidemark_model::topic::ReadingsTopics;
use tidemark_store::Store;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Address the HTTP API listens on.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// The URL the public reaches the API at, for links in warnings, CAP messages and feeds.
    #[serde(default = "default_public_url")]
    pub public_url: String,
    /// CAP `sender`: an address that names this Tidemark installation (no spaces or commas).
    #[serde(default = "default_cap_sender")]
    pub cap_sender: String,
    /// A CAP alert expires this long after it was sent unless updated.
    #[serde(default = "default_cap_expires", with = "duration::serde_str")]
    pub cap_expires: Duration,
    /// Interval of the comment lines that keep idle Server-Sent Event streams open through proxies.
    #[serde(default = "default_sse_heartbeat", with = "duration::serde_str")]
    pub sse_heartbeat: Duration,
    /// Requests a minute to `/api/v1` per client address without an API key.
    #[serde(default = "default_rate_limit")]
    pub rate_limit_per_minute: u32,
    /// Requests a minute per valid API key.
    #[serde(default = "default_keyed_rate_limit")]
    pub keyed_rate_limit_per_minute: u32,
    /// Reverse proxies (addresses or networks) whose `X-Forwarded-For` names the client for the
    /// rate limits. Empty: every client is counted by the address it connects from.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// Server-Sent Event streams open at once, in all.
    #[serde(default = "default_sse_max_streams")]
    pub sse_max_streams: usize,
    /// Server-Sent Event streams open at once per client address (an IPv6 client by its /64).
    #[serde(default = "default_sse_max_streams_per_client")]
    pub sse_max_streams_per_client: usize,
    /// Serve `/metrics`, `/readyz` and `/healthz` on this address instead of `listen` (a private
    /// interface, say). Unset: on `listen`, beside the API.
    #[serde(default)]
    pub ops_listen: Option<String>,
    /// Issue and revoke device credentials over the API (`/api/v1/devices/{key}/credentials`),
    /// administering the broker's dynamic-security plugin with the `[mqtt]` login.
    #[serde(default)]
    pub device_credentials: bool,
    /// The longest one SensorThings read may run in the database; past it the read is cancelled
    /// and the client told to narrow its query.
    #[serde(default = "default_sta_query_timeout", with = "duration::serde_str")]
    pub sta_query_timeout: Duration,
    /// Aggregated (bucketed) reads of readings served at once, in all. Each holds a series' rows
    /// and its answer in memory and keeps a core busy while it is written; past this many, a
    /// request waits its turn, first come first served. Unset: twice the machine's cores.
    #[serde(default)]
    pub bucket_reads: Option<usize>,
    /// Bytes of aggregated buckets' JSON kept for answers that ask for them again (a day of
    /// hourly buckets at a time, by what it was written from); 0 keeps none.
    #[serde(default = "default_bucket_cache_bytes")]
    pub bucket_cache_bytes: usize,
}

const fn default_bucket_cache_bytes() -> usize {
    128 * 1024 * 1024
}

const fn default_sse_max_streams() -> usize {
    1000
}
const fn default_sse_max_streams_per_client() -> usize {
    20
}

fn default_listen() -> String {
    "127.0.0.1:8080".to_owned()
}
fn default_public_url() -> String {
    "http://127.0.0.1:8080".to_owned()
}
fn default_cap_sender() -> String {
    "tidemark@localhost".to_owned()
}
const fn default_cap_expires() -> Duration {
    Duration::from_secs(6 * 3600)
}
const fn default_sse_heartbeat() -> Duration {
    Duration::from_secs(15)
}
const fn default_sta_query_timeout() -> Duration {
    Duration::from_secs(10)
}
const fn default_rate_limit() -> u32 {
    600
}
const fn default_keyed_rate_limit() -> u32 {
    6000
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: default_listen(),
            public_url: default_public_url(),
            cap_sender: default_cap_sender(),
            cap_expires: default_cap_expires(),
            sse_heartbeat: default_sse_heartbeat(),
            rate_limit_per_minute: default_rate_limit(),
            keyed_rate_limit_per_minute: default_keyed_rate_limit(),
            trusted_proxies: Vec::new(),
            sse_max_streams: default_sse_max_streams(),
            sse_max_streams_per_client: default_sse_max_streams_per_client(),
            ops_listen: None,
            device_credentials: false,
            sta_query_timeout: default_sta_query_timeout(),
            bucket_reads: None,
            bucket_cache_bytes: default_bucket_cache_bytes(),
        }
    }
}

impl ApiConfig {
    /// Checks what can be checked without I/O.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.public_url.starts_with("http://") || self.public_url.starts_with("https://")) {
            return Err(format!(
                "api.public_url {:?} must start with http:// or https://",
                self.public_url
            ));
        }
        if self.cap_sender.is_empty() || self.cap_sender.contains([' ', ',', '<', '&']) {
            return Err(format!(
                "api.cap_sender {:?} must be non-empty without spaces, commas, < or &",
                self.cap_sender
            ));
        }
        if self.sse_heartbeat.is_zero() {
            return Err("api.sse_heartbeat must be positive".to_owned());
        }
        if self.sta_query_timeout.as_millis() == 0 {
            return Err("api.sta_query_timeout must be at least 1ms".to_owned());
        }
        if self.rate_limit_per_minute == 0 || self.keyed_rate_limit_per_minute == 0 {
            return Err(
                "api.rate_limit_per_minute and api.keyed_rate_limit_per_minute must be positive"
                    .to_owned(),
            );
        }
        self.proxies()?;
        if self.bucket_reads == Some(0) {
            return Err("api.bucket_reads must be positive".to_owned());
        }
        if self.sse_max_streams == 0 || self.sse_max_streams_per_client == 0 {
            return Err(
                "api.sse_max_streams and api.sse_max_streams_per_client must be positive"
                    .to_owned(),
            );
        }
        Ok(())
    }

    fn proxies(&self) -> Result<Vec<Network>, String> {
        self.trusted_proxies
            .iter()
            .map(|p| Network::parse(p).map_err(|e| format!("api.trusted_proxies: {e}")))
            .collect()
    }
}

/// What the `/api/v1` handlers need besides the store.
#[derive(Debug, Clone)]
pub struct ApiSettings {
    pub public_url: String,
    pub cap: cap::CapSettings,
    pub sse_heartbeat: Duration,
    /// The MQTT topic prefix (alerts go to `<prefix>/alerts/...`).
    pub topic_prefix: String,
    /// Where webhooks may point.
    pub policy: Arc<TargetPolicy>,
    /// How long a rotated-out webhook secret keeps signing.
    pub rotation_grace: Duration,
    pub rate_limit_per_minute: u32,
    pub keyed_rate_limit_per_minute: u32,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<Network>,
    pub sse_max_streams: usize,
    pub sse_max_streams_per_client: usize,
    /// The broker login that administers device credentials; None when the API does not
    /// (`api.device_credentials` off).
    pub broker_admin: Option<tidemark_model::broker::BrokerConfig>,
    pub sta_query_timeout: Duration,
    /// Aggregated reads served at once (`api.bucket_reads`, or twice the cores).
    pub bucket_reads: usize,
    /// Bytes of written buckets kept (`api.bucket_cache_bytes`).
    pub bucket_cache_bytes: usize,
    /// The time bounds on Observations created over SensorThings: ingest's (`[ingest]`
    /// `future_tolerance` and `max_age`), so that a reading is judged alike on either way in.
    pub time_rules: tidemark_model::validate::TimeRules,
}

impl ApiSettings {
    /// `policy` says where webhooks may point and `rotation_grace` how long a rotated-out secret
    /// keeps signing: the delivery stage's rules, which registration checks against.
    pub fn new(
        api: &ApiConfig,
        policy: TargetPolicy,
        rotation_grace: Duration,
        topic_prefix: &str,
    ) -> Result<ApiSettings, String> {
        api.validate()?;
        ReadingsTopics::new(topic_prefix).map_err(|e| e.to_string())?;
        let public_url = api.public_url.trim_end_matches('/').to_owned();
        Ok(ApiSettings {
            cap: cap::CapSettings {
                sender: api.cap_sender.clone(),
                public_url: public_url.clone(),
                expires_after: api.cap_expires,
            },
            public_url,
            sse_heartbeat: api.sse_heartbeat,
            sta_query_timeout: api.sta_query_timeout,
            topic_prefix: topic_prefix.to_owned(),
            policy: Arc::new(policy),
            rotation_grace,
            rate_limit_per_minute: api.rate_limit_per_minute,
            keyed_rate_limit_per_minute: api.keyed_rate_limit_per_minute,
            trusted_proxies: api.proxies()?,
            sse_max_streams: api.sse_max_streams,
            sse_max_streams_per_client: api.sse_max_streams_per_client,
            bucket_reads: api.bucket_reads.unwrap_or_else(|| {
                2 * std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
            }),
            bucket_cache_bytes: api.bucket_cache_bytes,
            broker_admin: None,
            time_rules: tidemark_model::validate::TimeRules::DEFAULT,
        })
    }

    pub fn base_url(&self) -> &str {
        &self.public_url
    }
}

/// The state of the `/api/v1` routes.
#[derive(Clone)]
pub struct ApiState {
    pub store: Store,
    pub settings: Arc<ApiSettings>,
    pub hub: sse::Hub,
    pub limiter: Arc<rate_limit::RateLimiter>,
    pub latest: Arc<latest_cache::LatestCache>,
    pub freshness: Arc<freshness::Freshness>,
    /// The Server-Sent Event streams open, by client.
    pub streams: Arc<sse::Streams>,
    /// The broker's device logins, when the API administers them.
    pub broker_admin: Option<crate::manage::broker_admin::BrokerAdmin>,
    /// Turns for aggregated reads (`ApiSettings::bucket_reads` at once), handed out in order.
    pub bucket_reads: Arc<tokio::sync::Semaphore>,
    /// Aggregated buckets already written as JSON (`ApiSettings::bucket_cache_bytes` at most).
    pub written: Arc<crate::opendata::written::WrittenBuckets>,
}

impl ApiState {
    /// The state, with its caches kept current from `database` until `shutdown`.
    pub fn new(
        store: Store,
        settings: ApiSettings,
        hub: sse::Hub,
        database: &tidemark_store::DatabaseConfig,
        shutdown: CancellationToken,
    ) -> ApiState {
        let latest = latest_cache::LatestCache::start(database.clone(), shutdown.clone());
        let freshness = freshness::Freshness::start(database.clone(), shutdown.clone());
        let limiter = Arc::new(rate_limit::RateLimiter::new(
            settings.rate_limit_per_minute,
            settings.keyed_rate_limit_per_minute,
        ));
        let streams = Arc::new(sse::Streams::new(
            settings.sse_max_streams,
            settings.sse_max_streams_per_client,
        ));
        let broker_admin = settings.broker_admin.as_ref().map(|broker| {
            crate::manage::broker_admin::BrokerAdmin::start(
                store.clone(),
                broker,
                ReadingsTopics::new(&settings.topic_prefix)
                    .expect("a topic prefix checked by ApiSettings::new"),
                shutdown.clone(),
            )
        });
        ApiState {
            bucket_reads: Arc::new(tokio::sync::Semaphore::new(settings.bucket_reads)),
            written: Arc::new(crate::opendata::written::WrittenBuckets::new(
                settings.bucket_cache_bytes,
            )),
            broker_admin,
            store,
            settings: Arc::new(settings),
            hub,
            limiter,
            latest,
            freshness,
            streams,
        }
    }
}

impl axum::extract::FromRef<ApiState> for Store {
    fn from_ref(state: &ApiState) -> Store {
        state.store.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(api: &ApiConfig) -> Result<ApiSettings, String> {
        ApiSettings::new(api, TargetPolicy::default(), Duration::ZERO, "tidemark")
    }

    #[test]
    fn aggregated_reads_at_once_are_twice_the_cores_unless_set_and_never_none() {
        let cores = std::thread::available_parallelism().unwrap().get();
        let mut api = ApiConfig::default();
        assert_eq!(settings(&api).unwrap().bucket_reads, 2 * cores);
        api.bucket_reads = Some(3);
        assert_eq!(settings(&api).unwrap().bucket_reads, 3);
        api.bucket_reads = Some(0);
        let refused = settings(&api).unwrap_err();
        assert!(refused.contains("api.bucket_reads"), "{refused}");
    }
}
