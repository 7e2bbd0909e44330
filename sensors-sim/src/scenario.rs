//! Scenario files (`config/scenarios/*.toml`): the stations, devices and sensors of a simulated
//! place, and the physical process behind each sensor.

use serde::Deserialize;
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use tidemark_model::reference::{DeviceRecord, ReferenceData, SensorRecord, StationRecord};
use tidemark_model::{duration, DeviceId, Quantity, SensorKey};

#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("cannot read scenario {path}: {cause}")]
    Read { path: String, cause: std::io::Error },
    #[error("scenario {path}: {cause}")]
    Parse {
        path: String,
        cause: toml::de::Error,
    },
    #[error("scenario {name}: {problem}")]
    Invalid { name: String, problem: String },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// What the scenario shows.
    pub description: String,
    /// The default seed; `--seed` overrides it.
    #[serde(default)]
    pub seed: u64,
    /// How much simulated time a run covers unless `--duration` says otherwise.
    #[serde(with = "duration::serde_str")]
    pub duration: Duration,
    /// The processes' integration step.
    #[serde(default = "default_step", with = "duration::serde_str")]
    pub step: Duration,
    #[serde(default)]
    pub stations: Vec<StationRecord>,
    pub devices: Vec<SimDevice>,
    #[serde(default)]
    pub containers: Vec<Container>,
    pub sensors: Vec<SimSensor>,
    /// Filled in from the file name.
    #[serde(skip)]
    pub name: String,
}

const fn default_step() -> Duration {
    Duration::from_secs(60)
}

/// How a device puts its readings on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    #[default]
    Tidemark,
    Senml,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimDevice {
    pub key: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub format: Format,
    /// Time between two publications; each carries every sensor of the device.
    #[serde(with = "duration::serde_str")]
    pub interval: Duration,
    #[serde(default)]
    pub faults: Faults,
}

/// Faults a device injects, each as a chance per publication.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Faults {
    /// Chance that a silence starts.
    #[serde(default)]
    pub dropout_rate: f64,
    #[serde(default, with = "duration::serde_str")]
    pub dropout_duration: Duration,
    /// Chance that one value carries a spike of `spike_size` (canonical unit).
    #[serde(default)]
    pub spike_rate: f64,
    #[serde(default)]
    pub spike_size: f64,
    /// Chance that the values freeze for `stuck_duration`.
    #[serde(default)]
    pub stuck_rate: f64,
    #[serde(default, with = "duration::serde_str")]
    pub stuck_duration: Duration,
    /// The device clock's constant error, in seconds (negative: behind).
    #[serde(default)]
    pub clock_skew_seconds: i64,
    /// Chance that a message is sent twice.
    #[serde(default)]
    pub duplicate_rate: f64,
    /// Chance that a message is replaced by a malformed payload.
    #[serde(default)]
    pub malformed_rate: f64,
}

/// A waste container whose fill level and weight sensors share one state.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Container {
    pub key: String,
    pub capacity_litres: f64,
    /// EU List of Waste code, e.g. "20 03 01" (mixed municipal waste).
    pub waste_code: String,
    /// Plain name of the fraction: paper, cardboard, plastic, glass, metal, food, garden, textiles,
    /// residual, mixed.
    pub fraction: String,
    /// Mean rise of the fill level, percent per hour.
    pub fill_rate: f64,
    /// Time between collections, and the first one's offset from the start.
    #[serde(with = "duration::serde_str")]
    pub collection_every: Duration,
    #[serde(default, with = "duration::serde_str")]
    pub collection_offset: Duration,
    /// Bulk density of the contents, kg per litre.
    pub density: f64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimSensor {
    pub key: String,
    pub device: String,
    #[serde(default)]
    pub station: Option<String>,
    pub quantity: String,
    #[serde(default)]
    pub name: String,
    pub model: Model,
}

