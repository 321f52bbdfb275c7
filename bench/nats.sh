#!/usr/bin/env bash
# nats:// side by side, on one nats-server -js started for the run: plain
# libnats loops (bench/nats_baseline.c: JetStream async publish, fetch and
# ack, core publish) and evq bench on the same server.
#   bench/nats.sh [BUILD_DIR] [EVENTS] [RUNS]
set -euo pipefail
build=${1:-build}
events=${2:-200000}
runs=${3:-1}
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
if [ "${EVQ_IN_SERVICE:-}" != 1 ]; then
  exec env EVQ_IN_SERVICE=1 "$here/../scripts/services.sh" run nats -- \
    "$here/nats.sh" "$build" "$events" "$runs" @NATS_URL@
fi
url=$4
pub="libnats JetStream async publish/s"
fetch="libnats fetch (64) and ack/s"
core="libnats core publish/s"
# the first number a baseline line prints
num() { grep -o '[0-9][0-9.]*' | head -1; }
for run in $(seq 1 "$runs"); do
echo "$(nats-server --version), $(nproc) cores, $events events of 100 bytes"
b=$("$build/nats_baseline" "$url" publish "$events"); echo "$pub: $b"
rec nats:// "$pub" "$(num <<<"$b")"
b=$("$build/nats_baseline" "$url" consume "$events"); echo "$fetch: $b"
rec nats:// "$fetch" "$(num <<<"$b")"
b=$("$build/nats_baseline" "$url" core $(( events * 5 ))); echo "$core: $b"
rec nats:// "$core" "$(num <<<"$b")"
for fmt in json msgpack; do
  for b in 64 1000; do
    printf 'evq bench, %s, batches of %s: ' "$fmt" "$b"
    j=$("$build/evq" bench "$url?format=$fmt" --events "$events" --batch "$b" \
      --json)
    echo "$j"
    rec_evq nats:// "evq $fmt, batches of $b" "$j" "$pub" "$fetch"
  done
done
# One event per call: --async (one thread), 1 or 8 threads waiting.
printf 'evq bench, json, --async: '
j=$("$build/evq" bench "$url" --events "$events" --async --json)
echo "$j"
rec_evq nats:// "evq json, --async" "$j" "$pub" "$fetch"
for t in 1 8; do
  printf 'evq bench, json, --threads %s: ' "$t"
  j=$("$build/evq" bench "$url" --events $(( events / 10 )) --threads "$t" --json)
  echo "$j"
  base="evq json, --threads 1 enqueue/s"
  [ "$t" = 1 ] && base=""
  rec nats:// "evq json, --threads $t enqueue/s" "$(json_field enqueue_per_s <<<"$j")" "$base"
done
printf 'evq bench, core, batches of 64: '
j=$("$build/evq" bench "$url?nats.mode=core" --events $(( events * 5 )) --batch 64 --json)
echo "$j"
rec nats:// "evq core, batches of 64, enqueue/s" "$(json_field enqueue_per_s <<<"$j")" "$core"
done
