#!/usr/bin/env bash
# Runs every test: unit tests, and integration tests against a real PostgreSQL and private
# Mosquitto brokers. Sets up what is missing first.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/services.sh
cargo test --workspace --locked
