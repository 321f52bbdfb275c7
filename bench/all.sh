#!/usr/bin/env bash
# make bench: every backend's benchmark beside its baselines, RUNS times
# each, in one run; writes bench/results.md (median, min–max, ratio to the
# baseline) and bench/results.png, and keeps every figure of every run in
# bench/results.tsv (bench/report.sh remakes the others from it) and the
# scripts' output in bench/results.log.
#   bench/all.sh [BUILD_DIR] [RUNS]
set -euo pipefail
build=${1:-build}
runs=${2:-3}
here=$(cd "$(dirname "$0")" && pwd)
export BENCH_RESULTS=$here/results.tsv
: >"$BENCH_RESULTS"
{
  "$here/run.sh" "$build" "$runs" 1000000
  "$here/redis.sh" "$build" 200000 "$runs"
  "$here/nats.sh" "$build" 200000 "$runs"
  "$here/kafka.sh" "$build" 100000 "$runs"
  "$here/postgres.sh" "$build" 100000 "$runs"
  "$here/amqp.sh" "$build" 100000 "$runs"
  "$here/relay.sh" "$build" 100000 "$runs"
} 2>&1 | tee "$here/results.log"
"$here/report.sh" "$BENCH_RESULTS" "$here/results.md" "$here/results.png"
echo "bench: wrote bench/results.md and bench/results.png"
