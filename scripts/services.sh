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

free_port() {
  local port
  for _ in $(seq 1 100); do
    port=$(( 20000 + (RANDOM * 32768 + RANDOM) % 40000 ))
    if ! (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null; then
      echo "$port"
      return
    fi
  done
  die "no free port found"
}

start_redis() { # dir port fsync
  local dir=$1 port=$2 fsync=$3
  command -v redis-server >/dev/null || die "redis-server is not installed (scripts/deps.sh installs it)"
  redis-server --port "$port" --bind 127.0.0.1 --dir "$dir" --save '' \
    --appendonly yes --appendfsync "$fsync" --daemonize yes \
    --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" >/dev/null
  for _ in $(seq 1 100); do
    if redis-cli -p "$port" ping 2>/dev/null | grep -q PONG; then
      return
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
    port=$(free_port)
    start_redis "$dir" "$port" "$fsync"
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
