//! The fuzz targets' checks (`fuzz/checks.rs`) over their seed corpus and over every input that
//! has ever crashed them (`model/tests/fuzz-regressions/<target>/`, where `scripts/fuzz.sh` puts
//! what it finds), so a fixed crash stays fixed in the normal test suite.

// Tests say what they expect by unwrapping: a failure is the test failing.
#![allow(clippy::unwrap_used)]

#[path = "../../fuzz/checks.rs"]
mod checks;

use std::path::Path;

/// Every file of the target's corpus and regressions, with its path.
fn inputs(target: &str) -> Vec<(String, Vec<u8>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut found = Vec::new();
    for dir in [
        root.join("../fuzz/corpus").join(target),
        root.join("tests/fuzz-regressions").join(target),
    ] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_file() && path.file_name().is_some_and(|n| n != ".gitkeep") {
                found.push((path.display().to_string(), std::fs::read(&path).unwrap()));
            }
        }
    }
    found.sort();
    found
}

#[test]
fn payload_inputs_decode_and_validate_without_panicking() {
    let inputs = inputs("payload");
    assert!(
        inputs.len() >= 6,
        "the seed corpus is there: {}",
        inputs.len()
    );
    for (path, data) in inputs {
        let outcome = std::panic::catch_unwind(|| checks::payload(&data));
        assert!(outcome.is_ok(), "{path}");
    }
}

#[test]
fn topic_inputs_parse_without_panicking_and_round_trip() {
    let inputs = inputs("topic");
    assert!(
        inputs.len() >= 4,
        "the seed corpus is there: {}",
        inputs.len()
    );
    for (path, data) in inputs {
        let outcome = std::panic::catch_unwind(|| checks::topic(&data));
        assert!(outcome.is_ok(), "{path}");
    }
}
