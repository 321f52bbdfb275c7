#!/usr/bin/env bash
# The evq tool against every backend, under signals and closed pipes:
# 'evq dead list' waits for dead letters the queue's figures promise;
# SIGTERM during 'evq consume' ends it cleanly (exit 0) and what it had
# fetched comes back at once; 'evq consume | head -1' acks at most a page
# of lines unread (none with --ack after-read), and the tool ends when its
# reader does; 'evq produce' of 20 000 lines rides out a redis-server
# killed and restarted mid-stream.
#   test_tool_servers.sh PATH/TO/evq REDIS_DIR REDIS_PORT NATS_URL KAFKA_URL
#                        NATS_DIR [AMQP_URL]
# (the folders of services.sh's redis-server, started with --fsync-always,
# and nats-server, whose pid files the test uses to kill them)
set -u
evq=$1 rdir=$2 rport=$3 ndir=$6
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
failures=0
fail() {
  echo "FAIL: $*" >&2
  failures=$((failures + 1))
  if [ ! -d "$out" ]; then # so one stray failure does not hide the rest
    echo "(the test's folder $out is gone: made again)" >&2
    mkdir -p "$out"
  fi
}
# A signal meant for the whole process group would end the test here:
# say so, and go on to the end.
trap 'echo "test_tool_servers.sh: a SIGTERM reached the test itself" >&2' TERM

# URL of each backend, with a visibility timeout far longer than the test:
# events handed back must come back at once, not after it.
urls=("sqlite://$rdir/tool.db?visibility_timeout_ms=600000"
      "redis://127.0.0.1:$rport?visibility_timeout_ms=600000"
      "$4?visibility_timeout_ms=600000"
      "$5?rdkafka.session.timeout.ms=6000&kafka.create_topics=false")
names=(sqlite redis nats kafka)
if [ -n "${7:-}" ]; then # amqp://, when built
  urls+=("$7")
  names+=(amqp)
fi

. "$(dirname "$0")/lib.sh" # restart_redis

# produce URL QUEUE N: N events whose data are 1..N
produce() {
  seq 1 "$3" | sed 's/.*/{"type":"tool.n","data":&}/' |
    "$evq" produce "$1" "$2" >/dev/null 2>"$out/produce.err" ||
    fail "produce $3 to $1: $(cat "$out/produce.err")"
}

# drain URL QUEUE FILE: every event left, its data one per line in FILE
drain() {
  "$evq" consume "$1" "$2" --timeout "$drain_s" 2>>"$out/drain.err" |
    grep -o '"data":[0-9]*' | cut -d: -f2 >"$3"
}

# waits up to 20 s for FILE to have a line
wait_line() {
  for _ in $(seq 1 200); do
    [ -s "$1" ] && return 0
    sleep 0.1
  done
  return 1
}

