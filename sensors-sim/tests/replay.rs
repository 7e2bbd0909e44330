//! The replay readers on the recorded data kept in `tests/fixtures/`.

// Tests say what they expect by unwrapping: a failure is the test failing.
#![allow(clippy::unwrap_used)]

use chrono::{DateTime, TimeZone, Utc};
use std::path::PathBuf;
use tidemark_model::wire::{decode, Limits};
use tidemark_sensors_sim::replay::{align_end, kebab, read, Format};

fn fixture(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(path)
}

fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap()
}

#[test]
fn names_become_keys() {
    for (name, key) in [
        ("KielHoltenau", "kiel-holtenau"),
        ("Flensburg", "flensburg"),
        ("Hebden Bridge", "hebden-bridge"),
        ("Sønderborg", "soenderborg"),
        ("Køge", "koege"),
        ("Ærøskøbing", "aeroeskoebing"),
        ("Aabenraa (Havn)", "aabenraa-havn"),
        ("Großenbrode", "grossenbrode"),
        ("  Île d'Orléans ", "ile-d-orleans"),
    ] {
        assert_eq!(kebab(name), key);
    }
}

/// Danish station names make valid keys; a name that makes no key at all is an error, not a panic.
#[test]
fn danish_station_names_replay_and_a_name_without_letters_is_refused() {
    let dir = std::env::temp_dir().join(format!("tidemark-replay-names-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let write = |stations: &[&str]| {
        let mut list = String::from("station,lat,lon\n");
        let mut levels = String::from("station,time_utc,slev_m,slev_qc\n");
        for (i, name) in stations.iter().enumerate() {
            list.push_str(&format!("{name},55.{i},10.{i}\n"));
            levels.push_str(&format!("{name},2023-10-20 12:00:00,0.5{i},1\n"));
        }
        std::fs::write(dir.join("stations.csv"), list).unwrap();
        std::fs::write(dir.join("sea_level_10min.csv"), levels).unwrap();
        read(Format::BalticSurge, &dir.join("sea_level_10min.csv"))
    };
    let recording = write(&["Sønderborg", "Køge", "Ærøskøbing"]).unwrap();
    let keys: Vec<&str> = recording.devices.iter().map(|d| d.as_str()).collect();
    assert_eq!(
        keys,
        ["soenderborg-gauge", "koege-gauge", "aeroeskoebing-gauge"]
    );
    assert!(recording.reference.validate().is_ok());
    assert_eq!(recording.points[0].sensor, "soenderborg.sea_level");
    let refused = write(&["Ωμέγα"]).unwrap_err();
    assert!(refused.to_string().contains("makes no key"), "{refused}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_baltic_surge_reads_with_stations_and_quality() {
    let recording = read(
        Format::BalticSurge,
        &fixture("baltic-surge-2023/sea_level_10min.csv"),
    )
    .unwrap();
    assert_eq!(recording.points.len(), 10_687);
    assert_eq!(recording.reference.stations.len(), 7);
    assert_eq!(recording.devices.len(), 7);
    let flensburg: Vec<_> = recording
        .points
        .iter()
        .filter(|p| p.sensor == "flensburg.sea_level")
        .collect();
    assert_eq!(flensburg.len(), 1584);
    let peak = flensburg
        .iter()
        .max_by(|a, b| a.value.total_cmp(&b.value))
        .unwrap();
    assert_eq!((peak.value, peak.ts), (2.27, utc(2023, 10, 20, 21, 40)));
    let station = recording
        .reference
        .stations
        .iter()
        .find(|s| s.key == "flensburg")
        .unwrap();
    assert_eq!((station.lat, station.lon), (54.796, 9.434));
    let bad = recording
        .points
        .iter()
        .filter(|p| p.quality == Some("bad"))
        .count();
    let suspect = recording
        .points
        .iter()
        .filter(|p| p.quality == Some("suspect"))
        .count();
    assert_eq!(
        (bad, suspect),
        (4, 1584),
        "quality codes 3 and 2 of the source"
    );
    assert!(recording.reference.validate().is_ok());
}

#[test]
fn messages_group_by_device_and_time_and_shift() {
    let recording = read(
        Format::BalticSurge,
        &fixture("baltic-surge-2023/sea_level_10min.csv"),
    )
    .unwrap();
    let (first, last) = recording.span().unwrap();
    let now = utc(2026, 11, 25, 12, 0) + chrono::Duration::milliseconds(750);
    let shift = align_end(first, last, 0.0, now);
    assert_eq!(
        last + shift,
        now - chrono::Duration::milliseconds(750),
        "whole seconds, rounded down"
    );
    let messages = recording.messages(shift);
    assert_eq!(messages.len(), 10_687, "one gauge per message");
    let readings: Vec<_> = messages
        .iter()
        .flat_map(|m| decode(&m.payload, Limits::default()).unwrap())
        .map(Result::unwrap)
        .collect();
    assert!(readings.iter().all(|r| r.ts <= now));
    let peak = readings
        .iter()
        .filter(|r| r.sensor.as_str() == "flensburg.sea_level")
        .max_by(|a, b| a.value.total_cmp(&b.value))
        .unwrap();
    assert_eq!(peak.ts, utc(2023, 10, 20, 21, 40) + shift);
    // At speed 1 the last reading is stamped when it is published, and none earlier is late.
    let live = align_end(first, last, 1.0, now);
    assert_eq!(
        last + live,
        now - chrono::Duration::milliseconds(750) + (last - first)
    );
}

#[test]
fn calder_times_are_local_uk_time() {
    let recording = read(Format::Calder, &fixture("calder-2025")).unwrap();
    assert_eq!(recording.devices.len(), 2);
    assert_eq!(recording.points.len(), 400);
    let first = recording
        .points
        .iter()
        .find(|p| p.sensor == "hebden-bridge.level")
        .unwrap();
    assert_eq!(first.ts, utc(2025, 8, 15, 23, 0), "00:00 BST is 23:00 UTC");
    assert_eq!(first.value, -0.062);
    let rain = recording
        .reference
        .sensors
        .iter()
        .find(|s| s.key == "walshaw-dean-lodge.rainfall")
        .unwrap();
    assert_eq!(rain.quantity, "rainfall");
    assert!(recording.reference.validate().is_ok());
}

#[test]
fn edinburgh_collections_become_fill_and_weight_readings() {
    let recording = read(
        Format::EdinburghBins,
        &fixture("edinburgh-bins-2016/collections.csv"),
    )
    .unwrap();
    assert_eq!(recording.points.len(), 3 * 10_000);
    // The export's first row: 78 % at 15:46:34 London summer time.
    let first = recording
        .points
        .iter()
        .find(|p| {
            p.sensor == "bin-325048.fill_level"
                && p.ts == utc(2016, 8, 9, 14, 46) + chrono::Duration::seconds(34)
        })
        .unwrap();
    assert_eq!(first.value, 78.0);
    let after = recording
        .points
        .iter()
        .find(|p| {
            p.sensor == "bin-325048.fill_level" && p.ts == first.ts + chrono::Duration::seconds(1)
        })
        .unwrap();
    assert_eq!(after.value, 0.0);
    assert!(recording.reference.validate().is_ok());
}

#[test]
fn dk1_load_reads_both_series_in_megawatts() {
    let recording = read(Format::Dk1Load, &fixture("dk1-load-2019/load_hourly.csv")).unwrap();
    assert_eq!(recording.points.len(), 2 * 8760);
    assert_eq!(recording.reference.sensors.len(), 2);
    let first = &recording.points[0];
    assert_eq!(first.ts, utc(2019, 1, 1, 0, 0));
    assert_eq!(first.unit, tidemark_model::Unit::Megawatt);
}
