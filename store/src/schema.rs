//! Migrations, capability detection and the physical layout of `readings` in each storage mode.

use crate::config::{connect_one, DatabaseConfig, TimescaleSetting};
use crate::coordination::{MIGRATION_LOCK, PARTITION_LOCK};
use crate::{Context, Error, Result, Store};
use chrono::{DateTime, Datelike, NaiveDate, TimeZone, Utc};
use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

refinery::embed_migrations!("migrations");

/// How `readings` is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageMode {
    /// Plain PostgreSQL: range partitions by month, created by Tidemark.
    Plain,
    /// A TimescaleDB hypertable with compression and retention policies.
    TimescaleDb,
}

impl std::fmt::Display for StorageMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StorageMode::Plain => "plain PostgreSQL (monthly partitions)",
            StorageMode::TimescaleDb => "TimescaleDB (hypertable)",
        })
    }
}

/// Whether the server offers TimescaleDB (`pg_available_extensions`).
pub async fn timescaledb_available(client: &Client) -> Result<bool> {
    let row = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb')",
            &[],
        )
        .await
        .context("checking for TimescaleDB")?;
    Ok(row.get(0))
}

/// Whether the server `config` points at offers TimescaleDB, asked through its maintenance database.
pub async fn server_offers_timescaledb(config: &DatabaseConfig) -> Result<bool> {
    let client = connect_one(&config.with_database("postgres")).await?;
    timescaledb_available(&client).await
}

/// Creates the database if it does not exist, runs the migrations, and brings the storage layout
/// (TimescaleDB policies or plain partitions) in line with the configuration. Safe to run from
/// several processes at once, and again at every start.
pub async fn migrate(config: &DatabaseConfig) -> Result<StorageMode> {
    let mut client = match connect_one(config).await {
        Err(Error::Connect { cause, .. })
            if cause.code() == Some(&SqlState::INVALID_CATALOG_NAME) =>
        {
            create_database(config).await?;
            connect_one(config).await?
        }
        other => other?,
    };
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await
        .context("taking the migration lock")?;
    let outcome = migrate_locked(&mut client, config).await;
    // The lock also goes with the session; unlocking early lets a waiting process on in.
    let _ = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await;
    let mode = outcome?;
    let store = Store::connect(config).await?;
    store.maintain(Utc::now(), config).await?;
    Ok(mode)
}

async fn create_database(config: &DatabaseConfig) -> Result<()> {
    let pg_config = config.pg_config()?;
    let name = pg_config
        .get_dbname()
        .ok_or_else(|| Error::NotMigrated)?
        .to_owned();
    let admin = connect_one(&config.with_database("postgres")).await?;
    let quoted = format!("\"{}\"", name.replace('"', "\"\""));
    match admin
        .batch_execute(&format!("CREATE DATABASE {quoted}"))
        .await
    {
        Ok(()) => {
            tracing::info!(database = %name, "created database");
            Ok(())
        }
        // Another process created it first.
        Err(e) if e.code() == Some(&SqlState::DUPLICATE_DATABASE) => Ok(()),
        Err(cause) => Err(Error::Query {
            context: "creating the database",
            cause,
        }),
    }
}

/// Runs the migrations up to and including `version` only, leaving the database as a release of
/// that schema would have: for tests of what a later migration does to existing data.
pub async fn migrate_to_version(config: &DatabaseConfig, version: i32) -> Result<()> {
    let mut client = connect_one(config).await?;
    migrations::runner()
        .set_target(refinery::Target::Version(version))
        .run_async(&mut client)
        .await?;
    Ok(())
}

async fn migrate_locked(client: &mut Client, config: &DatabaseConfig) -> Result<StorageMode> {
    let readings_exist = relkind(client).await?.is_some();
    if !readings_exist && config.timescaledb != TimescaleSetting::Off {
        enable_timescaledb(client, config).await?;
    }
    migrations::runner().run_async(client).await?;
    let mode = detect_mode(client).await?;
    if config.timescaledb == TimescaleSetting::Required && mode != StorageMode::TimescaleDb {
        return Err(Error::TimescaleUnavailable(
            "readings was created earlier as a plain PostgreSQL table".to_owned(),
        ));
    }
    if mode == StorageMode::TimescaleDb {
        apply_timescale_policies(client, config).await?;
        crate::rollup::create_rollups_timescale(client).await?;
    }
    tracing::info!(%mode, "database migrated");
    Ok(mode)
}

