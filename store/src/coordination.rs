//! How processes coordinate through PostgreSQL: the advisory locks they take and the
//! notifications they send, in one place.
//!
//! Every NOTIFY channel is a [`Channel`], and every notification a [`Notice`] whose payload is
//! written by [`notify`] and read back by [`Notice::parse`], so the sender and the listeners share
//! one definition of each payload. Locks are taken through the functions here; the one that
//! orders warning events returns an [`EventSequence`] guard, which appending an event requires.

use crate::pipeline;
use crate::{Context, Result};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Transaction;

/// A LISTEN/NOTIFY channel between the stages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Channel {
    /// A batch of readings committed (ingest, or any batch write).
    ReadingsCommitted,
    /// Quality flags of a sensor's stored readings changed.
    ReadingsFlagged,
    /// Devices, stations, sensors or municipalities changed.
    ReferenceChanged,
    /// The flood setup, quality rules, leak rules or containers changed: analytics reload.
    FloodSetupChanged,
    /// A warning event was recorded.
    WarningsChanged,
    /// Forecast issues committed.
    ForecastsCommitted,
}

impl Channel {
    pub const ALL: [Channel; 6] = [
        Channel::ReadingsCommitted,
        Channel::ReadingsFlagged,
        Channel::ReferenceChanged,
        Channel::FloodSetupChanged,
        Channel::WarningsChanged,
        Channel::ForecastsCommitted,
    ];

    /// The channel's name in PostgreSQL.
    pub const fn name(self) -> &'static str {
        match self {
            Channel::ReadingsCommitted => "readings_committed",
            Channel::ReadingsFlagged => "readings_flagged",
            Channel::ReferenceChanged => "reference_changed",
            Channel::FloodSetupChanged => "flood_setup_changed",
            Channel::WarningsChanged => "warnings_changed",
            Channel::ForecastsCommitted => "forecasts_committed",
        }
    }

    pub fn from_name(name: &str) -> Option<Channel> {
        Channel::ALL.into_iter().find(|c| c.name() == name)
    }
}

/// What `readings_committed` says about one committed batch (a batch of many sensors is
/// announced in several notifications, each naming some of its sensors).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReadingsCommitted {
    /// Ids of the sensors with newly stored readings.
    pub sensors: Vec<i32>,
    /// Rows newly stored for these sensors.
    pub rows: u64,
    /// The earliest and latest timestamp of the batch's new readings.
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// The `received_at` every row of the batch carries.
    pub received_at: DateTime<Utc>,
}

/// One notification, typed.
#[derive(Debug, Clone, PartialEq)]
pub enum Notice {
    ReadingsCommitted(ReadingsCommitted),
    /// The sensor whose readings were flagged.
    ReadingsFlagged {
        sensor_key: String,
    },
    ReferenceChanged,
    FloodSetupChanged,
    /// The id of the recorded event.
    WarningsChanged {
        event_id: i64,
    },
    /// Ids of the sensors with new forecast issues.
    ForecastsCommitted {
        sensors: Vec<i32>,
    },
}

/// A notification whose payload does not have its channel's shape.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a {channel} notification with an unreadable payload {payload:?}")]
pub struct BadNotice {
    pub channel: String,
    pub payload: String,
}

impl Notice {
    pub fn channel(&self) -> Channel {
        match self {
            Notice::ReadingsCommitted(_) => Channel::ReadingsCommitted,
            Notice::ReadingsFlagged { .. } => Channel::ReadingsFlagged,
            Notice::ReferenceChanged => Channel::ReferenceChanged,
            Notice::FloodSetupChanged => Channel::FloodSetupChanged,
            Notice::WarningsChanged { .. } => Channel::WarningsChanged,
            Notice::ForecastsCommitted { .. } => Channel::ForecastsCommitted,
        }
    }

    /// The payload text, as [`Notice::parse`] reads it.
    pub fn payload(&self) -> String {
        match self {
            Notice::ReadingsCommitted(batch) => {
                serde_json::to_string(batch).expect("a batch notice serialises")
            }
            Notice::ReadingsFlagged { sensor_key } => sensor_key.clone(),
            Notice::ReferenceChanged | Notice::FloodSetupChanged => String::new(),
            Notice::WarningsChanged { event_id } => event_id.to_string(),
            Notice::ForecastsCommitted { sensors } => {
                serde_json::to_string(sensors).expect("ids serialise")
            }
        }
    }