/// Offsets from the start of the run.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Storm {
    #[serde(with = "duration::serde_str")]
    pub start: Duration,
    #[serde(with = "duration::serde_str")]
    pub duration: Duration,
    pub total_mm: f64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Surge {
    /// When the surge peaks, from the start of the run.
    #[serde(with = "duration::serde_str")]
    pub peak: Duration,
    /// Height of the wind set-up at the peak, metres.
    pub height: f64,
    #[serde(with = "duration::serde_str")]
    pub rise: Duration,
    #[serde(with = "duration::serde_str")]
    pub fall: Duration,
}

/// The physical process behind a sensor.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Model {
    /// Rainfall: dry spells, scheduled storm cells and random ones.
    Rain {
        #[serde(default)]
        storms: Vec<Storm>,
        /// Mean number of random storms per day.
        #[serde(default)]
        storms_per_day: f64,
        /// Mean depth of a random storm, mm.
        #[serde(default)]
        mean_storm_mm: f64,
    },
    /// A water level (river or sewer): base level, a diurnal swing, a linear reservoir fed by a
    /// rain sensor, and the wave of an upstream level sensor after its travel time.
    Level {
        base: f64,
        #[serde(default)]
        diurnal: f64,
        #[serde(default)]
        rain: Option<String>,
        /// Time constant of the catchment's linear reservoir.
        #[serde(default = "default_reservoir", with = "duration::serde_str")]
        reservoir: Duration,
        /// Metres of level per mm/h of reservoir outflow.
        #[serde(default)]
        gain: f64,
        #[serde(default)]
        upstream: Option<String>,
        #[serde(default, with = "duration::serde_str")]
        travel_time: Duration,
        /// Share of the upstream rise that arrives here.
        #[serde(default = "one")]
        upstream_factor: f64,
        #[serde(default)]
        noise: f64,
    },
    /// Sea level: a semidiurnal tide plus wind-driven surges.
    Sea {
        mean: f64,
        tide_amplitude: f64,
        #[serde(default = "m2_period", with = "duration::serde_str")]
        tide_period: Duration,
        #[serde(default)]
        surges: Vec<Surge>,
        #[serde(default)]
        noise: f64,
    },
    /// Electrical load, kW: a base, morning and evening peaks, lower at weekends.
    Load {
        base: f64,
        peak: f64,
        #[serde(default = "one")]
        weekend_factor: f64,
        #[serde(default)]
        noise: f64,
    },
    /// Photovoltaic output, kW: a clear-sky day shaped by latitude and season, dimmed by clouds.
    Solar { peak: f64, latitude: f64 },
    /// A district heating meter's register, kWh: consumption grows as the outdoor air cools.
    HeatMeter {
        base_kw: f64,
        kw_per_degree: f64,
        outdoor_mean: f64,
        outdoor_swing: f64,
    },
    /// Outdoor air temperature, Cel.
    AirTemperature { mean: f64, swing: f64 },
    /// A water supply district meter, l/s: demand with a night minimum, plus an optional leak.
    WaterDistrict {
        night_minimum: f64,
        day_peak: f64,
        #[serde(default, with = "duration::option_str")]
        leak_start: Option<Duration>,
        #[serde(default)]
        leak_rate: f64,
        #[serde(default)]
        noise: f64,
    },
    /// A container's fill level, %.
    ContainerFill { container: String },
    /// A container's contents, kg.
    ContainerWeight { container: String },
}

const fn default_reservoir() -> Duration {
    Duration::from_secs(3 * 3600)
}
const fn one() -> f64 {
    1.0
}
/// The principal lunar semidiurnal tide (M2): 12.42 hours.
const fn m2_period() -> Duration {
    Duration::from_secs(44_712)
}

