//! The simulation engine: steps every process through simulated time and produces, for each device
//! when its interval comes round, the message it publishes, with its faults applied. Deterministic:
//! the same scenario, seed and start give the same messages, whatever the wall clock does.

use crate::process::{self, Cell, ContainerState, Rain, Reservoir};
use crate::scenario::{Format, Model, Scenario};
use chrono::{DateTime, SecondsFormat, Utc};
use std::collections::HashMap;
use tidemark_model::random::SeededRng;
use tidemark_model::{DeviceId, Quantity, SensorKey};

/// One message a device publishes.
#[derive(Debug, Clone, PartialEq)]
pub struct Publication {
    /// Index of the device in the scenario.
    pub device: usize,
    /// Simulated time of publication.
    pub at: DateTime<Utc>,
    pub payload: Vec<u8>,
    /// Readings the message carries (0 for a malformed one).
    pub readings: usize,
    pub malformed: bool,
    /// A repeat of the message before it.
    pub duplicate: bool,
}

/// What a run produced, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Report {
    /// Messages published, including duplicates and malformed ones.
    pub messages: u64,
    /// Distinct readings in well-formed messages.
    pub readings: u64,
    /// Malformed messages (each distinct).
    pub malformed: u64,
    /// Messages sent a second time.
    pub duplicates: u64,
    /// Readings not sent because their device was silent.
    pub dropped: u64,
    pub spikes: u64,
    /// Readings sent while their device's values were frozen.
    pub stuck: u64,
    /// Simulated forecast issues published beside the readings.
    pub forecasts: u64,
}

/// Values in time order.
pub type Series = Vec<(DateTime<Utc>, f64)>;

/// Per-sensor process state.
enum State {
    Rain(Rain),
    Level {
        reservoir: Reservoir,
        /// This gauge's rise over its base at every step so far (for downstream gauges).
        history: Vec<f64>,
        value: f64,
    },
    Value(f64),
    Register(f64),
    Container(String),
    ContainerWeight(String),
}

struct DeviceState {
    sensors: Vec<usize>,
    next: DateTime<Utc>,
    rng: SeededRng,
    silent_until: Option<DateTime<Utc>>,
    frozen: Option<(DateTime<Utc>, Vec<f64>)>,
}

pub struct Engine {
    scenario: Scenario,
    start: DateTime<Utc>,
    step: chrono::Duration,
    step_hours: f64,
    now: DateTime<Utc>,
    steps: usize,
    rng: SeededRng,
    states: Vec<State>,
    index: HashMap<String, usize>,
    containers: HashMap<String, ContainerState>,
    devices: Vec<DeviceState>,
    keys: Vec<(SensorKey, Quantity)>,
    report: Report,
}

