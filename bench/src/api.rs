//! `tidemark-bench api`: latency and throughput of the open data API over a large table, beside
//! the time the database itself takes for the same queries, in the same run.
//!
//! A fresh database is filled by binary COPY with `--sensors` sensors of 10-minute readings
//! (`--readings` in all; the default 50 million is 1,000 sensors of about 347 days each). Then,
//! for `--seconds` each, `--concurrency` clients ask the API (in this process, over loopback) for:
//! the latest value of every sensor; one sensor's day of raw readings; one sensor's year in hourly
//! buckets (and that once more with 1 and 4 clients); one sensor's whole series, 10,000 readings a
//! page, each page's link taken from the answer before, from the raw readings endpoint and as
//! SensorThings Observations. The same work is then timed directly against
//! the database through the store, and the year once more from the raw readings alone, to show
//! what the hourly rollup saves.

use crate::ingest::{percentile, postgres_cpu_seconds, process_cpu_seconds, spread};
use chrono::{DateTime, Duration as ChronoDuration, TimeZone, Utc};
use futures_util::StreamExt;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tidemark::config::Config;
use tidemark_api::{ApiSettings, ApiState};
use tidemark_store::opendata::RawOrder;
use tidemark_store::readings::ReadingRow;
use tidemark_store::reference::{DeviceRecord, ReferenceData, SensorRecord, StationRecord};
use tidemark_store::Store;
use tidemark_testkit::TestDatabase;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ApiBenchArgs {
    /// Readings loaded in all.
    #[arg(long, default_value_t = 50_000_000)]
    pub readings: u64,
    /// Sensors they are spread over.
    #[arg(long, default_value_t = 1000)]
    pub sensors: u64,
    /// Concurrent clients.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Seconds each query is run for.
    #[arg(long, default_value_t = 15)]
    pub seconds: u64,
    /// After the single pass, this many more rounds of the year query (with 1, 4 and
    /// `--concurrency` clients) and the latest values, interleaved, for the spread of each figure.
    #[arg(long, default_value_t = 0)]
    pub rounds: usize,
}

/// Readings per page in the paging comparison.
const PAGE: u64 = 10_000;

/// How [`hammer`] numbers requests: task `t`'s requests are `t * TASK_STRIDE + n`.
const TASK_STRIDE: u64 = 1_000_003;

/// The `@iot.nextLink` of a SensorThings collection, which the API writes before the values.
fn next_link(body: &[u8]) -> Option<String> {
    const KEY: &[u8] = b"\"@iot.nextLink\":";
    let head = &body[..body.len().min(4096)];
    let start = head.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let mut stream = serde_json::Deserializer::from_slice(&head[start..]).into_iter::<String>();
    stream.next()?.ok()
}

/// Rows per COPY transaction while loading.
const LOAD_BATCH: usize = 500_000;

fn first_ts() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).unwrap()
}

pub(crate) async fn api(config: &Config, args: ApiBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.sensors > 0 && args.readings >= args.sensors,
        "--readings must be at least --sensors"
    );
    let database = TestDatabase::create(&config.database).await?;
    let outcome = measure(config, &args, &database.config).await;
    database.drop_database().await?;
    outcome
}

struct Figures {
    latencies_ms: Vec<f64>,
    per_second: f64,
    /// CPU-seconds per thousand requests: this process's (for the API lines, the API and its
    /// clients; for the DB lines, the store's driver and the tasks), and PostgreSQL's.
    cpu_process: f64,
    cpu_database: f64,
}

impl Figures {
    fn line(&self, what: &str) -> String {
        format!(
            "{what:<44} {:>8.0} req/s   p50 {:>7.2} ms   p99 {:>7.2} ms   ({} requests; CPU-s per 1000: process {:.2}, PostgreSQL {:.2})",
            self.per_second,
            percentile(&self.latencies_ms, 0.50),
            percentile(&self.latencies_ms, 0.99),
            self.latencies_ms.len(),
            self.cpu_process,
            self.cpu_database
        )
    }
}

