//! End-to-end tests against a real PostgreSQL and a private Mosquitto. Each test gets its own fresh
//! database and its own broker on a free loopback port.

// Tests say what they expect by unwrapping: a failure is the test failing.
#![allow(clippy::unwrap_used)]

// Shared harness: broker, database, reference data, ingest tasks, waiting for conditions.
mod support;

// Ingest through the broker: exactly once, rejections, restarts, shared subscriptions.
mod ingest;

// Storage in both modes: plain PostgreSQL always, TimescaleDB where the server offers it.
mod storage;

// Upgrading a database of every earlier schema version, with rows in every table.
mod upgrade;

// Backup and restore with the operators' scripts.
mod backup;

// Ingest from NATS JetStream, devices publishing MQTT to nats-server.
mod nats;

// The OGC SensorThings API v1.1 over the same relations.
mod sta;

// Open-data reads from a streaming standby.
mod replication;

// The Debian package: built, installed into a throwaway root, its units verified.
mod package;

// Importing CSV and Parquet files through ingest's checks and write.
mod import;

// Simulated scenarios and replays of recorded data through broker and ingest.
mod sim;

// The flood-risk core on the recorded Baltic storm surge.
mod flood;

// Flood warnings from replayed recordings through broker, ingest and analytics.
mod warnings;
// The readings analytics keeps between evaluations, against whole reads.
mod kept_series;
// Forecasts in, over MQTT and the API.
mod forecasts;

// Warning delivery: webhooks, Server-Sent Events, MQTT alerts, CAP 1.2, acknowledgement.
mod delivery;

// Open data: stations, latest values, raw and aggregated readings over HTTP.
mod opendata;

// The 15-minute, hourly and daily rollups against the raw readings, before and after refreshes.
mod rollups;

// The circular data bank: material flows, recycling statistics, Sankey flows.
mod circular;

// Utility statistics on the replayed 2019 DK1 load.
mod utilities;

// Management over the API: keys, reference data, the audit log.
mod manage;

// Health, readiness and metrics over HTTP.
mod ops;

// The `tidemark` binary: configuration and error messages a person can act on.
mod cli;

// Device security on a broker with passwords and the shipped topic ACL.
mod security;

// The map dashboard in headless Chromium, with the storm-surge simulator running.
mod dashboard;
mod routes;

// Answers checked against the API's OpenAPI document (every JSON answer `Api::call` receives).
mod schema;
