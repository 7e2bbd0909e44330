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

/// A file of the config folder.
fn read_config(name: &str) -> Result<String, Error> {
    let path = config_dir().join(name);
    std::fs::read_to_string(&path).map_err(io(format!("reading {}", path.display())))
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

/// A Mosquitto password file at `path` with `users` (`(user, password)`); empty if there are none.
async fn write_passwords(path: &Path, users: &[(&str, &str)]) -> Result<(), Error> {
    std::fs::write(path, "").map_err(io("creating a password file"))?;
    for (user, password) in users {
        let status = Command::new("mosquitto_passwd")
            .arg("-b")
            .arg(path)
            .args([user, password])
            .stdout(Stdio::null())
            .status()
            .await
            .map_err(io("running mosquitto_passwd"))?;
        if !status.success() {
            return Err(Error::Io {
                context: format!("mosquitto_passwd for {user} ended with {status}"),
                cause: std::io::Error::other("mosquitto_passwd failed"),
            });
        }
    }
    Ok(())
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
    /// The configuration it runs with.
    conf: String,
    /// The devices' TLS password listener's port, for a broker from `config/mosquitto.conf`.
    pub device_port: Option<u16>,
    /// The mutual-TLS listener's port, for a broker from `config/mosquitto.conf`.
    pub tls_port: Option<u16>,
}

impl Broker {
    /// Starts Mosquitto with `config/mosquitto-test.conf` on a free port with its own persistence
    /// folder.
    pub async fn start() -> Result<Broker, Error> {
        let mut broker = Broker::prepare()?;
        let template = read_config("mosquitto-test.conf")?;
        broker.conf = template
            .replace("@PORT@", &broker.port.to_string())
            .replace("@DIR@", &format!("{}/", broker.dir.display()));
        broker.launch().await?;
        Ok(broker)
    }

    /// Starts Mosquitto from the shipped `config/mosquitto.conf` with its ACL
    /// (`config/mosquitto.acl`), on free loopback ports: the services' listener ([`Broker::port`])
    /// with a password file of `services`, the devices' TLS password listener
    /// ([`Broker::device_port`]) with one of `devices` (`(user, password)` each), and the
    /// mutual-TLS listener ([`Broker::tls_port`]), with a throwaway CA made here
    /// ([`Broker::ca_file`]) and a broker certificate for 127.0.0.1 signed by it.
    pub async fn start_secure(
        services: &[(&str, &str)],
        devices: &[(&str, &str)],
    ) -> Result<Broker, Error> {
        let mut broker = Broker::prepare()?;
        let (device_port, tls_port) = (free_port()?, free_port()?);
        broker.device_port = Some(device_port);
        broker.tls_port = Some(tls_port);
        let certs = broker.dir.join("certs");
        std::fs::create_dir_all(&certs).map_err(io("creating the certificate folder"))?;
        make_ca(&certs, "ca").await?;
        make_certificate(
            &certs,
            "ca",
            "broker",
            "127.0.0.1",
            "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        )
        .await?;
        let service_passwords = broker.dir.join("services.passwd");
        let device_passwords = broker.dir.join("passwd");
        write_passwords(&service_passwords, services).await?;
        write_passwords(&device_passwords, devices).await?;
        let acl = broker.dir.join("acl");
        std::fs::copy(config_dir().join("mosquitto.acl"), &acl)
            .map_err(io("copying the broker ACL"))?;
        let shipped = read_config("mosquitto.conf")?;
        let mut conf = shipped.clone();
        for (from, to) in [
            (
                "listener 1883 127.0.0.1",
                format!("listener {} 127.0.0.1", broker.port),
            ),
            (
                "password_file /etc/mosquitto/tidemark-services.passwd",
                format!("password_file {}", service_passwords.display()),
            ),
            (
                "password_file /etc/mosquitto/tidemark.passwd",
                format!("password_file {}", device_passwords.display()),
            ),
            (
                "acl_file /etc/mosquitto/tidemark.acl",
                format!("acl_file {}", acl.display()),
            ),
            (
                "persistence_location /var/lib/mosquitto/",
                format!("persistence_location {}/", broker.dir.display()),
            ),
            ("listener 8883", format!("listener {device_port} 127.0.0.1")),
            ("listener 8884", format!("listener {tls_port} 127.0.0.1")),
            ("/etc/mosquitto/certs/", format!("{}/", certs.display())),
        ] {
            if !conf.contains(from) {
                return Err(Error::Io {
                    context: format!("config/mosquitto.conf no longer has the line {from:?}"),
                    cause: std::io::Error::from(std::io::ErrorKind::InvalidData),
                });
            }
            conf = conf.replace(from, &to);
        }
        broker.conf = conf;
        broker.launch().await?;
        Ok(broker)
    }

    /// The CA certificate (PEM) a client trusts the mutual-TLS listener by.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("certs").join("ca.crt")
    }

    /// A client certificate with common name `name` and its key (PEM files), signed by the
    /// broker's CA, or, with `trusted` false, by a rogue CA the broker does not know.
    pub async fn client_certificate(
        &self,
        name: &str,
        trusted: bool,
    ) -> Result<(PathBuf, PathBuf), Error> {
        let certs = self.dir.join("certs");
        let ca = if trusted { "ca" } else { "rogue-ca" };
        if !trusted && !certs.join("rogue-ca.crt").exists() {
            make_ca(&certs, "rogue-ca").await?;
        }
        let file = format!("{ca}-{name}");
        make_certificate(&certs, ca, &file, name, "extendedKeyUsage=clientAuth\n").await?;
        Ok((
            certs.join(format!("{file}.crt")),
            certs.join(format!("{file}.key")),
        ))
    }

    /// A broker not yet started: a free port and a folder of its own.
    fn prepare() -> Result<Broker, Error> {
        let port = free_port()?;
        let dir =
            std::env::temp_dir().join(format!("tidemark-mosquitto-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
        // Mosquitto started as root drops to its own user, which must be able to write its
        // persistence file here and read the password and ACL files.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777))
            .map_err(io(format!("opening {} to the broker", dir.display())))?;
        Ok(Broker {
            child: None,
            port,
            dir,
            conf: String::new(),
            device_port: None,
            tls_port: None,
        })
    }

    async fn launch(&mut self) -> Result<(), Error> {
        let conf_path = self.dir.join("mosquitto.conf");
        std::fs::write(&conf_path, &self.conf).map_err(io("writing the broker configuration"))?;
        for file in ["passwd", "services.passwd", "acl"] {
            let path = self.dir.join(file);
            if path.exists() {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))
                    .map_err(io(format!("opening {} to the broker", path.display())))?;
            }
        }
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
        self.stop(false).await?;
        self.launch().await
    }

    /// Stops the broker: SIGTERM (it saves its persistence file and exits) or SIGKILL (it saves
    /// nothing more). Returns when it has exited.
    pub async fn stop(&mut self, graceful: bool) -> Result<(), Error> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        match (graceful, child.id()) {
            (true, Some(pid)) => {
                Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status()
                    .await
                    .map_err(io("signalling mosquitto"))?;
                child.wait().await.map_err(io("waiting for mosquitto"))?;
            }
            _ => {
                let _ = child.kill().await;
            }
        }
        Ok(())
    }

    /// Starts a stopped broker again on the same port and persistence folder.
    pub async fn start_again(&mut self) -> Result<(), Error> {
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

/// A listener for a proxy on a free loopback port, and the port.
async fn proxy_listener() -> Result<(tokio::net::TcpListener, u16), Error> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(io("binding the proxy"))?;
    let port = listener
        .local_addr()
        .map_err(io("reading the proxy port"))?
        .port();
    Ok((listener, port))
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
        let (listener, port) = proxy_listener().await?;
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

/// A PostgreSQL cluster of the test's own, in a temporary folder on a free loopback port, for
/// faults that stop the server itself: [`PrivatePostgres::stop_immediate`] is PostgreSQL's
/// immediate shutdown (SIGQUIT to the postmaster: no checkpoint, crash recovery on the next start),
/// and [`PrivatePostgres::start_again`] brings the same cluster back on the same port. Run as the
/// `postgres` user when the test runs as root, since PostgreSQL refuses to run as root.
pub struct PrivatePostgres {
    pub port: u16,
    dir: PathBuf,
    bin: PathBuf,
    user: Option<(u32, u32)>,
    child: Option<Child>,
}

/// The newest PostgreSQL server binaries installed.
/// `TIDEMARK_TEST_PG_BIN` (a folder with `initdb` and `pg_ctl`, for a PostgreSQL build of one's own,
/// say with TimescaleDB) if set.
fn postgres_bin() -> Result<PathBuf, Error> {
    if let Some(bin) = std::env::var_os("TIDEMARK_TEST_PG_BIN") {
        return Ok(PathBuf::from(bin));
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map_err(io("looking for PostgreSQL under /usr/lib/postgresql"))?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin).ok_or_else(|| Error::Io {
        context: "looking for initdb under /usr/lib/postgresql/*/bin".into(),
        cause: std::io::Error::from(std::io::ErrorKind::NotFound),
    })
}

/// `(uid, gid)` of the `postgres` user, from /etc/passwd.
fn postgres_user() -> Result<(u32, u32), Error> {
    let passwd = std::fs::read_to_string("/etc/passwd").map_err(io("reading /etc/passwd"))?;
    passwd
        .lines()
        .map(|line| line.split(':').collect::<Vec<_>>())
        .find(|fields| fields.first() == Some(&"postgres") && fields.len() > 3)
        .and_then(|fields| Some((fields[2].parse().ok()?, fields[3].parse().ok()?)))
        .ok_or_else(|| Error::Io {
            context: "looking for the postgres user".into(),
            cause: std::io::Error::from(std::io::ErrorKind::NotFound),
        })
}

impl PrivatePostgres {
    /// Makes a new cluster (trust authentication for the `postgres` role) and starts it.
    pub async fn start() -> Result<PrivatePostgres, Error> {
        let bin = postgres_bin()?;
        let port = free_port()?;
        let dir =
            std::env::temp_dir().join(format!("tidemark-postgres-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
        // /proc/self belongs to the process's effective user.
        let root = {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata("/proc/self")
                .map_err(io("reading /proc/self"))?
                .uid()
                == 0
        };
        let user = if root { Some(postgres_user()?) } else { None };
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid))
                .map_err(io(format!("giving {} to postgres", dir.display())))?;
        }
        let mut cluster = PrivatePostgres {
            port,
            dir,
            bin,
            user,
            child: None,
        };
        let data = cluster.dir.join("data");
        let status = cluster
            .command("initdb")
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
                "-D",
            ])
            .arg(&data)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await
            .map_err(io("running initdb"))?;
        if !status.success() {
            return Err(Error::Io {
                context: format!("initdb {} ended with {status}", data.display()),
                cause: std::io::Error::other("initdb failed"),
            });
        }
        cluster.start_again().await?;
        Ok(cluster)
    }

    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(self.bin.join(program));
        if let Some((uid, gid)) = self.user {
            command.uid(uid).gid(gid);
        }
        command.stdin(Stdio::null());
        command
    }

    /// Starts the cluster (again) and waits until it accepts connections.
    pub async fn start_again(&mut self) -> Result<(), Error> {
        let log_path = self.dir.join("postgres.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(io("opening the server log"))?;
        let log_err = log.try_clone().map_err(io("opening the server log"))?;
        let child = self
            .command("postgres")
            .arg("-D")
            .arg(self.dir.join("data"))
            .args([
                "-p",
                &self.port.to_string(),
                "-c",
                "listen_addresses=127.0.0.1",
            ])
            .arg("-c")
            .arg(format!("unix_socket_directories={}", self.dir.display()))
            .stdout(log)
            .stderr(log_err)
            .kill_on_drop(true)
            .spawn()
            .map_err(io("starting postgres"))?;
        self.child = Some(child);
        for _ in 0..600 {
            if admin::can_connect(&self.config()).await {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(Error::Io {
            context: format!(
                "postgres did not accept connections on port {} within 30 s; its log: {}",
                self.port,
                std::fs::read_to_string(&log_path).unwrap_or_default()
            ),
            cause: std::io::Error::from(std::io::ErrorKind::TimedOut),
        })
    }

    /// Immediate shutdown: every backend is killed at once, nothing is checkpointed, and what
    /// clients had in flight fails. Returns when the postmaster has exited.
    pub async fn stop_immediate(&mut self) -> Result<(), Error> {
        if let Some(mut child) = self.child.take() {
            if let Some(pid) = child.id() {
                Command::new("kill")
                    .args(["-QUIT", &pid.to_string()])
                    .status()
                    .await
                    .map_err(io("signalling postgres"))?;
            }
            child.wait().await.map_err(io("waiting for postgres"))?;
        }
        Ok(())
    }

    /// The cluster's `postgres` database, as Tidemark's configuration names a server.
    pub fn config(&self) -> DatabaseConfig {
        DatabaseConfig {
            url: format!("postgres://postgres@127.0.0.1:{}/postgres", self.port),
            pool_size: 4,
            ..DatabaseConfig::default()
        }
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A TCP proxy to PostgreSQL that, when armed, loses the answer to a COMMIT: it forwards the
/// client's `COMMIT`, gives the server a moment to carry it out, and closes both sides before
/// anything comes back. The client cannot tell whether its transaction committed; this is the
/// case that tests whether a retried write duplicates.
pub struct CommitCutter {
    pub port: u16,
    armed: std::sync::Arc<AtomicU32>,
    cuts: std::sync::Arc<AtomicU32>,
    accept: tokio::task::JoinHandle<()>,
}

/// How long the server has to carry out a COMMIT before the connection is closed.
const COMMIT_GRACE: Duration = Duration::from_millis(200);

impl CommitCutter {
    /// Forwards connections to `target` (a loopback address).
    pub async fn start(target: std::net::SocketAddr) -> Result<CommitCutter, Error> {
        let (listener, port) = proxy_listener().await?;
        let armed = std::sync::Arc::new(AtomicU32::new(0));
        let cuts = std::sync::Arc::new(AtomicU32::new(0));
        let (task_armed, task_cuts) = (armed.clone(), cuts.clone());
        let accept = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let (armed, cuts) = (task_armed.clone(), task_cuts.clone());
                tokio::spawn(async move {
                    if let Ok(outbound) = tokio::net::TcpStream::connect(target).await {
                        relay_until_commit(inbound, outbound, &armed, &cuts).await;
                    }
                });
            }
        });
        Ok(CommitCutter {
            port,
            armed,
            cuts,
            accept,
        })
    }

    /// Cuts the next `n` commits, on whichever connections they come.
    pub fn arm(&self, n: u32) {
        self.armed.fetch_add(n, Ordering::SeqCst);
    }

    /// Commits cut so far.
    pub fn cuts(&self) -> u32 {
        self.cuts.load(Ordering::SeqCst)
    }
}

impl Drop for CommitCutter {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Relays one connection both ways until an armed cut meets a COMMIT from the client.
async fn relay_until_commit(
    inbound: tokio::net::TcpStream,
    outbound: tokio::net::TcpStream,
    armed: &AtomicU32,
    cuts: &AtomicU32,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut client_read, mut client_write) = inbound.into_split();
    let (mut server_read, mut server_write) = outbound.into_split();
    let answers = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
    });
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let n = match client_read.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let chunk = &buffer[..n];
        // tokio-postgres commits with a simple query: 'Q', a length, "COMMIT", NUL.
        let commit = chunk.windows(7).any(|w| w == b"COMMIT\0");
        let cut = commit
            && armed
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
        if cut {
            // Nothing the server says from here on reaches the client.
            answers.abort();
        }
        if server_write.write_all(chunk).await.is_err() {
            break;
        }
        if cut {
            tokio::time::sleep(COMMIT_GRACE).await;
            cuts.fetch_add(1, Ordering::SeqCst);
            break;
        }
    }
    answers.abort();
}

