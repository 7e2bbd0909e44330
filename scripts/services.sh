#!/usr/bin/env bash
# Brings up what Tidemark needs on a Debian-like machine: PostgreSQL (and, with --broker, a
# Mosquitto on 127.0.0.1:1883) and the mosquitto and nats-server binaries the tests start privately. Installs from
# the distribution's packages only what is missing; starts only what is stopped. Safe to rerun.
set -euo pipefail

want_broker=no
[ "${1:-}" = "--broker" ] && want_broker=yes
here="$(cd "$(dirname "$0")/.." && pwd)"

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

apt_updated=no
install_packages() {
    if [ "$apt_updated" = no ]; then
        as_root apt-get update -qq
        apt_updated=yes
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

pg_ready() {
    pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null
}

ensure_postgres() {
    if pg_ready; then return; fi
    local fresh=no
    if ! command -v pg_ctlcluster >/dev/null 2>&1 || [ -z "$(ls /etc/postgresql 2>/dev/null)" ]; then
        echo "services: installing PostgreSQL" >&2
        install_packages postgresql
        fresh=yes
    fi
    local version
    version="$(ls /etc/postgresql | sort -V | tail -n 1)"
    if [ "$fresh" = yes ]; then
        # A new local cluster: let the postgres user in over loopback without a password, as the
        # tests and the default configuration expect. Only done for a cluster installed here.
        local hba="/etc/postgresql/$version/main/pg_hba.conf"
        as_root sed -i -E 's/^(host\s+all\s+all\s+(127\.0\.0\.1\/32|::1\/128)\s+)\S+/\1trust/' "$hba"
    fi
    echo "services: starting PostgreSQL $version" >&2
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    for _ in $(seq 1 60); do
        if pg_ready; then return; fi
        sleep 0.5
    done
    echo "services: PostgreSQL did not come up on 127.0.0.1:5432" >&2
    exit 1
}

ensure_mosquitto_binary() {
    if [ -x /usr/sbin/mosquitto ] || command -v mosquitto >/dev/null 2>&1; then return; fi
    echo "services: installing Mosquitto" >&2
    install_packages mosquitto mosquitto-clients
}

broker_listening() {
    (exec 3<>/dev/tcp/127.0.0.1/1883) 2>/dev/null
}

ensure_broker() {
    ensure_mosquitto_binary
    if broker_listening; then
        if ! pgrep -f "mosquitto.*config/mosquitto-local.conf" >/dev/null 2>&1; then
            cat >&2 <<'WARN'
services: a broker is already listening on 127.0.0.1:1883, started without Tidemark's
  config/mosquitto-local.conf. With Mosquitto's defaults (20 messages in flight and 1,000 queued per
  client) it drops QoS 1 messages whenever ingest falls behind a burst. Restart it with Tidemark's
  limits, for example:  pkill -x mosquitto; mosquitto -d -c config/mosquitto-local.conf
WARN
        fi
        return
    fi
    local mosquitto
    mosquitto="$(command -v mosquitto || echo /usr/sbin/mosquitto)"
    as_root mkdir -p /var/lib/mosquitto
    echo "services: starting Mosquitto with config/mosquitto-local.conf (anonymous, loopback only)" >&2
    as_root "$mosquitto" -d -c "$here/config/mosquitto-local.conf"
    for _ in $(seq 1 40); do
        if broker_listening; then return; fi
        sleep 0.25
    done
    echo "services: Mosquitto did not come up on 127.0.0.1:1883" >&2
    exit 1
}

command -v pg_isready >/dev/null 2>&1 || install_packages postgresql-client
# The security tests make a throwaway CA and certificates with openssl.
command -v openssl >/dev/null 2>&1 || install_packages openssl
# The package test builds a .deb (dpkg-deb, and objdump for the libc it needs) and checks its
# units with systemd-analyze.
command -v objdump >/dev/null 2>&1 || install_packages binutils
command -v systemd-analyze >/dev/null 2>&1 || install_packages systemd
# The JetStream tests start their own nats-server nodes (one, or a cluster of three).
[ -x /usr/sbin/nats-server ] || command -v nats-server >/dev/null 2>&1 || install_packages nats-server
ensure_postgres
ensure_mosquitto_binary
if [ "$want_broker" = yes ]; then ensure_broker; fi
