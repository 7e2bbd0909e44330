#!/usr/bin/env bash
# Runs every test: unit tests, and integration tests against a real PostgreSQL and private
# Mosquitto brokers, the dashboard's in headless Chromium among them. Sets up what is missing
# first, and closes with one summary line.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/services.sh
# The dashboard is embedded in the API when it is compiled, and its tests run in Chromium.
bash scripts/dashboard.sh
bash scripts/browser.sh
# The OpenAPI test validates the document with openapi-spec-validator, from PyPI.
if ! python3 -c "import openapi_spec_validator" 2>/dev/null; then
    python3 -m pip install --quiet --user openapi-spec-validator \
        || python3 -m pip install --quiet --user --break-system-packages openapi-spec-validator
fi
# The SensorThings test reads the API with frost-sta-client, the FROST project's Python client.
if ! python3 -c "import frost_sta_client" 2>/dev/null; then
    python3 -m pip install --quiet --user "frost-sta-client==1.1.53" \
        || python3 -m pip install --quiet --user --break-system-packages "frost-sta-client==1.1.53"
fi
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --locked 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
sum() { grep -E '^test result:' "$log" | grep -oE "[0-9]+ $1" | awk '{s += $1} END {print s + 0}'; }
echo "tests: $(sum passed) passed, $(sum failed) failed"
exit "$status"
