#!/usr/bin/env bash
# Periodic events in real time: three `evq schedule` processes per backend
# (sqlite, redis, and postgres when given) run over three minute
# boundaries on '* * * * *' and enqueue exactly three events; on sqlite a
# schedule stopped over a boundary and started again skips that minute,
# or enqueues it late with --catch-up.  About three and a half minutes,
# mostly asleep.  Bad expressions exit 1 naming their field.
#   test_schedule.sh PATH/TO/evq REDIS_PORT [PG_URL]
set -u
evq=$1
rport=$2
pg=${3:-}
out=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  rm -rf "$out"
}
trap cleanup EXIT
failures=0
fail() { echo "FAIL: $*" >&2; failures=$((failures + 1)); }

now_ms() { date +%s%3N; }

# bad input, before anything waits
for bad in '61 * * * *:minute' '* 24 * * *:hour' '*/0 * * * *:step' \
           ':empty' '* * * * * * *:7 fields' '* * * * FOO:day-of-week'; do
  expr=${bad%:*} want=${bad##*:}
  "$evq" schedule memory:// q --cron "$expr" --type t >"$out/o" 2>"$out/e"
  rc=$?
  [ $rc -eq 2 ] || fail "cron '$expr': exit $rc, expected 2 (a usage error)"
  grep -q -- "$want" "$out/e" || fail "cron '$expr': stderr lacks '$want': $(cat "$out/e")"
done
"$evq" schedule memory:// q --cron '* * * * *' --type t --tz Mars/Olympus >/dev/null 2>"$out/e"
[ $? -eq 2 ] && grep -q Mars/Olympus "$out/e" || fail "unknown zone not refused as a usage error"
"$evq" schedule memory:// q --type t >/dev/null 2>&1
[ $? -eq 2 ] || fail "schedule without --cron: not a usage error"

# Start a few seconds past a minute, so the three boundaries to come are
# well inside the run.
while :; do
  s=$(( $(date +%s) % 60 ))
  [ "$s" -ge 3 ] && [ "$s" -le 45 ] && break
  sleep 1
done
t0=$(now_ms)
b1=$(( (t0 / 60000 + 1) * 60000 ))   # the first boundary to come
b2=$(( b1 + 60000 )) b3=$(( b1 + 120000 ))
secs_until() { echo $(( ($1 - $(now_ms) + 999) / 1000 )); }
run_for=$(secs_until $(( b3 + 4000 )))

db="$out/s.db"
urls=("sqlite://$db" "redis://127.0.0.1:$rport")
[ -n "$pg" ] && urls+=("$pg")
n=0
for url in "${urls[@]}"; do
  for i in 1 2 3; do
    "$evq" schedule "$url" ticks --cron '* * * * *' --type tick \
      --for "$run_for" >"$out/run-$n-$i" 2>&1 &
    pids+=($!)
  done
  n=$((n + 1))
done

# skip and catch-up: down over the second boundary
"$evq" schedule "sqlite://$db" skip --cron '* * * * *' --type tick \
  --for "$(secs_until $(( b1 + 5000 )))" >"$out/skip-1" 2>&1 &
pids+=($!)
"$evq" schedule "sqlite://$db" catch --cron '* * * * *' --type tick \
  --for "$(secs_until $(( b1 + 5000 )))" >"$out/catch-1" 2>&1 &
pids+=($!)
sleep $(( $(secs_until $(( b2 + 5000 ))) ))
"$evq" schedule "sqlite://$db" skip --cron '* * * * *' --type tick \
  --for "$(secs_until $(( b3 + 4000 )))" >"$out/skip-2" 2>&1 &
pids+=($!)
"$evq" schedule "sqlite://$db" catch --cron '* * * * *' --type tick \
  --catch-up 60000 --for "$(secs_until $(( b3 + 4000 )))" >"$out/catch-2" 2>&1 &
pids+=($!)

for p in "${pids[@]}"; do
  wait "$p" || fail "a scheduler exited $?"
done
pids=()

# the events each queue holds, and their times
count() {
  "$evq" consume "$1" "$2" --count 10 --timeout 3 >"$out/events" 2>/dev/null
  grep -c '"type":"tick"' "$out/events"
}
n=0
for url in "${urls[@]}"; do
  got=$(count "$url" ticks)
  enq=$(cat "$out"/run-$n-* | sed -n 's/.*"enqueued":\([0-9]*\).*/\1/p' |
        awk '{ s += $1 } END { print s + 0 }')
  echo "$url: $got events, schedulers say $enq enqueued"
  [ "$got" -eq 3 ] || fail "$url: $got events in three minutes, expected 3"
  [ "$enq" -eq 3 ] || fail "$url: schedulers enqueued $enq, expected 3"
  n=$((n + 1))
done
got=$(count "sqlite://$db" skip)
[ "$got" -eq 2 ] || fail "skip: $got events, expected 2 (the minute it was down skipped)"
got=$(count "sqlite://$db" catch)
[ "$got" -eq 3 ] || fail "catch-up: $got events, expected 3 (the missed minute late)"

[ $failures -eq 0 ] && echo "schedule: all passed"
exit $(( failures > 0 ))