/// openssl's arguments for a new P-256 key, unencrypted, made with the request.
const NEW_KEY: &[&str] = &[
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:prime256v1",
    "-nodes",
];

/// Runs openssl with `args` in `dir`.
async fn openssl(dir: &Path, args: &[&str]) -> Result<(), Error> {
    let status = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .map_err(io("running openssl"))?;
    if status.success() {
        Ok(())
    } else {
        Err(Error::Io {
            context: format!("openssl {} ended with {status}", args.join(" ")),
            cause: std::io::Error::other("openssl failed"),
        })
    }
}

/// A self-signed CA, valid for a day: `<name>.crt` and `<name>.key` in `dir`.
async fn make_ca(dir: &Path, name: &str) -> Result<(), Error> {
    let (key, crt) = (format!("{name}.key"), format!("{name}.crt"));
    openssl(
        dir,
        &[
            &["req", "-x509"][..],
            NEW_KEY,
            &[
                "-keyout",
                &key,
                "-out",
                &crt,
                "-days",
                "1",
                "-subj",
                &format!("/CN=Tidemark test {name}"),
            ],
        ]
        .concat(),
    )
    .await?;
    world_readable(&dir.join(key))
}

/// An X.509 v3 certificate for `common_name` with `extensions` (openssl's extension file lines)
/// signed by CA `ca`: `<file>.crt` and `<file>.key` in `dir`.
async fn make_certificate(
    dir: &Path,
    ca: &str,
    file: &str,
    common_name: &str,
    extensions: &str,
) -> Result<(), Error> {
    let (key, csr, crt) = (
        format!("{file}.key"),
        format!("{file}.csr"),
        format!("{file}.crt"),
    );
    openssl(
        dir,
        &[
            &["req"][..],
            NEW_KEY,
            &[
                "-keyout",
                &key,
                "-out",
                &csr,
                "-subj",
                &format!("/CN={common_name}"),
            ],
        ]
        .concat(),
    )
    .await?;
    let extension_file = format!("{file}.ext");
    std::fs::write(
        dir.join(&extension_file),
        format!("basicConstraints=CA:FALSE\n{extensions}"),
    )
    .map_err(io("writing certificate extensions"))?;
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &format!("{ca}.crt"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-out",
            &crt,
            "-days",
            "1",
            "-extfile",
            &extension_file,
        ],
    )
    .await?;
    world_readable(&dir.join(key))
}

/// Mosquitto, dropped to its own user, reads the keys it is given.
fn world_readable(path: &Path) -> Result<(), Error> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))
        .map_err(io(format!("opening {} to the broker", path.display())))
}
