#!/usr/bin/env bash
# 'evq relay' from an outbox (sqlite://, and postgres:// when given) to
# redis://: every event arrives with its id; two relays on one outbox
# send nothing twice; a relay SIGKILLed mid-stream, and redis-server
# SIGKILLed and restarted mid-stream, lose nothing committed to the outbox
# (the duplicates are counted: at most the window); SIGTERM ends a relay
# cleanly; bad input is a clear error.
#   test_relay.sh PATH/TO/evq REDIS_DIR REDIS_PORT [PG_URL]
# (the folder of services.sh's redis-server, started with --fsync-always:
# the test kills and restarts it)
set -u
evq=$1 rdir=$2 rport=$3 pg=${4:-}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
failures=0
fail() {
  echo "FAIL: $*" >&2
  failures=$((failures + 1))
}
redis="redis://127.0.0.1:$rport"
n_outbox=0

. "$(dirname "$0")/lib.sh" # restart_redis

# fill URL QUEUE N: N events into the outbox, ids QUEUE-1..QUEUE-N (in
# $out/ids.QUEUE, sorted)
fill() {
  seq 1 "$3" | sed "s/.*/{\"id\":\"$2-&\",\"type\":\"relay.n\",\"data\":&}/" |
    "$evq" produce "$1" "$2" >/dev/null 2>"$out/fill.err" ||
    fail "filling $2: $(cat "$out/fill.err")"
  seq 1 "$3" | sed "s/^/$2-/" | sort >"$out/ids.$2"
}

# arrived QUEUE: what the destination holds, one id per line, in
# $out/got.QUEUE (sorted, with repeats)
arrived() {
  "$evq" consume "$redis" "$1" --timeout 3 --ack write 2>/dev/null |
    grep -o '"id":"[^"]*"' | cut -d'"' -f4 | sort >"$out/got.$1"
}

# check QUEUE WHAT MAX_DUPLICATES: every id of the outbox arrived, no
# other, at most MAX_DUPLICATES twice
check() {
  arrived "$1"
  local missing extra dups
  missing=$(sort -u "$out/got.$1" | comm -23 "$out/ids.$1" - | wc -l)
  extra=$(sort -u "$out/got.$1" | comm -13 "$out/ids.$1" - | wc -l)
  dups=$(($(wc -l <"$out/got.$1") - $(sort -u "$out/got.$1" | wc -l)))
  [ "$missing" -eq 0 ] || fail "$2: $missing of $(wc -l <"$out/ids.$1") events lost"
  [ "$extra" -eq 0 ] || fail "$2: $extra events that were never in the outbox"
  [ "$dups" -le "$3" ] || fail "$2: $dups duplicates, more than $3"
  echo "$2: $(wc -l <"$out/ids.$1") events, none lost, $dups sent twice (at most $3)"
}

# empty URL QUEUE WHAT: the outbox holds nothing any more
empty() {
  local s
  s=$("$evq" stats "$1" "$2" 2>&1)
  echo "$s" | grep -q '"depth":0,"in_flight":0,"delayed":0,"dead":0' ||
    fail "$3: the outbox is not empty after the relay: $s"
}

# ---- sqlite outbox to redis, --once: every event, its id kept ----------
sq="sqlite://$out/outbox.db?visibility_timeout_ms=2000"
fill "$sq" once 3000
"$evq" relay "$sq" once "$redis" --once 2>"$out/relay.err"
status=$?
[ $status -eq 0 ] || fail "relay --once: exit $status: $(cat "$out/relay.err")"
grep -q 'relay: 3000 moved, 0 failed' "$out/relay.err" || fail "relay --once said: $(cat "$out/relay.err")"
check once "sqlite to redis --once" 0
empty "$sq" once "relay --once"

# ...to another queue name, with the event's attributes whole.
echo '{"type":"relay.attr","subject":"s-1","data":{"x":"é<&>"},"tenant":"t9"}' |
  "$evq" produce "$sq" attrs >/dev/null 2>&1
"$evq" relay "$sq" attrs "$redis" attrs-moved --once 2>/dev/null ||
  fail "relay to another queue name failed"
line=$("$evq" consume "$redis" attrs-moved --count 1 --timeout 3 2>/dev/null)
for want in '"type":"relay.attr"' '"subject":"s-1"' '"tenant":"t9"' '"x":"é<&>"'; do
  case $line in *"$want"*) ;; *) fail "relay lost $want: $line" ;; esac
done

# ---- two relays on one outbox at once: nothing sent twice ---------------
fill "$sq" two 6000
"$evq" relay "$sq" two "$redis" --once --window 100 2>"$out/two.1" &
p1=$!
"$evq" relay "$sq" two "$redis" --once --window 100 2>"$out/two.2" &
p2=$!
wait $p1 || fail "two relays: the first exited $?: $(cat "$out/two.1")"
wait $p2 || fail "two relays: the second exited $?: $(cat "$out/two.2")"
m1=$(grep -o '[0-9]* moved' "$out/two.1" | cut -d' ' -f1)
m2=$(grep -o '[0-9]* moved' "$out/two.2" | cut -d' ' -f1)
echo "two relays on one outbox: ${m1:-?} and ${m2:-?} moved"
[ "${m1:-0}" -gt 0 ] && [ "${m2:-0}" -gt 0 ] || fail "two relays: one of them moved nothing (${m1:-?}, ${m2:-?})"
check two "two relays on one outbox" 0
empty "$sq" two "two relays"

