//! Real services for tests and benchmarks: a private Mosquitto on a free loopback port, started from
//! the project's own test configuration, and a fresh PostgreSQL database per test.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use tidemark_model::broker::BrokerConfig;
use tidemark_store::{admin, DatabaseConfig};
use tokio::process::{Child, Command};

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
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let context = context.into();
    move |cause| Error::Io { context, cause }
}

/// The folder holding `default.toml`, `mosquitto-test.conf` and the reference files.
pub fn config_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config")
}

fn mosquitto_binary() -> Result<PathBuf, Error> {
    let candidates = [
        "/usr/sbin/mosquitto",
        "/usr/local/sbin/mosquitto",
        "/usr/bin/mosquitto",
    ];
    if let Some(found) = candidates.iter().map(PathBuf::from).find(|p| p.exists()) {
        return Ok(found);
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join("mosquitto"))
                .find(|p| p.exists())
        })
        .ok_or_else(|| Error::NoMosquitto(candidates.join(", ")))
}

/// A free TCP port on loopback, as the kernel hands it out.
pub fn free_port() -> Result<u16, Error> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(io("binding port 0"))?;
    Ok(listener
        .local_addr()
        .map_err(io("reading the bound port"))?
        .port())
}

/// A private Mosquitto, killed when dropped.
pub struct Broker {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
}

impl Broker {
    /// Starts Mosquitto with `config/mosquitto-test.conf` on a free port with its own persistence
    /// folder.
    pub async fn start() -> Result<Broker, Error> {
        let port = free_port()?;
        let dir =
            std::env::temp_dir().join(format!("tidemark-mosquitto-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
        // Mosquitto started as root drops to its own user, which must be able to write its
        // persistence file here.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777))
            .map_err(io(format!("opening {} to the broker", dir.display())))?;
        let mut broker = Broker {
            child: None,
            port,
            dir,
        };
        broker.launch().await?;
        Ok(broker)
    }

    async fn launch(&mut self) -> Result<(), Error> {
        let template_path = config_dir().join("mosquitto-test.conf");
        let template = std::fs::read_to_string(&template_path)
            .map_err(io(format!("reading {}", template_path.display())))?;
        let conf = template
            .replace("@PORT@", &self.port.to_string())
            .replace("@DIR@", &format!("{}/", self.dir.display()));
        let conf_path = self.dir.join("mosquitto.conf");
        std::fs::write(&conf_path, conf).map_err(io("writing the broker configuration"))?;
        let log_path = self.dir.join("mosquitto.log");
        let log = std::fs::File::create(&log_path).map_err(io("creating the broker log"))?;
        let log_err = log.try_clone().map_err(io("opening the broker log"))?;
        let child = Command::new(mosquitto_binary()?)
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .kill_on_drop(true)
            .spawn()
            .map_err(io("starting mosquitto"))?;
        self.child = Some(child);
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(Error::BrokerNotReady {
            port: self.port,
            log: std::fs::read_to_string(&log_path).unwrap_or_default(),
        })
    }

    /// The broker as configuration sees it.
    pub fn config(&self) -> BrokerConfig {
        BrokerConfig {
            port: self.port,
            ..BrokerConfig::default()
        }
    }

    /// The broker process id, to signal it.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// Stops the broker with SIGKILL and starts it again on the same port and persistence folder.
    pub async fn restart(&mut self) -> Result<(), Error> {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
        self.launch().await
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The server tests create their databases on: `TIDEMARK_TEST_DATABASE_URL`, by default the local
/// PostgreSQL as user postgres.
pub fn test_server() -> DatabaseConfig {
    let url = std::env::var("TIDEMARK_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    DatabaseConfig {
        url,
        pool_size: 4,
        ..DatabaseConfig::default()
    }
}

static DATABASES: AtomicU32 = AtomicU32::new(0);

/// A database of its own for one test, dropped by [`TestDatabase::drop_database`]. Databases left
/// by test processes that have since exited are dropped when the next one is created.
pub struct TestDatabase {
    pub config: DatabaseConfig,
    pub name: String,
    server: DatabaseConfig,
}

const PREFIX: &str = "tidemark_test_";

impl TestDatabase {
    pub async fn create(server: &DatabaseConfig) -> Result<TestDatabase, Error> {
        let n = DATABASES.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        if n == 0 {
            drop_orphans(server).await?;
        }
        let name = format!("{PREFIX}{pid}_{n}");
        admin::create_database(server, &name).await?;
        Ok(TestDatabase {
            config: server.with_database(&name),
            name,
            server: server.clone(),
        })
    }

    pub async fn drop_database(self) -> Result<(), Error> {
        Ok(admin::drop_database(&self.server, &self.name).await?)
    }
}

async fn drop_orphans(server: &DatabaseConfig) -> Result<(), Error> {
    for name in admin::list_databases(server, PREFIX).await? {
        let pid = name
            .trim_start_matches(PREFIX)
            .split('_')
            .next()
            .and_then(|p| p.parse::<u32>().ok());
        let alive = pid.is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
        if !alive {
            admin::drop_database(server, &name).await?;
        }
    }
    Ok(())
}

/// A TCP proxy on a free loopback port, for cutting a connection the way a network or server
/// outage would: [`TcpProxy::cut`] drops every open connection and refuses new ones until
/// [`TcpProxy::restore`].
pub struct TcpProxy {
    pub port: u16,
    state: std::sync::Arc<ProxyState>,
    accept: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct ProxyState {
    down: std::sync::atomic::AtomicBool,
    connections: std::sync::Mutex<Vec<tokio::task::AbortHandle>>,
}

impl TcpProxy {
    /// Forwards connections to `target` (a loopback address).
    pub async fn start(target: std::net::SocketAddr) -> Result<TcpProxy, Error> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(io("binding the proxy"))?;
        let port = listener
            .local_addr()
            .map_err(io("reading the proxy port"))?
            .port();
        let state = std::sync::Arc::new(ProxyState::default());
        let accept_state = state.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if accept_state.down.load(Ordering::SeqCst) {
                    continue;
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                accept_state
                    .connections
                    .lock()
                    .expect("proxy lock")
                    .push(task.abort_handle());
            }
        });
        Ok(TcpProxy {
            port,
            state,
            accept,
        })
    }

    /// Drops every open connection and refuses new ones.
    pub fn cut(&self) {
        self.state.down.store(true, Ordering::SeqCst);
        for connection in self.state.connections.lock().expect("proxy lock").drain(..) {
            connection.abort();
        }
    }

    /// Accepts and forwards connections again.
    pub fn restore(&self) {
        self.state.down.store(false, Ordering::SeqCst);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}