/// Why TimescaleDB cannot be created on a server that offers it but does not load it.
const NOT_PRELOADED: &str = "the server offers the extension but does not preload it: add \
     timescaledb to shared_preload_libraries in postgresql.conf and restart the server";

async fn enable_timescaledb(client: &Client, config: &DatabaseConfig) -> Result<()> {
    let setting = config.timescaledb;
    let refuse = |reason: String| {
        if setting == TimescaleSetting::Required {
            return Err(Error::TimescaleUnavailable(reason));
        }
        tracing::warn!("TimescaleDB: {reason}; using plain PostgreSQL partitions");
        Ok(())
    };
    if !timescaledb_available(client).await? {
        if setting == TimescaleSetting::Required {
            return Err(Error::TimescaleUnavailable(
                "the server does not offer the extension (pg_available_extensions)".to_owned(),
            ));
        }
        tracing::info!("TimescaleDB is not available; using plain PostgreSQL partitions");
        return Ok(());
    }
    // Only a superuser (or pg_read_all_settings) may read the setting; others find out below.
    if let Ok(row) = client.query_one("SHOW shared_preload_libraries", &[]).await {
        let libraries: String = row.get(0);
        let preloaded = libraries
            .split(',')
            .any(|l| l.trim().trim_matches('"') == "timescaledb");
        if !preloaded {
            return refuse(NOT_PRELOADED.to_owned());
        }
    }
    // On a connection of its own: TimescaleDB ends the session (FATAL) when it is not preloaded,
    // and the migration's connection must survive that.
    let probe = connect_one(config).await?;
    match probe
        .batch_execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
        .await
    {
        Ok(()) => Ok(()),
        Err(error) => {
            let text = crate::chain(&error);
            if text.contains("must be preloaded") {
                refuse(NOT_PRELOADED.to_owned())
            } else {
                refuse(format!("CREATE EXTENSION failed: {text}"))
            }
        }
    }
}

async fn relkind(client: &Client) -> Result<Option<i8>> {
    let row = client
        .query_opt(
            "SELECT relkind::\"char\" FROM pg_class WHERE oid = to_regclass('readings')",
            &[],
        )
        .await
        .context("inspecting the readings relation")?;
    Ok(row.map(|r| r.get::<_, i8>(0)))
}

/// Which mode an already migrated database is in.
pub async fn detect_mode(client: &Client) -> Result<StorageMode> {
    match relkind(client).await?.map(|k| k as u8) {
        Some(b'p') => Ok(StorageMode::Plain),
        Some(_) => Ok(StorageMode::TimescaleDb),
        None => Err(Error::NotMigrated),
    }
}

fn interval_literal(duration: Duration) -> String {
    format!("{} seconds", duration.as_secs())
}

/// Compression segmented by sensor and a retention policy, as the TimescaleDB documentation
/// describes them (`ALTER TABLE ... SET (timescaledb.compress ...)`, `add_compression_policy`,
/// `add_retention_policy`). Re-applied at every migrate so that changed intervals take effect.
async fn apply_timescale_policies(client: &Client, config: &DatabaseConfig) -> Result<()> {
    client
        .batch_execute(
            "ALTER TABLE readings SET (timescaledb.compress, \
             timescaledb.compress_segmentby = 'sensor_id', timescaledb.compress_orderby = 'ts DESC')",
        )
        .await
        .context("enabling compression on readings")?;
    client
        .batch_execute("SELECT remove_compression_policy('readings', if_exists => true)")
        .await
        .context("removing the old compression policy")?;
    client
        .execute(
            "SELECT add_compression_policy('readings', compress_after => $1::text::interval)",
            &[&interval_literal(config.compress_after)],
        )
        .await
        .context("adding the compression policy")?;
    client
        .batch_execute("SELECT remove_retention_policy('readings', if_exists => true)")
        .await
        .context("removing the old retention policy")?;
    if let Some(retention) = config.retention {
        client
            .execute(
                "SELECT add_retention_policy('readings', drop_after => $1::text::interval)",
                &[&interval_literal(retention)],
            )
            .await
            .context("adding the retention policy")?;
    }
    Ok(())
}

/// A calendar month, the unit of plain-mode partitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Month {
    year: i32,
    month: u32,
}

