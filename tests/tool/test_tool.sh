#!/usr/bin/env bash
# The evq tool's documented behaviour: help, exit codes, produce's line
# reports, consume's timeout, stats, dead letters, demo and bench output;
# no password or secret option ever shows in what a failing run prints.
#   test_tool.sh PATH/TO/evq
set -u
evq=$1
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
failures=0

fail() { echo "FAIL: $*" >&2; failures=$((failures + 1)); }

# expect CODE DESCRIPTION -- COMMAND...: runs it, keeps stdout/stderr
expect() {
  local want=$1 what=$2; shift 3
  "$@" >"$out/stdout" 2>"$out/stderr" </dev/null
  local got=$?
  [ "$got" -eq "$want" ] || fail "$what: exit $got, expected $want ($(head -c 300 "$out/stderr"))"
}
has() { grep -q -- "$2" "$out/$1" || fail "$3: $1 lacks '$2'"; }
lacks() { ! grep -q -- "$2" "$out/$1" || fail "$3: $1 has '$2'"; }

expect 0 "help" -- "$evq" --help
has stdout "produce URL QUEUE" "help"
for scheme in memory sqlite postgres redis redis+unix redis+sentinel nats kafka amqp amqps; do
  has stdout "$scheme://" "help names $scheme"
done
expect 2 "no command" -- "$evq"
expect 2 "unknown command" -- "$evq" frobnicate
has stderr "unknown command 'frobnicate'" "unknown command"
for cmd in produce consume stats dead demo bench options relay pause resume schedule serve; do
  expect 0 "$cmd --help" -- "$evq" $cmd --help
  has stdout "usage: evq $cmd" "$cmd --help"
  expect 0 "help $cmd" -- "$evq" help $cmd
  has stdout "usage: evq $cmd" "help $cmd"
done
expect 2 "help of no such command" -- "$evq" help nosuchcommand
has stderr "no such command 'nosuchcommand'" "help nosuchcommand"
expect 2 "produce with no arguments" -- "$evq" produce
has stderr "Try 'evq produce --help'" "produce with no arguments"
expect 0 "version" -- "$evq" --version

# produce from flags prints the id
expect 0 "produce --type" -- "$evq" produce memory:// q --type user.created --data '{"userId":"123"}' --attr traceparent=00-1
grep -Eq '^[0-9a-f]{8}-[0-9a-f]{4}-7' "$out/stdout" || fail "produce --type: no UUIDv7 printed"
expect 2 "produce bad --data" -- "$evq" produce memory:// q --type t --data '{nope'
has stderr "not JSON" "produce bad --data"
expect 2 "produce --data without --type" -- "$evq" produce memory:// q --data 1
expect 1 "produce bad attribute" -- "$evq" produce memory:// q --type t --attr Bad-Name=1
has stderr "Bad-Name" "produce bad attribute"

# produce from standard input: bad lines reported by number, good ones kept
printf '%s\n' '{"type":"a","data":1}' 'not json' '{"data":2}' '' \
  '{"specversion":"1.0","id":"x1","source":"/s","type":"b"}' '[1]' \
  '{"type":"c","subject":"s","traceparent":"00-2"}' '{"type":"d","Bad":"x"}' > "$out/in"
"$evq" produce memory:// q <"$out/in" >"$out/stdout" 2>"$out/stderr"
[ $? -eq 1 ] || fail "produce with bad lines should exit 1"
has stderr "line 2: invalid JSON" "produce lines"
has stderr "line 3: needs a string \"type\"" "produce lines"
has stderr "line 6: not a JSON object" "produce lines"
has stderr "line 8:" "produce lines"
has stderr "enqueued 3 events, rejected 4 lines" "produce lines"
printf '{"type":"a"}\n' | "$evq" produce memory:// q >/dev/null 2>&1 || fail "produce of good lines should exit 0"

# consume: an empty queue ends at --timeout with nothing printed
expect 0 "consume --timeout" -- "$evq" consume memory:// empty --timeout 1
[ ! -s "$out/stdout" ] || fail "consume printed from an empty queue"
expect 2 "consume bad --count" -- "$evq" consume memory:// q --count zero
expect 2 "consume missing queue" -- "$evq" consume memory://
expect 2 "consume unknown scheme" -- "$evq" consume foo://x q --timeout 1
has stderr "unknown URL scheme 'foo'" "consume unknown scheme"
expect 2 "consume bad option" -- "$evq" consume memory:// q -o capacity=0 --timeout 1
has stderr "capacity" "consume bad option"
expect 2 "consume unknown option" -- "$evq" consume memory:// q -o nosuch=1 --timeout 1
has stderr "unknown option 'nosuch' for memory:// queues" "consume unknown option"
has stderr "Try 'evq options memory'" "consume unknown option"
expect 2 "password stays secret" -- "$evq" consume 'memory://u:Sup3rSecretPw@host' q --timeout 1
lacks stderr "Sup3rSecretPw" "password stays secret"

