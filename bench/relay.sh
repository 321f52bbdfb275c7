#!/usr/bin/env bash
# The outbox relay, sqlite:// to redis://, beside the two backends' own
# rates in the same run: evq bench's drain on sqlite:// and its --async
# enqueue on redis:// (the relay's bar: half of the slower of the two).
#   bench/relay.sh [BUILD_DIR] [EVENTS] [RUNS]
set -euo pipefail
build=${1:-build}
events=${2:-100000}
runs=${3:-1}
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
if [ "${EVQ_IN_SERVICE:-}" != 1 ]; then
  exec env EVQ_IN_SERVICE=1 "$here/../scripts/services.sh" run redis -- \
    "$here/relay.sh" "$build" "$events" "$runs" @REDIS_URL@
fi
redis=$4
evq=$build/evq
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
seq 1 "$events" | awk '{printf "{\"type\":\"bench.relay\",\"data\":{\"n\":%d,\"pad\":\"%s\"}}\n", $1, "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}' >"$tmp/lines"
for run in $(seq 1 "$runs"); do
echo "relay sqlite:// to redis://, $(nproc) cores, $events events"
j=$("$evq" bench "sqlite://$tmp/own.db" --events "$events" --async --json)
echo "evq bench sqlite:// --async: $j"
sd=$(json_field drain_per_s <<<"$j")
rec relay "evq sqlite:// drain/s" "$sd"
j=$("$evq" bench "$redis" --events "$events" --async --json)
echo "evq bench redis:// --async: $j"
re=$(json_field enqueue_per_s <<<"$j")
rec relay "evq redis:// --async enqueue/s" "$re"
slower=$(awk -v a="$sd" -v b="$re" 'BEGIN {print (a < b ? a : b)}')
rec relay "the slower of the two/s" "$slower"
rm -f "$tmp"/outbox.db*
"$evq" produce "sqlite://$tmp/outbox.db" outbox <"$tmp/lines" >/dev/null 2>&1
t0=$(date +%s.%N)
"$evq" relay "sqlite://$tmp/outbox.db" outbox "$redis" "relay-$run" --once 2>"$tmp/relay.err"
t1=$(date +%s.%N)
cat "$tmp/relay.err"
r=$(awk -v n="$events" -v a="$t0" -v b="$t1" 'BEGIN {printf "%.0f", n / (b - a)}')
echo "evq relay --once: $r events/s"
rec relay "evq relay sqlite:// to redis:///s" "$r" "the slower of the two/s"
redis-cli -u "$redis" DEL "evq:relay-$run" >/dev/null
done