impl Scenario {
    pub fn from_file(path: &std::path::Path) -> Result<Scenario, ScenarioError> {
        let display = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|cause| ScenarioError::Read {
            path: display.clone(),
            cause,
        })?;
        let mut scenario: Scenario =
            toml::from_str(&text).map_err(|cause| ScenarioError::Parse {
                path: display,
                cause,
            })?;
        scenario.name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        scenario.validate()?;
        Ok(scenario)
    }

    fn invalid(&self, problem: String) -> ScenarioError {
        ScenarioError::Invalid {
            name: self.name.clone(),
            problem,
        }
    }

    /// Checks references between devices, sensors and containers, and that every level sensor's
    /// upstream sensor is listed before it (the processes run in file order).
    pub fn validate(&self) -> Result<(), ScenarioError> {
        self.reference()
            .validate()
            .map_err(|problem| self.invalid(problem))?;
        if self.step.is_zero() {
            return Err(self.invalid("step must be positive".into()));
        }
        let devices: HashSet<&str> = self.devices.iter().map(|d| d.key.as_str()).collect();
        let containers: HashSet<&str> = self.containers.iter().map(|c| c.key.as_str()).collect();
        let mut seen: HashMap<&str, &Model> = HashMap::new();
        for device in &self.devices {
            if device.interval < self.step {
                return Err(self.invalid(format!(
                    "device {} publishes more often than the step",
                    device.key
                )));
            }
        }
        for sensor in &self.sensors {
            if !devices.contains(sensor.device.as_str()) {
                return Err(self.invalid(format!(
                    "sensor {} names unknown device {}",
                    sensor.key, sensor.device
                )));
            }
            match &sensor.model {
                Model::Level { rain, upstream, .. } => {
                    for (role, key) in [("rain", rain), ("upstream", upstream)] {
                        let Some(key) = key else { continue };
                        let ok = matches!(
                            (role, seen.get(key.as_str())),
                            ("rain", Some(Model::Rain { .. }))
                                | ("upstream", Some(Model::Level { .. }))
                        );
                        if !ok {
                            return Err(self.invalid(format!(
                                "sensor {}: {role} sensor {key} must be a {} sensor listed before it",
                                sensor.key,
                                if role == "rain" { "rain" } else { "level" }
                            )));
                        }
                    }
                }
                Model::ContainerFill { container } | Model::ContainerWeight { container }
                    if !containers.contains(container.as_str()) =>
                {
                    return Err(self.invalid(format!(
                        "sensor {} names unknown container {container}",
                        sensor.key
                    )));
                }
                _ => {}
            }
            seen.insert(sensor.key.as_str(), &sensor.model);
        }
        Ok(())
    }

    /// The stations, devices and sensors to register before publishing.
    pub fn reference(&self) -> ReferenceData {
        let interval: HashMap<&str, Duration> = self
            .devices
            .iter()
            .map(|d| (d.key.as_str(), d.interval))
            .collect();
        ReferenceData {
            stations: self.stations.clone(),
            devices: self
                .devices
                .iter()
                .map(|d| DeviceRecord {
                    key: d.key.clone(),
                    name: d.name.clone(),
                })
                .collect(),
            sensors: self
                .sensors
                .iter()
                .map(|s| SensorRecord {
                    key: s.key.clone(),
                    device: s.device.clone(),
                    station: s.station.clone(),
                    quantity: s.quantity.clone(),
                    name: s.name.clone(),
                    expected_interval: interval
                        .get(s.device.as_str())
                        .copied()
                        .unwrap_or(Duration::from_secs(900)),
                })
                .collect(),
        }
    }

    /// Parsed identifiers, for the engine (the scenario is validated, so these parse).
    pub(crate) fn device_id(&self, index: usize) -> DeviceId {
        DeviceId::parse(&self.devices[index].key).expect("validated device key")
    }

    pub(crate) fn sensor_parts(&self, index: usize) -> (SensorKey, Quantity) {
        let sensor = &self.sensors[index];
        (
            SensorKey::parse(&sensor.key).expect("validated sensor key"),
            Quantity::parse(&sensor.quantity).expect("validated quantity"),
        )
    }
}

/// Every scenario file in a folder, by name.
pub fn list(folder: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(folder)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let path = entry.path();
            if path.extension()? != "toml" {
                return None;
            }
            Some(path.file_stem()?.to_string_lossy().into_owned())
        })
        .collect();
    names.sort();
    names
}
