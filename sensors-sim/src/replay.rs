//! Replay of recorded data: the four recorded data sets (`tests/fixtures/`, or full downloads) read
//! into timed readings, with the stations, devices and sensors they need, then published as their
//! devices would have.

use crate::engine::Publication;
use chrono::{DateTime, NaiveDateTime, SecondsFormat, Utc};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tidemark_model::reference::{DeviceRecord, ReferenceData, SensorRecord, StationRecord};
use tidemark_model::time::{from_local, UK_STANDARD_HOURS};
use tidemark_model::{DeviceId, Unit};

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("cannot read {path}: {cause}")]
    Read { path: String, cause: std::io::Error },
    #[error("{path}: {cause}")]
    Csv { path: String, cause: csv::Error },
    #[error("{path} line {line}: {problem}")]
    Row {
        path: String,
        line: u64,
        problem: String,
    },
    #[error("{0}")]
    Layout(String),
}

/// The recorded data sets Tidemark can replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `baltic-surge-2023/sea_level_10min.csv` (with `stations.csv` beside it).
    BalticSurge,
    /// An Environment Agency hydrology CSV of the Calder Valley, or a folder of them.
    Calder,
    /// `edinburgh-bins-2016/collections.csv`.
    EdinburghBins,
    /// `dk1-load-2019/load_hourly.csv`.
    Dk1Load,
}

impl Format {
    pub const NAMES: [&'static str; 4] = ["baltic-surge", "calder", "edinburgh-bins", "dk1-load"];

    pub fn parse(name: &str) -> Result<Format, String> {
        match name {
            "baltic-surge" => Ok(Format::BalticSurge),
            "calder" => Ok(Format::Calder),
            "edinburgh-bins" => Ok(Format::EdinburghBins),
            "dk1-load" => Ok(Format::Dk1Load),
            other => Err(format!(
                "unknown replay format {other:?}; one of {}",
                Format::NAMES.join(", ")
            )),
        }
    }
}

/// One recorded value.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    /// Index into [`Recording::devices`].
    pub device: usize,
    pub sensor: String,
    pub ts: DateTime<Utc>,
    pub value: f64,
    pub unit: Unit,
    /// `None` for good; otherwise the Tidemark JSON quality word.
    pub quality: Option<&'static str>,
}

/// A recording ready to replay.
#[derive(Debug, Clone, Default)]
pub struct Recording {
    pub reference: ReferenceData,
    pub devices: Vec<DeviceId>,
    /// In time order.
    pub points: Vec<Point>,
    /// Rows that carried no value (for example a missing-value quality code).
    pub skipped: u64,
}

impl Recording {
    /// The index of device `key`, added with `name` if it is new; an error if `key` is not a
    /// valid device key.
    fn device(&mut self, key: &str, name: &str) -> Result<usize, ReplayError> {
        if let Some(index) = self.devices.iter().position(|d| d.as_str() == key) {
            return Ok(index);
        }
        let id = DeviceId::parse(key).map_err(|error| {
            ReplayError::Layout(format!("{name:?} makes the device key {key:?}: {error}"))
        })?;
        self.reference.devices.push(DeviceRecord {
            key: key.to_owned(),
            name: name.to_owned(),
        });
        self.devices.push(id);
        Ok(self.devices.len() - 1)
    }

    fn sensor(
        &mut self,
        key: &str,
        device: &str,
        station: Option<&str>,
        quantity: &str,
        interval: Duration,
    ) {
        if self.reference.sensors.iter().any(|s| s.key == key) {
            return;
        }
        self.reference.sensors.push(SensorRecord {
            key: key.to_owned(),
            device: device.to_owned(),
            station: station.map(str::to_owned),
            quantity: quantity.to_owned(),
            name: String::new(),
            expected_interval: interval,
        });
    }

