# Sourced by the bench scripts.  When BENCH_RESULTS names a file, each
# figure measured is appended to it as a tab-separated record
#   GROUP  FIGURE  VALUE  BASELINE
# (BASELINE: the figure of the same group this one is compared with, or
# empty); bench/report.sh turns the records into bench/results.md.

# rec GROUP FIGURE VALUE [BASELINE]
rec() {
  [ -n "${BENCH_RESULTS:-}" ] || return 0
  [ -n "$3" ] || return 0
  printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "${4:-}" >>"$BENCH_RESULTS"
}

# json_field NAME: the number NAME in the JSON object on standard input
json_field() { grep -o "\"$1\": *[0-9.]*" | head -1 | cut -d: -f2 | tr -d ' '; }

# rec_evq GROUP LABEL JSON ENQ_BASE DRAIN_BASE: records enqueue, drain and
# end-to-end rates of one evq bench --json line, enqueue compared with
# ENQ_BASE and drain with DRAIN_BASE (either may be empty)
rec_evq() {
  local g=$1 l=$2 j=$3
  rec "$g" "$l enqueue/s" "$(json_field enqueue_per_s <<<"$j")" "${4:-}"
  rec "$g" "$l drain/s" "$(json_field drain_per_s <<<"$j")" "${5:-}"
  rec "$g" "$l end to end/s" "$(json_field e2e_per_s <<<"$j")"
}

# evq_bench_rows GROUP URL EVENTS ENQ_BASE DRAIN_BASE: the evq bench rows
# every server backend's script prints and records beside its baselines:
# --async, batches of 64, and one event per call from 1 and 8 threads
evq_bench_rows() {
  local g=$1 url=$2 events=$3 enq=$4 drain=$5 j t base
  printf 'evq bench, json, --async: '
  j=$("$build/evq" bench "$url" --events "$events" --async --json)
  echo "$j"
  rec_evq "$g" "evq json, --async" "$j" "$enq" "$drain"
  printf 'evq bench, json, batches of 64: '
  j=$("$build/evq" bench "$url" --events "$events" --batch 64 --json)
  echo "$j"
  rec_evq "$g" "evq json, batches of 64" "$j" "$enq" "$drain"
  for t in 1 8; do
    printf 'evq bench, json, --threads %s: ' "$t"
    j=$("$build/evq" bench "$url" --events $(( events / 20 )) --threads "$t" --json)
    echo "$j"
    base="evq json, --threads 1 enqueue/s"
    [ "$t" = 1 ] && base=""
    rec "$g" "evq json, --threads $t enqueue/s" "$(json_field enqueue_per_s <<<"$j")" "$base"
  done
}
