//! How a file's columns become readings: the mapping file `tidemark import` takes.
//!
//! ```toml
//! # long: one reading per row (the default); wide: one column per sensor
//! layout = "long"
//! delimiter = ";"          # CSV only; "," by default
//! decimal = ","            # "." by default
//! time_zone = "Europe/Copenhagen"   # for times without an offset; UTC by default
//! # time_format = "%d-%m-%Y %H:%M"  # chrono's format; or "epoch" / "epoch_ms"
//!
//! [columns]
//! time = "Tidspunkt"
//! sensor = "Målepunkt"     # or `sensor = "..."` at the top for one sensor
//! value = "Værdi"
//! unit = "Enhed"           # optional; else `unit` at the top, else the sensor's own unit
//! quality = "Kvalitet"     # optional
//!
//! # wide: a [[wide]] table per value column
//! # [[wide]]
//! # column = "Aabenraa (cm)"
//! # sensor = "aabenraa.sea_level"
//! # unit = "cm"
//! ```

use super::zone::Zone;
use serde::Deserialize;
use std::collections::HashMap;
use tidemark_model::unit::Unit;
use tidemark_model::Quality;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    Long,
    Wide,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Csv,
    Parquet,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Encoding {
    #[serde(rename = "utf-8")]
    Utf8,
    /// Windows-1252, which spreadsheet programs on Danish Windows still write.
    #[serde(rename = "windows-1252")]
    Windows1252,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Columns {
    pub time: String,
    pub sensor: Option<String>,
    pub value: Option<String>,
    pub unit: Option<String>,
    pub quality: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WideColumn {
    pub column: String,
    pub sensor: String,
    pub unit: Option<String>,
    /// A column with this value column's quality.
    pub quality: Option<String>,
}

/// The mapping file as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MappingFile {
    /// By the file's extension when absent.
    pub format: Option<Format>,
    #[serde(default = "long")]
    pub layout: Layout,
    #[serde(default = "comma")]
    pub delimiter: char,
    #[serde(default = "point")]
    pub decimal: char,
    /// A thousands separator to drop from numbers, if the file writes one.
    pub thousands: Option<char>,
    #[serde(default = "utf8")]
    pub encoding: Encoding,
    #[serde(default = "utc")]
    pub time_zone: String,
    pub time_format: Option<String>,
    /// The sensor of every row, when there is no sensor column.
    pub sensor: Option<String>,
    /// The unit of every value, when there is no unit column.
    pub unit: Option<String>,
    pub columns: Columns,
    #[serde(default)]
    pub wide: Vec<WideColumn>,
    /// Quality codes of the file and what they mean: "good", "suspect" or "bad".
    #[serde(default)]
    pub quality: HashMap<String, String>,
}

fn long() -> Layout {
    Layout::Long
}
fn comma() -> char {
    ','
}
fn point() -> char {
    '.'
}
fn utf8() -> Encoding {
    Encoding::Utf8
}
fn utc() -> String {
    "UTC".to_owned()
}

/// A checked mapping.
#[derive(Debug, Clone)]
pub struct Mapping {
    pub file: MappingFile,
    pub zone: Zone,
    pub unit: Option<Unit>,
    pub wide_units: Vec<Option<Unit>>,
    quality: HashMap<String, Quality>,
}

impl Mapping {
    pub fn parse(text: &str) -> Result<Mapping, String> {
        let file: MappingFile = toml::from_str(text).map_err(|e| e.to_string())?;
        let zone = Zone::parse(&file.time_zone)?;
        let unit = file
            .unit
            .as_deref()
            .map(|u| Unit::parse(u).map_err(|e| e.to_string()))
            .transpose()?;
        let wide_units = file
            .wide
            .iter()
            .map(|w| {
                w.unit
                    .as_deref()
                    .map(|u| Unit::parse(u).map_err(|e| format!("{}: {e}", w.column)))
                    .transpose()
            })
            .collect::<Result<Vec<_>, _>>()?;
        match file.layout {
            Layout::Long => {
                if file.columns.value.is_none() {
                    return Err("a long layout needs columns.value".into());
                }
                if file.columns.sensor.is_none() == file.sensor.is_none() {
                    return Err("give either columns.sensor or sensor, not both or neither".into());
                }
                if !file.wide.is_empty() {
                    return Err("[[wide]] columns need layout = \"wide\"".into());
                }
            }
            Layout::Wide => {
                if file.wide.is_empty() {
                    return Err("a wide layout needs at least one [[wide]] column".into());
                }
                if file.columns.sensor.is_some()
                    || file.columns.value.is_some()
                    || file.columns.unit.is_some()
                    || file.sensor.is_some()
                {
                    return Err("a wide layout names its sensors and values in [[wide]]".into());
                }
            }
        }
        if file.decimal == file.delimiter || Some(file.decimal) == file.thousands {
            return Err("decimal, delimiter and thousands must differ".into());
        }
        let mut quality: HashMap<String, Quality> = [
            ("", Quality::GOOD),
            ("good", Quality::GOOD),
            ("suspect", Quality::DEVICE_SUSPECT),
            ("bad", Quality::DEVICE_BAD),
        ]
        .into_iter()
        .map(|(k, q)| (k.to_owned(), q))
        .collect();
        for (code, meaning) in &file.quality {
            let q = match meaning.as_str() {
                "good" => Quality::GOOD,
                "suspect" => Quality::DEVICE_SUSPECT,
                "bad" => Quality::DEVICE_BAD,
                other => {
                    return Err(format!(
                        "quality code {code:?} means {other:?}: use good, suspect or bad"
                    ))
                }
            };
            quality.insert(code.trim().to_owned(), q);
        }
        Ok(Mapping {
            file,
            zone,
            unit,
            wide_units,
            quality,
        })
    }

    /// The flags a quality code of the file stands for.
    pub fn quality(&self, code: &str) -> Result<Quality, String> {
        let code = code.trim();
        self.quality
            .get(code)
            .or_else(|| self.quality.get(&code.to_lowercase()))
            .copied()
            .ok_or_else(|| {
                format!("quality {code:?} is not good, suspect or bad, nor mapped in [quality]")
            })
    }

    /// A number as the file writes it.
    pub fn number(&self, text: &str) -> Result<f64, String> {
        let mut text = text.trim().to_owned();
        if let Some(thousands) = self.file.thousands {
            text.retain(|c| c != thousands);
        }
        if self.file.decimal != '.' {
            if text.contains('.') {
                return Err(format!(
                    "{text:?} is not a number with decimal {:?}",
                    self.file.decimal
                ));
            }
            text = text.replace(self.file.decimal, ".");
        }
        text.parse::<f64>()
            .map_err(|_| format!("{text:?} is not a number"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_danish_long_file_and_the_mistakes_it_may_hold() {
        let mapping = Mapping::parse(
            "delimiter = \";\"\ndecimal = \",\"\nthousands = \".\"\n\
             time_zone = \"Europe/Copenhagen\"\n\
             [columns]\ntime = \"Tidspunkt\"\nsensor = \"Målepunkt\"\nvalue = \"Værdi\"\n\
             [quality]\nG = \"good\"\nT = \"suspect\"\n",
        )
        .unwrap();
        assert_eq!(mapping.number("1.234,5").unwrap(), 1234.5);
        assert_eq!(mapping.number(" -0,25 ").unwrap(), -0.25);
        assert!(mapping.number("abc").is_err());
        assert_eq!(mapping.quality("T").unwrap(), Quality::DEVICE_SUSPECT);
        assert_eq!(mapping.quality("Suspect").unwrap(), Quality::DEVICE_SUSPECT);
        assert_eq!(mapping.quality("").unwrap(), Quality::GOOD);
        assert!(mapping.quality("X").is_err());

        let point =
            Mapping::parse("sensor = \"a.b\"\n[columns]\ntime = \"t\"\nvalue = \"v\"\n").unwrap();
        assert!(point.number("1,5").is_err());
        assert_eq!(point.number("1e3").unwrap(), 1000.0);

        for (bad, says) in [
            ("[columns]\ntime = \"t\"\nvalue = \"v\"\n", "either columns.sensor or sensor"),
            ("sensor = \"a.b\"\n[columns]\ntime = \"t\"\n", "columns.value"),
            ("layout = \"wide\"\n[columns]\ntime = \"t\"\n", "[[wide]]"),
            (
                "sensor = \"a.b\"\ntime_zone = \"Mars/Olympus\"\n[columns]\ntime = \"t\"\nvalue = \"v\"\n",
                "not known",
            ),
            (
                "sensor = \"a.b\"\nunit = \"furlong\"\n[columns]\ntime = \"t\"\nvalue = \"v\"\n",
                "furlong",
            ),
            (
                "sensor = \"a.b\"\ndecimal = \",\"\n[columns]\ntime = \"t\"\nvalue = \"v\"\n",
                "must differ",
            ),
            (
                "sensor = \"a.b\"\ncolumn = \"x\"\n[columns]\ntime = \"t\"\nvalue = \"v\"\n",
                "unknown field",
            ),
        ] {
            let error = Mapping::parse(bad).unwrap_err();
            assert!(error.contains(says), "{bad}: {error}");
        }
    }
}