impl Engine {
    pub fn new(scenario: &Scenario, seed: u64, start: DateTime<Utc>) -> Engine {
        let scenario = scenario.clone();
        let step = chrono::Duration::from_std(scenario.step).expect("a step of sane size");
        let index: HashMap<String, usize> = scenario
            .sensors
            .iter()
            .enumerate()
            .map(|(i, s)| (s.key.clone(), i))
            .collect();
        let states = scenario
            .sensors
            .iter()
            .map(|sensor| match &sensor.model {
                Model::Rain {
                    storms,
                    storms_per_day,
                    mean_storm_mm,
                } => State::Rain(Rain {
                    cells: storms.iter().map(|s| Cell::from_storm(start, s)).collect(),
                    storms_per_day: *storms_per_day,
                    mean_storm_mm: *mean_storm_mm,
                    ..Rain::default()
                }),
                Model::Level { base, .. } => State::Level {
                    reservoir: Reservoir::default(),
                    history: Vec::new(),
                    value: *base,
                },
                Model::HeatMeter { .. } => State::Register(0.0),
                Model::ContainerFill { container } => State::Container(container.clone()),
                Model::ContainerWeight { container } => State::ContainerWeight(container.clone()),
                _ => State::Value(0.0),
            })
            .collect();
        let devices = scenario
            .devices
            .iter()
            .enumerate()
            .map(|(d, device)| DeviceState {
                sensors: scenario
                    .sensors
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| s.device == device.key)
                    .map(|(i, _)| i)
                    .collect(),
                next: start + chrono::Duration::from_std(device.interval).expect("a sane interval"),
                rng: SeededRng::seed_from_u64(
                    seed ^ (0x9e37_79b9_7f4a_7c15u64.wrapping_mul(d as u64 + 1)),
                ),
                silent_until: None,
                frozen: None,
            })
            .collect();
        let keys = (0..scenario.sensors.len())
            .map(|i| scenario.sensor_parts(i))
            .collect();
        Engine {
            containers: scenario
                .containers
                .iter()
                .map(|c| {
                    (
                        c.key.clone(),
                        ContainerState {
                            fill: 10.0,
                            ..Default::default()
                        },
                    )
                })
                .collect(),
            step_hours: scenario.step.as_secs_f64() / 3600.0,
            scenario,
            start,
            step,
            now: start,
            steps: 0,
            rng: SeededRng::seed_from_u64(seed),
            states,
            index,
            devices,
            keys,
            report: Report::default(),
        }
    }

    pub fn device_ids(&self) -> Vec<DeviceId> {
        (0..self.scenario.devices.len())
            .map(|d| self.scenario.device_id(d))
            .collect()
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.now
    }

    pub fn report(&self) -> Report {
        self.report
    }

    /// The true water and sea levels (before any device fault) at every step up to `until`, by
    /// sensor key, from a fresh engine that publishes nothing: what a forecaster aims at. The
    /// processes draw the same numbers as when publishing, so these are the values the devices
    /// report.
    pub fn levels_until(mut self, until: DateTime<Utc>) -> Vec<(String, Series)> {
        let levels: Vec<usize> = (0..self.keys.len())
            .filter(|&i| matches!(self.keys[i].1, Quantity::WaterLevel | Quantity::SeaLevel))
            .collect();
        let mut out: Vec<(String, Series)> = levels
            .iter()
            .map(|&i| (self.keys[i].0.as_str().to_owned(), Vec::new()))
            .collect();
        while self.now + self.step <= until {
            self.now += self.step;
            self.steps += 1;
            self.step_processes();
            for (slot, &i) in levels.iter().enumerate() {
                let value = self.sample(i);
                out[slot].1.push((self.now, value));
            }
        }
        out
    }

    /// Steps the processes up to `until` and returns the messages published meanwhile, in order.
    pub fn advance(&mut self, until: DateTime<Utc>) -> Vec<Publication> {
        let mut out = Vec::new();
        while self.now + self.step <= until {
            self.now += self.step;
            self.steps += 1;
            self.step_processes();
            for device in 0..self.devices.len() {
                while self.devices[device].next <= self.now {
                    let at = self.devices[device].next;
                    self.publish(device, at, &mut out);
                    let interval =
                        chrono::Duration::from_std(self.scenario.devices[device].interval)
                            .expect("a sane interval");
                    self.devices[device].next += interval;
                }
            }
        }
        out
    }

    fn step_processes(&mut self) {
        let t = self.now;
        let container_specs: Vec<_> = self.scenario.containers.clone();
        for spec in &container_specs {
            let state = self
                .containers
                .get_mut(&spec.key)
                .expect("every container has a state");
            let since_first = t
                - (self.start
                    + chrono::Duration::from_std(spec.collection_offset).unwrap_or_default());
            let every =
                chrono::Duration::from_std(spec.collection_every).unwrap_or(chrono::Duration::MAX);
            let collection_due = since_first >= chrono::Duration::zero()
                && every > chrono::Duration::zero()
                && since_first.num_seconds() % every.num_seconds().max(1) < self.step.num_seconds();
            if collection_due {
                state.collect(&mut self.rng);
            } else {
                state.fill(spec.fill_rate, self.step_hours, &mut self.rng);
            }
        }
        for i in 0..self.states.len() {
            let model = self.scenario.sensors[i].model.clone();
            let value = match (&model, &mut self.states[i]) {
                (Model::Rain { .. }, State::Rain(rain)) => {
                    rain.step(t, self.step_hours, &mut self.rng);
                    continue;
                }
                (
                    Model::Level {
                        base,
                        diurnal,
                        rain,
                        reservoir: k,
                        gain,
                        upstream,
                        travel_time,
                        upstream_factor,
                        noise,
                    },
                    _,
                ) => {
                    let rain_now = rain
                        .as_ref()
                        .and_then(|key| self.index.get(key))
                        .and_then(|&r| match &self.states[r] {
                            State::Rain(rain) => Some(rain.intensity),
                            _ => None,
                        })
                        .unwrap_or(0.0);
                    let delay_steps = (travel_time.as_secs_f64() / self.scenario.step.as_secs_f64())
                        .round() as usize;
                    let from_upstream = upstream
                        .as_ref()
                        .and_then(|key| self.index.get(key))
                        .and_then(|&u| match &self.states[u] {
                            State::Level { history, .. } => {
                                let past = history.len().checked_sub(delay_steps + 1)?;
                                history.get(past).copied()
                            }
                            _ => None,
                        })
                        .unwrap_or(0.0);
                    let jitter = noise * process::gaussian(&mut self.rng);
                    let State::Level {
                        reservoir,
                        history,
                        value,
                    } = &mut self.states[i]
                    else {
                        unreachable!("level sensors have level state")
                    };
                    let outflow =
                        reservoir.step(rain_now, k.as_secs_f64() / 3600.0, self.step_hours);
                    let rise = gain * outflow + upstream_factor * from_upstream;
                    history.push(rise);
                    *value = base + process::diurnal(*diurnal, t) + rise + jitter;
                    continue;
                }
                (
                    Model::Sea {
                        mean,
                        tide_amplitude,
                        tide_period,
                        surges,
                        noise,
                    },
                    _,
                ) => {
                    let set_up: f64 = surges
                        .iter()
                        .map(|s| process::surge(self.start, s, t))
                        .sum();
                    mean + process::tide(*tide_amplitude, tide_period.as_secs_f64() / 3600.0, t)
                        + set_up
                        + noise * process::gaussian(&mut self.rng)
                }
                (
                    Model::Load {
                        base,
                        peak,
                        weekend_factor,
                        noise,
                    },
                    _,
                ) => {
                    process::load(*base, *peak, *weekend_factor, t)
                        * (1.0 + noise * process::gaussian(&mut self.rng))
                }
                (Model::Solar { peak, latitude }, _) => {
                    let clouds = self.rng.range(0.35..1.0);
                    process::clear_sky(*peak, *latitude, t) * clouds
                }
                (Model::AirTemperature { mean, swing }, _) => {
                    process::air_temperature(*mean, *swing, t)
                }
                (
                    Model::HeatMeter {
                        base_kw,
                        kw_per_degree,
                        outdoor_mean,
                        outdoor_swing,
                    },
                    State::Register(total),
                ) => {
                    let outdoor = process::air_temperature(*outdoor_mean, *outdoor_swing, t);
                    // Heating below 17 C outdoors (the Danish degree-day base).
                    *total +=
                        (base_kw + kw_per_degree * (17.0 - outdoor).max(0.0)) * self.step_hours;
                    continue;
                }
                (
                    Model::WaterDistrict {
                        night_minimum,
                        day_peak,
                        leak_start,
                        leak_rate,
                        noise,
                    },
                    _,
                ) => {
                    let leaking = leak_start.is_some_and(|s| {
                        t >= self.start + chrono::Duration::from_std(s).unwrap_or_default()
                    });
                    process::water_demand(*night_minimum, *day_peak, t)
                        + if leaking { *leak_rate } else { 0.0 }
                        + noise * process::gaussian(&mut self.rng)
                }
                _ => continue,
            };
            self.states[i] = State::Value(value);
        }
    }

    /// The value a sensor would report now.
    fn sample(&mut self, sensor: usize) -> f64 {
        let (_, quantity) = self.keys[sensor];
        let value = match &mut self.states[sensor] {
            State::Rain(rain) => rain.take(),
            State::Level { value, .. } => *value,
            State::Value(value) | State::Register(value) => *value,
            State::Container(key) => self.containers[key.as_str()].fill,
            State::ContainerWeight(key) => {
                let spec = self
                    .scenario
                    .containers
                    .iter()
                    .find(|c| &c.key == key)
                    .expect("validated container");
                self.containers[key.as_str()].fill / 100.0 * spec.capacity_litres * spec.density
            }
        };
        // Simulated devices never send physically impossible values: the malformed fault covers
        // bad input, and a spike stays within the range.
        let (low, high) = quantity.range();
        value.clamp(low, high)
    }

    fn publish(&mut self, device: usize, at: DateTime<Utc>, out: &mut Vec<Publication>) {
        let faults = self.scenario.devices[device].faults.clone();
        let sensors = self.devices[device].sensors.clone();
        // Sampling drains rain accumulators, so it happens only when the device speaks.
        let state = &mut self.devices[device];
        if state.silent_until.is_some_and(|until| at < until) {
            self.report.dropped += sensors.len() as u64;
            return;
        }
        if faults.dropout_rate > 0.0 && state.rng.unit() < faults.dropout_rate {
            state.silent_until =
                Some(at + chrono::Duration::from_std(faults.dropout_duration).unwrap_or_default());
            self.report.dropped += sensors.len() as u64;
            return;
        }
        let mut values: Vec<f64> = sensors.iter().map(|&s| self.sample(s)).collect();
        let state = &mut self.devices[device];
        match &state.frozen {
            Some((until, frozen)) if at < *until => {
                values = frozen.clone();
                self.report.stuck += values.len() as u64;
            }
            _ => {
                state.frozen = None;
                if faults.stuck_rate > 0.0 && state.rng.unit() < faults.stuck_rate {
                    let until =
                        at + chrono::Duration::from_std(faults.stuck_duration).unwrap_or_default();
                    state.frozen = Some((until, values.clone()));
                }
            }
        }
        if faults.spike_rate > 0.0 && !values.is_empty() && state.rng.unit() < faults.spike_rate {
            let which = state.rng.index(values.len());
            values[which] += faults.spike_size;
            self.report.spikes += 1;
        }
        let malformed = faults.malformed_rate > 0.0 && state.rng.unit() < faults.malformed_rate;
        let duplicate =
            !malformed && faults.duplicate_rate > 0.0 && state.rng.unit() < faults.duplicate_rate;
        let ts = at + chrono::Duration::seconds(faults.clock_skew_seconds);
        let readings: Vec<(&SensorKey, Quantity, f64)> = sensors
            .iter()
            .zip(&values)
            .map(|(&s, &v)| {
                let (key, quantity) = &self.keys[s];
                let (low, high) = quantity.range();
                (key, *quantity, v.clamp(low, high))
            })
            .collect();
        let publication = if malformed {
            self.report.malformed += 1;
            Publication {
                device,
                at,
                payload: format!(
                    "{{\"sensor\": garbled #{} at {}",
                    self.report.malformed,
                    ts.timestamp()
                )
                .into_bytes(),
                readings: 0,
                malformed: true,
                duplicate: false,
            }
        } else {
            self.report.readings += readings.len() as u64;
            Publication {
                device,
                at,
                payload: encode(self.scenario.devices[device].format, ts, &readings),
                readings: readings.len(),
                malformed: false,
                duplicate: false,
            }
        };
        self.report.messages += 1;
        if duplicate {
            self.report.messages += 1;
            self.report.duplicates += 1;
            let mut copy = publication.clone();
            copy.duplicate = true;
            out.push(publication);
            out.push(copy);
        } else {
            out.push(publication);
        }
    }
}

