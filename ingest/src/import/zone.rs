//! The time zone of a file's local times: UTC, a fixed offset, or a European zone that follows the
//! EU summer-time rule (in force since 1996), without a time-zone database.

use chrono::{DateTime, Duration, NaiveDate, NaiveDateTime, TimeZone, Utc};
use tidemark_model::time::is_summer_time;

/// Zones that have kept the EU summer-time rule since 1996, by standard offset in hours.
const EU_ZONES: [(&str, i64); 52] = [
    ("Europe/London", 0),
    ("Europe/Dublin", 0),
    ("Europe/Lisbon", 0),
    ("Europe/Guernsey", 0),
    ("Europe/Isle_of_Man", 0),
    ("Europe/Jersey", 0),
    ("Atlantic/Canary", 0),
    ("Atlantic/Faroe", 0),
    ("Atlantic/Madeira", 0),
    ("Europe/Copenhagen", 1),
    ("Europe/Berlin", 1),
    ("Europe/Busingen", 1),
    ("Europe/Oslo", 1),
    ("Europe/Stockholm", 1),
    ("Europe/Amsterdam", 1),
    ("Europe/Brussels", 1),
    ("Europe/Luxembourg", 1),
    ("Europe/Paris", 1),
    ("Europe/Monaco", 1),
    ("Europe/Madrid", 1),
    ("Europe/Andorra", 1),
    ("Europe/Gibraltar", 1),
    ("Europe/Rome", 1),
    ("Europe/Vatican", 1),
    ("Europe/San_Marino", 1),
    ("Europe/Malta", 1),
    ("Europe/Vienna", 1),
    ("Europe/Zurich", 1),
    ("Europe/Vaduz", 1),
    ("Europe/Prague", 1),
    ("Europe/Bratislava", 1),
    ("Europe/Warsaw", 1),
    ("Europe/Budapest", 1),
    ("Europe/Ljubljana", 1),
    ("Europe/Zagreb", 1),
    ("Europe/Sarajevo", 1),
    ("Europe/Belgrade", 1),
    ("Europe/Podgorica", 1),
    ("Europe/Skopje", 1),
    ("Europe/Tirane", 1),
    ("Arctic/Longyearbyen", 1),
    ("Europe/Helsinki", 2),
    ("Europe/Mariehamn", 2),
    ("Europe/Tallinn", 2),
    ("Europe/Riga", 2),
    ("Europe/Vilnius", 2),
    ("Europe/Athens", 2),
    ("Europe/Sofia", 2),
    ("Europe/Bucharest", 2),
    ("Europe/Kyiv", 2),
    ("Europe/Kiev", 2),
    ("Asia/Nicosia", 2),
];

/// The first year the EU rule held everywhere in [`EU_ZONES`].
const EU_RULE_FROM: i32 = 1996;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Zone {
    Utc,
    /// A fixed offset east of UTC, in seconds.
    Fixed(i32),
    /// A European zone: its standard offset in hours, with EU summer time.
    Eu {
        standard_hours: i64,
    },
}

/// What a local time names in a zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Local {
    One(DateTime<Utc>),
    /// The repeated hour when the clocks go back: the earlier (summer) and later instants.
    Twice(DateTime<Utc>, DateTime<Utc>),
}

impl Zone {
    /// `UTC`, an offset such as `+01:00`, or a European zone name such as `Europe/Copenhagen`.
    pub fn parse(name: &str) -> Result<Zone, String> {
        let name = name.trim();
        if ["UTC", "Z", "Etc/UTC", "GMT", "Etc/GMT"].contains(&name) {
            return Ok(Zone::Utc);
        }
        if let Some((_, hours)) = EU_ZONES.iter().find(|(zone, _)| *zone == name) {
            return Ok(Zone::Eu {
                standard_hours: *hours,
            });
        }
        let offset = parse_offset(name).ok_or_else(|| {
            format!(
                "time zone {name:?} is not known here: use UTC, a fixed offset such as \
                     +01:00, or one of the European zones that follow the EU summer-time rule \
                     (for example Europe/Copenhagen); other zones' files need times with offsets"
            )
        })?;
        Ok(if offset == 0 {
            Zone::Utc
        } else {
            Zone::Fixed(offset)
        })
    }

