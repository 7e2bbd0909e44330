//! A private Mosquitto on a free loopback port.

use crate::{config_dir, free_port, io, read_config, Error};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tidemark_model::broker::BrokerConfig;
use tokio::process::{Child, Command};

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
    /// The login that administers the dynamic-security plugin (`tidemark-api`), for a broker from
    /// `config/mosquitto.conf`.
    admin: Option<(String, String)>,
}

/// The API's login in a secure broker when the test names none.
const ADMIN_PASSWORD: &str = "testkit-admin-password";

/// Mosquitto's dynamic-security plugin on this machine.
fn dynsec_plugin() -> Result<PathBuf, Error> {
    let lib = Path::new("/usr/lib");
    let mut candidates = vec![lib.join("mosquitto_dynamic_security.so")];
    if let Ok(entries) = std::fs::read_dir(lib) {
        candidates.extend(
            entries
                .flatten()
                .map(|e| e.path().join("mosquitto_dynamic_security.so")),
        );
    }
    candidates
        .into_iter()
        .find(|p| p.exists())
        .ok_or_else(|| Error::Io {
            context: "Mosquitto's dynamic-security plugin (mosquitto_dynamic_security.so) is not \
                      under /usr/lib; install the mosquitto package"
                .to_owned(),
            cause: std::io::Error::from(std::io::ErrorKind::NotFound),
        })
}

impl Broker {
    /// Starts Mosquitto with `config/mosquitto-test.conf` on a free port with its own persistence
    /// folder.
    pub async fn start() -> Result<Broker, Error> {
        Broker::start_from(read_config("mosquitto-test.conf")?).await
    }

    /// Starts Mosquitto as [`Broker::start`] does, but saving its persistence file as often as the
    /// shipped `config/mosquitto.conf` does (`autosave_interval`), not every second as the tests'
    /// configuration does for the fault tests. For the benchmarks: a save writes every message
    /// the broker holds, and a client that is behind has it hold thousands, so saves ten times as
    /// frequent as deployed would tax the broker beside ingest more than in production.
    pub async fn start_saving_as_deployed() -> Result<Broker, Error> {
        let template = saving_as(
            &read_config("mosquitto-test.conf")?,
            &read_config("mosquitto.conf")?,
        )?;
        Broker::start_from(template).await
    }

    /// The in-flight window of the tests' broker (`max_inflight_messages` in
    /// `config/mosquitto-test.conf`): how many unacknowledged messages it sends one client.
    pub fn in_flight_window() -> Result<usize, Error> {
        let conf = read_config("mosquitto-test.conf")?;
        match numeric_settings(&conf, "max_inflight_messages").collect::<Vec<_>>()[..] {
            [window] => Ok(window.parse().expect("a run of ASCII digits")),
            _ => Err(Error::Io {
                context: "config/mosquitto-test.conf sets max_inflight_messages other than once"
                    .into(),
                cause: std::io::Error::from(std::io::ErrorKind::InvalidData),
            }),
        }
    }

    async fn start_from(template: String) -> Result<Broker, Error> {
        let mut broker = Broker::prepare()?;
        broker.conf = template
            .replace("@PORT@", &broker.port.to_string())
            .replace("@DIR@", &format!("{}/", broker.dir.display()));
        broker.launch().await?;
        Ok(broker)
    }

    /// Starts Mosquitto from the shipped `config/mosquitto.conf` with its ACL
    /// (`config/mosquitto.acl`), on free loopback ports: the services' listener ([`Broker::port`])
    /// with a password file of `services` (and `tidemark-api`, the plugin's administrator that
    /// [`Broker::dynsec`] logs in as, if they do not name it), the devices' TLS password listener
    /// ([`Broker::device_port`]), and the mutual-TLS listener ([`Broker::tls_port`]), with a
    /// throwaway CA made here ([`Broker::ca_file`]) and a broker certificate for 127.0.0.1 signed
    /// by it. `devices` (`(user, password)` each) get logins in the dynamic-security plugin as
    /// Tidemark's API makes them.
    pub async fn start_secure(
        services: &[(&str, &str)],
        devices: &[(&str, &str)],
    ) -> Result<Broker, Error> {
        let mut broker = Broker::prepare()?;
        let mut services = services.to_vec();
        if !services.iter().any(|(user, _)| *user == "tidemark-api") {
            services.push(("tidemark-api", ADMIN_PASSWORD));
        }
        broker.admin = services
            .iter()
            .find(|(user, _)| *user == "tidemark-api")
            .map(|(user, password)| ((*user).to_owned(), (*password).to_owned()));
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
        write_passwords(&service_passwords, &services).await?;
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
                "plugin /usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so",
                format!("plugin {}", dynsec_plugin()?.display()),
            ),
            (
                "plugin_opt_config_file /var/lib/mosquitto/tidemark-dynsec.json",
                format!(
                    "plugin_opt_config_file {}/dynsec.json",
                    broker.dir.display()
                ),
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
        for (device, password) in devices {
            broker.register(device, Some(password)).await?;
        }
        Ok(broker)
    }

