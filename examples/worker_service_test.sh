#!/usr/bin/env bash
# Runs examples/worker_service on URL: 300 events are handled, then SIGTERM
# stops it cleanly (exit 0), with nothing left in the queue or in flight.
#   worker_service_test.sh PATH/TO/worker_service PATH/TO/evq URL
set -u
svc=$1 evq=$2 url=$3
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
q="orders-$$"
"$svc" "$url" "$q" >"$out/log" 2>"$out/err" &
pid=$!
for _ in $(seq 1 200); do grep -q running "$out/log" && break; sleep 0.05; done
grep -q running "$out/log" || { echo "the service did not start: $(cat "$out/err")" >&2; exit 1; }
seq 1 300 | sed 's/.*/{"type":"order.placed","data":{"id":&}}/' |
  "$evq" produce "$url" "$q" 2>/dev/null || { echo "produce failed" >&2; exit 1; }
for _ in $(seq 1 400); do
  [ "$(grep -c 'placed' "$out/log")" -ge 300 ] && break
  sleep 0.05
done
kill -TERM $pid
wait $pid
status=$?
cat "$out/log" | tail -1
[ $status -eq 0 ] || { echo "exit $status after SIGTERM: $(cat "$out/err")" >&2; exit 1; }
grep -q 'stopped by SIGTERM: 300 handled, cleanly' "$out/log" || { echo "not stopped cleanly" >&2; exit 1; }
[ "$(grep -c 'placed' "$out/log")" -eq 300 ] || { echo "handled $(grep -c placed "$out/log") of 300" >&2; exit 1; }
stats=$("$evq" stats "$url" "$q")
case $stats in *'"depth":0,"in_flight":0'*) ;; *) echo "left behind: $stats" >&2; exit 1 ;; esac
echo "worker_service on ${url%%:*}: 300 handled, stopped cleanly by SIGTERM"
