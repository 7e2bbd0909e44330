#!/usr/bin/env bash
# Restores a backup made by scripts/backup.sh into an empty database (create it first, for
# example with `createdb tidemark`). A backup of a TimescaleDB database needs a server with the
# same TimescaleDB version (check with `SELECT extversion FROM pg_extension WHERE extname =
# 'timescaledb'` on both); the script puts the extension into restore mode around pg_restore, as
# TimescaleDB requires, and takes it out again even when the restore fails.
#
#   scripts/restore.sh tidemark.dump postgres://postgres@127.0.0.1/tidemark
set -euo pipefail

if [[ $# -ne 2 ]]; then
    echo "usage: $0 FILE DATABASE_URL" >&2
    exit 2
fi
file=$1
target_url=$2

sql() {
    psql --no-psqlrc --quiet --tuples-only --no-align --set=ON_ERROR_STOP=1 \
        --dbname="$target_url" --command "$1"
}

if [[ ! -r $file ]]; then
    echo "$0: cannot read $file" >&2
    exit 1
fi
tables=$(sql "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
if [[ $tables != 0 ]]; then
    echo "$0: the target database already has $tables tables; restore into an empty database" >&2
    exit 1
fi

# pg_restore --list names an extension as "<id>; <oid> <oid> EXTENSION - <name> ". grep reads the
# whole listing (no -q): stopping at the first match would end pg_restore with SIGPIPE, which
# pipefail takes for a failed test, and a large backup would skip the TimescaleDB branch.
if pg_restore --list "$file" | grep -E '[0-9] EXTENSION - timescaledb( |$)' >/dev/null; then
    echo "$file holds TimescaleDB: restoring in the extension's restore mode"
    sql "CREATE EXTENSION IF NOT EXISTS timescaledb" >/dev/null
    sql "SELECT timescaledb_pre_restore()" >/dev/null
    trap 'sql "SELECT timescaledb_post_restore()" >/dev/null' EXIT
    # No --single-transaction and no parallel jobs here: TimescaleDB's catalog is restored in
    # restore mode, statement by statement.
    pg_restore --exit-on-error --dbname="$target_url" "$file"
else
    pg_restore --exit-on-error --single-transaction --dbname="$target_url" "$file"
fi
sql "ANALYZE" >/dev/null

sql "SELECT 'readings ' || (SELECT count(*) FROM readings) || ', warning events ' ||
            (SELECT count(*) FROM warning_events) || ', rejected messages ' ||
            (SELECT count(*) FROM rejected_messages)" | sed "s|^|restored from $file: |"
