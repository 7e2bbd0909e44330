#!/usr/bin/env bash
# Fuzzes the HTTP API from its own OpenAPI document with schemathesis (installed from PyPI): every
# operation with generated parameters and bodies, with an operator key so protected routes are
# exercised too, against a `tidemark api` on a free loopback port and a database of its own
# (dropped and made again each run, with the reference data and flood areas loaded). Checks: no
# 5xx, responses conform to the document. Not part of CI.
#
#   scripts/schemathesis.sh [examples per operation, default 50]
set -euo pipefail
cd "$(dirname "$0")/.."
examples="${1:-50}"
bash scripts/services.sh --broker
if ! python3 -c "import schemathesis" 2>/dev/null; then
    python3 -m pip install --quiet --user schemathesis \
        || python3 -m pip install --quiet --user --break-system-packages schemathesis
fi
cargo build --locked
tidemark=./target/debug/tidemark
database=tidemark_schemathesis
port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
psql -h 127.0.0.1 -U postgres -q -c "DROP DATABASE IF EXISTS $database WITH (FORCE)" postgres
export TIDEMARK__DATABASE__URL="postgres://postgres@127.0.0.1:5432/$database"
export TIDEMARK__API__LISTEN="127.0.0.1:$port"
export TIDEMARK__API__PUBLIC_URL="http://127.0.0.1:$port"
export TIDEMARK__API__RATE_LIMIT_PER_MINUTE=1000000
export TIDEMARK__API__KEYED_RATE_LIMIT_PER_MINUTE=1000000
export TIDEMARK__DELIVERY__MQTT_CLIENT_ID="tidemark-schemathesis-$port"
"$tidemark" migrate
key="$("$tidemark" keys create --role operator --label schemathesis | grep -oE 'tmk_[A-Za-z0-9_]+' | head -1)"
log="$(mktemp)"
"$tidemark" api >"$log" 2>&1 &
api=$!
trap 'kill $api 2>/dev/null; wait $api 2>/dev/null; rm -f "$log"' EXIT
for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break
    sleep 0.2
done
set +e
schemathesis run "http://127.0.0.1:$port/api/v1/openapi.json" \
    --header "Authorization: Bearer $key" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
    --max-examples "$examples" \
    --exclude-path '/api/v1/warnings/stream'
status=$?
set -e
if grep -q 'panicked' "$log"; then
    echo "the API logged a panic:"
    grep -A5 'panicked' "$log"
    status=1
fi
exit "$status"
