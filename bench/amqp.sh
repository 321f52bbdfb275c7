#!/usr/bin/env bash
# amqp:// side by side, on one rabbitmq-server started for the run: a plain
# librabbitmq program (bench/amqp_baseline.c: persistent publishes to a
# quorum queue with publisher confirms, at most 10 000 out, as evq's
# max_in_flight; basic.consume with prefetch 256, as amqp.prefetch, each
# message acked) and evq bench.
#   bench/amqp.sh [BUILD_DIR] [EVENTS] [RUNS]
set -euo pipefail
build=${1:-build}
events=${2:-100000}
runs=${3:-1}
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
if [ "${EVQ_IN_SERVICE:-}" != 1 ]; then
  exec env EVQ_IN_SERVICE=1 "$here/../scripts/services.sh" run rabbitmq -- \
    "$here/amqp.sh" "$build" "$events" "$runs" @AMQP_URL@ @AMQP_PORT@
fi
url=$4
port=$5
# a JSON event of 100 bytes of data is about 300 bytes: the baseline's
size=300
for run in $(seq 1 "$runs"); do
echo "rabbitmq-server $(dpkg-query -W -f='${Version}' rabbitmq-server 2>/dev/null), $(nproc) cores, $events events"
b=$("$build/amqp_baseline" 127.0.0.1 "$port" publish "$events" "$size" 10000); echo "librabbitmq publish, confirms: $b"
rec amqp:// "librabbitmq publish, confirms/s" "$(json_field amqp_publish_per_s <<<"$b")"
b=$("$build/amqp_baseline" 127.0.0.1 "$port" consume "$events" 256); echo "librabbitmq consume, prefetch 256: $b"
rec amqp:// "librabbitmq consume, prefetch 256/s" "$(json_field amqp_consume_per_s <<<"$b")"
evq_bench_rows amqp:// "$url" "$events" "librabbitmq publish, confirms/s" \
  "librabbitmq consume, prefetch 256/s"
done
