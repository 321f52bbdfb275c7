#!/usr/bin/env bash
# nats:// side by side, on one nats-server -js started for the run: plain
# libnats loops (bench/nats_baseline.c: JetStream async publish, fetch and
# ack, core publish) and evq bench on the same server.
#   bench/nats.sh [BUILD_DIR] [EVENTS]
set -euo pipefail
build=${1:-build}
events=${2:-200000}
here=$(cd "$(dirname "$0")" && pwd)
if [ "${EVQ_IN_SERVICE:-}" != 1 ]; then
  exec env EVQ_IN_SERVICE=1 "$here/../scripts/services.sh" run nats -- \
    "$here/nats.sh" "$build" "$events" @NATS_URL@
fi
url=$3
echo "$(nats-server --version), $(nproc) cores, $events events of 100 bytes"
printf 'libnats JetStream async publish: '
"$build/nats_baseline" "$url" publish "$events"
printf 'libnats fetch (64) and ack:      '
"$build/nats_baseline" "$url" consume "$events"
printf 'libnats core publish:            '
"$build/nats_baseline" "$url" core $(( events * 5 ))
for fmt in json msgpack; do
  for b in 64 1000; do
    printf 'evq bench, %s, batches of %s: ' "$fmt" "$b"
    "$build/evq" bench "$url?format=$fmt" --events "$events" --batch "$b" \
      --json
  done
done
printf 'evq bench, core, batches of 64: '
"$build/evq" bench "$url?nats.mode=core" --events $(( events * 5 )) --batch 64 --json