impl Month {
    pub(crate) fn of(ts: DateTime<Utc>) -> Month {
        Month {
            year: ts.year(),
            month: ts.month(),
        }
    }

    fn next(self) -> Month {
        if self.month == 12 {
            Month {
                year: self.year + 1,
                month: 1,
            }
        } else {
            Month {
                year: self.year,
                month: self.month + 1,
            }
        }
    }

    fn start(self) -> DateTime<Utc> {
        let date = NaiveDate::from_ymd_opt(self.year, self.month, 1)
            .and_then(|d| d.and_hms_opt(0, 0, 0))
            .expect("the first of a month from a valid timestamp is a valid date");
        Utc.from_utc_datetime(&date)
    }

    fn table(self) -> String {
        format!("readings_p{:04}{:02}", self.year, self.month)
    }

    fn parse_table(name: &str) -> Option<Month> {
        let digits = name.strip_prefix("readings_p")?;
        if digits.len() != 6 {
            return None;
        }
        Some(Month {
            year: digits[..4].parse().ok()?,
            month: digits[4..].parse().ok()?,
        })
    }

    /// Months from `first` to `last` inclusive.
    pub(crate) fn span(first: Month, last: Month) -> impl Iterator<Item = Month> {
        std::iter::successors(Some(first), move |m| (*m < last).then(|| m.next()))
    }
}

/// Partitions known to exist, so that the write path asks the database only about new months.
#[derive(Default)]
pub(crate) struct PartitionCache(Mutex<HashSet<Month>>);

impl Store {
    /// Plain mode: makes sure a partition exists for every month from `from` to `to`.
    pub async fn ensure_partitions(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> Result<()> {
        if self.mode != StorageMode::Plain {
            return Ok(());
        }
        let missing: Vec<Month> = {
            let known = self
                .partitions
                .0
                .lock()
                .expect("partition cache lock poisoned");
            Month::span(Month::of(from), Month::of(to))
                .filter(|m| !known.contains(m))
                .collect()
        };
        if missing.is_empty() {
            return Ok(());
        }
        let mut client = self.client().await?;
        let tx = client.transaction().await.context("begin partition DDL")?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&PARTITION_LOCK])
            .await
            .context("taking the partition lock")?;
        for month in &missing {
            let sql = format!(
                "CREATE TABLE IF NOT EXISTS {} PARTITION OF readings FOR VALUES FROM ('{}') TO ('{}')",
                month.table(),
                month.start().to_rfc3339(),
                month.next().start().to_rfc3339(),
            );
            tx.batch_execute(&sql)
                .await
                .context("creating a partition")?;
        }
        tx.commit().await.context("commit partition DDL")?;
        self.partitions
            .0
            .lock()
            .expect("partition cache lock poisoned")
            .extend(missing);
        Ok(())
    }

    /// Periodic upkeep. Both modes: forecast issues past their retention go. Plain mode: partitions for this month and `partitions_ahead` more, and
    /// retention by dropping whole months older than the retention period. TimescaleDB runs its own
    /// policies in the background; the jobs on `readings` whose scheduled runs fail are run here
    /// instead, and returned (empty in plain mode).
    pub async fn maintain(
        &self,
        now: DateTime<Utc>,
        config: &DatabaseConfig,
    ) -> Result<Vec<JobHealth>> {
        let cutoff = chrono::Duration::from_std(config.forecast_retention)
            .ok()
            .and_then(|kept| now.checked_sub_signed(kept))
            .unwrap_or(DateTime::UNIX_EPOCH)
            .max(DateTime::UNIX_EPOCH);
        let expired = self.expire_forecasts(cutoff).await?;
        if expired > 0 {
            tracing::info!(issues = expired, "deleted forecast issues past retention");
        }
        if self.mode == StorageMode::TimescaleDb {
            return self.run_failing_jobs().await;
        }
        let mut last = Month::of(now);
        for _ in 0..config.partitions_ahead {
            last = last.next();
        }
        self.ensure_partitions(now, last.start()).await?;
        let Some(retention) = config.retention else {
            return Ok(Vec::new());
        };
        let cutoff = now - chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX);
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
                 WHERE i.inhparent = 'readings'::regclass",
                &[],
            )
            .await
            .context("listing partitions")?;
        for row in rows {
            let name: String = row.get(0);
            let Some(month) = Month::parse_table(&name) else {
                continue;
            };
            if month.next().start() <= cutoff {
                client
                    .batch_execute(&format!("DROP TABLE IF EXISTS {name}"))
                    .await
                    .context("dropping an expired partition")?;
                self.partitions
                    .0
                    .lock()
                    .expect("partition cache lock poisoned")
                    .remove(&month);
                tracing::info!(partition = %name, "dropped partition past retention");
            }
        }
        Ok(Vec::new())
    }
}

