#!/usr/bin/env bash
# Builds evq with only memory:// and sqlite:// (every other backend OFF) and
# checks that the build has none of the other client libraries, and that the
# tool, asked for a backend left out, says which build option would bring it.
set -euo pipefail
src=$(cd "$(dirname "$0")/../.." && pwd)
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT

fail() {
  echo "minimal build: $*" >&2
  exit 1
}

# run ARGS...: the tool's standard error in $err, its exit status in $rc
run() {
  rc=0
  err=$("$tool" "$@" 2>&1 >/dev/null) || rc=$?
}

cmake -S "$src" -B "$dir" -DEVQ_BUILD_TESTS=OFF -DEVQ_WITH_SQLITE=ON \
  -DEVQ_WITH_REDIS=OFF -DEVQ_WITH_NATS=OFF -DEVQ_WITH_KAFKA=OFF \
  -DEVQ_WITH_POSTGRES=OFF -DEVQ_WITH_AMQP=OFF -DEVQ_WITH_SERVE=OFF \
  >"$dir/cmake.log"
grep -q "evq backends: memory, sqlite$" "$dir/cmake.log" ||
  fail "cmake did not say 'evq backends: memory, sqlite'"
cmake --build "$dir" -j "$(nproc)" --target evq evq_tool evq_man >/dev/null

# No client library of a backend left out is linked or named.
libs=$(ldd "$dir/libevq.so")
for lib in hiredis nats rdkafka pq rabbitmq microhttpd; do
  if grep -q "lib$lib" <<<"$libs"; then fail "libevq.so links lib$lib"; fi
done
grep -q sqlite3 <<<"$libs" || fail "libevq.so lacks libsqlite3"
grep "Libs.private" "$dir/evq.pc" | grep -q -- "-lrdkafka\|-lhiredis\|-lnats\|-lpq\|-lrabbitmq\|-lmicrohttpd" &&
  fail "evq.pc names a library of a backend left out"

tool="$dir/evq"
"$tool" --help | grep -q "^Built with: memory:// sqlite://$" ||
  fail "evq --help does not say what it was built with"
# memory:// and sqlite:// work
"$tool" demo >/dev/null || fail "evq demo failed"
echo '{"type":"t","source":"s","id":"1","specversion":"1.0"}' |
  "$tool" produce "sqlite://$dir/q.db" q >/dev/null 2>&1 ||
  fail "produce on sqlite:// failed"
# a backend left out: a clear error naming the option
for url in kafka://127.0.0.1:9092 redis://127.0.0.1:6379 nats://127.0.0.1:4222 \
  postgres://127.0.0.1/evq amqp://127.0.0.1/%2f; do
  scheme=${url%%://*}
  upper=$(tr a-z A-Z <<<"$scheme")
  run stats "$url" q
  [ $rc -eq 2 ] || fail "stats $url exited $rc, not 2 (a usage error)"
  grep -q "built without the $scheme:// backend" <<<"$err" &&
    grep -q -- "-DEVQ_WITH_$upper=ON" <<<"$err" ||
    fail "stats $url said: $err"
  run options "$scheme"
  [ $rc -eq 2 ] && grep -q "built without the $scheme:// backend" <<<"$err" ||
    fail "options $scheme exited $rc: $err"
  # its manual page says the same
  page="$dir/man/evq-$scheme.7"
  grep -q "made without the $scheme backend" "$page" &&
    grep -q "DEVQ_WITH_$upper=ON" "$page" &&
    grep -q "EVQ_ENOTSUP" <<<"$(man -l -P cat "$page" 2>/dev/null)" ||
    fail "evq-$scheme(7) of a build without it says: $(cat "$page")"
done
# the pages of the backends built list their options
grep -q "Options of sqlite:// queues" <<<"$(man -l -P cat "$dir/man/evq-sqlite.7")" ||
  fail "evq-sqlite(7) lists no options"
# evq serve left out: it says so and how to build it
run serve "sqlite://$dir/q.db#q"
[ $rc -eq 1 ] && grep -q "EVQ_WITH_SERVE" <<<"$err" ||
  fail "serve in a build without it exited $rc: $err"
# an unknown scheme names what this build has
run stats foo://x q
grep -q "unknown URL scheme 'foo' (this evq has: memory, sqlite)" <<<"$err" ||
  fail "stats foo:// said: $err"
# a bad value of an option is refused at configure time
if cmake -S "$src" -B "$dir/bad" -DEVQ_BUILD_TESTS=OFF -DEVQ_WITH_KAFKA=maybe \
  >"$dir/bad.log" 2>&1; then
  fail "cmake took EVQ_WITH_KAFKA=maybe"
fi
grep -q "EVQ_WITH_KAFKA is 'maybe': AUTO, ON or OFF" "$dir/bad.log" ||
  fail "cmake's error for EVQ_WITH_KAFKA=maybe is unclear"
echo "minimal build: memory and sqlite only, the others say how to build them"