    /// Reads a notification as received on `channel`.
    pub fn parse(channel: &str, payload: &str) -> std::result::Result<Notice, BadNotice> {
        let bad = || BadNotice {
            channel: channel.to_owned(),
            payload: payload.chars().take(200).collect(),
        };
        Ok(match Channel::from_name(channel).ok_or_else(bad)? {
            Channel::ReadingsCommitted => {
                Notice::ReadingsCommitted(serde_json::from_str(payload).map_err(|_| bad())?)
            }
            Channel::ReadingsFlagged => Notice::ReadingsFlagged {
                sensor_key: payload.to_owned(),
            },
            Channel::ReferenceChanged => Notice::ReferenceChanged,
            Channel::FloodSetupChanged => Notice::FloodSetupChanged,
            Channel::WarningsChanged => Notice::WarningsChanged {
                event_id: payload.parse().map_err(|_| bad())?,
            },
            Channel::ForecastsCommitted => Notice::ForecastsCommitted {
                sensors: serde_json::from_str(payload).map_err(|_| bad())?,
            },
        })
    }
}

const NOTIFY: &str = "SELECT pg_notify($1, $2)";

/// Sends `notice` when (and only if) the transaction commits.
pub(crate) async fn notify(tx: &tokio_postgres::Client, notice: &Notice) -> Result<()> {
    tx.execute_typed(
        NOTIFY,
        &[
            (&notice.channel().name(), Type::TEXT),
            (&notice.payload(), Type::TEXT),
        ],
    )
    .await
    .context("sending a notification")?;
    Ok(())
}

/// Sends notices when the transaction it runs in commits, in the order given: `$1` their
/// channels and `$2` their payloads, as [`notify_params`] makes them.
pub(crate) const NOTIFY_ALL: &str =
    "SELECT pg_notify(c, p) FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS x(c, p, n) ORDER BY n";

/// The channels and payloads of `notices`, for [`NOTIFY_ALL`].
pub(crate) fn notify_params(notices: &[Notice]) -> (Vec<&'static str>, Vec<String>) {
    notices
        .iter()
        .map(|n| (n.channel().name(), n.payload()))
        .unzip()
}

/// Sends `notice` now, outside any transaction (after the commit of what it announces).
pub(crate) async fn notify_now(client: &tokio_postgres::Client, notice: &Notice) -> Result<()> {
    client
        .execute(NOTIFY, &[&notice.channel().name(), &notice.payload()])
        .await
        .context("sending a notification")?;
    Ok(())
}

/// Key of the session lock that serialises migrations between processes.
pub(crate) const MIGRATION_LOCK: i64 = 0x7469_6465_6d61_726b; // "tidemark"
/// Key of the transaction lock that serialises partition DDL between processes.
pub(crate) const PARTITION_LOCK: i64 = 0x7469_6465_7061_7274;
/// Key of the session lock that lets one rollup refresh run at a time.
pub(crate) const ROLLUP_LOCK: i64 = 0x7469_6465_726f_6c6c;

/// Takes the transaction-scoped advisory lock named `$1` (`text`).
const LOCK_NAMED: &str = "SELECT pg_advisory_xact_lock(hashtext($1))";

async fn lock_named(tx: &Transaction<'_>, name: &str, what: &'static str) -> Result<()> {
    tx.execute_typed(LOCK_NAMED, &[(&name, Type::TEXT)])
        .await
        .context(what)?;
    Ok(())
}

/// Proof that the transaction holds the warning event sequence lock, which every transaction
/// that inserts into `warning_events` takes first: event ids then grow in commit order, so a
/// reader that has seen event N and later asks for events after N misses nothing. Only
/// [`lock_event_sequence`] makes one.
pub(crate) struct EventSequence<'a> {
    tx: &'a tokio_postgres::Client,
}

impl<'a> EventSequence<'a> {
    /// The connection whose transaction holds the lock.
    pub(crate) fn tx(&self) -> &'a tokio_postgres::Client {
        self.tx
    }
}

/// Serialises writers of `warning_events` until the transaction ends.
pub(crate) async fn lock_event_sequence<'a>(tx: &'a Transaction<'a>) -> Result<EventSequence<'a>> {
    lock_named(
        tx,
        "tidemark.warning_events",
        "taking the warning event lock",
    )
    .await?;
    Ok(EventSequence { tx: tx.client() })
}

