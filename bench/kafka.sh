#!/usr/bin/env bash
# kafka:// side by side, on the test broker (tests/kafka_broker.c, one
# broker on librdkafka's mock cluster) started for the run.
#
# The same messages both ways: the CloudEvent evq writes for a 100-byte
# payload (about 300 bytes of JSON with its content-type header) is taken
# from the broker and given N times to kcat -P (less the time of a kcat -P
# of one message: process start and metadata), then read back with kcat -C
# (timed from the first message to the last by bench/line_rate.c); evq
# bench then enqueues and drains N events of its own.  Every
# topic is made beforehand with 32 partitions, because the mock keeps only
# about 5 MiB per partition and drops older data.  evq bench warms up
# (1000 events: connections, metadata) before its clock starts, and
# times the drain from the first event handled, so the 3 s the mock takes
# to form a consumer group is reported apart (start_ms); kcat -C reads
# its partitions without a group.
#   bench/kafka.sh [BUILD_DIR] [EVENTS] [RUNS]
set -euo pipefail
build=${1:-build}
events=${2:-100000}
runs=${3:-3}
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
if [ "${EVQ_IN_SERVICE:-}" != 1 ]; then
  exec env EVQ_IN_SERVICE=1 "$here/../scripts/services.sh" run kafka \
    --broker "$build/tests/kafka_broker" -- \
    "$here/kafka.sh" "$build" "$events" "$runs" @KAFKA_BOOTSTRAP@ @SERVICE_DIR@
fi
boot=$4
ctl=$5/kafka.ctl
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
topic() { echo "topic $1 32 1" >"$ctl"; sleep 0.3; }
url="kafka://$boot?rdkafka.session.timeout.ms=6000&kafka.create_topics=false"
echo "librdkafka $(pkg-config --modversion rdkafka) mock broker, $(nproc) cores, $events events of 100 bytes, $runs runs"

topic sample
pad=$(head -c 100 /dev/zero | tr '\0' x)
"$build/evq" produce "$url" sample --type bench.event --data "{\"p\":\"$pad\"}" >/dev/null
kcat -C -b "$boot" -t sample -o beginning -c 1 -e -q -f '%s\n' >"$tmp/one"
echo "message: $(wc -c <"$tmp/one") bytes"
awk -v n="$events" '{ for (i = 0; i < n; i++) print }' "$tmp/one" >"$tmp/msgs"

for r in $(seq 1 "$runs"); do
  topic "kcat$r"
  # kcat -P of one message first: its start (process, metadata) is taken
  # off the N messages' time, as evq bench's warm-up leaves it out.  Each
  # message goes to a random partition: with the default sticky
  # partitioner kcat fills one partition for 10 ms at a time, past the
  # mock's 5 MiB, which then drops messages.
  kp() { kcat -P -b "$boot" -t "kcat$r" -X sticky.partitioning.linger.ms=0 \
    -H content-type=application/cloudevents+json "$@"; }
  t0=$(date +%s.%N)
  head -n 1 "$tmp/msgs" | kp
  t1=$(date +%s.%N)
  kp -l "$tmp/msgs"
  t2=$(date +%s.%N)
  kp_rate=$(awk -v n="$events" -v a="$t0" -v b="$t1" -v c="$t2" \
    'BEGIN { printf "%.0f", n / ((c - b) - (b - a)) }')
  echo "run $r kcat -P: $kp_rate per second"
  rec kafka:// "kcat -P/s" "$kp_rate"
  kc=$(kcat -C -b "$boot" -t "kcat$r" -o beginning -c "$events" -e -q -f '%o\n' |
    "$build/line_rate")
  echo "run $r kcat -C: $kc"
  [ "${kc%% *}" = "$events" ] && rec kafka:// "kcat -C/s" "$(awk '{ print $3 }' <<<"$kc")"
  for fmt in json msgpack; do
    for p in 1 2; do
      q="evq$r-$fmt-$p"
      topic "$q"
      printf 'run %s evq bench, %s, %s producer(s) and worker thread(s), batches of 1000: ' \
        "$r" "$fmt" "$p"
      j=$("$build/evq" bench "$url&format=$fmt" --queue "$q" --events "$events" \
        --batch 1000 --producers "$p" --workers "$p" --warmup 1000 --json)
      echo "$j"
      rec_evq kafka:// "evq $fmt, $p producer(s) and worker thread(s)" "$j" \
        "kcat -P/s" "kcat -C/s"
    done
  done
  # One event per call: --async (one thread), 1 or 8 threads waiting (a
  # round trip and a linger each, so fewer events).
  q="evq$r-async"
  topic "$q"
  printf 'run %s evq bench, json, --async: ' "$r"
  j=$("$build/evq" bench "$url" --queue "$q" --events "$events" --async \
    --warmup 1000 --json)
  echo "$j"
  rec_evq kafka:// "evq json, --async" "$j" "kcat -P/s" "kcat -C/s"
  for t in 1 8; do
    q="evq$r-threads$t"
    topic "$q"
    printf 'run %s evq bench, json, --threads %s: ' "$r" "$t"
    j=$("$build/evq" bench "$url" --queue "$q" --events $(( t * 500 )) \
      --threads "$t" --json)
    echo "$j"
    base="evq json, --threads 1 enqueue/s"
    [ "$t" = 1 ] && base=""
    rec kafka:// "evq json, --threads $t enqueue/s" "$(json_field enqueue_per_s <<<"$j")" "$base"
  done
done
