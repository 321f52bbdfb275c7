# Sourced by the tool's tests that kill redis-server: restart_redis starts
# it again on $rport with its data in $rdir (append-only, fsync always, as
# services.sh run redis --fsync-always started it) and waits for it.
restart_redis() {
  redis-server --port "$rport" --bind 127.0.0.1 --dir "$rdir" --save '' \
    --appendonly yes --appendfsync always --daemonize yes \
    --pidfile "$rdir/redis.pid" --logfile "$rdir/redis.log" >/dev/null
  for _ in $(seq 1 100); do
    redis-cli -p "$rport" ping 2>/dev/null | grep -q PONG && return 0
    sleep 0.05
  done
}