    /// Gives `device` a login in the dynamic-security plugin, as the API does: with `password`,
    /// or none for a device with a certificate.
    pub async fn register(&self, device: &str, password: Option<&str>) -> Result<(), Error> {
        let id = tidemark_model::DeviceId::parse(device).map_err(|e| Error::Io {
            context: format!("device {device:?}"),
            cause: std::io::Error::other(e.to_string()),
        })?;
        let topic =
            tidemark_model::topic::ReadingsTopics::new(tidemark_model::topic::DEFAULT_PREFIX)
                .map_err(|e| Error::Io {
                    context: "the readings topics".to_owned(),
                    cause: std::io::Error::other(e.to_string()),
                })?
                .for_device(&id);
        let answers = self
            .dynsec(tidemark_model::dynsec::add_device(
                &id, &topic, password, "testkit",
            ))
            .await?;
        if let Some(error) = answers.iter().find_map(|a| a.error.clone()) {
            return Err(Error::Io {
                context: format!("registering {device} in the broker"),
                cause: std::io::Error::other(error),
            });
        }
        Ok(())
    }

    /// Sends `commands` to the dynamic-security plugin as its administrator and returns the
    /// answers.
    pub async fn dynsec(
        &self,
        commands: Vec<serde_json::Value>,
    ) -> Result<Vec<tidemark_model::dynsec::Answer>, Error> {
        use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
        let failed = |what: String| Error::Io {
            context: format!("administering the broker: {what}"),
            cause: std::io::Error::other("dynamic-security plugin"),
        };
        let (user, password) = self
            .admin
            .clone()
            .ok_or_else(|| failed("not a secure broker".to_owned()))?;
        let mut options = MqttOptions::new(
            format!("testkit-admin-{}", std::process::id()),
            "127.0.0.1",
            self.port,
        );
        options.set_credentials(user, password);
        let (client, mut events) = AsyncClient::new(options, 16);
        let message = tidemark_model::dynsec::message(&commands);
        let exchange = async {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => client
                        .subscribe(tidemark_model::dynsec::RESPONSE_TOPIC, QoS::AtLeastOnce)
                        .await
                        .map_err(|e| failed(e.to_string()))?,
                    Ok(Event::Incoming(Packet::SubAck(_))) => client
                        .publish(
                            tidemark_model::dynsec::CONTROL_TOPIC,
                            QoS::AtLeastOnce,
                            false,
                            message.clone(),
                        )
                        .await
                        .map_err(|e| failed(e.to_string()))?,
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if let Some(answers) = tidemark_model::dynsec::answers(&p.payload) {
                            return Ok(answers);
                        }
                    }
                    Ok(_) => {}
                    Err(e) => return Err(failed(e.to_string())),
                }
            }
        };
        let answers = tokio::time::timeout(Duration::from_secs(10), exchange)
            .await
            .map_err(|_| failed("no answer in 10 s".to_owned()))??;
        let _ = client.disconnect().await;
        Ok(answers)
    }

    /// The CA certificate (PEM) a client trusts the mutual-TLS listener by.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("certs").join("ca.crt")
    }

    /// A client certificate with common name `name` and its key (PEM files), signed by the
    /// broker's CA, or, with `trusted` false, by a rogue CA the broker does not know. The broker
    /// lets it publish only once the device has a login ([`Broker::register`]).
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
            admin: None,
        })
    }

    async fn launch(&mut self) -> Result<(), Error> {
        let conf_path = self.dir.join("mosquitto.conf");
        std::fs::write(&conf_path, &self.conf).map_err(io("writing the broker configuration"))?;
        for file in ["services.passwd", "acl"] {
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

/// The values of a Mosquitto configuration's lines that set `name` to a number, in order.
pub fn numeric_settings<'a>(conf: &'a str, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    conf.lines()
        .filter_map(move |line| line.trim().strip_prefix(name))
        .map(str::trim)
        .filter(|value| !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()))
}

/// `template` with its `autosave_interval` line set to `deployed`'s.
fn saving_as(template: &str, deployed: &str) -> Result<String, Error> {
    let interval = |conf: &str| {
        numeric_settings(conf, "autosave_interval")
            .next()
            .map(str::to_owned)
    };
    let missing = |which: &str| Error::Io {
        context: format!("{which} has no autosave_interval line"),
        cause: std::io::Error::from(std::io::ErrorKind::InvalidData),
    };
    let wanted = interval(deployed).ok_or_else(|| missing("config/mosquitto.conf"))?;
    interval(template).ok_or_else(|| missing("config/mosquitto-test.conf"))?;
    Ok(template
        .lines()
        .map(|line| match line.trim().strip_prefix("autosave_interval") {
            Some(_) => format!("autosave_interval {wanted}\n"),
            None => format!("{line}\n"),
        })
        .collect())
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broker_saving_as_deployed_takes_the_shipped_interval_and_keeps_the_rest() {
        let test = read_config("mosquitto-test.conf").unwrap();
        let deployed = read_config("mosquitto.conf").unwrap();
        let conf = saving_as(&test, &deployed).unwrap();
        let saves: Vec<&str> = conf
            .lines()
            .filter(|l| l.starts_with("autosave_interval"))
            .collect();
        let shipped: Vec<&str> = deployed
            .lines()
            .filter(|l| l.starts_with("autosave_interval"))
            .collect();
        assert_eq!(saves, shipped);
        assert_ne!(
            saves,
            ["autosave_interval 1"],
            "the shipped file saves less often"
        );
        let others = |c: &str| -> Vec<String> {
            c.lines()
                .filter(|l| !l.starts_with("autosave_interval"))
                .map(str::to_owned)
                .collect()
        };
        assert_eq!(others(&conf), others(&test));
        assert!(saving_as("persistence true\n", &deployed).is_err());
        assert!(saving_as(&test, "# autosave_interval 10\n").is_err());
    }
}