/// Runs `work` from `concurrency` tasks for `seconds`; `work(i)` is the i-th request of a task.
async fn hammer<F, Fut>(concurrency: usize, seconds: u64, work: F) -> anyhow::Result<Figures>
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let work = Arc::new(work);
    let cpu_before = (
        process_cpu_seconds(std::process::id()),
        postgres_cpu_seconds(),
    );
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for task in 0..concurrency {
        let work = work.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut i = task as u64 * TASK_STRIDE;
            while Instant::now() < deadline {
                let begun = Instant::now();
                work(i).await?;
                latencies.push(begun.elapsed().as_secs_f64() * 1000.0);
                i += 1;
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut latencies_ms = Vec::new();
    for task in tasks {
        latencies_ms.extend(task.await??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let per_thousand = 1000.0 / latencies_ms.len().max(1) as f64;
    let cpu_process = (process_cpu_seconds(std::process::id()) - cpu_before.0) * per_thousand;
    let cpu_database = (postgres_cpu_seconds() - cpu_before.1) * per_thousand;
    latencies_ms.sort_by(f64::total_cmp);
    Ok(Figures {
        per_second: latencies_ms.len() as f64 / elapsed,
        latencies_ms,
        cpu_process,
        cpu_database,
    })
}

/// Loads the readings; returns the sensors' keys and ids.
async fn load(store: &Store, args: &ApiBenchArgs) -> anyhow::Result<(Vec<String>, Vec<i32>)> {
    let mut reference = ReferenceData::default();
    let keys: Vec<String> = (0..args.sensors)
        .map(|s| format!("bench-api-{s}.level"))
        .collect();
    for (s, key) in keys.iter().enumerate() {
        let device = format!("bench-api-{s}");
        // A station each, so that every sensor is also a SensorThings Datastream.
        reference.stations.push(StationRecord {
            key: device.clone(),
            name: format!("Bench station {s}"),
            kind: "river_gauge".into(),
            lon: 8.0 + (s % 100) as f64 * 0.05,
            lat: 54.5 + (s / 100) as f64 * 0.01,
            municipality_code: None,
        });
        reference.devices.push(DeviceRecord {
            key: device.clone(),
            name: String::new(),
        });
        reference.sensors.push(SensorRecord {
            key: key.clone(),
            station: Some(device.clone()),
            device,
            quantity: "water_level".into(),
            name: String::new(),
            expected_interval: Duration::from_secs(600),
        });
    }
    store.apply_reference(&reference).await?;
    let catalog = store.sensor_catalog().await?;
    let ids: Vec<i32> = keys
        .iter()
        .map(|k| catalog.iter().find(|s| &s.key == k).map(|s| s.id))
        .collect::<Option<_>>()
        .ok_or_else(|| anyhow::anyhow!("the bench sensors were not registered"))?;
    let per_sensor = args.readings / args.sensors;
    let started = Instant::now();
    let mut batch = Vec::with_capacity(LOAD_BATCH);
    let mut loaded = 0u64;
    // Sensor-major, as a bulk back-fill would arrive.
    for (s, id) in ids.iter().enumerate() {
        for i in 0..per_sensor {
            let ts = first_ts() + ChronoDuration::minutes(10 * i as i64);
            let value =
                1.0 + ((i as f64) / 144.0 * std::f64::consts::TAU).sin() * 0.5 + s as f64 * 0.001;
            batch.push(ReadingRow {
                sensor_id: *id,
                ts,
                value,
                quality: 0,
            });
            if batch.len() == LOAD_BATCH {
                store.write_batch(&batch, &[], Utc::now()).await?;
                loaded += batch.len() as u64;
                batch.clear();
                eprintln!(
                    "bench api: loaded {loaded} readings ({:.0}/s)",
                    loaded as f64 / started.elapsed().as_secs_f64()
                );
            }
        }
    }
    if !batch.is_empty() {
        loaded += batch.len() as u64;
        store.write_batch(&batch, &[], Utc::now()).await?;
    }
    eprintln!(
        "bench api: {loaded} readings loaded in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    let refreshing = Instant::now();
    let hours = store.refresh_all_rollups().await?;
    eprintln!(
        "bench api: rollups of {hours} sensor hours computed in {:.0} s",
        refreshing.elapsed().as_secs_f64()
    );
    store.analyze_readings().await?;
    Ok((keys, ids))
}

async fn measure(
    config: &Config,
    args: &ApiBenchArgs,
    database: &tidemark_store::DatabaseConfig,
) -> anyhow::Result<()> {
    tidemark_store::schema::migrate(database).await?;
    let store = Store::connect(&tidemark_store::DatabaseConfig {
        pool_size: (args.concurrency + 4).max(config.database.pool_size),
        ..database.clone()
    })
    .await?;
    let (keys, ids) = load(&store, args).await?;
    let (keys, ids) = (Arc::new(keys), Arc::new(ids));
    let per_sensor = args.readings / args.sensors;
    let last_ts = first_ts() + ChronoDuration::minutes(10 * per_sensor as i64);

    let shutdown = CancellationToken::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let api_config = tidemark_api::ApiConfig {
        public_url: base.clone(),
        rate_limit_per_minute: u32::MAX / 2,
        ..config.api.clone()
    };
    let settings = ApiSettings::new(
        &api_config,
        config.delivery.validate().map_err(anyhow::Error::msg)?,
        config.delivery.rotation_grace,
        &config.mqtt.topic_prefix,
    )
    .map_err(anyhow::Error::msg)?;
    let hub = tidemark_api::sse::Hub::start(store.clone(), database.clone(), shutdown.clone());
    let state = ApiState::new(store.clone(), settings, hub, database, shutdown.clone());
    let written = state.written.clone();
    let router = tidemark_api::api_router(state);
    let server = tokio::spawn(tidemark_api::serve(listener, router, shutdown.clone()));
    // The queries, in a block of their own: the HTTP clients and everything holding them end
    // with it.
    let outcome = async {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(args.concurrency)
            .build()?;

        // Whole days inside the loaded data.
        let days = (per_sensor / 144).max(1);
        let day_start = move |i: u64| first_ts() + ChronoDuration::days((i % days) as i64);
        let sensor = |keys: &[String], i: u64| keys[(i % keys.len() as u64) as usize].clone();
        let year_from = first_ts();
        let year_to = last_ts;
        let rfc = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);

        let get = {
            let http = http.clone();
            move |url: String| {
                let http = http.clone();
                async move {
                    let mut response = http.get(url).send().await?;
                    anyhow::ensure!(response.status().is_success(), "HTTP {}", response.status());
                    // Read to the end and count, without gathering the body into one buffer: the
                    // clients share the machine's cores with the API, and copying a megabyte a year
                    // together is their cost, not the API's.
                    let expected = response.content_length();
                    let mut received = 0;
                    while let Some(chunk) = response.chunk().await? {
                        received += chunk.len() as u64;
                    }
                    anyhow::ensure!(
                        expected.is_none_or(|n| n == received),
                        "{received} bytes received of {expected:?}"
                    );
                    anyhow::Ok(())
                }
            }
        };
        let c = args.concurrency;
        let s = args.seconds;
        let latest = {
            let (get, base) = (get.clone(), base.clone());
            move |_: u64| get(format!("{base}/api/v1/latest"))
        };
        let latest_api = hammer(c, s, latest.clone()).await?;
        let day_api = {
            let (get, base, keys) = (get.clone(), base.clone(), keys.clone());
            hammer(c, s, move |i| {
                let from = day_start(i);
                get(format!(
                    "{base}/api/v1/sensors/{}/readings?from={}&to={}&limit=1000",
                    sensor(&keys, i),
                    rfc(from),
                    rfc(from + ChronoDuration::days(1))
                ))
            })
            .await?
        };
        let year = {
            let (get, base, keys) = (get.clone(), base.clone(), keys.clone());
            move |i: u64| {
                get(format!(
                    "{base}/api/v1/sensors/{}/readings?from={}&to={}&bucket=1h&agg=avg,min,max",
                    sensor(&keys, i),
                    rfc(year_from),
                    rfc(year_to)
                ))
            }
        };
        let year_api = hammer(c, s, year.clone()).await?;
        // The same with fewer clients: the latency one request takes when the machine is not
        // saturated, beside the queueing of `c` clients on its cores.
        let year_api_fewer = [1, 4].map(|clients| (clients, year.clone()));
        let mut year_api_fewer_figures = Vec::new();
        for (clients, work) in year_api_fewer {
            if clients < c {
                year_api_fewer_figures.push((clients, hammer(clients, s, work).await?));
            }
        }
        // One sensor's whole series, 10,000 readings a page, each page's link taken from the answer
        // before: the raw readings endpoint (its `Link` header, a cursor) beside SensorThings
        // (`@iot.nextLink`, a keyset token). A client whose series ends starts on another sensor.
        let pages = |sta: bool| {
            let (http, base, keys, ids) = (http.clone(), base.clone(), keys.clone(), ids.clone());
            let links: Arc<std::sync::Mutex<std::collections::HashMap<u64, String>>> =
                Default::default();
            move |i: u64| {
                let (http, links) = (http.clone(), links.clone());
                let task = i / TASK_STRIDE;
                let first = if sta {
                    format!(
                        "{base}/sta/v1.1/Datastreams({})/Observations?$orderby=phenomenonTime&$top={PAGE}",
                        ids[(i % ids.len() as u64) as usize]
                    )
                } else {
                    format!(
                        "{base}/api/v1/sensors/{}/readings?from={}&to={}&limit={PAGE}",
                        sensor(&keys, i),
                        rfc(year_from),
                        rfc(year_to)
                    )
                };
                async move {
                    let url = links
                        .lock()
                        .expect("the links' lock is never poisoned")
                        .remove(&task)
                        .unwrap_or(first);
                    let response = http.get(url).send().await?;
                    anyhow::ensure!(response.status().is_success(), "HTTP {}", response.status());
                    let link = response
                        .headers()
                        .get(reqwest::header::LINK)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| Some(v.get(v.find('<')? + 1..v.find('>')?)?.to_owned()));
                    let body = response.bytes().await?;
                    let next = if sta { next_link(&body) } else { link };
                    if let Some(next) = next {
                        links
                            .lock()
                            .expect("the links' lock is never poisoned")
                            .insert(task, next);
                    }
                    anyhow::Ok(())
                }
            }
        };
        let raw_pages = hammer(c, s, pages(false)).await?;
        let sta_pages = hammer(c, s, pages(true)).await?;
        let latest_db = {
            let store = store.clone();
            hammer(c, s, move |_| {
                let store = store.clone();
                async move {
                    store.latest(&Default::default()).await?;
                    anyhow::Ok(())
                }
            })
            .await?
        };
        let day_db = {
            let (store, keys) = (store.clone(), keys.clone());
            hammer(c, s, move |i| {
                let (store, key) = (store.clone(), sensor(&keys, i));
                async move {
                    let from = day_start(i);
                    let order = RawOrder::Time {
                        from,
                        to: from + ChronoDuration::days(1),
                        after: None,
                    };
                    let rows = store.raw_readings(&key, &order, 1000).await?;
                    let rows: Vec<_> = rows.collect().await;
                    anyhow::ensure!(
                        rows.len() == 144,
                        "a day has 144 readings, got {}",
                        rows.len()
                    );
                    anyhow::Ok(())
                }
            })
            .await?
        };
        // The year through the store: of usable readings, or of `all` readings.
        let year_through_store = |all: bool| {
            let (store, keys) = (store.clone(), keys.clone());
            hammer(c, s, move |i| {
                let (store, key) = (store.clone(), sensor(&keys, i));
                async move {
                    store
                        .aggregate(&key, year_from, year_to, Duration::from_secs(3600), all)
                        .await?;
                    anyhow::Ok(())
                }
            })
        };
        let year_db = year_through_store(false).await?;
        // The same year with every reading, flagged or not: no rollup holds that, so it is computed
        // from the raw readings, as every aggregate was before the rollups.
        let year_raw = year_through_store(true).await?;
        // Rounds: each configuration once per round, in the same order, so that a noisy minute on
        // a shared machine falls on every configuration alike rather than on one.
        let mut year_clients: Vec<usize> = vec![1, 4, c];
        year_clients.sort_unstable();
        year_clients.dedup();
        let mut year_rounds: Vec<Vec<f64>> = vec![Vec::new(); year_clients.len()];
        let mut latest_rounds = Vec::new();
        let mut paging_rounds: Vec<(f64, f64)> = Vec::new();
        for _ in 0..args.rounds {
            let raw = hammer(c, s, pages(false)).await?;
            let sta = hammer(c, s, pages(true)).await?;
            paging_rounds.push((
                percentile(&raw.latencies_ms, 0.99),
                percentile(&sta.latencies_ms, 0.99),
            ));
            for (clients, p99s) in year_clients.iter().zip(&mut year_rounds) {
                let figures = hammer(*clients, s, year.clone()).await?;
                p99s.push(percentile(&figures.latencies_ms, 0.99));
            }
            latest_rounds.push(hammer(c, s, latest.clone()).await?.per_second);
        }

        println!(
            "tidemark-bench api: {} readings over {} sensors (10-minute data, {} per sensor), {} clients, {} s per query",
            args.readings, args.sensors, per_sensor, args.concurrency, args.seconds
        );
        println!(
            "machine: {} cores",
            std::thread::available_parallelism().map_or(1, |n| n.get())
        );
        println!("{}", latest_api.line("API  latest values of all sensors"));
        println!(
            "{}",
            latest_db.line("DB   the same query through the store")
        );
        println!("{}", day_api.line("API  one sensor's day of raw readings"));
        println!("{}", day_db.line("DB   the same query through the store"));
        println!(
            "{}",
            year_api.line("API  one sensor's year in hourly buckets")
        );
        for (clients, figures) in &year_api_fewer_figures {
            let what = format!(
                "API  the same with {clients} client{}",
                if *clients == 1 { "" } else { "s" }
            );
            println!("{}", figures.line(&what));
        }
        println!("{}", year_db.line("DB   the same query through the store"));
        println!(
            "{}",
            year_raw.line("DB   the same year from raw readings only")
        );
        println!(
            "{}",
            raw_pages.line("API  a sensor's series, 10,000 a page, by link")
        );
        println!(
            "{}",
            sta_pages.line("API  the same as SensorThings Observations")
        );
        let ratio = percentile(&year_api.latencies_ms, 0.99) / percentile(&year_db.latencies_ms, 0.99);
        let year_p99 = std::iter::once((c, &year_api))
            .chain(year_api_fewer_figures.iter().map(|(n, f)| (*n, f)))
            .map(|(n, f)| format!("{:.1} ms with {n}", percentile(&f.latencies_ms, 0.99)))
            .collect::<Vec<_>>()
            .join(", ");
        println!(
            "10,000-reading pages p99: SensorThings {:.1} ms, raw readings {:.1} ms: {:.2} times (target at most 2)",
            percentile(&sta_pages.latencies_ms, 0.99),
            percentile(&raw_pages.latencies_ms, 0.99),
            percentile(&sta_pages.latencies_ms, 0.99) / percentile(&raw_pages.latencies_ms, 0.99)
        );
        let (found, not_found, kept) = written.figures();
        println!(
            "written buckets (api.bucket_cache_bytes {:.0} MiB): groups found {found}, written afresh {not_found} ({:.1} % found), {:.1} MiB kept",
            api_config.bucket_cache_bytes as f64 / 1_048_576.0,
            100.0 * found as f64 / (found + not_found).max(1) as f64,
            kept as f64 / 1_048_576.0
        );
        println!(
            "year query p99 through the API: {year_p99} clients (target at most 25 ms); API / database at {c} clients: {ratio:.2}; latest values: {:.0} req/s (target 5,000)",
            latest_api.per_second
        );
        if args.rounds > 0 {
            for (clients, p99s) in year_clients.iter().zip(&year_rounds) {
                println!(
                    "rounds: year query p99 with {clients:>2} client{}: median {} over {} rounds",
                    if *clients == 1 { " " } else { "s" },
                    spread(p99s, "ms", 1),
                    args.rounds
                );
            }
            let raw: Vec<f64> = paging_rounds.iter().map(|r| r.0).collect();
            let sta: Vec<f64> = paging_rounds.iter().map(|r| r.1).collect();
            let ratios: Vec<f64> = paging_rounds.iter().map(|r| r.1 / r.0).collect();
            println!(
                "rounds: 10,000-reading pages p99 with {c} clients: raw readings median {}, SensorThings median {}; SensorThings / raw {} over {} rounds (target at most 2)",
                spread(&raw, "ms", 1),
                spread(&sta, "ms", 1),
                spread(&ratios, "", 2),
                args.rounds
            );
            println!(
                "rounds: latest values with {c} clients: median {} over {} rounds",
                spread(&latest_rounds, "req/s", 0),
                args.rounds
            );
        }
        anyhow::Ok(())
    }
    .await;
    // Every client of the API is gone with the queries: the server ends, and with it the pooled
    // connections it holds, so that none is open (and killed) when the database is dropped.
    shutdown.cancel();
    if tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .is_err()
    {
        eprintln!("bench api: the API did not stop within 10 s");
    }
    outcome
}
