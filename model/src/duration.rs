//! Durations written the way operators write them in configuration files: a whole number followed by
//! `ms`, `s`, `m`, `h` or `d` (`"250ms"`, `"10m"`, `"30d"`).

use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{input:?} is not a duration; write a whole number followed by ms, s, m, h or d (\"10m\", \"30d\")")]
pub struct DurationError {
    pub input: String,
}

pub fn parse(input: &str) -> Result<Duration, DurationError> {
    let error = || DurationError {
        input: input.to_owned(),
    };
    let trimmed = input.trim();
    let split = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(error)?;
    let (digits, suffix) = trimmed.split_at(split);
    let amount: u64 = digits.parse().map_err(|_| error())?;
    let unit_ms: u64 = match suffix {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(error()),
    };
    amount
        .checked_mul(unit_ms)
        .map(Duration::from_millis)
        .ok_or_else(error)
}

/// The shortest form [`parse`] reads back: the largest unit that divides the duration exactly
/// (`"90m"`, `"1h"`, `"250ms"`). Below a millisecond is dropped.
pub fn format(duration: Duration) -> String {
    let ms = duration.as_millis();
    let (unit, suffix) = [
        (86_400_000, "d"),
        (3_600_000, "h"),
        (60_000, "m"),
        (1_000, "s"),
    ]
    .into_iter()
    .find(|(unit, _)| ms > 0 && ms % unit == 0)
    .unwrap_or((1, "ms"));
    format!("{}{suffix}", ms / unit)
}

/// Serde adapter: `#[serde(with = "tidemark_model::duration::serde_str")]`.
pub mod serde_str {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let raw = String::deserialize(deserializer)?;
        super::parse(&raw).map_err(serde::de::Error::custom)
    }

    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format!("{}ms", value.as_millis()))
    }
}

/// Serde adapter for an optional duration: `#[serde(default, with = "tidemark_model::duration::option_str")]`.
pub mod option_str {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Duration>, D::Error> {
        match Option::<String>::deserialize(deserializer)? {
            None => Ok(None),
            Some(raw) => super::parse(&raw)
                .map(Some)
                .map_err(serde::de::Error::custom),
        }
    }

    pub fn serialize<S: Serializer>(
        value: &Option<Duration>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(d) => super::serde_str::serialize(d, serializer),
            None => serializer.serialize_none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formatted_durations_read_back() {
        for (text, formatted) in [
            ("90m", "90m"),
            ("60m", "1h"),
            ("1h", "1h"),
            ("48h", "2d"),
            ("250ms", "250ms"),
            ("1000ms", "1s"),
            ("0s", "0ms"),
        ] {
            let d = parse(text).unwrap();
            assert_eq!(format(d), formatted, "{text}");
            assert_eq!(parse(&format(d)).unwrap(), d);
        }
    }

    #[test]
    fn table() {
        let cases = [
            ("250ms", Some(250)),
            ("10s", Some(10_000)),
            ("10m", Some(600_000)),
            ("2h", Some(7_200_000)),
            ("30d", Some(2_592_000_000)),
            ("10", None),
            ("m", None),
            ("1.5h", None),
            ("-1s", None),
            ("99999999999999999999d", None),
        ];
        for (input, expected) in cases {
            assert_eq!(
                parse(input).ok(),
                expected.map(Duration::from_millis),
                "{input}"
            );
        }
    }
}