# ---- a relay SIGKILLed mid-stream: the next one sends the rest -----------
fill "$sq" killed 20000
"$evq" relay "$sq" killed "$redis" --window 200 -o sqlite.ack_flush_ms=0 2>"$out/killed.err" &
pid=$!
for _ in $(seq 1 400); do
  [ "$(redis-cli -p "$rport" XLEN evq:killed 2>/dev/null || echo 0)" -ge 3000 ] && break
  sleep 0.02
done
kill -9 $pid
wait $pid 2>/dev/null
sleep 2.5 # the dead relay's leases (visibility_timeout_ms=2000) run out
"$evq" relay "$sq" killed "$redis" --once 2>"$out/killed2.err" ||
  fail "relay after a killed one: $(cat "$out/killed2.err")"
check killed "a relay SIGKILLed mid-stream" 200
empty "$sq" killed "after a killed relay"

# ---- redis-server SIGKILLed and restarted mid-stream --------------------
fill "$sq" restart 20000
"$evq" relay "$sq" restart "$redis" --window 500 --retry-ms 200 2>"$out/restart.err" &
pid=$!
for _ in $(seq 1 400); do
  [ "$(redis-cli -p "$rport" XLEN evq:restart 2>/dev/null || echo 0)" -ge 3000 ] && break
  sleep 0.02
done
kill -9 "$(cat "$rdir/redis.pid")"
sleep 1
restart_redis
# The relay goes on by itself: wait until the outbox is empty.
for _ in $(seq 1 600); do
  "$evq" stats "$sq" restart 2>/dev/null | grep -q '"depth":0,"in_flight":0,"delayed":0' && break
  sleep 0.1
done
kill -TERM $pid
wait $pid
status=$?
[ $status -eq 0 ] || fail "relay across a redis restart: SIGTERM gave exit $status"
grep -q 'relay: sending to the destination fails' "$out/restart.err" ||
  fail "relay across a redis restart: no word of the failure: $(head -3 "$out/restart.err")"
check restart "redis-server restarted under a relay" 500
empty "$sq" restart "after a redis restart"
echo "  the relay said: $(grep -m1 'fails' "$out/restart.err")"

# ---- SIGTERM while events flow: exit 0, the counts, nothing lost --------
fill "$sq" term 5000
"$evq" relay "$sq" term "$redis" 2>"$out/term.err" &
pid=$!
for _ in $(seq 1 400); do
  [ "$(redis-cli -p "$rport" XLEN evq:term 2>/dev/null || echo 0)" -ge 500 ] && break
  sleep 0.02
done
kill -TERM $pid
wait $pid
status=$?
[ $status -eq 0 ] || fail "relay under SIGTERM: exit $status: $(cat "$out/term.err")"
grep -q 'moved' "$out/term.err" || fail "relay under SIGTERM: no counts: $(cat "$out/term.err")"
# what the stopped relay did not move is still in the outbox, not out
s=$("$evq" stats "$sq" term)
echo "$s" | grep -q '"in_flight":0' || fail "relay under SIGTERM left events out: $s"
"$evq" relay "$sq" term "$redis" --once 2>/dev/null || fail "relay after SIGTERM failed"
check term "a relay ended by SIGTERM" 0

# ---- postgres outbox to redis ------------------------------------------
if [ -n "$pg" ]; then
  fill "$pg" pgout 3000
  "$evq" relay "$pg" pgout "$redis" --once 2>"$out/pg.err" ||
    fail "relay from postgres: $(cat "$out/pg.err")"
  check pgout "postgres to redis --once" 0
  empty "$pg" pgout "relay from postgres"
fi

# ---- bad input -----------------------------------------------------------
expect() { # expect STATUS PATTERN WHAT -- ARGS...
  local want=$1 pat=$2 what=$3
  shift 4
  "$evq" "$@" >/dev/null 2>"$out/bad.err"
  local got=$?
  [ $got -eq "$want" ] || fail "$what: exit $got, expected $want"
  grep -q -- "$pat" "$out/bad.err" || fail "$what said: $(cat "$out/bad.err")"
}
expect 2 'needs FROM_URL QUEUE TO_URL' "relay without arguments" -- relay
expect 2 'needs FROM_URL QUEUE TO_URL' "relay with two arguments" -- relay "$sq" once
expect 2 "bad --window '0'" "relay --window 0" -- relay "$sq" once "$redis" --window 0
expect 2 "bad --window 'x'" "relay --window x" -- relay "$sq" once "$redis" --window x
expect 2 "bad --retry-ms '-1'" "relay --retry-ms -1" -- relay "$sq" once "$redis" --retry-ms -1
expect 2 'onto itself' "relay of a queue onto itself" -- relay "$sq" once "$sq" --once
expect 1 'open' "relay to no server" -- relay "$sq" once "redis://127.0.0.1:1?connect_timeout_ms=500" --once
expect 2 'unknown scheme\|not a URL\|scheme' "relay to a bad URL" -- relay "$sq" once "nosuch://x" --once
expect 2 "is not key=value" "relay -O junk" -- relay "$sq" once "$redis" -O junk
# events the destination refuses for good go to the outbox's dead letters
fill "$sq" toobig 5
"$evq" relay "$sq" toobig "$redis" -O max_event_bytes=64 --once 2>"$out/big.err"
grep -q '5 dead-lettered' "$out/big.err" || fail "relay of events too big for the destination said: $(cat "$out/big.err")"
"$evq" stats "$sq" toobig | grep -q '"depth":0,"in_flight":0,"delayed":0,"dead":5' ||
  fail "events too big for the destination are not the outbox's dead letters: $("$evq" stats "$sq" toobig)"

if [ $failures -ne 0 ]; then
  echo "$failures failure(s)" >&2
  exit 1
fi
echo "evq relay: all checks passed"
