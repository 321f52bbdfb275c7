#!/usr/bin/env bash
# valgrind memcheck over the unit tests of BUILD_DIR (a build without
# sanitizers): any memory error or leak (definite, indirect or possible)
# fails the run.  The server and multi-process tests are left to the
# sanitizer runs: they fork children that die on purpose, and valgrind's
# slowness would change what they measure.
#   scripts/valgrind.sh BUILD_DIR
set -euo pipefail
build=$1
here=$(cd "$(dirname "$0")/.." && pwd)
command -v valgrind >/dev/null || { echo "valgrind.sh: valgrind is not installed (scripts/deps.sh installs it)" >&2; exit 2; }
vg=(valgrind -q --error-exitcode=99 --leak-check=full
    --errors-for-leak-kinds=definite,indirect,possible --track-origins=yes)
status=0
run() { # name, command...
  local name=$1 log
  shift
  log=$(mktemp)
  if "${vg[@]}" "$@" >"$log" 2>&1; then
    echo "valgrind: $name clean"
  else
    echo "valgrind: $name FAILED" >&2
    tail -40 "$log" >&2
    status=1
  fi
  rm -f "$log"
}
for t in test_errors test_event test_codec test_url test_opts test_ce_binary \
         test_queue test_dispatch test_memory test_evcount test_worker test_cron; do
  run "$t" "$build/tests/$t"
done
# evq serve in this process (the tool, curl and chromium it starts are
# not followed)
serve_dir=$(mktemp -d)
run test_serve "$build/tests/test_serve" "$build/evq" "sqlite://$serve_dir/serve.db"
rm -rf "$serve_dir"
for t in json msgpack url ce_binary cron; do
  dirs=("$here/tests/fuzz/corpus/$t")
  [ -d "$here/tests/fuzz/regressions/$t" ] && dirs+=("$here/tests/fuzz/regressions/$t")
  run "replay_$t" "$build/tests/fuzz/replay_$t" "${dirs[@]}"
done
exit $status
