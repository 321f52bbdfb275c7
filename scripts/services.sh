#!/usr/bin/env bash
# Starts the servers the tests use, each on a free loopback port with its
# data in a temporary folder, runs a command, and stops them by pid.
#
#   scripts/services.sh run redis [--fsync-always] -- COMMAND [ARGS...]
#
# In COMMAND's arguments @REDIS_URL@ becomes redis://127.0.0.1:PORT and
# @REDIS_PORT@ the port.  The command's exit status is returned.
set -euo pipefail

die() { echo "services.sh: $*" >&2; exit 2; }

# A port below the kernel's ephemeral range, so no outgoing connection can
# be holding it, and nothing is listening on it now.
free_port() {
  local port low
  low=$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
  [ "$low" -gt 12000 ] || low=32768
  for _ in $(seq 1 100); do
    port=$(( 10000 + (RANDOM * 32768 + RANDOM) % (low - 10000) ))
    if ! (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null; then
      echo "$port"
      return
    fi
  done
  die "no free port found"
}

start_redis() { # dir port fsync; returns 1 when the port was taken
  local dir=$1 port=$2 fsync=$3
  command -v redis-server >/dev/null || die "redis-server is not installed (scripts/deps.sh installs it)"
  rm -f "$dir/redis.log"
  redis-server --port "$port" --bind 127.0.0.1 --dir "$dir" --save '' \
    --appendonly yes --appendfsync "$fsync" --daemonize yes \
    --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" >/dev/null
  for _ in $(seq 1 100); do
    if redis-cli -p "$port" ping 2>/dev/null | grep -q PONG; then
      return 0
    fi
    if grep -q "Failed listening" "$dir/redis.log" 2>/dev/null; then
      return 1
    fi
    sleep 0.05
  done
  cat "$dir/redis.log" >&2 || true
  die "redis-server did not start on port $port"
}

stop_by_pidfile() {
  local pidfile=$1 pid
  [ -f "$pidfile" ] || return 0
  pid=$(cat "$pidfile")
  kill "$pid" 2>/dev/null || return 0
  for _ in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.05
  done
  kill -9 "$pid" 2>/dev/null || true
}

[ "${1:-}" = run ] || die "usage: services.sh run redis [--fsync-always] -- COMMAND..."
shift
service=${1:-}
shift || true
fsync=everysec
while [ $# -gt 0 ] && [ "$1" != -- ]; do
  case $1 in
    --fsync-always) fsync=always ;;
    *) die "unknown option $1" ;;
  esac
  shift
done
[ "${1:-}" = -- ] || die "missing -- before the command"
shift

dir=$(mktemp -d /tmp/evq-services-XXXXXX)
cleanup() { stop_by_pidfile "$dir/redis.pid"; rm -rf "$dir"; }
trap cleanup EXIT

case $service in
  redis)
    # Another test may take the same port between the check and the bind:
    # then pick again.
    for attempt in 1 2 3 4 5; do
      port=$(free_port)
      if start_redis "$dir" "$port" "$fsync"; then
        break
      fi
      [ "$attempt" -lt 5 ] || die "redis-server found no free port"
    done
    url="redis://127.0.0.1:$port"
    ;;
  *) die "unknown service '$service'" ;;
esac

args=()
for a in "$@"; do
  a=${a//@REDIS_URL@/$url}
  a=${a//@REDIS_PORT@/$port}
  a=${a//@SERVICE_DIR@/$dir}
  args+=("$a")
done
set +e
"${args[@]}"
status=$?
set -e
exit $status