/// Four decimals, as a sensor's firmware would round.
fn rounded(value: f64) -> f64 {
    (value * 1e4).round() / 1e4
}

fn encode(format: Format, ts: DateTime<Utc>, readings: &[(&SensorKey, Quantity, f64)]) -> Vec<u8> {
    match format {
        Format::Tidemark => {
            let items: Vec<serde_json::Value> = readings
                .iter()
                .map(|(key, quantity, value)| {
                    serde_json::json!({
                        "sensor": key.as_str(),
                        "ts": ts.to_rfc3339_opts(SecondsFormat::Secs, true),
                        "value": rounded(*value),
                        "unit": quantity.canonical_unit().symbol(),
                    })
                })
                .collect();
            let document = match <[serde_json::Value; 1]>::try_from(items) {
                Ok([single]) => single,
                Err(items) => serde_json::json!({ "readings": items }),
            };
            document.to_string().into_bytes()
        }
        Format::Senml => {
            let records: Vec<serde_json::Value> = readings
                .iter()
                .enumerate()
                .map(|(i, (key, quantity, value))| {
                    let mut record = serde_json::json!({
                        "n": key.as_str(),
                        "u": quantity.canonical_unit().symbol(),
                        "v": rounded(*value),
                    });
                    if i == 0 {
                        record["bt"] = serde_json::json!(ts.timestamp());
                    }
                    record
                })
                .collect();
            serde_json::Value::Array(records).to_string().into_bytes()
        }
    }
}
