#!/usr/bin/env bash
# kafka:// side by side, on the test broker (tests/kafka_broker.c, one
# broker on librdkafka's mock cluster) started for the run: kcat -P and
# kcat -C on 100-byte messages, then evq bench on the same broker.  The
# mock keeps only about 5 MiB per partition (4 partitions per topic), so
# runs stay at about 20 000 events (evq bench writes them twice).
#   bench/kafka.sh [BUILD_DIR] [EVENTS]
set -euo pipefail
build=${1:-build}
events=${2:-20000}
here=$(cd "$(dirname "$0")" && pwd)
if [ "${EVQ_IN_SERVICE:-}" != 1 ]; then
  exec env EVQ_IN_SERVICE=1 "$here/../scripts/services.sh" run kafka \
    --broker "$build/tests/kafka_broker" -- \
    "$here/kafka.sh" "$build" "$events" @KAFKA_BOOTSTRAP@
fi
boot=$3
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "librdkafka $(pkg-config --modversion rdkafka) mock broker, $(nproc) cores, $events events of 100 bytes"
head -c 100 /dev/zero | tr '\0' x >"$tmp/one"
for _ in $(seq 1 "$events"); do cat "$tmp/one"; echo; done >"$tmp/msgs"
rate() { awk -v n="$1" -v s="$2" -v e="$3" 'BEGIN { printf "%.0f", n / (e - s) }'; }
t0=$(date +%s.%N)
kcat -P -b "$boot" -t kbase -l "$tmp/msgs"
t1=$(date +%s.%N)
echo "kcat -P: $(rate "$events" "$t0" "$t1") per second"
t0=$(date +%s.%N)
kcat -C -b "$boot" -t kbase -o beginning -c "$events" -e -q >/dev/null
t1=$(date +%s.%N)
echo "kcat -C: $(rate "$events" "$t0" "$t1") per second"
for fmt in json msgpack; do
  for b in 64 1000; do
    printf 'evq bench, %s, batches of %s: ' "$fmt" "$b"
    "$build/evq" bench "kafka://$boot?format=$fmt&rdkafka.session.timeout.ms=6000&kafka.create_topics=false" \
      --events "$events" --batch "$b" --json
  done
done
