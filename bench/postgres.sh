#!/usr/bin/env bash
# postgres:// side by side, on one PostgreSQL server started for the run:
# a plain libpq program (bench/pg_baseline.c: inserts in transactions of
# 256 rows; claims of 64 with SKIP LOCKED, then a delete) and evq bench.
#   bench/postgres.sh [BUILD_DIR] [EVENTS] [RUNS]
set -euo pipefail
build=${1:-build}
events=${2:-100000}
runs=${3:-1}
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
if [ "${EVQ_IN_SERVICE:-}" != 1 ]; then
  exec env EVQ_IN_SERVICE=1 "$here/../scripts/services.sh" run postgres -- \
    "$here/postgres.sh" "$build" "$events" "$runs" @PG_URL@
fi
url=$4
# a JSON event of 100 bytes of data is about 300 bytes: the baseline's rows
size=300
for run in $(seq 1 "$runs"); do
echo "$(postgres --version), $(nproc) cores, $events events"
b=$("$build/pg_baseline" "$url" insert "$events" "$size" 256); echo "libpq insert, 256 rows per transaction: $b"
rec postgres:// "libpq insert, 256 rows a transaction/s" "$(json_field pg_insert_per_s <<<"$b")"
b=$("$build/pg_baseline" "$url" drain "$events" 64); echo "libpq claim 64 and delete:     $b"
rec postgres:// "libpq claim 64 + delete/s" "$(json_field pg_drain_per_s <<<"$b")"
evq_bench_rows postgres:// "$url" "$events" "libpq insert, 256 rows a transaction/s" \
  "libpq claim 64 + delete/s"
done