    pub fn span(&self) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
        Some((self.points.first()?.ts, self.points.last()?.ts))
    }

    /// The messages to publish, one per device and timestamp, in time order, with timestamps
    /// moved by `shift`. `at` is the original time, for pacing.
    pub fn messages(&self, shift: chrono::Duration) -> Vec<Publication> {
        let mut grouped: BTreeMap<(DateTime<Utc>, usize), Vec<&Point>> = BTreeMap::new();
        for point in &self.points {
            grouped
                .entry((point.ts, point.device))
                .or_default()
                .push(point);
        }
        grouped
            .into_iter()
            .map(|((ts, device), points)| {
                let stamp = (ts + shift).to_rfc3339_opts(SecondsFormat::Secs, true);
                let items: Vec<serde_json::Value> = points
                    .iter()
                    .map(|p| {
                        let mut item = serde_json::json!({
                            "sensor": p.sensor, "ts": stamp, "value": p.value, "unit": p.unit.symbol(),
                        });
                        if let Some(quality) = p.quality {
                            item["quality"] = serde_json::json!(quality);
                        }
                        item
                    })
                    .collect();
                let readings = items.len();
                let document = if readings == 1 {
                    items.into_iter().next().expect("one item")
                } else {
                    serde_json::json!({ "readings": items })
                };
                Publication {
                    device,
                    at: ts,
                    payload: document.to_string().into_bytes(),
                    readings,
                    malformed: false,
                    duplicate: false,
                }
            })
            .collect()
    }
}

impl Recording {
    /// Simulated forecasts of every water and sea level sensor from the recording itself (its
    /// good points, in the canonical unit), as publications of fleet member `source`, with
    /// timestamps moved by `shift`. `at` is the original issue time, for pacing and ordering.
    pub fn forecasts(
        &self,
        plan: &crate::forecast::ForecastPlan,
        source: usize,
        shift: chrono::Duration,
    ) -> Vec<Publication> {
        let mut rng = tidemark_model::random::SeededRng::seed_from_u64(plan.seed);
        let mut out = Vec::new();
        for sensor in &self.reference.sensors {
            let Ok(quantity) = tidemark_model::Quantity::parse(&sensor.quantity) else {
                continue;
            };
            if !matches!(
                quantity,
                tidemark_model::Quantity::WaterLevel | tidemark_model::Quantity::SeaLevel
            ) {
                continue;
            }
            let canonical = quantity.canonical_unit();
            let truth: Vec<(DateTime<Utc>, f64)> = self
                .points
                .iter()
                .filter(|p| p.sensor == sensor.key && p.quality.is_none())
                .filter_map(|p| Some((p.ts, p.unit.convert(p.value, canonical)?)))
                .collect();
            for issue in crate::forecast::issues(&sensor.key, &truth, plan, &mut rng) {
                out.push(issue.publication(source, canonical.symbol(), shift));
            }
        }
        out.sort_by_key(|p| p.at);
        out
    }
}

/// The shift that makes a replay end now: with `speed` recorded seconds per wall second (0: as
/// fast as possible), every reading is stamped no later than the moment it is published, and at
/// speed 1 exactly then. Whole seconds (rounded down), so that timestamps keep the recording's
/// own resolution.
pub fn align_end(
    first: DateTime<Utc>,
    last: DateTime<Utc>,
    speed: f64,
    now: DateTime<Utc>,
) -> chrono::Duration {
    let wall_span = if speed > 0.0 {
        chrono::Duration::milliseconds(((last - first).num_milliseconds() as f64 / speed) as i64)
    } else {
        chrono::Duration::zero()
    };
    let exact = now + wall_span - last;
    chrono::Duration::seconds(exact.num_milliseconds().div_euclid(1000))
}

/// Reads a recording.
pub fn read(format: Format, path: &Path) -> Result<Recording, ReplayError> {
    let mut recording = Recording::default();
    match format {
        Format::BalticSurge => read_baltic(path, &mut recording)?,
        Format::Calder => {
            let files: Vec<PathBuf> = if path.is_dir() {
                let mut files: Vec<PathBuf> = std::fs::read_dir(path)
                    .map_err(|cause| read_error(path, cause))?
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|e| e == "csv"))
                    .collect();
                files.sort();
                files
            } else {
                vec![path.to_owned()]
            };
            for file in files {
                read_calder(&file, &mut recording)?;
            }
        }
        Format::EdinburghBins => read_edinburgh(path, &mut recording)?,
        Format::Dk1Load => read_dk1(path, &mut recording)?,
    }
    recording.points.sort_by_key(|p| (p.ts, p.device));
    Ok(recording)
}

