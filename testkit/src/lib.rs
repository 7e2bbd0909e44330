//! Real services for tests and benchmarks, never part of the product: private Mosquitto brokers
//! on free loopback ports started from the project's own configuration, a fresh PostgreSQL
//! database per test, private PostgreSQL clusters, TCP proxies that cut connections, and the
//! receiving ends of warning delivery.
//!
//! - [`admin`]: creating, listing and dropping whole databases.
//! - [`cap`]: the CAP 1.2 rules a message is checked against.
//! - [`broker`]: [`Broker`], a private Mosquitto (test, or production configuration with TLS).
//! - [`database`]: [`TestDatabase`] on [`test_server`].
//! - [`nats`]: [`Nats`], private nats-server nodes with JetStream and MQTT, one or a cluster.
//! - [`postgres`]: [`PrivatePostgres`], a cluster of the test's own to stop and start.
//! - [`proxy`]: [`TcpProxy`] and [`CommitCutter`].
//! - [`peers`]: webhook receiver, SSE client, MQTT subscriber.

pub mod admin;
pub mod broker;
pub mod cap;
pub mod database;
pub mod nats;
pub mod peers;
pub mod postgres;
pub mod proxy;

pub use broker::Broker;
pub use database::{test_server, TestDatabase};
pub use nats::Nats;
pub use postgres::PrivatePostgres;
pub use proxy::{CommitCutter, TcpProxy};

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("mosquitto not found (looked for {0}); install it with `apt-get install mosquitto`")]
    NoMosquitto(String),
    #[error("{context}: {cause}")]
    Io {
        context: String,
        cause: std::io::Error,
    },
    #[error("mosquitto did not accept connections on port {port} within 10s; its log: {log}")]
    BrokerNotReady { port: u16, log: String },
    #[error("database: {0}")]
    Store(#[from] tidemark_store::Error),
    #[error("{context}: {cause}")]
    Admin {
        context: &'static str,
        cause: tokio_postgres::Error,
    },
}

pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let context = context.into();
    move |cause| Error::Io { context, cause }
}

/// A file of the config folder.
pub(crate) fn read_config(name: &str) -> Result<String, Error> {
    let path = config_dir().join(name);
    std::fs::read_to_string(&path).map_err(io(format!("reading {}", path.display())))
}

/// The folder holding `default.toml`, `mosquitto-test.conf` and the reference files.
pub fn config_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the testkit crate lives in the workspace")
        .join("config")
}

/// A free TCP port on loopback, for another process to listen on.
///
/// The port is not one the kernel hands out for port 0: those come from its ephemeral range,
/// which is also where every outgoing connection's source port comes from, so a connection made
/// in the meantime (a nats-server routing to the node started before this one, say) could take
/// the port before its listener binds it. It is taken below that range instead, at a random place,
/// and no port is handed out twice by one test process.
pub fn free_port() -> Result<u16, Error> {
    use std::collections::BTreeSet;
    use std::hash::BuildHasher;
    use std::sync::Mutex;
    static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    const FLOOR: u16 = 10_000;
    let ephemeral_start = ephemeral_start().unwrap_or(32_768);
    let span = ephemeral_start.saturating_sub(FLOOR);
    if span < 1_000 {
        // Too little room below the ephemeral range: leave it to the kernel.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(io("binding port 0"))?;
        return Ok(listener
            .local_addr()
            .map_err(io("reading the bound port"))?
            .port());
    }
    // Each `RandomState` has keys of its own, so the hash of nothing is a random number.
    let random = std::collections::hash_map::RandomState::new().hash_one(());
    let start = (random % u64::from(span)) as u16;
    let mut given = GIVEN
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    for step in 0..span {
        let port = FLOOR + (start + step) % span;
        if given.contains(&port) {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.insert(port);
            return Ok(port);
        }
    }
    Err(Error::Io {
        context: format!("no free loopback port between {FLOOR} and {ephemeral_start}"),
        cause: std::io::Error::from(std::io::ErrorKind::AddrInUse),
    })
}

/// The first port of the kernel's ephemeral range (Linux), where it can be read.
fn ephemeral_start() -> Option<u16> {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::{ephemeral_start, free_port};
    use std::collections::HashSet;

    #[test]
    fn free_ports_lie_below_the_ephemeral_range_and_are_never_handed_out_twice() {
        let ephemeral_start = ephemeral_start().expect("the kernel's ephemeral port range");
        // Held, as the processes they are for would hold them.
        let mut held = Vec::new();
        let mut seen = HashSet::new();
        for _ in 0..200 {
            let port = free_port().expect("a port");
            assert!(port < ephemeral_start, "{port} in the ephemeral range");
            assert!(seen.insert(port), "{port} handed out twice");
            held.push(std::net::TcpListener::bind(("127.0.0.1", port)).expect("bindable"));
        }
        // Released again, they are still not handed out a second time (without the record of
        // what was given, 2,000 random places below the range would meet one of them).
        drop(held);
        for _ in 0..2_000 {
            assert!(
                seen.insert(free_port().expect("a port")),
                "a port handed out twice"
            );
        }
    }
}
