#!/usr/bin/env bash
# Runs the memory backend's benchmark and its baseline side by side, several
# times each, and prints the median of every figure.
#   bench/run.sh [BUILD_DIR] [RUNS] [EVENTS]
set -euo pipefail
build=${1:-build}
runs=${2:-5}
events=${3:-1000000}
evq="$build/evq"
ring="$build/baseline_ring"
stats_cost="$build/stats_cost"
[ -x "$evq" ] && [ -x "$ring" ] && [ -x "$stats_cost" ] || { echo "build first: make build" >&2; exit 1; }
. "$(dirname "$0")/lib.sh"

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
field() { grep -o "\"$1\": *[0-9.]*" | cut -d: -f2 | tr -d " "; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for i in $(seq "$runs"); do
  "$ring" 4000000 65536 >>"$tmp/ring"
  "$evq" bench memory:// --events "$events" --size 100 --producers 1 --workers 1 --json >>"$tmp/evq"
  "$stats_cost" >>"$tmp/stats"
  rec memory:// "mutex ring buffer, pointers/s" "$(tail -1 "$tmp/ring" | json_field baseline_ring_per_s)"
  j=$(tail -1 "$tmp/evq")
  rec memory:// "evq raw queue/s" "$(json_field raw_per_s <<<"$j")" "mutex ring buffer, pointers/s"
  rec_evq memory:// "evq" "$j"
  rec memory:// "evq peak RSS KiB" "$(json_field peak_rss_kib <<<"$j")"
  rec memory:// "evq peak RSS bytes per queued event" \
    "$(json_field peak_rss_kib <<<"$j" | awk -v n="$events" '{printf "%.0f", $1 * 1024 / n}')"
  # the raw queue with batch calls: evq_enqueue_batch, evq_dequeue_batch,
  # evq_ack_batch, 64 at a time
  "$evq" bench memory:// --events "$events" --size 100 --batch 64 --json >>"$tmp/evq-batch"
  rec memory:// "evq raw queue, batch calls of 64/s" \
    "$(tail -1 "$tmp/evq-batch" | json_field raw_per_s)" "mutex ring buffer, pointers/s"
done

ring_m=$(field baseline_ring_per_s <"$tmp/ring" | median)
printf 'machine: %s, %s cores\n' "$(uname -m)" "$(nproc)"
printf 'runs: %s, events per run: %s, payload 100 bytes, 1 producer, 1 worker thread\n\n' "$runs" "$events"
printf '%-34s %14s\n' "figure (median)" "value"
printf '%-34s %14s\n' "baseline mutex ring, pointers/s" "$ring_m"
for f in raw_per_s enqueue_per_s drain_per_s e2e_per_s peak_rss_kib; do
  printf '%-34s %14s\n' "evq $f" "$(field $f <"$tmp/evq" | median)"
done
printf '%-34s %14s\n' "evq stats_overhead_ns" "$(field stats_overhead_ns <"$tmp/stats" | median)"
for q in p50 p99 p999; do
  printf '%-34s %14s\n' "evq e2e latency $q (us)" "$(grep -o "\"$q\":[0-9.]*" "$tmp/evq" | cut -d: -f2 | median)"
done
raw_m=$(field raw_per_s <"$tmp/evq" | median)
rawb_m=$(field raw_per_s <"$tmp/evq-batch" | median)
awk -v r="$raw_m" -v b="$ring_m" 'BEGIN {printf "\nraw queue / baseline ring: %.2fx\n", r / b}'
awk -v r="$rawb_m" -v b="$ring_m" 'BEGIN {printf "raw queue, batch calls of 64 / baseline ring: %.2fx\n", r / b}'

# sqlite://: a file in a temporary folder on the disk /tmp is on, producers
# enqueueing batches of 100, for each synchronous setting.
sq_events=$(( events / 10 ))
printf '\nsqlite:// (%s events, batches of 100, 1 producer, 1 worker thread)\n' "$sq_events"
dsync=$(dd if=/dev/zero of="$tmp/dsync" bs=4k count=1000 oflag=dsync 2>&1 | awk '/copied/ {print $(NF-1), $NF}')
printf 'disk: %s (%s), 4 KiB synchronous writes: %s\n' \
  "$(df --output=source "$tmp" | tail -1)" "$(df --output=fstype "$tmp" | tail -1)" "$dsync"
for sync in FULL NORMAL; do
  : >"$tmp/sq-$sync"
  for i in $(seq "$runs"); do
    rm -f "$tmp"/b.db*
    "$evq" bench "sqlite://$tmp/b.db?sqlite.synchronous=$sync" --events "$sq_events" \
      --batch 100 --json >>"$tmp/sq-$sync"
    rec_evq sqlite:// "synchronous=$sync, batches of 100" "$(tail -1 "$tmp/sq-$sync")"
  done
  for f in enqueue_per_s drain_per_s e2e_per_s; do
    printf '%-34s %14s\n' "sqlite $sync $f" "$(field $f <"$tmp/sq-$sync" | median)"
  done
done
# One event per call, as a new user writes it: --async (one thread, not
# waiting) beside the batches of 100 above, synchronous=FULL.
: >"$tmp/sq-async"
for i in $(seq "$runs"); do
  rm -f "$tmp"/b.db*
  "$evq" bench "sqlite://$tmp/b.db?sqlite.synchronous=FULL" --events "$sq_events" \
    --async --json >>"$tmp/sq-async"
  rec sqlite:// "synchronous=FULL, --async enqueue/s" \
    "$(tail -1 "$tmp/sq-async" | json_field enqueue_per_s)" \
    "synchronous=FULL, batches of 100 enqueue/s"
done
printf '%-34s %14s\n' "sqlite FULL --async enqueue_per_s" "$(field enqueue_per_s <"$tmp/sq-async" | median)"