/// [`lock_event_sequence`] in the transaction `client` is in, with the statements `before`
/// (which write no events) sent ahead of it and `after` (which write none either) behind it, in
/// the same round trip; returns the rows each of `after` returned.
pub(crate) async fn lock_event_sequence_between<'a>(
    client: &'a tokio_postgres::Client,
    before: &[(&str, &pipeline::Params<'_>)],
    after: &[(&str, &pipeline::Params<'_>)],
) -> Result<(EventSequence<'a>, Vec<Vec<tokio_postgres::Row>>)> {
    let name = "tidemark.warning_events";
    let lock: [(&(dyn ToSql + Sync), Type); 1] = [(&name, Type::TEXT)];
    let mut statements = before.to_vec();
    statements.push((LOCK_NAMED, &lock));
    statements.extend_from_slice(after);
    let mut answers =
        pipeline::in_one_flight(client, &statements)
            .await
            .context(if after.is_empty() {
                "taking the warning event lock"
            } else {
                "taking the warning event lock and changing warnings"
            })?;
    let after = answers.split_off(before.len() + 1);
    Ok((EventSequence { tx: client }, after))
}

/// Serialises evaluations of one flood area (and acknowledgements of its warnings).
pub(crate) async fn lock_area(tx: &Transaction<'_>, area_key: &str) -> Result<()> {
    lock_named(
        tx,
        &format!("tidemark.area:{area_key}"),
        "taking the area lock",
    )
    .await
}

/// Locks many flood areas in one statement and one order (by lock key), `$1` the area keys
/// (`text[]`): [`lock_area`] for each, so that two transactions locking overlapping sets wait
/// for each other instead of deadlocking.
pub(crate) const LOCK_AREAS: &str =
    "SELECT pg_advisory_xact_lock(h) FROM (SELECT DISTINCT hashtext('tidemark.area:' || k) AS h \
     FROM unnest($1::text[]) k ORDER BY h OFFSET 0) s";

/// Serialises leak decisions about one district meter.
pub(crate) async fn lock_meter(tx: &Transaction<'_>, sensor_key: &str) -> Result<()> {
    lock_named(
        tx,
        &format!("tidemark.meter:{sensor_key}"),
        "taking the meter lock",
    )
    .await
}

/// Serialises material-flow records of one municipality (overlaps are checked under it).
pub(crate) async fn lock_material_flows(tx: &Transaction<'_>, municipality: &str) -> Result<()> {
    lock_named(
        tx,
        &format!("material_flows:{municipality}"),
        "locking a municipality's material flows",
    )
    .await
}

/// Key of the transaction lock between changes of device credentials (shared: they may run side
/// by side, each under its device's row lock) and the reconciliation of the broker's logins with
/// the record (exclusive: it sees no change half made).
const CREDENTIALS_LOCK: i64 = 0x7469_6465_6372_6564;

/// Takes the credentials lock, shared ([`CREDENTIALS_LOCK`]).
pub(crate) async fn lock_credentials_shared(tx: &Transaction<'_>) -> Result<()> {
    tx.execute(
        "SELECT pg_advisory_xact_lock_shared($1)",
        &[&CREDENTIALS_LOCK],
    )
    .await
    .context("taking the credentials lock")?;
    Ok(())
}

/// Takes the credentials lock, exclusive ([`CREDENTIALS_LOCK`]).
pub(crate) async fn lock_credentials_exclusive(tx: &Transaction<'_>) -> Result<()> {
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&CREDENTIALS_LOCK])
        .await
        .context("taking the credentials lock")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn every_notice_reads_back_as_it_was_sent() {
        let at = Utc.with_ymd_and_hms(2026, 12, 3, 10, 0, 0).unwrap();
        let notices = [
            Notice::ReadingsCommitted(ReadingsCommitted {
                sensors: vec![3, 7],
                rows: 12,
                from: at,
                to: at + chrono::Duration::minutes(10),
                received_at: at + chrono::Duration::microseconds(1_234_567),
            }),
            Notice::ReadingsFlagged {
                sensor_key: "dk-1/level".to_owned(),
            },
            Notice::ReferenceChanged,
            Notice::FloodSetupChanged,
            Notice::WarningsChanged { event_id: 42 },
            Notice::ForecastsCommitted {
                sensors: vec![3, 9],
            },
        ];
        for notice in notices {
            let parsed = Notice::parse(notice.channel().name(), &notice.payload()).unwrap();
            assert_eq!(parsed, notice);
        }
        for channel in Channel::ALL {
            assert_eq!(Channel::from_name(channel.name()), Some(channel));
        }
    }

    #[test]
    fn a_payload_of_the_wrong_shape_is_refused() {
        assert!(Notice::parse("warnings_changed", "seven").is_err());
        assert!(Notice::parse("readings_committed", "{\"sensors\": 1}").is_err());
        assert!(Notice::parse("no_such_channel", "").is_err());
    }
}
