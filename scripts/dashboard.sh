#!/usr/bin/env bash
# Builds the map dashboard into dashboard/dist/, which the API embeds when it is compiled: installs
# Node.js and npm from the distribution's packages if they are missing, the dashboard's packages
# exactly as dashboard/package-lock.json pins them, and bundles it. Safe to rerun.
set -euo pipefail
cd "$(dirname "$0")/../dashboard"

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

if ! command -v npm >/dev/null 2>&1; then
    echo "dashboard: installing Node.js and npm" >&2
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
fi
# npm records what it installed in node_modules/.package-lock.json; install again when the
# lockfile is newer than that, or when nothing is installed.
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
    echo "dashboard: installing npm packages from the lockfile" >&2
    npm ci --no-audit --no-fund --loglevel=error
fi
npm run --silent build
