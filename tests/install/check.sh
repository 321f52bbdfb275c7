#!/usr/bin/env bash
# Installs evq into a staging folder with DESTDIR and builds a small program
# against it twice: with pkg-config and with CMake's find_package(evq).
set -euo pipefail
build=$(realpath "$1")
src=$(cd "$(dirname "$0")" && pwd)
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
prefix=/opt/evq

DESTDIR="$stage" cmake --install "$build" --prefix "$prefix" >/dev/null
root="$stage$prefix"
libdir=$(dirname "$(find "$root" -name libevq.so | head -n1)")
test -f "$root/include/evq.h"
test -f "$libdir/libevq.a"
test -f "$libdir/pkgconfig/evq.pc"
test -f "$libdir/cmake/evq/evqConfig.cmake"
# The manual: evq(1), and every function's page (a link to its group's).
man -M "$root/share/man" -P cat 1 evq 2>/dev/null | grep -q "evq serve\|serve URL" || {
  echo "man evq does not show the tool's page" >&2
  exit 1
}
for fn in evq_queue_open evq_enqueue evq_serve_start evq_events_use; do
  man -M "$root/share/man" -P cat 3 "$fn" 2>/dev/null | grep -q "$fn" || {
    echo "man 3 $fn shows nothing" >&2
    exit 1
  }
done
# a page per backend, with its options
grep -q "kafka.partitions" <<<"$(man -M "$root/share/man" -P cat 7 evq-kafka 2>/dev/null)" || {
  echo "man 7 evq-kafka does not list the kafka options" >&2
  exit 1
}
test -f "$root/share/bash-completion/completions/evq" || {
  echo "the bash completion is not installed" >&2
  exit 1
}
# Only the public header is installed.
[ "$(find "$root/include" -type f | wc -l)" -eq 1 ]

# pkg-config, as a user runs it: PKG_CONFIG_PATH only.  The .pc finds its
# prefix from its own place, so the staged copy points into the stage.
export PKG_CONFIG_PATH="$libdir/pkgconfig"
cflags=$(pkg-config --cflags evq)
libs=$(pkg-config --libs evq)
set -- $cflags
[ $# -eq 1 ] && [ "${1#-I}" != "$1" ] &&
  [ "$(realpath "${1#-I}")" = "$(realpath "$root/include")" ] || {
  echo "evq.pc Cflags are '$cflags', not just -I$root/include" >&2
  exit 1
}
ldir=$(for f in $libs; do case $f in -L*) echo "${f#-L}" ;; esac; done)
[ "$(realpath "$ldir")" = "$(realpath "$libdir")" ] || {
  echo "evq.pc Libs are '$libs', without -L$libdir" >&2
  exit 1
}
cc $cflags "$src/consumer.c" -o "$stage/consumer-pc" $libs -Wl,-rpath,"$libdir"
"$stage/consumer-pc" | grep -q "installed evq works"
pkg-config --static --libs evq | grep -q -- -lrdkafka || {
  echo "evq.pc --static --libs lacks the client libraries" >&2
  exit 1
}
# A program with libevq linked in statically: pkg-config --static names
# every library libevq.a needs.
static_libs=$(pkg-config --static --libs evq | sed 's/ -levq / -Wl,-Bstatic -levq -Wl,-Bdynamic /')
cc $cflags "$src/consumer.c" -o "$stage/consumer-static" $static_libs
if ldd "$stage/consumer-static" | grep -q libevq; then
  echo "the static consumer still loads libevq.so" >&2
  exit 1
fi
"$stage/consumer-static" | grep -q "installed evq works"

# make install PREFIX=... (no DESTDIR) into another folder: the README's
# compile line works against it as it stands.
other="$stage/other-prefix"
cmake --install "$build" --prefix "$other" >/dev/null
olib=$(dirname "$(find "$other" -name libevq.so | head -n1)")
PKG_CONFIG_PATH="$olib/pkgconfig" sh -c \
  'cc "$1" -o "$2" $(pkg-config --cflags --libs evq) -Wl,-rpath,"$3"' _ \
  "$src/consumer.c" "$stage/consumer-other" "$olib"
"$stage/consumer-other" | grep -q "installed evq works"

# CMake package.
cmake -S "$src" -B "$stage/cmake-build" -DCMAKE_PREFIX_PATH="$root" >/dev/null
cmake --build "$stage/cmake-build" >/dev/null
"$stage/cmake-build/consumer" | grep -q "installed evq works"
# Nothing but the documented API is exported from the shared library.
if nm -D --defined-only "$libdir/libevq.so" | awk '{print $3}' | grep -v '^evq_' | grep -q .; then
  echo "libevq.so exports names outside the evq_ API:" >&2
  nm -D --defined-only "$libdir/libevq.so" | awk '{print $3}' | grep -v '^evq_' >&2
  exit 1
fi
echo "install check: pkg-config and CMake consumers built and ran"
