#!/usr/bin/env bash
# Runs each libFuzzer target of tests/fuzz for SECONDS (built in BUILD_DIR
# with -DEVQ_FUZZ=ON), starting from its seed corpus and regressions.
# New inputs go to a temporary folder, not into the repository; a crash
# leaves its input as BUILD_DIR/crash-TARGET-* and fails the run (copy it
# to tests/fuzz/regressions/TARGET/ once fixed).  Prints each target's
# executions.
#   scripts/fuzz.sh BUILD_DIR [SECONDS] [TARGET...]
set -euo pipefail
build=$1
secs=${2:-60}
shift $(( $# >= 2 ? 2 : 1 ))
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(json msgpack url ce_binary cron)
here=$(cd "$(dirname "$0")/.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
status=0
for t in "${targets[@]}"; do
  mkdir -p "$tmp/$t"
  dirs=("$tmp/$t" "$here/tests/fuzz/corpus/$t")
  [ -d "$here/tests/fuzz/regressions/$t" ] && dirs+=("$here/tests/fuzz/regressions/$t")
  if ASAN_OPTIONS=detect_leaks=1 "$build/tests/fuzz/fuzz_$t" -max_total_time="$secs" \
      -timeout=10 -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1 \
      -artifact_prefix="$build/crash-$t-" "${dirs[@]}" >"$tmp/$t.log" 2>&1; then
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$tmp/$t.log")
    echo "fuzz_$t: ${runs:-?} executions in ${secs} s, no finding"
  else
    echo "fuzz_$t: FINDING" >&2
    grep -E 'ERROR|SUMMARY|==[0-9]+==|abort|Test unit written' "$tmp/$t.log" | head -20 >&2
    status=1
  fi
done
exit $status