fn read_error(path: &Path, cause: std::io::Error) -> ReplayError {
    ReplayError::Read {
        path: path.display().to_string(),
        cause,
    }
}

fn reader(path: &Path) -> Result<csv::Reader<std::fs::File>, ReplayError> {
    let file = std::fs::File::open(path).map_err(|cause| read_error(path, cause))?;
    Ok(csv::Reader::from_reader(file))
}

/// Iterates a CSV's records with their line numbers, as maps from column name to value.
/// A CSV record by column name, with its line number.
type Row = (u64, BTreeMap<String, String>);

fn rows(path: &Path) -> Result<Vec<Row>, ReplayError> {
    let mut reader = reader(path)?;
    let csv_error = |cause| ReplayError::Csv {
        path: path.display().to_string(),
        cause,
    };
    let headers = reader.headers().map_err(csv_error)?.clone();
    let mut out = Vec::new();
    for record in reader.records() {
        let record = record.map_err(csv_error)?;
        let line = record.position().map_or(0, |p| p.line());
        let map = headers
            .iter()
            .zip(record.iter())
            .map(|(h, v)| (h.to_owned(), v.to_owned()))
            .collect();
        out.push((line, map));
    }
    Ok(out)
}

fn field<'a>(
    path: &Path,
    line: u64,
    row: &'a BTreeMap<String, String>,
    name: &str,
) -> Result<&'a str, ReplayError> {
    row.get(name)
        .map(String::as_str)
        .ok_or_else(|| ReplayError::Row {
            path: path.display().to_string(),
            line,
            problem: format!("no column {name:?}"),
        })
}

fn number(path: &Path, line: u64, raw: &str) -> Result<f64, ReplayError> {
    raw.trim().parse().map_err(|_| ReplayError::Row {
        path: path.display().to_string(),
        line,
        problem: format!("{raw:?} is not a number"),
    })
}

fn naive(path: &Path, line: u64, raw: &str) -> Result<NaiveDateTime, ReplayError> {
    NaiveDateTime::parse_from_str(raw.trim(), "%Y-%m-%d %H:%M:%S")
        .or_else(|_| NaiveDateTime::parse_from_str(raw.trim(), "%Y-%m-%dT%H:%M:%S"))
        .map_err(|_| ReplayError::Row {
            path: path.display().to_string(),
            line,
            problem: format!("{raw:?} is not a date and time"),
        })
}

/// A place name as an identifier: "KielHoltenau" -> "kiel-holtenau"; "Hebden Bridge" ->
/// "hebden-bridge"; "Sønderborg" -> "soenderborg"; "Ærøskøbing" -> "aeroeskoebing". Danish and
/// German letters are written out as Danish and German do without them (æ ae, ø oe, å aa, ä ae,
/// ö oe, ü ue, ß ss), other accented letters lose their accent, and anything else becomes a
/// hyphen; runs of hyphens become one, and none starts or ends the key.
pub fn kebab(name: &str) -> String {
    let mut out = String::new();
    let mut previous_lower = false;
    for c in name.chars() {
        if c.is_uppercase() && previous_lower {
            out.push('-');
        }
        previous_lower = c.is_lowercase();
        let lower = c.to_lowercase().next().unwrap_or(c);
        let spelled = match lower {
            'æ' | 'ä' => "ae",
            'ø' | 'ö' => "oe",
            'å' => "aa",
            'ü' => "ue",
            'ß' => "ss",
            'à' | 'á' | 'â' | 'ã' => "a",
            'ç' => "c",
            'è' | 'é' | 'ê' | 'ë' => "e",
            'ì' | 'í' | 'î' | 'ï' => "i",
            'ñ' => "n",
            'ò' | 'ó' | 'ô' | 'õ' => "o",
            'ù' | 'ú' | 'û' => "u",
            'ý' | 'ÿ' => "y",
            c if c.is_ascii_alphanumeric() => {
                out.push(c);
                continue;
            }
            _ => "-",
        };
        if spelled == "-" {
            previous_lower = false;
            if !out.is_empty() && !out.ends_with('-') {
                out.push('-');
            }
        } else {
            out.push_str(spelled);
        }
    }
    while out.ends_with('-') {
        out.pop();
    }
    out
}

