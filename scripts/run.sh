#!/usr/bin/env bash
# Runs the whole pipeline in one process (`tidemark run`): starts PostgreSQL and Mosquitto if they
# are installed but stopped (installing them if missing), migrates, loads config/reference, ingests
# from MQTT and serves the API and the map dashboard on 127.0.0.1:8080.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/services.sh --broker
bash scripts/dashboard.sh
cargo build --release --locked
exec ./target/release/tidemark run "$@"
