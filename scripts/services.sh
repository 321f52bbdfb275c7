#!/usr/bin/env bash
# Starts the servers the tests use, each on a free loopback port with its
# data in a temporary folder, runs a command, and stops them by pid.
#
#   scripts/services.sh run redis [--fsync-always] -- COMMAND [ARGS...]
#   scripts/services.sh run nats [--no-js] [--cluster] [--tls] -- COMMAND...
#   scripts/services.sh run kafka --broker PROGRAM [--brokers N] [--tls] -- ...
#   scripts/services.sh run postgres -- COMMAND...
#   scripts/services.sh run rabbitmq [--tls] -- COMMAND...
#
# In COMMAND's arguments @REDIS_URL@ becomes redis://127.0.0.1:PORT and
# @REDIS_PORT@ the port; @NATS_URL@ becomes nats://127.0.0.1:PORT (every
# server of a --cluster, comma-separated) and @NATS_PORT@ the (first) port;
# @SERVICE_DIR@ is the temporary folder.  nats-server runs with JetStream
# unless --no-js; --cluster starts three of them (JetStream, routes to each
# other).  --tls makes a test CA (SERVICE_DIR/ca.pem), a server certificate
# it signs for 127.0.0.1 (server.pem, server.key) and an unrelated CA
# (other-ca.pem); nats-server then takes TLS connections only (the Kafka
# test broker cannot: tests bring their own TLS server).  Server i's pid is in SERVICE_DIR/nats-i.pid and the command that
# starts it again (same port, same store) in SERVICE_DIR/nats-i.sh, for
# tests that kill and restart it.  kafka runs PROGRAM (tests/kafka_broker.c,
# librdkafka's mock cluster) with N brokers (default 1); @KAFKA_BOOTSTRAP@
# becomes its bootstrap list, and commands written to
# SERVICE_DIR/kafka.ctl take brokers down and up.  Runs nest: COMMAND may
# be another 'services.sh run' (each replaces only its own placeholders;
# @REDIS_DIR@, @NATS_DIR@, @KAFKA_DIR@ and @PG_DIR@ name each one's folder).
# postgres runs PostgreSQL's initdb and pg_ctl (as the user postgres when
# run as root: the server refuses root) with its data in SERVICE_DIR/pg
# and its socket in SERVICE_DIR; @PG_URL@ becomes
# postgres://evq:evq-secret@127.0.0.1:PORT/evq (password auth over TCP,
# trust over the socket), @PG_PORT@ the port, @PG_SOCKET_DIR@ the socket's
# folder; SERVICE_DIR/pg-start.sh and pg-stop.sh start it again and stop it
# (pg_ctl stop -m immediate: as a crash would), for tests.
# sentinel starts a redis-server master and a replica and three
# redis-sentinel watching the master as "evqmaster" (down after 1 s,
# quorum 2); @SENTINEL_URL@ becomes
# redis+sentinel://127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3/evqmaster and
# @SENTINEL_DIR@ the folder: the master's pid is in master/redis.pid, its
# port in master/port, and master-start.sh starts it again (as a replica
# of whichever server the sentinels made master meanwhile).
# rabbitmq runs Debian's rabbitmq-server (its scripts in
# /usr/lib/rabbitmq/bin, as the calling user) with an epmd of its own, its
# node's name, ports and data in SERVICE_DIR/rabbit; @AMQP_URL@ becomes
# amqp://guest:guest@127.0.0.1:PORT/%2f, @AMQP_PORT@ the port, @AMQP_DIR@
# the folder; with --tls it takes TLS connections too (the test CA's
# server certificate), on @AMQPS_PORT@.  The node's pid is in
# SERVICE_DIR/rabbit/node.pid and
# SERVICE_DIR/rabbit/start.sh starts it again (same ports, same data) for
# tests that kill it.
# The command's exit status is returned.
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

