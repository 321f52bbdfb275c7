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
# Only the public header is installed.
[ "$(find "$root/include" -type f | wc -l)" -eq 1 ]

# pkg-config: the .pc names the install prefix; point it at the stage.
export PKG_CONFIG_PATH="$libdir/pkgconfig"
cflags=$(pkg-config --define-variable=prefix="$root" --cflags evq)
libs=$(pkg-config --define-variable=prefix="$root" --libs evq)
cc $cflags "$src/consumer.c" -o "$stage/consumer-pc" $libs -Wl,-rpath,"$libdir"
"$stage/consumer-pc" | grep -q "installed evq works"

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