/// What TimescaleDB reports about `readings`, read from its information views.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TimescaleStatus {
    pub hypertable: bool,
    pub compression_enabled: bool,
    /// `compress_segmentby` columns of the hypertable.
    pub segment_by: Vec<String>,
    pub compression_policy: bool,
    pub retention_policy: bool,
    /// The continuous aggregates on `readings`, by name.
    pub continuous_aggregates: Vec<String>,
}

impl Store {
    /// Plain mode: the names of `readings`' partitions, in order.
    pub async fn partition_names(&self) -> Result<Vec<String>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
                 WHERE i.inhparent = to_regclass('readings') ORDER BY 1",
                &[],
            )
            .await
            .context("listing partitions")?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// TimescaleDB mode: the hypertable, compression and policies of `readings`.
    pub async fn timescale_status(&self) -> Result<TimescaleStatus> {
        if self.mode != StorageMode::TimescaleDb {
            return Ok(TimescaleStatus::default());
        }
        let client = self.client().await?;
        let hypertable = client
            .query_opt(
                "SELECT compression_enabled FROM timescaledb_information.hypertables \
                 WHERE hypertable_name = 'readings'",
                &[],
            )
            .await
            .context("reading timescaledb_information.hypertables")?;
        let segment_by = client
            .query(
                "SELECT attname::text FROM timescaledb_information.compression_settings \
                 WHERE hypertable_name = 'readings' AND segmentby_column_index IS NOT NULL \
                 ORDER BY segmentby_column_index",
                &[],
            )
            .await
            .context("reading timescaledb_information.compression_settings")?;
        let jobs = client
            .query(
                "SELECT proc_name::text FROM timescaledb_information.jobs \
                 WHERE hypertable_name = 'readings'",
                &[],
            )
            .await
            .context("reading timescaledb_information.jobs")?;
        let procs: Vec<String> = jobs.iter().map(|r| r.get(0)).collect();
        let aggregates = client
            .query(
                "SELECT view_name::text FROM timescaledb_information.continuous_aggregates \
                 WHERE hypertable_name = 'readings' ORDER BY 1",
                &[],
            )
            .await
            .context("reading timescaledb_information.continuous_aggregates")?;
        Ok(TimescaleStatus {
            hypertable: hypertable.is_some(),
            compression_enabled: hypertable.is_some_and(|r| r.get(0)),
            segment_by: segment_by.iter().map(|r| r.get(0)).collect(),
            compression_policy: procs.iter().any(|p| p == "policy_compression"),
            retention_policy: procs.iter().any(|p| p == "policy_retention"),
            continuous_aggregates: aggregates.iter().map(|r| r.get(0)).collect(),
        })
    }
}

/// How one of TimescaleDB's background jobs on `readings` (compression, retention) is doing.
#[derive(Debug, Clone, PartialEq)]
pub struct JobHealth {
    pub job_id: i32,
    pub proc_name: String,
    /// `Success` or `Failed` once it has run; `None` before.
    pub last_run_status: Option<String>,
    pub total_runs: i64,
    pub total_failures: i64,
    /// Its most recent error, from `timescaledb_information.job_errors`.
    pub last_error: Option<String>,
}

impl JobHealth {
    /// The scheduler's last run of it failed.
    pub fn failing(&self) -> bool {
        self.last_run_status.as_deref() == Some("Failed")
    }
}