# Starts nats server $2 of the run in $1: port $3, JetStream unless $4 is
# "nojs", cluster port $5 and routes $6 when clustered.  Returns 1 when a
# port was taken.
start_nats() {
  local dir=$1 i=$2 port=$3 js=$4 cport=${5:-} routes=${6:-}
  command -v nats-server >/dev/null || die "nats-server is not installed (scripts/deps.sh installs it)"
  local cmd="nats-server -a 127.0.0.1 -p $port -P $dir/nats-$i.pid -l $dir/nats-$i.log -n evq-$i"
  [ "$js" = nojs ] || cmd="$cmd -js -sd $dir/store-$i"
  [ -z "$cport" ] || cmd="$cmd --cluster_name evq --cluster nats://127.0.0.1:$cport --routes $routes"
  [ "$tls" = no ] || cmd="$cmd --tls --tlscert $dir/server.pem --tlskey $dir/server.key"
  printf '#!/bin/sh\nexec setsid %s </dev/null >/dev/null 2>&1 &\n' "$cmd" >"$dir/nats-$i.sh"
  rm -f "$dir/nats-$i.log"
  sh "$dir/nats-$i.sh"
  for _ in $(seq 1 200); do
    if grep -q "Server is ready" "$dir/nats-$i.log" 2>/dev/null; then
      return 0
    fi
    if grep -qi "address already in use" "$dir/nats-$i.log" 2>/dev/null; then
      stop_by_pidfile "$dir/nats-$i.pid"
      return 1
    fi
    sleep 0.05
  done
  cat "$dir/nats-$i.log" >&2 || true
  die "nats-server $i did not start on port $port"
}

# A test CA, a server certificate it signs for 127.0.0.1 and localhost,
# and another CA that signed nothing here.
make_certs() {
  local dir=$1
  command -v openssl >/dev/null || die "openssl is not installed (scripts/deps.sh installs it)"
  local ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
  openssl req -x509 "${ec[@]}" -keyout "$dir/ca.key" -out "$dir/ca.pem" \
    -days 2 -subj /CN=evq-test-ca 2>/dev/null
  openssl req -x509 "${ec[@]}" -keyout "$dir/other-ca.key" -out "$dir/other-ca.pem" \
    -days 2 -subj /CN=evq-other-ca 2>/dev/null
  openssl req "${ec[@]}" -keyout "$dir/server.key" -out "$dir/server.csr" \
    -subj /CN=127.0.0.1 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' >"$dir/san.ext"
  openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" \
    -CAcreateserial -out "$dir/server.pem" -days 2 -extfile "$dir/san.ext" 2>/dev/null
  [ -s "$dir/server.pem" ] || die "openssl made no server certificate"
}

