//! Private nats-server processes with JetStream and an MQTT listener on free loopback ports: one
//! node, or a cluster whose nodes can be killed and started again.

use crate::{free_port, io, Error};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use tidemark_model::broker::BrokerConfig;
use tokio::process::{Child, Command};

/// One nats-server of a [`Nats`].
pub struct NatsNode {
    pub name: String,
    /// Its NATS client port.
    pub port: u16,
    /// Its MQTT listener's port.
    pub mqtt_port: u16,
    conf: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// nats-server processes of the test's own, killed (and their folder removed) when dropped.
pub struct Nats {
    pub nodes: Vec<NatsNode>,
    dir: PathBuf,
}

fn nats_binary() -> Result<PathBuf, Error> {
    [
        "/usr/sbin/nats-server",
        "/usr/bin/nats-server",
        "/usr/local/bin/nats-server",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
    .ok_or_else(|| Error::Io {
        context: "nats-server not found; install it with `apt-get install nats-server`".into(),
        cause: std::io::Error::from(std::io::ErrorKind::NotFound),
    })
}

impl Nats {
    /// One node with JetStream and MQTT.
    pub async fn start() -> Result<Nats, Error> {
        Nats::cluster(1).await
    }

    /// `size` nodes routed to each other (a cluster when more than one), each with JetStream and
    /// an MQTT listener; returns once JetStream answers on every node.
    pub async fn cluster(size: usize) -> Result<Nats, Error> {
        let dir = std::env::temp_dir().join(format!(
            "tidemark-nats-{}-{}",
            std::process::id(),
            free_port()?
        ));
        std::fs::create_dir_all(&dir).map_err(io("creating the nats folder"))?;
        let routes: Vec<u16> = (0..size).map(|_| free_port()).collect::<Result<_, _>>()?;
        let mut nodes = Vec::new();
        for (i, route) in routes.iter().enumerate() {
            let name = format!("n{}", i + 1);
            let (port, mqtt_port) = (free_port()?, free_port()?);
            let store = dir.join(&name);
            // MQTT's own streams (sessions, retained messages) in as many copies as the cluster
            // has nodes, at most three: left to itself, a node that counts its routes too early
            // makes them in fewer, and they stop when one node is lost.
            let mut conf = format!(
                "server_name: {name}\nlisten: 127.0.0.1:{port}\n\
                 jetstream {{ store_dir: \"{}\", max_memory_store: 64MB, max_file_store: 2GB }}\n\
                 mqtt {{ listen: 127.0.0.1:{mqtt_port}, stream_replicas: {} }}\n",
                store.display(),
                size.min(3)
            );
            if size > 1 {
                let others: Vec<String> = routes
                    .iter()
                    .filter(|r| *r != route)
                    .map(|r| format!("nats-route://127.0.0.1:{r}"))
                    .collect();
                conf.push_str(&format!(
                    "cluster {{ name: tidemark-test, listen: 127.0.0.1:{route}, routes: [{}] }}\n",
                    others.join(", ")
                ));
            }
            let path = dir.join(format!("{name}.conf"));
            std::fs::write(&path, conf).map_err(io("writing a nats configuration"))?;
            nodes.push(NatsNode {
                log: dir.join(format!("{name}.log")),
                name,
                port,
                mqtt_port,
                conf: path,
                child: None,
            });
        }
        let mut nats = Nats { nodes, dir };
        for i in 0..size {
            nats.launch(i)?;
        }
        for i in 0..size {
            nats.wait_ready(i).await?;
        }
        Ok(nats)
    }

    fn launch(&mut self, i: usize) -> Result<(), Error> {
        let node = &mut self.nodes[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .map_err(io("opening the nats log"))?;
        let child = Command::new(nats_binary()?)
            .arg("-c")
            .arg(&node.conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(io("nats log"))?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .map_err(io("starting nats-server"))?;
        node.child = Some(child);
        Ok(())
    }

    /// Waits until the node's client and MQTT ports accept and JetStream answers through it.
    async fn wait_ready(&self, i: usize) -> Result<(), Error> {
        let node = &self.nodes[i];
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if self.jetstream_answers(i).await
                && tokio::net::TcpStream::connect(("127.0.0.1", node.mqtt_port))
                    .await
                    .is_ok()
            {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::Io {
                    context: format!(
                        "nats {} not ready within 30s; its log: {}",
                        node.name,
                        std::fs::read_to_string(&node.log).unwrap_or_default()
                    ),
                    cause: std::io::Error::from(std::io::ErrorKind::TimedOut),
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Whether JetStream answers an account-info request through node `i` without an error (in
    /// a cluster, once it has a meta leader).
    async fn jetstream_answers(&self, i: usize) -> bool {
        let Ok(client) = async_nats::connect(self.url(i)).await else {
            return false;
        };
        let request = client.request("$JS.API.INFO", bytes::Bytes::new());
        let Ok(Ok(answer)) = tokio::time::timeout(Duration::from_secs(2), request).await else {
            return false;
        };
        serde_json::from_slice::<serde_json::Value>(&answer.payload)
            .is_ok_and(|info| info.get("error").is_none())
    }

    /// The client URL of node `i`.
    pub fn url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.nodes[i].port)
    }

    /// Every node's client URL.
    pub fn urls(&self) -> Vec<String> {
        (0..self.nodes.len()).map(|i| self.url(i)).collect()
    }

    /// The MQTT listener of node `i` as a broker configuration.
    pub fn mqtt(&self, i: usize) -> BrokerConfig {
        BrokerConfig {
            port: self.nodes[i].mqtt_port,
            ..BrokerConfig::default()
        }
    }

    /// The process id of node `i`, while it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.nodes[i].child.as_ref().and_then(Child::id)
    }

    /// What `stream` says of itself, asked through node `through`; None if it cannot be asked.
    async fn stream_info(
        &self,
        through: usize,
        stream: &str,
    ) -> Option<async_nats::jetstream::stream::Info> {
        let client = async_nats::connect(self.url(through)).await.ok()?;
        let mut stream = async_nats::jetstream::new(client)
            .get_stream(stream)
            .await
            .ok()?;
        stream.info().await.ok().cloned()
    }

    /// The name of the node leading `stream` (the one that orders its writes), asked through
    /// node `through`.
    pub async fn stream_leader(&self, through: usize, stream: &str) -> Option<String> {
        self.stream_info(through, stream).await?.cluster?.leader
    }

    /// How many messages `stream` holds, asked through node `through`; None if it cannot be asked.
    pub async fn stream_messages(&self, through: usize, stream: &str) -> Option<u64> {
        Some(self.stream_info(through, stream).await?.state.messages)
    }

    /// Kills node `i` with SIGKILL and waits for it to exit.
    pub async fn kill(&mut self, i: usize) -> Result<(), Error> {
        if let Some(mut child) = self.nodes[i].child.take() {
            child.kill().await.map_err(io("killing nats-server"))?;
        }
        Ok(())
    }

    /// Starts node `i` again with its configuration and store; returns once it is ready.
    pub async fn start_again(&mut self, i: usize) -> Result<(), Error> {
        self.launch(i)?;
        self.wait_ready(i).await
    }

    /// The log of node `i`, for a failing test to show.
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(&self.nodes[i].log).unwrap_or_default()
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(child) = &mut node.child {
                let _ = child.start_kill();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
