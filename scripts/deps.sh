#!/usr/bin/env bash
# Installs the Debian packages evq's build and tests need, when missing.
# Idempotent: does nothing (and needs no network) when all are present.
set -euo pipefail

packages=(
  gcc g++ make cmake pkg-config
  clang libclang-rt-14-dev   # the sanitizer and libFuzzer builds in `make check`
  valgrind openssl
  libjansson-dev libsimdjson-dev libmsgpack-dev libcmocka-dev libsqlite3-dev
  libicu-dev   # time zones of cron schedules (src/cron.c)
  libhiredis-dev redis-server redis-sentinel libnats-dev nats-server
  librdkafka-dev kcat
  libpq-dev postgresql
  librabbitmq-dev rabbitmq-server amqp-tools
  libmicrohttpd-dev   # evq serve (src/serve.c)
  curl chromium prometheus   # its tests: the API, the dashboard, promtool
  mandoc man-db   # the manual's lint (make check-man) and the install check
  abigail-tools   # the ABI check (make check-abi)
)

# `deps.sh bench`: also what make bench uses (gnuplot for the chart,
# node and npm for BullMQ)
if [ "${1:-}" = bench ]; then
  packages+=(gnuplot-nox)
  command -v node >/dev/null && command -v npm >/dev/null || packages+=(nodejs npm)
fi

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "deps.sh: installing ${missing[*]}" >&2
sudo=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "deps.sh: need root (or sudo) to install ${missing[*]}" >&2; exit 1; }
  sudo=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq || true
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
