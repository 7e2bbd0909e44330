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
# Python packages from PyPI, for the user (where the system's Python refuses, past its guard).
pip_user() {
    python3 -m pip install --quiet --user "$@" \
        || python3 -m pip install --quiet --user --break-system-packages "$@"
}
# The OpenAPI test validates the document with openapi-spec-validator.
if ! python3 -c "import openapi_spec_validator" 2>/dev/null; then
    pip_user openapi-spec-validator
fi
# The SensorThings test reads the API with two clients: frost-sta-client, the FROST project's,
# and stapy. stapy's release pins old versions of requests and others for its command line;
# its library needs only thefuzz besides what frost-sta-client brings.
if ! python3 -c "import frost_sta_client" 2>/dev/null; then
    pip_user "frost-sta-client==1.1.53"
fi
if ! python3 -c "import stapy" 2>/dev/null; then
    pip_user --no-deps "stapy==0.3.1"
    pip_user "thefuzz>=0.19"
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
