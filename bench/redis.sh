#!/usr/bin/env bash
# redis:// side by side, on one redis-server started for the run:
# redis-benchmark's own pipelined XADD, evq bench, and BullMQ (installed
# from npm into bench/bullmq on first use).
#   bench/redis.sh [BUILD_DIR] [EVENTS] [RUNS]
set -euo pipefail
build=${1:-build}
events=${2:-200000}
runs=${3:-1}
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
if [ "${EVQ_IN_SERVICE:-}" != 1 ]; then
  exec env EVQ_IN_SERVICE=1 "$here/../scripts/services.sh" run redis -- \
    "$here/redis.sh" "$build" "$events" "$runs" @REDIS_PORT@
fi
port=$4
for run in $(seq 1 "$runs"); do
echo "redis-server $(redis-server --version | grep -o 'v=[0-9.]*'), $(nproc) cores, $events events of 100 bytes"
rb=$(redis-benchmark -p "$port" -q -n "$events" -P 64 -d 100 XADD evq:rb '*' b __data__ a 0 2>&1 |
     tr '\r' '\n' | grep -o '[0-9.]* requests per second' | tail -1 | cut -d' ' -f1)
echo "redis-benchmark XADD -P 64:     $rb per second"
rec redis:// "redis-benchmark XADD -P 64/s" "$rb"
redis-cli -p "$port" DEL evq:rb >/dev/null
# redis-benchmark runs 50 clients; evq's producers are threads sharing one
# queue handle (and its redis.connections command connections).
for fmt in json msgpack; do
  for pw in "1 1" "4 4"; do
    set -- $pw
    printf 'evq bench, %s, batches of 64, %s producer(s), %s worker thread(s): ' \
      "$fmt" "$1" "$2"
    j=$("$build/evq" bench "redis://127.0.0.1:$port?format=$fmt" --events "$events" \
      --batch 64 --producers "$1" --workers "$2" --json)
    echo "$j"
    rec_evq redis:// "evq $fmt, $1 producer(s), $2 worker thread(s)" "$j" \
      "redis-benchmark XADD -P 64/s" "BullMQ processing/s"
  done
done
# One event per call, as a new user writes it: --async (one thread, not
# waiting), and 1 or 8 threads each waiting for its evq_enqueue.
printf 'evq bench, json, --async: '
j=$("$build/evq" bench "redis://127.0.0.1:$port" --events "$events" --async --json)
echo "$j"
rec_evq redis:// "evq json, --async" "$j" "redis-benchmark XADD -P 64/s" "BullMQ processing/s"
for t in 1 8; do
  printf 'evq bench, json, --threads %s: ' "$t"
  j=$("$build/evq" bench "redis://127.0.0.1:$port" --events $(( events / 10 )) --threads "$t" --json)
  echo "$j"
  base="evq json, --threads 1 enqueue/s"
  [ "$t" = 1 ] && base=""
  rec redis:// "evq json, --threads $t enqueue/s" "$(json_field enqueue_per_s <<<"$j")" "$base"
done
if command -v node >/dev/null && command -v npm >/dev/null; then
  if [ ! -d "$here/bullmq/node_modules/bullmq" ]; then
    (cd "$here/bullmq" && npm install --no-audit --no-fund --silent >/dev/null 2>&1) ||
      { echo "BullMQ: npm install failed"; exit 0; }
  fi
  printf 'BullMQ, concurrency 50:        '
  bq=$(node "$here/bullmq/bullmq_bench.mjs" "$port" $(( events / 4 )))
  echo "$bq"
  rec redis:// "BullMQ processing/s" "$(json_field bullmq_process_per_s <<<"$bq")"
else
  echo "BullMQ: node and npm are not installed"
fi
done