impl Store {
    /// TimescaleDB mode: the health of the background jobs on `readings`, from
    /// `timescaledb_information.jobs`, `job_stats` and `job_errors`. Empty in plain mode.
    pub async fn timescale_jobs(&self) -> Result<Vec<JobHealth>> {
        if self.mode != StorageMode::TimescaleDb {
            return Ok(Vec::new());
        }
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT j.job_id, j.proc_name::text, s.last_run_status::text, \
                        coalesce(s.total_runs, 0), coalesce(s.total_failures, 0), \
                        (SELECT e.err_message::text FROM timescaledb_information.job_errors e \
                         WHERE e.job_id = j.job_id ORDER BY e.start_time DESC LIMIT 1) \
                 FROM timescaledb_information.jobs j \
                 LEFT JOIN timescaledb_information.job_stats s USING (job_id) \
                 WHERE j.hypertable_name = 'readings' ORDER BY j.job_id",
                &[],
            )
            .await
            .context("reading TimescaleDB's job statistics")?;
        Ok(rows
            .iter()
            .map(|r| JobHealth {
                job_id: r.get(0),
                proc_name: r.get(1),
                last_run_status: r.get(2),
                total_runs: r.get(3),
                total_failures: r.get(4),
                last_error: r.get(5),
            })
            .collect())
    }

    /// Runs, in this session, every job on `readings` whose last run by TimescaleDB's scheduler
    /// failed: on some PostgreSQL minor versions the scheduler's background workers fail every run
    /// (15.20 with TimescaleDB 2.28.3: "cannot drop portal ... while it is being set up"), and
    /// compression and retention would then never happen. Returns the jobs run.
    async fn run_failing_jobs(&self) -> Result<Vec<JobHealth>> {
        let failing: Vec<JobHealth> = self
            .timescale_jobs()
            .await?
            .into_iter()
            .filter(JobHealth::failing)
            .collect();
        if failing.is_empty() {
            return Ok(failing);
        }
        let client = self.client().await?;
        for job in &failing {
            tracing::warn!(
                job = job.job_id,
                proc = %job.proc_name,
                failures = job.total_failures,
                error = job.last_error.as_deref().unwrap_or(""),
                "TimescaleDB's scheduler fails this job; running it from Tidemark's maintenance"
            );
            // CALL takes no parameters through the extended protocol outside a transaction; the
            // id is our own integer.
            client
                .batch_execute(&format!("CALL run_job({})", job.job_id))
                .await
                .context("running a TimescaleDB job")?;
        }
        Ok(failing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Released migrations are never edited or removed: each one's SHA-256 is recorded in
    /// `migrations.sha256` (in `sha256sum`'s format, so `sha256sum -c` checks it as well), and a
    /// new migration gets its line when it is added.
    #[test]
    fn released_migrations_are_never_edited() {
        use sha2::{Digest, Sha256};
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let recorded: std::collections::BTreeMap<String, String> =
            std::fs::read_to_string(dir.join("migrations.sha256"))
                .unwrap()
                .lines()
                .filter(|line| !line.trim().is_empty())
                .map(|line| {
                    let (sum, name) = line
                        .split_once("  ")
                        .unwrap_or_else(|| panic!("not a sha256sum line: {line:?}"));
                    (name.to_owned(), sum.to_owned())
                })
                .collect();
        let mut present = std::collections::BTreeMap::new();
        for entry in std::fs::read_dir(dir.join("migrations")).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let digest = Sha256::digest(std::fs::read(&path).unwrap());
            let sum: String = digest.iter().map(|b| format!("{b:02x}")).collect();
            present.insert(name, sum);
        }
        for (name, sum) in &recorded {
            match present.get(name) {
                None => panic!("{name} was released and is gone: released migrations stay"),
                Some(now) => assert_eq!(
                    now, sum,
                    "{name} was edited after its release: put the change in a new migration"
                ),
            }
        }
        for name in present.keys() {
            assert!(
                recorded.contains_key(name),
                "{name} is not in migrations.sha256: add its line (sha256sum {name}) with it"
            );
        }
    }

    #[test]
    fn months() {
        let ts = DateTime::parse_from_rfc3339("2023-12-31T23:59:59Z")
            .unwrap()
            .with_timezone(&Utc);
        let december = Month::of(ts);
        assert_eq!(december.table(), "readings_p202312");
        assert_eq!(december.next().table(), "readings_p202401");
        assert_eq!(
            december.next().start().to_rfc3339(),
            "2024-01-01T00:00:00+00:00"
        );
        assert_eq!(
            Month::parse_table("readings_p202401"),
            Some(december.next())
        );
        assert_eq!(Month::parse_table("readings_staging"), None);
        let span: Vec<String> = Month::span(december, december.next().next())
            .map(Month::table)
            .collect();
        assert_eq!(
            span,
            ["readings_p202312", "readings_p202401", "readings_p202402"]
        );
        assert_eq!(Month::span(december, december).count(), 1);
    }
}