# The folder of PostgreSQL's programs (initdb, pg_ctl, postgres).
pg_bindir() {
  local d
  for d in /usr/lib/postgresql/*/bin; do
    [ -x "$d/initdb" ] && { echo "$d"; return; }
  done
  command -v initdb >/dev/null && { dirname "$(command -v initdb)"; return; }
  die "PostgreSQL is not installed (scripts/deps.sh installs it)"
}

# Starts PostgreSQL in $1/pg on port $2; returns 1 when the port was taken.
start_postgres() {
  local dir=$1 port=$2 bin as=()
  bin=$(pg_bindir)
  if [ "$(id -u)" = 0 ]; then
    id postgres >/dev/null 2>&1 || die "no user 'postgres' to run the server as (the postgresql package makes it)"
    as=(runuser -u postgres --)
    chown postgres "$dir"
    chmod 755 "$dir"
  fi
  if [ ! -d "$dir/pg" ]; then
    printf 'evq-secret\n' >"$dir/pg.pw"
    [ ${#as[@]} -eq 0 ] || chown postgres "$dir/pg.pw"
    "${as[@]}" "$bin/initdb" -D "$dir/pg" -U evq --pwfile="$dir/pg.pw" \
      --auth-local=trust --auth-host=scram-sha-256 -E UTF8 --locale=C \
      >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; die "initdb failed"; }
  fi
  local opts="-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=on -c max_connections=200"
  printf '#!/bin/sh\nexec %s %s/pg_ctl -D %s/pg -l %s/pg.log -o "%s" -w -t 60 start >/dev/null\n' \
    "${as[*]}" "$bin" "$dir" "$dir" "$opts" >"$dir/pg-start.sh"
  printf '#!/bin/sh\nexec %s %s/pg_ctl -D %s/pg -m immediate -w stop >/dev/null\n' \
    "${as[*]}" "$bin" "$dir" >"$dir/pg-stop.sh"
  rm -f "$dir/pg.log"
  if ! sh "$dir/pg-start.sh"; then
    if grep -qi "could not bind\|address already in use" "$dir/pg.log" 2>/dev/null; then
      return 1
    fi
    cat "$dir/pg.log" >&2 || true
    die "PostgreSQL did not start on port $port"
  fi
  "${as[@]}" "$bin/psql" -h "$dir" -p "$port" -U evq -d postgres -qAt \
    -c 'CREATE DATABASE evq' >/dev/null || die "could not create the database evq"
}

# Sentinel: a master and a replica (redis-server, append-only, fsync
# always) in $1/master and $1/replica, and three redis-sentinel watching
# the master as "evqmaster" (down after 1 s, quorum 2) in $1/sentinel-i.
# Returns 1 when a port was taken.
start_sentinel() {
  local dir=$1 mport rport i
  command -v redis-sentinel >/dev/null || die "redis-sentinel is not installed (scripts/deps.sh installs it)"
  mport=$(free_port) rport=$(free_port)
  mkdir -p "$dir/master" "$dir/replica"
  start_redis "$dir/master" "$mport" always || return 1
  echo "$mport" >"$dir/master/port"
  # starts the old master's process again (a test kills it): the
  # sentinels make it a replica of the new master
  printf '#!/bin/sh\nredis-server --port %s --bind 127.0.0.1 --dir %s --save "" --appendonly yes --appendfsync always --daemonize yes --pidfile %s/redis.pid --logfile %s/redis.log >/dev/null\n' \
    "$mport" "$dir/master" "$dir/master" "$dir/master" >"$dir/master-start.sh"
  start_redis "$dir/replica" "$rport" always || return 1
  redis-cli -p "$rport" REPLICAOF 127.0.0.1 "$mport" | grep -q OK ||
    die "REPLICAOF failed on the replica (port $rport)"
  local linked=no
  for _ in $(seq 1 200); do
    redis-cli -p "$rport" INFO replication 2>/dev/null | grep -q 'master_link_status:up' && { linked=yes; break; }
    sleep 0.05
  done
  [ "$linked" = yes ] || die "the replica (port $rport) did not link to the master"
  sentinels=()
  for i in 1 2 3; do
    local sport
    sport=$(free_port)
    mkdir -p "$dir/sentinel-$i"
    cat >"$dir/sentinel-$i/sentinel.conf" <<CONF
port $sport
bind 127.0.0.1
dir $dir/sentinel-$i
pidfile $dir/sentinel-$i/redis.pid
logfile $dir/sentinel-$i/sentinel.log
daemonize yes
sentinel monitor evqmaster 127.0.0.1 $mport 2
sentinel down-after-milliseconds evqmaster 1000
sentinel failover-timeout evqmaster 10000
sentinel parallel-syncs evqmaster 1
CONF
    redis-sentinel "$dir/sentinel-$i/sentinel.conf" >/dev/null || return 1
    # daemonized before it binds: a taken port shows in its log
    local up=no
    for _ in $(seq 1 100); do
      redis-cli -p "$sport" ping 2>/dev/null | grep -q PONG && { up=yes; break; }
      grep -q "Address already in use\|Failed listening" "$dir/sentinel-$i/sentinel.log" 2>/dev/null && return 1
      sleep 0.05
    done
    [ "$up" = yes ] || { cat "$dir/sentinel-$i/sentinel.log" >&2; die "redis-sentinel did not start on port $sport"; }
    sentinels+=("127.0.0.1:$sport")
  done
  # ready once each sentinel knows the replica and the other two
  local ready=0
  for _ in $(seq 1 600); do
    ready=0
    for a in "${sentinels[@]}"; do
      info=$(redis-cli -p "${a##*:}" SENTINEL master evqmaster 2>/dev/null | tr '\n' ' ')
      case $info in *"num-slaves 1 "*"num-other-sentinels 2 "*) ready=$((ready + 1)) ;; esac
    done
    [ "$ready" = 3 ] && break
    sleep 0.05
  done
  [ "$ready" = 3 ] || die "the sentinels did not find the replica and each other"
  local IFS=,
  url="redis+sentinel://${sentinels[*]}/evqmaster"
  port=$mport
}

# RabbitMQ in $1/rabbit, AMQP on port $2: an epmd of its own first (so
# nothing is left behind and no system epmd is needed).  Returns 1 when a
# port was taken.
start_rabbitmq() {
  local dir=$1/rabbit port=$2 dport eport bin=/usr/lib/rabbitmq/bin
  [ -x "$bin/rabbitmq-server" ] || die "rabbitmq-server is not installed (scripts/deps.sh installs it)"
  command -v epmd >/dev/null || die "epmd is not installed (it comes with rabbitmq-server)"
  dport=$(free_port) eport=$(free_port)
  rm -rf "$dir"
  mkdir -p "$dir/home" "$dir/log" "$dir/mnesia"
  setsid epmd -port "$eport" -address 127.0.0.1 </dev/null >"$dir/epmd.log" 2>&1 &
  echo $! >"$dir/epmd.pid"
  cat >"$dir/rabbitmq.conf" <<CONF
listeners.tcp.default = 127.0.0.1:$port
distribution.listener.interface = 127.0.0.1
distribution.listener.port_range.min = $dport
distribution.listener.port_range.max = $dport
disk_free_limit.absolute = 1MB
log.file.level = info
log.console = false
CONF
  if [ "$tls" = yes ]; then
    tport=$(free_port)
    cat >>"$dir/rabbitmq.conf" <<CONF
listeners.ssl.default = 127.0.0.1:$tport
ssl_options.cacertfile = $1/ca.pem
ssl_options.certfile = $1/server.pem
ssl_options.keyfile = $1/server.key
ssl_options.verify = verify_none
ssl_options.fail_if_no_peer_cert = false
CONF
  fi
  : >"$dir/enabled_plugins"
  cat >"$dir/env" <<ENV
export HOME=$dir/home
export ERL_EPMD_PORT=$eport
export ERL_EPMD_ADDRESS=127.0.0.1
export RABBITMQ_NODENAME=evq-$port@localhost
export RABBITMQ_USE_LONGNAME=false
export RABBITMQ_CONFIG_FILE=$dir/rabbitmq.conf
export RABBITMQ_CONF_ENV_FILE=$dir/none.conf
export RABBITMQ_ENABLED_PLUGINS_FILE=$dir/enabled_plugins
export RABBITMQ_MNESIA_BASE=$dir/mnesia
export RABBITMQ_LOG_BASE=$dir/log
export RABBITMQ_PID_FILE=$dir/node.pid
export RABBITMQ_DIST_PORT=$dport
ENV
  printf '#!/bin/sh\n. %s/env\nrm -f %s/node.pid\nsetsid %s/rabbitmq-server </dev/null >>%s/server.out 2>&1 &\necho $! >%s/server.pid\n' \
    "$dir" "$dir" "$bin" "$dir" "$dir" >"$dir/start.sh"
  sh "$dir/start.sh"
  for _ in $(seq 1 1200); do
    if [ -s "$dir/node.pid" ] && (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null &&
       grep -q "Server startup complete" "$dir"/log/*.log 2>/dev/null; then
      return 0
    fi
    if grep -qi "eaddrinuse\|address already in use" "$dir"/log/*.log "$dir/server.out" 2>/dev/null; then
      stop_rabbitmq "$1"
      return 1
    fi
    if ! kill -0 "$(cat "$dir/server.pid")" 2>/dev/null; then
      grep -qi "eaddrinuse" "$dir/server.out" && { stop_rabbitmq "$1"; return 1; }
      cat "$dir/server.out" >&2; tail -20 "$dir"/log/*.log >&2 2>/dev/null || true
      die "rabbitmq-server exited before it started"
    fi
    sleep 0.05
  done
  cat "$dir/server.out" >&2; tail -20 "$dir"/log/*.log >&2 2>/dev/null || true
  die "rabbitmq-server did not start on port $port"
}

stop_rabbitmq() {
  local dir=$1/rabbit
  [ -d "$dir" ] || return 0
  stop_by_pidfile "$dir/node.pid"
  stop_by_pidfile "$dir/server.pid"
  stop_by_pidfile "$dir/epmd.pid"
}

stop_postgres() {
  local dir=$1
  [ -f "$dir/pg/postmaster.pid" ] || return 0
  local pid
  pid=$(head -1 "$dir/pg/postmaster.pid")
  kill -INT "$pid" 2>/dev/null || return 0 # fast shutdown
  for _ in $(seq 1 200); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.05
  done
  kill -9 "$pid" 2>/dev/null || true
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

[ "${1:-}" = run ] || die "usage: services.sh run redis|sentinel|nats|kafka|postgres|rabbitmq [OPTIONS] -- COMMAND..."
shift
service=${1:-}
shift || true
fsync=everysec
js=js
cluster=no
tls=no
broker=
brokers=1
while [ $# -gt 0 ] && [ "$1" != -- ]; do
  case $1 in
    --broker) broker=$2; shift ;;
    --brokers) brokers=$2; shift ;;
    --fsync-always) fsync=always ;;
    --no-js) js=nojs ;;
    --cluster) cluster=yes ;;
    --tls) tls=yes ;;
    *) die "unknown option $1" ;;
  esac
  shift
done
[ "${1:-}" = -- ] || die "missing -- before the command"
shift

dir=$(mktemp -d /tmp/evq-services-XXXXXX)
cleanup() {
  stop_by_pidfile "$dir/redis.pid"
  for f in "$dir"/sentinel-*/redis.pid "$dir"/master/redis.pid "$dir"/replica/redis.pid; do
    [ -e "$f" ] && stop_by_pidfile "$f"
  done
  stop_by_pidfile "$dir/kafka.pid"
  stop_postgres "$dir"
  stop_rabbitmq "$dir"
  for f in "$dir"/nats-*.pid; do
    [ -e "$f" ] && stop_by_pidfile "$f"
  done
  rm -rf "$dir"
}
trap cleanup EXIT

