#!/usr/bin/env bash
# Installs what the dashboard's browser tests drive: Chromium from the distribution's packages
# (playwright-core itself comes with the dashboard's npm packages; it downloads no browser). Safe
# to rerun.
set -euo pipefail

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

if [ ! -x /usr/bin/chromium ]; then
    echo "browser: installing Chromium" >&2
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
