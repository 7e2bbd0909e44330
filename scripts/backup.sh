#!/usr/bin/env bash
# Backs up a Tidemark database into one file in pg_dump's custom format, while the pipeline runs:
# pg_dump reads one consistent snapshot, so every reading, warning event and outbox row in the
# file was committed together. Restore it with scripts/restore.sh.
#
#   scripts/backup.sh postgres://postgres@127.0.0.1/tidemark tidemark.dump
set -euo pipefail

if [[ $# -ne 2 ]]; then
    echo "usage: $0 DATABASE_URL FILE" >&2
    exit 2
fi
source_url=$1
file=$2

# With TimescaleDB, pg_dump may warn about circular foreign keys in the extension's own catalog;
# the TimescaleDB documentation says these warnings are expected, and the restore takes care of
# them (timescaledb_pre_restore).
pg_dump --format=custom --compress=6 --file="$file" --dbname="$source_url"

psql --no-psqlrc --quiet --tuples-only --no-align --dbname="$source_url" --command \
    "SELECT 'readings ' || (SELECT count(*) FROM readings) || ', warning events ' ||
            (SELECT count(*) FROM warning_events) || ', rejected messages ' ||
            (SELECT count(*) FROM rejected_messages)" | sed "s|^|backed up to $file: |"