[ "$tls" = no ] || make_certs "$dir"
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
  nats)
    for attempt in 1 2 3 4 5; do
      if [ "$cluster" = no ]; then
        port=$(free_port)
        start_nats "$dir" 1 "$port" "$js" && { url="nats://127.0.0.1:$port"; break; }
      else
        ports=() cports=() ok=yes
        for i in 1 2 3; do ports+=("$(free_port)"); cports+=("$(free_port)"); done
        routes="nats://127.0.0.1:${cports[0]},nats://127.0.0.1:${cports[1]},nats://127.0.0.1:${cports[2]}"
        for i in 1 2 3; do
          start_nats "$dir" "$i" "${ports[$((i-1))]}" js "${cports[$((i-1))]}" "$routes" || { ok=no; break; }
        done
        if [ "$ok" = yes ]; then
          port=${ports[0]}
          url="nats://127.0.0.1:${ports[0]},127.0.0.1:${ports[1]},127.0.0.1:${ports[2]}"
          # JetStream can place a stream on three servers once every
          # one of them knows the elected meta leader (a minute at most:
          # under a loaded TSan run it took more than 20 s once).  A
          # cluster that elects none in that time (once in a CI run, the
          # logs gone) is stopped, its logs' ends shown, and started
          # again on new ports with empty stores.
          for _ in $(seq 1 800); do
            known=0
            for i in 1 2 3; do
              grep -qi "JetStream cluster new metadata leader\|Self is new JetStream cluster metadata leader" \
                "$dir/nats-$i.log" && known=$((known + 1))
            done
            [ "$known" = 3 ] && break
            sleep 0.05
          done
          [ "$known" = 3 ] && break
          echo "services.sh: the nats cluster elected no JetStream leader (attempt $attempt); its logs end:" >&2
          for i in 1 2 3; do tail -n 8 "$dir/nats-$i.log" >&2; done
        fi
        for f in "$dir"/nats-*.pid; do [ -e "$f" ] && stop_by_pidfile "$f"; done
        rm -rf "$dir"/store-*
      fi
      [ "$attempt" -lt 5 ] || die "the nats servers did not come up in 5 attempts"
    done
    ;;
  kafka)
    [ -x "$broker" ] || die "kafka needs --broker PROGRAM (the built tests/kafka_broker)"
    setsid "$broker" "$brokers" "$dir" </dev/null >"$dir/kafka.out" 2>&1 &
    echo $! >"$dir/kafka.pid"
    for _ in $(seq 1 200); do
      [ -s "$dir/kafka.bootstrap" ] && break
      kill -0 "$(cat "$dir/kafka.pid")" 2>/dev/null || { cat "$dir/kafka.out" >&2; die "kafka_broker exited"; }
      sleep 0.05
    done
    [ -s "$dir/kafka.bootstrap" ] || die "kafka_broker did not start"
    url=$(cat "$dir/kafka.bootstrap")
    port=${url##*:}
    ;;
  sentinel)
    for attempt in 1 2 3 4 5; do
      start_sentinel "$dir" && break
      for f in "$dir"/sentinel-*/redis.pid "$dir"/master/redis.pid "$dir"/replica/redis.pid; do
        [ -e "$f" ] && stop_by_pidfile "$f"
      done
      rm -rf "$dir"/master "$dir"/replica "$dir"/sentinel-*
      [ "$attempt" -lt 5 ] || die "redis-sentinel found no free ports"
    done
    ;;
  postgres)
    for attempt in 1 2 3 4 5; do
      port=$(free_port)
      start_postgres "$dir" "$port" && break
      [ "$attempt" -lt 5 ] || die "PostgreSQL found no free port"
    done
    url="postgres://evq:evq-secret@127.0.0.1:$port/evq"
    ;;
  rabbitmq)
    for attempt in 1 2 3 4 5; do
      port=$(free_port)
      start_rabbitmq "$dir" "$port" && break
      [ "$attempt" -lt 5 ] || die "rabbitmq-server found no free port"
    done
    url="amqp://guest:guest@127.0.0.1:$port/%2f"
    ;;
  *) die "unknown service '$service'" ;;
