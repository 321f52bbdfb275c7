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
