//! A PostgreSQL cluster of the test's own.

use crate::admin;
use crate::{free_port, io, Error};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use tidemark_store::DatabaseConfig;
use tokio::process::{Child, Command};

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
        // /proc/self belongs to the process's effective user.
        let root = {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata("/proc/self")
                .map_err(io("reading /proc/self"))?
                .uid()
                == 0
        };
        let user = if root { Some(postgres_user()?) } else { None };
        let mut cluster = PrivatePostgres::unstarted(postgres_bin()?, user)?;
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

    /// A cluster not yet made: a free port and a folder of its own, owned by `user` if given.
    fn unstarted(bin: PathBuf, user: Option<(u32, u32)>) -> Result<PrivatePostgres, Error> {
        let port = free_port()?;
        let dir =
            std::env::temp_dir().join(format!("tidemark-postgres-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid))
                .map_err(io(format!("giving {} to postgres", dir.display())))?;
        }
        Ok(PrivatePostgres {
            port,
            dir,
            bin,
            user,
            child: None,
        })
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

    /// A streaming replica of this cluster (pg_basebackup with `-R`), in a folder of its own on
    /// a free port, started: a hot standby that follows the primary until
    /// [`PrivatePostgres::promote`].
    pub async fn replica(&self) -> Result<PrivatePostgres, Error> {
        let mut replica = PrivatePostgres::unstarted(self.bin.clone(), self.user)?;
        let data = replica.dir.join("data");
        let output = replica
            .command("pg_basebackup")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-X",
                "stream",
                "-R",
                "--no-sync",
                "-D",
            ])
            .arg(&data)
            .output()
            .await
            .map_err(io("running pg_basebackup"))?;
        if !output.status.success() {
            return Err(Error::Io {
                context: format!(
                    "pg_basebackup ended with {}: {}",
                    output.status,
                    String::from_utf8_lossy(&output.stderr)
                ),
                cause: std::io::Error::other("pg_basebackup failed"),
            });
        }
        replica.start_again().await?;
        Ok(replica)
    }

    /// Promotes a standby to primary and waits until it takes writes.
    pub async fn promote(&self) -> Result<(), Error> {
        admin::execute(&self.config(), "SELECT pg_promote(true, 60)").await
    }

    /// Runs `sql` against the cluster's `postgres` database.
    pub async fn execute(&self, sql: &str) -> Result<(), Error> {
        admin::execute(&self.config(), sql).await
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