for i in "${!urls[@]}"; do
  url=${urls[$i]} name=${names[$i]}
  drain_s=3
  [ "$name" = kafka ] && drain_s=15 # a consumer group's join

  # SIGTERM: clean end, exit 0, nothing left in flight.
  q="sig-$name-$$"
  produce "$url" "$q" 50
  "$evq" consume "$url" "$q" >"$out/first" 2>"$out/first.err" &
  pid=$!
  wait_line "$out/first" || fail "$name: consume printed nothing"
  kill -TERM $pid
  wait $pid
  status=$?
  [ $status -eq 0 ] || fail "$name: SIGTERM: exit $status, expected 0 ($(cat "$out/first.err"))"
  drain "$url" "$q" "$out/rest"
  total=$(grep -o '"data":[0-9]*' "$out/first" | cut -d: -f2 | cat - "$out/rest" | sort -n | uniq | wc -l)
  lines=$(($(wc -l <"$out/first") + $(wc -l <"$out/rest")))
  [ "$total" -eq 50 ] || fail "$name: SIGTERM: $total of 50 events seen after it"
  [ "$lines" -eq 50 ] || fail "$name: SIGTERM: $lines lines for 50 events (acked events came back)"

  # read-only commands create nothing: stats and dead list of a missing
  # queue fail, and fail again (nothing was made the first time)
  # (sqlite keeps every queue of a file in one table: there, a missing
  # file is what is missing)
  ro=$url
  [ $name = sqlite ] && ro="sqlite://$rdir/no-such.db"
  for round in 1 2; do
    "$evq" stats "$ro" "typo-$name-$$" >/dev/null 2>"$out/ro.err"
    [ $? -eq 1 ] || fail "$name: stats of a missing queue (round $round) should exit 1"
    grep -Eq 'does not exist|no queue' "$out/ro.err" || fail "$name: stats of a missing queue said: $(cat "$out/ro.err")"
    "$evq" dead list "$ro" "typo-$name-$$" >/dev/null 2>"$out/ro.err"
    [ $? -eq 1 ] || fail "$name: dead list of a missing queue (round $round) should exit 1"
  done
  [ ! -e "$rdir/no-such.db" ] || fail "sqlite: stats made a file"
  [ $name = redis ] && [ "$(redis-cli -p "$rport" EXISTS "evq:typo-$name-$$")" = 0 ] ||
    [ $name != redis ] || fail "redis: stats made a stream"

  # dead list right after the dead letters arrive: it waits for them (a
  # Kafka consumer group's join), then replay and purge see them too.
  q="dead-$name-$$"
  produce "$url" "$q" 1 # the queue the dead letters came from
  for k in 1 2 3; do
    "$evq" produce "$url" "$q.dead" --type tool.dead --data $k --attr evqerror=boom \
      --attr evqqueue="$q" >/dev/null 2>&1 || fail "$name: produce a dead letter"
  done
  "$evq" dead list "$url" "$q" >"$out/dead" 2>"$out/dead.err" || fail "$name: dead list: $(cat "$out/dead.err")"
  grep -q 'dead list: 3 dead letters' "$out/dead.err" || fail "$name: dead list: $(cat "$out/dead.err")"
  [ "$(grep -c '"evqerror":"boom"' "$out/dead")" -eq 3 ] || fail "$name: dead list printed $(wc -l <"$out/dead") lines"
  "$evq" dead purge "$url" "$q" 2>"$out/dead.err" || fail "$name: dead purge: $(cat "$out/dead.err")"
  grep -q 'dead purge: 3 dead letters' "$out/dead.err" || fail "$name: dead purge: $(cat "$out/dead.err")"

  # consume | head -1: the tool ends with its reader; what is acked unread
  # is bounded (a page: 4096 bytes of lines of at least 150 bytes).
  for mode in read after-read; do
    q="head-$mode-$name-$$"
    produce "$url" "$q" 199
    timeout 60 bash -c "'$evq' consume '$url' '$q' --ack $mode 2>'$out/head.err' | head -1 >'$out/head'"
    [ $? -eq 0 ] || fail "$name --ack $mode: consume | head -1 did not end by itself"
    grep -q 'output was closed' "$out/head.err" || fail "$name --ack $mode: no word of the closed output ($(cat "$out/head.err"))"
    drain "$url" "$q" "$out/rest"
    left=$(wc -l <"$out/rest")
    lost=$((199 - 1 - left))
    if [ "$mode" = after-read ]; then
      [ "$lost" -eq 0 ] || fail "$name --ack after-read: $lost events acked unread"
    else
      [ "$lost" -ge 0 ] && [ "$lost" -le 27 ] || fail "$name --ack read: $lost events acked unread (bound 27)"
    fi
    echo "$name --ack $mode: consume | head -1 acked $lost unread"
  done
done

# bench removes the queue it made (--keep leaves it): on redis its stream,
# on nats its stream and consumer
for i in 1 2; do
  url=${urls[$i]} name=${names[$i]}
  for keep in "" --keep; do
    "$evq" bench "$url" --events 2000 $keep --json >/dev/null 2>"$out/bench.err" &
    pid=$!
    wait $pid || fail "$name: bench $keep: $(cat "$out/bench.err")"
    if "$evq" stats "$url" "bench-$pid" >/dev/null 2>&1; then left=yes; else left=no; fi
    if [ -z "$keep" ]; then
      [ $left = no ] || fail "$name: bench left its queue bench-$pid"
    else
      [ $left = yes ] || fail "$name: bench --keep did not keep bench-$pid"
    fi
  done