/// The key of a station named `name` ([`kebab`]); an error if the name has nothing to make one of.
fn station_key(name: &str) -> Result<String, ReplayError> {
    let key = kebab(name);
    if key.is_empty() {
        return Err(ReplayError::Layout(format!(
            "the station name {name:?} makes no key: it has no letter or digit Tidemark can spell"
        )));
    }
    Ok(key)
}

/// The Baltic surge: quality codes of the Copernicus in-situ data (0 none, 1 good, 2 probably good,
/// 3 bad but correctable, 4 bad, 5 changed, 8 interpolated, 9 missing).
fn read_baltic(path: &Path, recording: &mut Recording) -> Result<(), ReplayError> {
    let stations_path = path.with_file_name("stations.csv");
    for (line, row) in rows(&stations_path)? {
        let name = field(&stations_path, line, &row, "station")?;
        let key = station_key(name)?;
        recording.reference.stations.push(StationRecord {
            key: key.clone(),
            name: name.to_owned(),
            kind: "tide_gauge".to_owned(),
            lon: number(
                &stations_path,
                line,
                field(&stations_path, line, &row, "lon")?,
            )?,
            lat: number(
                &stations_path,
                line,
                field(&stations_path, line, &row, "lat")?,
            )?,
            municipality_code: None,
        });
    }
    for (line, row) in rows(path)? {
        let name = field(path, line, &row, "station")?;
        let key = station_key(name)?;
        let device_key = format!("{key}-gauge");
        let sensor = format!("{key}.sea_level");
        let device = recording.device(&device_key, &format!("{name} tide gauge logger"))?;
        recording.sensor(
            &sensor,
            &device_key,
            Some(&key),
            "sea_level",
            Duration::from_secs(600),
        );
        let quality = match field(path, line, &row, "slev_qc")?.trim() {
            "1" => None,
            "2" | "5" | "8" | "0" => Some("suspect"),
            "9" => {
                recording.skipped += 1;
                continue;
            }
            _ => Some("bad"),
        };
        let raw = field(path, line, &row, "slev_m")?;
        if raw.trim().is_empty() {
            recording.skipped += 1;
            continue;
        }
        recording.points.push(Point {
            device,
            sensor,
            ts: naive(path, line, field(path, line, &row, "time_utc")?)?.and_utc(),
            value: number(path, line, raw)?,
            unit: Unit::Metre,
            quality,
        });
    }
    Ok(())
}

/// Approximate positions of the Calder Valley gauges, from the places they are named after (the
/// recordings carry no coordinates): good to about a kilometre, not surveyed gauge positions.
const CALDER_PLACES: [(&str, f64, f64); 9] = [
    ("Todmorden Callis Bridge", 53.7330, -2.0470),
    ("Hebden Bridge", 53.7405, -2.0117),
    ("Mytholmroyd", 53.7306, -1.9830),
    ("Mytholmroyd Dauber Bridge", 53.7296, -1.9780),
    ("Nutclough", 53.7445, -2.0080),
    ("Walshaw Dean Lodge", 53.7810, -2.0520),
    ("Gorple", 53.7745, -2.0840),
    ("Gorpley", 53.7110, -2.1170),
    ("Bacup", 53.7040, -2.2000),
];