# stats and dead letters
expect 0 "stats" -- "$evq" stats memory:// q
has stdout '"depth":0' "stats"
expect 0 "stats --prometheus" -- "$evq" stats memory:// q --prometheus
has stdout '# TYPE evq_queue_depth gauge' "stats --prometheus"
lacks stdout '_total' "stats --prometheus"
for a in list replay purge; do
  expect 0 "dead $a" -- "$evq" dead $a memory:// q
  has stderr "dead $a: 0 dead letters" "dead $a"
done
expect 2 "dead bad action" -- "$evq" dead bury memory:// q
expect 0 "options" -- "$evq" options memory
has stdout "capacity" "options"
expect 2 "options unknown" -- "$evq" options gopher
has stderr "unknown URL scheme 'gopher' (this evq has: memory" "options unknown"

# demo and bench
expect 0 "demo" -- "$evq" demo
has stdout 'Received event: {"specversion":"1.0"' "demo"
has stdout '"data":{"userId":"123","name":"John Doe"}' "demo"
expect 0 "bench" -- "$evq" bench memory:// --events 20000 --producers 2 --workers 2 --json
for key in enqueue_per_s e2e_per_s '"latency_us":{"p50"' '"p99"' '"p999"' peak_rss_kib raw_per_s '"ok":true'; do
  has stdout "$key" "bench --json"
done
expect 2 "bench bad --events" -- "$evq" bench memory:// --events -5
# bench removes what it made: a sqlite file it created goes; in a file
# that was there, the file and its other queues stay
expect 0 "bench sqlite" -- "$evq" bench "sqlite://$out/bench.db" --events 2000 --json
[ ! -e "$out/bench.db" ] && [ ! -e "$out/bench.db-wal" ] || fail "bench left its sqlite file"
"$evq" produce "sqlite://$out/kept.db" other --type t >/dev/null 2>&1 || fail "produce to kept.db"
expect 0 "bench sqlite, a file there" -- "$evq" bench "sqlite://$out/kept.db" --events 2000
"$evq" stats "sqlite://$out/kept.db" other 2>/dev/null | grep -q '"depth":1' ||
  fail "bench in a file that was there took another queue's event"

# sqlite://: produce and consume as separate processes
db="sqlite://$out/tool.db"
for i in $(seq 1 5); do
  "$evq" produce "$db" q --type tool.n --data "$i" >/dev/null 2>&1 || fail "produce $i to sqlite"
done
expect 0 "consume --count" -- "$evq" consume "$db" q --count 2
[ "$(wc -l <"$out/stdout")" -eq 2 ] || fail "consume --count 2 printed $(wc -l <"$out/stdout") lines"
has stdout '"data":1' "consume --count"
expect 0 "consume --no-ack" -- "$evq" consume "$db" q --count 1 --no-ack
has stdout '"data":3' "consume --no-ack"
expect 0 "stats after --no-ack" -- "$evq" stats "$db" q
has stdout '"depth":3' "stats after --no-ack"
expect 0 "consume the rest" -- "$evq" consume "$db" q --timeout 1
[ "$(wc -l <"$out/stdout")" -eq 3 ] || fail "consume the rest printed $(wc -l <"$out/stdout") lines"

# consume | head -1 with fewer events than head reads ends with its reader
# (it used to wait for a third event that never came)
for i in 1 2; do
  "$evq" produce "$db" two --type tool.two --data $i >/dev/null 2>&1 || fail "produce two"
done
timeout 20 bash -c "'$evq' consume '$db' two 2>/dev/null | head -1 >/dev/null"
[ $? -eq 0 ] || fail "consume | head -1 with two events did not end"

# a consumer killed mid-stream loses nothing
printf '{"type":"tool.k","data":%s}\n' $(seq 1 300) | "$evq" produce "$db" k 2>/dev/null || fail "produce 300"
"$evq" consume "$db" k -o visibility_timeout_ms=500 >"$out/killed" 2>/dev/null &
cpid=$!
sleep 0.2
kill -9 $cpid 2>/dev/null
wait $cpid 2>/dev/null
"$evq" consume "$db" k --timeout 2 -o visibility_timeout_ms=500 >"$out/rest" 2>/dev/null || fail "consume after kill"
got=$(cat "$out/killed" "$out/rest" | grep -o '"data":[0-9]*' | sort -u | wc -l)
[ "$got" -eq 300 ] || fail "after a kill -9, $got of 300 events were printed"