    /// The instant or instants `local` names; an error for a time the clocks skipped, or one
    /// outside the years the zone's rule covers.
    pub fn resolve(self, local: NaiveDateTime) -> Result<Local, String> {
        match self {
            Zone::Utc => Ok(Local::One(Utc.from_utc_datetime(&local))),
            Zone::Fixed(seconds) => Ok(Local::One(
                Utc.from_utc_datetime(&(local - Duration::seconds(i64::from(seconds)))),
            )),
            Zone::Eu { standard_hours } => {
                if local.date() < NaiveDate::from_ymd_opt(EU_RULE_FROM, 1, 1).unwrap_or_default() {
                    return Err(format!(
                        "local time {local} is before {EU_RULE_FROM}, when the EU summer-time \
                         rule did not yet hold everywhere: give such times in UTC or with offsets"
                    ));
                }
                let summer = Utc.from_utc_datetime(&(local - Duration::hours(standard_hours + 1)));
                let winter = Utc.from_utc_datetime(&(local - Duration::hours(standard_hours)));
                match (is_summer_time(summer), !is_summer_time(winter)) {
                    (true, true) => Ok(Local::Twice(summer, winter)),
                    (true, false) => Ok(Local::One(summer)),
                    (false, true) => Ok(Local::One(winter)),
                    (false, false) => Err(format!(
                        "local time {local} does not exist: the clocks went forward over it"
                    )),
                }
            }
        }
    }
}

/// `+01:00`, `-0330`, `+01`: seconds east of UTC.
fn parse_offset(text: &str) -> Option<i32> {
    let (sign, rest) = match text.as_bytes().first()? {
        b'+' => (1, &text[1..]),
        b'-' => (-1, &text[1..]),
        _ => return None,
    };
    let digits: String = rest.chars().filter(|c| *c != ':').collect();
    if !digits.chars().all(|c| c.is_ascii_digit()) || !(digits.len() == 2 || digits.len() == 4) {
        return None;
    }
    let hours: i32 = digits[..2].parse().ok()?;
    let minutes: i32 = if digits.len() == 4 {
        digits[2..].parse().ok()?
    } else {
        0
    };
    (hours <= 14 && minutes < 60).then_some(sign * (hours * 3600 + minutes * 60))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local(s: &str) -> NaiveDateTime {
        NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M").unwrap()
    }

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn copenhagen_through_both_changes_of_the_clocks() {
        let zone = Zone::parse("Europe/Copenhagen").unwrap();
        let cases = [
            (
                "2025-01-10 03:00",
                Ok(Local::One(utc("2025-01-10T02:00:00Z"))),
            ),
            (
                "2025-03-30 01:59",
                Ok(Local::One(utc("2025-03-30T00:59:00Z"))),
            ),
            (
                "2025-03-30 03:00",
                Ok(Local::One(utc("2025-03-30T01:00:00Z"))),
            ),
            (
                "2025-07-01 12:00",
                Ok(Local::One(utc("2025-07-01T10:00:00Z"))),
            ),
            (
                "2025-10-26 01:59",
                Ok(Local::One(utc("2025-10-25T23:59:00Z"))),
            ),
            (
                "2025-10-26 02:30",
                Ok(Local::Twice(
                    utc("2025-10-26T00:30:00Z"),
                    utc("2025-10-26T01:30:00Z"),
                )),
            ),
            (
                "2025-10-26 03:00",
                Ok(Local::One(utc("2025-10-26T02:00:00Z"))),
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(zone.resolve(local(text)), expected, "{text}");
        }
        let skipped = zone.resolve(local("2025-03-30 02:30")).unwrap_err();
        assert!(skipped.contains("does not exist"), "{skipped}");
        let early = zone.resolve(local("1995-06-01 12:00")).unwrap_err();
        assert!(early.contains("1996"), "{early}");
    }

    #[test]
    fn offsets_and_names() {
        assert_eq!(Zone::parse("UTC"), Ok(Zone::Utc));
        assert_eq!(Zone::parse("+00:00"), Ok(Zone::Utc));
        assert_eq!(Zone::parse("+01:00"), Ok(Zone::Fixed(3600)));
        assert_eq!(Zone::parse("-0330"), Ok(Zone::Fixed(-12_600)));
        assert_eq!(
            Zone::parse("Europe/London"),
            Ok(Zone::Eu { standard_hours: 0 })
        );
        for bad in ["America/New_York", "+25:00", "01:00", "Copenhagen"] {
            assert!(Zone::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            Zone::Fixed(-12_600).resolve(local("2025-01-01 00:00")),
            Ok(Local::One(utc("2025-01-01T03:30:00Z")))
        );
    }
}