/// One Environment Agency hydrology CSV: `<Place>-<level|rainfall>-15min-Qualified.csv`, local
/// (UK) times, values in m or mm per 15 minutes.
fn read_calder(path: &Path, recording: &mut Recording) -> Result<(), ReplayError> {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let layout = || {
        ReplayError::Layout(format!(
            "{}: expected a file named <Place>-<level|rainfall>-15min-Qualified.csv",
            path.display()
        ))
    };
    let (place, kind) = if let Some(place) = stem.strip_suffix("-level-15min-Qualified") {
        (place, "level")
    } else if let Some(place) = stem.strip_suffix("-rainfall-15min-Qualified") {
        (place, "rainfall")
    } else {
        return Err(layout());
    };
    let name = place.replace('-', " ");
    let key = station_key(&name)?;
    let (lat, lon) = CALDER_PLACES
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, lat, lon)| (*lat, *lon))
        .ok_or_else(layout)?;
    if !recording.reference.stations.iter().any(|s| s.key == key) {
        recording.reference.stations.push(StationRecord {
            key: key.clone(),
            name: name.clone(),
            kind: if kind == "level" {
                "river_gauge"
            } else {
                "rain_gauge"
            }
            .to_owned(),
            lon,
            lat,
            municipality_code: None,
        });
    }
    let device_key = format!("{key}-{kind}");
    let sensor = format!("{key}.{kind}");
    let (quantity, unit) = if kind == "level" {
        ("water_level", Unit::Metre)
    } else {
        ("rainfall", Unit::Millimetre)
    };
    let device = recording.device(&device_key, &format!("{name} {kind} logger"))?;
    recording.sensor(
        &sensor,
        &device_key,
        Some(&key),
        quantity,
        Duration::from_secs(900),
    );
    for (line, row) in rows(path)? {
        let raw = field(path, line, &row, "value")?;
        if raw.trim().is_empty() {
            recording.skipped += 1;
            continue;
        }
        let local = naive(path, line, field(path, line, &row, "dateTime")?)?;
        recording.points.push(Point {
            device,
            sensor: sensor.clone(),
            ts: from_local(local, UK_STANDARD_HOURS),
            value: number(path, line, raw)?,
            unit,
            quality: None,
        });
    }
    Ok(())
}

/// Edinburgh litter bins: each collection becomes the fill level before it, the fill level after
/// it one second later, and the weight collected. The bins have no coordinates, so no stations.
fn read_edinburgh(path: &Path, recording: &mut Recording) -> Result<(), ReplayError> {
    const FILL_BEFORE: &str =
        "Fill level before collection (%) [Nb 100% is actually a bin that's 80% full]";
    for (line, row) in rows(path)? {
        let site = field(path, line, &row, "Site")?.trim().to_owned();
        let device_key = format!("bin-{site}");
        let device = recording.device(&device_key, field(path, line, &row, "Site name")?)?;
        let (fill, weight) = (
            format!("{device_key}.fill_level"),
            format!("{device_key}.weight"),
        );
        recording.sensor(
            &fill,
            &device_key,
            None,
            "fill_level",
            Duration::from_secs(86_400),
        );
        recording.sensor(
            &weight,
            &device_key,
            None,
            "weight",
            Duration::from_secs(86_400),
        );
        let ts = from_local(
            naive(
                path,
                line,
                field(
                    path,
                    line,
                    &row,
                    "Date & Time of bin collection (Europe/London)",
                )?,
            )?,
            UK_STANDARD_HOURS,
        );
        let before = number(path, line, field(path, line, &row, FILL_BEFORE)?)?;
        let after = number(path, line, field(path, line, &row, "Fill level after")?)?;
        let kg = number(path, line, field(path, line, &row, "Weight (kg)")?)?;
        for (sensor, at, value, unit) in [
            (&fill, ts, before, Unit::Percent),
            (
                &fill,
                ts + chrono::Duration::seconds(1),
                after,
                Unit::Percent,
            ),
            (&weight, ts, kg, Unit::Kilogram),
        ] {
            recording.points.push(Point {
                device,
                sensor: sensor.clone(),
                ts: at,
                value,
                unit,
                quality: None,
            });
        }
    }
    Ok(())
}

/// West Denmark load: actual and day-ahead forecast, MW, hourly, UTC.
fn read_dk1(path: &Path, recording: &mut Recording) -> Result<(), ReplayError> {
    let device_key = "dk1-entsoe";
    let device = recording.device(
        device_key,
        "ENTSO-E Transparency Platform, bidding zone DK1",
    )?;
    for (line, row) in rows(path)? {
        let sensor = match field(path, line, &row, "item")? {
            "Load Actual" => "dk1.load_actual",
            "Load Forecast" => "dk1.load_forecast",
            other => {
                return Err(ReplayError::Row {
                    path: path.display().to_string(),
                    line,
                    problem: format!("unknown item {other:?}"),
                })
            }
        };
        recording.sensor(sensor, device_key, None, "power", Duration::from_secs(3600));
        recording.points.push(Point {
            device,
            sensor: sensor.to_owned(),
            ts: naive(path, line, field(path, line, &row, "time")?)?.and_utc(),
            value: number(path, line, field(path, line, &row, "value")?)?,
            unit: Unit::Megawatt,
            quality: None,
        });
    }
    Ok(())
}
