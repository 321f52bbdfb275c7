#!/usr/bin/env bash
# make soak: tests/soak.c on every backend in turn (memory, sqlite, redis,
# nats JetStream, kafka), each for SECONDS or until EVENTS were enqueued,
# the servers started by scripts/services.sh.  Prints each backend's
# figures; fails if any backend's checks fail.
#   scripts/soak.sh BUILD_DIR [SECONDS] [EVENTS] [BACKEND...]
set -uo pipefail
build=$1
secs=${2:-360}
events=${3:-100000000}
shift $(( $# >= 3 ? 3 : $# ))
backends=("$@")
[ ${#backends[@]} -gt 0 ] || backends=(memory sqlite redis nats kafka)
here=$(cd "$(dirname "$0")/.." && pwd)
svc=$here/scripts/services.sh
soak=$build/tests/soak
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
status=0
for b in "${backends[@]}"; do
  case $b in
    memory) cmd=("$soak" "memory://?capacity=100000" "$secs" "$events") ;;
    sqlite) cmd=("$soak" "sqlite://$tmp/soak.db" "$secs" "$events") ;;
    redis) cmd=("$svc" run redis -- "$soak" @REDIS_URL@ "$secs" "$events") ;;
    nats) cmd=("$svc" run nats -- "$soak" @NATS_URL@ "$secs" "$events") ;;
    kafka) cmd=("$svc" run kafka --broker "$build/tests/kafka_broker" -- "$soak"
                "kafka://@KAFKA_BOOTSTRAP@?rdkafka.session.timeout.ms=6000&kafka.create_topics=false"
                "$secs" "$events") ;;
    *) echo "soak.sh: unknown backend $b" >&2; exit 2 ;;
  esac
  "${cmd[@]}" || { echo "soak.sh: $b FAILED" >&2; status=1; }
done
exit $status