# pause and resume: a paused queue gives a consumer nothing (producers
# still enqueue), the state outlasts the processes, resume lets it drain
"$evq" produce "$db" p --type tool.p --data 1 >/dev/null 2>&1 || fail "produce p"
expect 0 "pause" -- "$evq" pause "$db" p
has stdout '"paused":true' "pause"
expect 0 "pause again" -- "$evq" pause "$db" p
has stdout '"paused":true' "pause again"
expect 0 "produce while paused" -- "$evq" produce "$db" p --type tool.p --data 2
expect 0 "consume while paused" -- "$evq" consume "$db" p --timeout 1
[ ! -s "$out/stdout" ] || fail "consume took an event from a paused queue"
expect 0 "pause --status" -- "$evq" pause "$db" p --status
has stdout '"paused":true' "pause --status"
expect 0 "resume" -- "$evq" resume "$db" p
has stdout '"paused":false' "resume"
expect 0 "consume after resume" -- "$evq" consume "$db" p --count 2 --timeout 2
[ "$(wc -l <"$out/stdout")" -eq 2 ] || fail "consume after resume printed $(wc -l <"$out/stdout") lines"
expect 2 "pause without queue" -- "$evq" pause "$db"
expect 1 "pause a missing queue file" -- "$evq" pause "sqlite://$out/none.db" p
has stderr "does not exist" "pause a missing queue file"
expect 2 "resume --status is pause's" -- "$evq" resume "$db" p --status
expect 2 "resume a bad flag" -- "$evq" resume "$db" p --bogus
expect 2 "pause memory://" -- "$evq" pause memory:// p
has stderr "one process" "pause memory://"

# dead letters: list, replay, purge
expect 0 "produce a dead letter" -- "$evq" produce "$db" d.dead --type tool.dead --data 7 --attr evqerror=boom --attr evqqueue=d
expect 0 "dead list" -- "$evq" dead list "$db" d
has stdout '"evqerror":"boom"' "dead list"
has stderr "dead list: 1 dead letter" "dead list"
expect 0 "dead replay" -- "$evq" dead replay "$db" d
has stderr "dead replay: 1 dead letter" "dead replay"
expect 0 "consume replayed" -- "$evq" consume "$db" d --count 1 --timeout 2
has stdout '"type":"tool.dead"' "consume replayed"
lacks stdout 'evqerror' "consume replayed"
expect 0 "dead list empty" -- "$evq" dead list "$db" d
has stderr "dead list: 0 dead letters" "dead list empty"
"$evq" produce "$db" d.dead --type tool.dead >/dev/null 2>&1
expect 0 "dead purge" -- "$evq" dead purge "$db" d
has stderr "dead purge: 1 dead letter" "dead purge"
expect 0 "demo on sqlite" -- "$evq" demo "$db"
has stdout 'Received event:' "demo on sqlite"
expect 1 "sqlite missing folder" -- "$evq" consume "sqlite://$out/no/such/dir/x.db" q --timeout 1
has stderr "does not exist" "sqlite missing folder"

# Credentials never show: every line of failing runs given a known
# password (in the URL's userinfo, as a token, as secret options, as -o)
pw=Sup3rS3cretPw
: >"$out/secrets"
for u in "redis://user:$pw@127.0.0.1:1/" "redis://:$pw@127.0.0.1:1/?bogus=1" \
         "nats://user:$pw@127.0.0.1:1?nats.connect_timeout_ms=200" \
         "nats://$pw@127.0.0.1:1?nats.connect_timeout_ms=200" \
         "kafka://127.0.0.1:1?rdkafka.sasl.password=$pw&rdkafka.security.protocol=bogus" \
         "kafka://127.0.0.1:1?rdkafka.security.protocol=ssl&rdkafka.ssl.key.password=$pw&rdkafka.ssl.key.pem=$pw" \
         "sqlite://$out/no/such/dir/x.db?x.token=$pw"; do
  for cmd in "produce|--type|t" "consume|--timeout|1" "stats" "dead|list" "bench|--events|10"; do
    IFS='|' read -r -a c <<<"$cmd"
    if [ "${c[0]}" = dead ]; then args=(dead list "$u" q); elif [ "${c[0]}" = bench ]; then
      args=(bench "$u" "${c[@]:1}"); else args=("${c[0]}" "$u" q "${c[@]:1}"); fi
    timeout 60 "$evq" "${args[@]}" </dev/null >>"$out/secrets" 2>&1 &&
      fail "secrets: ${args[*]} should fail"
  done
done
timeout 60 "$evq" produce "kafka://127.0.0.1:1" q --type t -o "rdkafka.sasl.password=$pw" \
  -o rdkafka.security.protocol=bogus </dev/null >>"$out/secrets" 2>&1
[ "$(wc -l <"$out/secrets")" -ge 30 ] || fail "secrets: too little output to judge"
! grep -q -- "$pw" "$out/secrets" || fail "secrets: the password shows: $(grep -m1 -- "$pw" "$out/secrets")"
grep -q 'user:\*\*\*@' "$out/secrets" || fail "secrets: no redacted URL printed"

if [ $failures -ne 0 ]; then
  echo "$failures failure(s)" >&2
  exit 1
fi
echo "evq tool: all checks passed"