done

# produce from a file while the server is killed and restarted: every line
# is enqueued (a retried one may be stored twice), the tool exits 0.
url="redis://127.0.0.1:$rport"
seq 1 20000 | sed 's/.*/{"type":"tool.n","data":&}/' >"$out/lines"
# produce_then_kill QUEUE [ARGS]: produce the lines in the background (pid
# in $pid) and kill the server once 2000 are in
produce_then_kill() {
  local q=$1
  shift
  "$evq" produce "$url" "$q" "$@" <"$out/lines" >/dev/null 2>"$out/produce.err" &
  pid=$!
  for _ in $(seq 1 200); do
    [ "$(redis-cli -p "$rport" XLEN "evq:$q" 2>/dev/null || echo 0)" -ge 2000 ] && break
    sleep 0.05
  done
  kill -9 "$(cat "$rdir/redis.pid")"
}
produce_then_kill restart
sleep 1
restart_redis
wait $pid
status=$?
[ $status -eq 0 ] || fail "produce across a restart: exit $status ($(tail -3 "$out/produce.err"))"
grep -q 'trying again' "$out/produce.err" || fail "produce across a restart: no word of the retry"
"$evq" consume "$url" restart --timeout 3 --ack write 2>/dev/null |
  grep -o '"data":[0-9]*' | cut -d: -f2 | sort -n | uniq >"$out/seen"
seen=$(wc -l <"$out/seen")
[ "$seen" -eq 20000 ] || fail "produce across a restart: $seen of 20000 lines enqueued"
echo "produce across a redis-server restart: $seen of 20000 lines, $(grep -c 'trying again' "$out/produce.err") retried"

# ...and with the server gone for good, it names the line it stopped at.
produce_then_kill gone --retry-ms 1500
wait $pid
status=$?
[ $status -eq 1 ] || fail "produce with the server gone: exit $status, expected 1"
grep -Eq 'stopped at line [0-9]+ \(not enqueued\).*[0-9]+ lines after it not read' "$out/produce.err" ||
  fail "produce with the server gone: $(tail -2 "$out/produce.err")"
restart_redis

# consume whose server dies: stderr names the failure, --timeout ends it
# with exit 1 (not 0, as if the queue were empty).
for name in redis nats; do
  if [ $name = redis ]; then url="redis://127.0.0.1:$rport" pidf="$rdir/redis.pid"
  else url=$4 pidf="$ndir/nats-1.pid"; fi
  "$evq" consume "$url" "down-$$" --timeout 4 >/dev/null 2>"$out/down.err" &
  pid=$!
  sleep 1
  kill -9 "$(cat "$pidf")"
  wait $pid
  status=$?
  [ $status -eq 1 ] || fail "$name: consume with the server gone: exit $status, expected 1"
  grep -q 'consume: the queue fails' "$out/down.err" || fail "$name: consume with the server gone said: $(cat "$out/down.err")"
  echo "$name: consume with the server gone: $(head -1 "$out/down.err")"
  if [ $name = redis ]; then restart_redis; else sh "$ndir/nats-1.sh"; fi
done

# ...and a Kafka consumer that reaches no broker says so, and exits 1.
"$evq" consume "kafka://127.0.0.1:1?connect_timeout_ms=2000" nobroker --timeout 3 >/dev/null 2>"$out/down.err"
status=$?
[ $status -eq 1 ] || fail "kafka: consume with no broker: exit $status, expected 1"
grep -q 'no broker of 127.0.0.1:1 reachable' "$out/down.err" || fail "kafka: consume with no broker said: $(cat "$out/down.err")"
echo "kafka: consume with no broker: $(head -1 "$out/down.err")"

if [ $failures -ne 0 ]; then
  echo "$failures failure(s)" >&2
  exit 1
fi
echo "evq tool on servers: all checks passed"
