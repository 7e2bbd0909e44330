//! MQTT topic names. A device publishes readings to `<prefix>/readings/<device id>`, a forecast
//! source its forecasts to `<prefix>/forecasts/<source>`; the prefix is `tidemark/v1` unless
//! configured otherwise.

use crate::id::{DeviceId, IdError};

pub const DEFAULT_PREFIX: &str = "tidemark/v1";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("topic prefix {prefix:?} must be non-empty, without wildcards and without a leading or trailing '/'")]
    BadPrefix { prefix: String },
    #[error("shared subscription group {group:?} must be a valid identifier: {error}")]
    BadGroup { group: String, error: IdError },
    #[error("topic {topic:?} is not under {expected:?}")]
    NotReadings { topic: String, expected: String },
    #[error("topic {topic:?} names no valid device: {error}")]
    BadDevice { topic: String, error: IdError },
}

/// The readings topics under one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadingsTopics {
    /// `<prefix>/readings/`, with the trailing slash.
    stem: String,
    /// `<prefix>/forecasts/`, with the trailing slash.
    forecast_stem: String,
}

impl ReadingsTopics {
    pub fn new(prefix: &str) -> Result<Self, TopicError> {
        let bad = prefix.is_empty()
            || prefix.starts_with('/')
            || prefix.ends_with('/')
            || prefix.contains(['+', '#', '\0'])
            || prefix.starts_with('$');
        if bad {
            return Err(TopicError::BadPrefix {
                prefix: prefix.to_owned(),
            });
        }
        Ok(ReadingsTopics {
            stem: format!("{prefix}/readings/"),
            forecast_stem: format!("{prefix}/forecasts/"),
        })
    }

    /// The filter a subscriber uses: `<prefix>/readings/+`, or `$share/<group>/<prefix>/readings/+`
    /// when several ingest processes split the load.
    pub fn filter(&self, shared_group: Option<&str>) -> Result<String, TopicError> {
        shared(&self.stem, shared_group)
    }

    /// The same for forecasts: `<prefix>/forecasts/+`.
    pub fn forecast_filter(&self, shared_group: Option<&str>) -> Result<String, TopicError> {
        shared(&self.forecast_stem, shared_group)
    }

    /// Whether a topic is under `<prefix>/forecasts/`.
    pub fn is_forecast(&self, topic: &str) -> bool {
        topic.starts_with(&self.forecast_stem)
    }

    /// The topic a forecast source publishes to.
    pub fn for_source(&self, source: &DeviceId) -> String {
        format!("{}{source}", self.forecast_stem)
    }

    /// The source a forecast topic names (an identifier, as device ids are).
    pub fn source_of(&self, topic: &str) -> Result<DeviceId, TopicError> {
        let source =
            topic
                .strip_prefix(&self.forecast_stem)
                .ok_or_else(|| TopicError::NotReadings {
                    topic: topic.to_owned(),
                    expected: format!("{}<source>", self.forecast_stem),
                })?;
        DeviceId::parse(source).map_err(|error| TopicError::BadDevice {
            topic: topic.to_owned(),
            error,
        })
    }

    /// The topic a device publishes to.
    pub fn for_device(&self, device: &DeviceId) -> String {
        format!("{}{device}", self.stem)
    }

    /// The device a readings topic names.
    pub fn device_of(&self, topic: &str) -> Result<DeviceId, TopicError> {
        let device = topic
            .strip_prefix(&self.stem)
            .ok_or_else(|| TopicError::NotReadings {
                topic: topic.to_owned(),
                expected: format!("{}<device>", self.stem),
            })?;
        DeviceId::parse(device).map_err(|error| TopicError::BadDevice {
            topic: topic.to_owned(),
            error,
        })
    }
}

fn shared(stem: &str, shared_group: Option<&str>) -> Result<String, TopicError> {
    match shared_group {
        None => Ok(format!("{stem}+")),
        Some(group) => {
            DeviceId::parse(group).map_err(|error| TopicError::BadGroup {
                group: group.to_owned(),
                error,
            })?;
            Ok(format!("$share/{group}/{stem}+"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_and_devices() {
        let topics = ReadingsTopics::new(DEFAULT_PREFIX).unwrap();
        assert_eq!(topics.filter(None).unwrap(), "tidemark/v1/readings/+");
        assert_eq!(
            topics.filter(Some("ingest")).unwrap(),
            "$share/ingest/tidemark/v1/readings/+"
        );
        assert!(topics.filter(Some("a/b")).is_err());
        let device = DeviceId::parse("gauge-7").unwrap();
        assert_eq!(topics.for_device(&device), "tidemark/v1/readings/gauge-7");
        assert_eq!(topics.device_of("tidemark/v1/readings/gauge-7"), Ok(device));
        assert!(matches!(
            topics.device_of("tidemark/v1/readings/a/b"),
            Err(TopicError::BadDevice { .. })
        ));
        assert!(matches!(
            topics.device_of("tidemark/v1/readings/"),
            Err(TopicError::BadDevice { .. })
        ));
        assert!(matches!(
            topics.device_of("other/readings/x"),
            Err(TopicError::NotReadings { .. })
        ));
        assert_eq!(
            topics.forecast_filter(Some("ingest")).unwrap(),
            "$share/ingest/tidemark/v1/forecasts/+"
        );
        let dmi = DeviceId::parse("dmi").unwrap();
        assert_eq!(topics.for_source(&dmi), "tidemark/v1/forecasts/dmi");
        assert!(topics.is_forecast("tidemark/v1/forecasts/dmi"));
        assert!(!topics.is_forecast("tidemark/v1/readings/dmi"));
        assert_eq!(topics.source_of("tidemark/v1/forecasts/dmi"), Ok(dmi));
        for bad in [
            "tidemark/v1/readings/dmi",
            "tidemark/v1/forecasts/",
            "tidemark/v1/forecasts/a/b",
        ] {
            assert!(topics.source_of(bad).is_err(), "{bad}");
        }
        for prefix in ["", "/a", "a/", "a/+", "a/#", "$SYS"] {
            assert!(ReadingsTopics::new(prefix).is_err(), "{prefix:?}");
        }
    }
}
