//! Where the MQTT broker is and how to log in: the `[mqtt]` section shared by every stage that
//! talks MQTT. Plain data; the stages build their own clients from it.

use crate::secret::Secret;
use crate::topic::DEFAULT_PREFIX;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerConfig {
    /// Broker host name or address.
    #[serde(default = "default_host")]
    pub host: String,
    /// Broker TCP port.
    #[serde(default = "default_port")]
    pub port: u16,
    /// User name, when the broker requires a login.
    #[serde(default)]
    pub username: Option<String>,
    /// Password. Only from the environment: `TIDEMARK__MQTT__PASSWORD`.
    #[serde(default)]
    pub password: Option<Secret>,
    /// The first topic levels of every Tidemark topic.
    #[serde(default = "default_prefix")]
    pub topic_prefix: String,
    /// Largest MQTT packet the client accepts, in bytes. Keep it above the broker's own limit
    /// (`max_packet_size` in `config/mosquitto.conf`) so that the broker refuses an oversized
    /// message before it reaches a client, which would otherwise drop the connection over it.
    #[serde(default = "default_max_packet_bytes")]
    pub max_packet_bytes: usize,
}

fn default_host() -> String {
    "127.0.0.1".to_owned()
}
const fn default_port() -> u16 {
    1883
}
fn default_prefix() -> String {
    DEFAULT_PREFIX.to_owned()
}
const fn default_max_packet_bytes() -> usize {
    512 * 1024
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            host: default_host(),
            port: default_port(),
            username: None,
            password: None,
            topic_prefix: default_prefix(),
            max_packet_bytes: default_max_packet_bytes(),
        }
    }
}