esac

# Only this service's placeholders: a command may be another services.sh
# run, starting the next server (the outermost names @SERVICE_DIR@).
args=()
for a in "$@"; do
  case $service in
    redis) a=${a//@REDIS_URL@/$url}; a=${a//@REDIS_PORT@/$port}; a=${a//@REDIS_DIR@/$dir} ;;
    nats) a=${a//@NATS_URL@/$url}; a=${a//@NATS_PORT@/$port}; a=${a//@NATS_DIR@/$dir} ;;
    kafka) a=${a//@KAFKA_BOOTSTRAP@/$url}; a=${a//@KAFKA_DIR@/$dir} ;;
    sentinel) a=${a//@SENTINEL_URL@/$url}; a=${a//@SENTINEL_DIR@/$dir} ;;
    rabbitmq) a=${a//@AMQP_URL@/$url}; a=${a//@AMQP_PORT@/$port}; a=${a//@AMQPS_PORT@/${tport:-}}; a=${a//@AMQP_DIR@/$dir} ;;
    postgres) a=${a//@PG_URL@/$url}; a=${a//@PG_PORT@/$port}; a=${a//@PG_SOCKET_DIR@/$dir}; a=${a//@PG_DIR@/$dir} ;;
  esac
  a=${a//@SERVICE_DIR@/$dir}
  args+=("$a")
done
set +e
"${args[@]}"
status=$?
set -e
exit $status
