#!/usr/bin/env bash
# The Debian packages of `make deb`, unpacked with dpkg -x into a scratch
# root (no root rights, nothing installed on the machine): each package
# holds its files and names its dependencies; the README's program builds
# against the root with pkg-config and with CMake, and runs; the tool, its
# manual and its completion work from there.
#   tests/install/deb.sh DEB_BUILD_DIR
set -euo pipefail
build=$(realpath "$1")
src=$(cd "$(dirname "$0")/../.." && pwd)
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT

fail() {
  echo "check-deb: $*" >&2
  exit 1
}

version=$(sed -n 's/^#define EVQ_VERSION_STRING "\(.*\)"/\1/p' "$src/include/evq.h")
arch=$(dpkg --print-architecture)
multiarch=$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || gcc -print-multiarch)
lib=libevq0_${version}-1_${arch}.deb
dev=libevq-dev_${version}-1_${arch}.deb
tools=evq-tools_${version}-1_${arch}.deb
for deb in $lib $dev $tools; do
  [ -f "$build/$deb" ] || fail "$deb was not built"
  dpkg-deb --info "$build/$deb" >/dev/null || fail "$deb is not a package"
  dpkg -x "$build/$deb" "$root"
done

# what each package holds
has() { # package, path (the listing is read whole: grep -q would close
          # the pipe early, which pipefail takes for a failure)
  local list
  list=$(dpkg-deb -c "$build/$1" | awk '{print $6}')
  grep -qx "\./$2" <<<"$list" || fail "$1 lacks /$2"
}
has $lib "usr/lib/$multiarch/libevq.so.$version"
has $dev "usr/include/evq.h"
has $dev "usr/lib/$multiarch/libevq.a"
has $dev "usr/lib/$multiarch/pkgconfig/evq.pc"
has $dev "usr/lib/$multiarch/cmake/evq/evqConfig.cmake"
has $dev "usr/share/man/man3/evq_queue_open.3"
has $tools "usr/bin/evq"
has $tools "usr/share/man/man1/evq.1"
has $tools "usr/share/man/man7/evq-redis.7"
has $tools "usr/share/bash-completion/completions/evq"
if grep -q "include/\|bin/evq" <<<"$(dpkg-deb -c "$build/$lib")"; then
  fail "$lib holds more than the shared library"
fi

# dependencies: the client libraries' packages, found by dpkg-shlibdeps
deps=$(dpkg-deb -f "$build/$lib" Depends)
for p in libjansson4 libsqlite3-0 libhiredis0.14 libnats3.4 librdkafka1 libpq5 \
  librabbitmq4 libmicrohttpd12; do
  grep -q "\b$p\b" <<<"$deps" || fail "$lib does not depend on $p: $deps"
done
grep -q "libevq0 (= $version-1)" <<<"$(dpkg-deb -f "$build/$dev" Depends)" ||
  fail "$dev does not depend on its libevq0"
grep -q "libjansson-dev" <<<"$(dpkg-deb -f "$build/$dev" Depends)" ||
  fail "$dev does not depend on libjansson-dev (evq.pc requires jansson)"
grep -qx libs <<<"$(dpkg-deb -f "$build/$lib" Section)" || fail "$lib is not in section libs"

# the README's program, built against the unpacked root
awk '/^```c$/ {on = 1; next} on && /^```$/ {exit} on {print}' "$src/README.md" >"$root/app.c"
grep -q "#include <evq.h>" "$root/app.c" || fail "no C program in the README"
libdir="$root/usr/lib/$multiarch"
export PKG_CONFIG_PATH="$libdir/pkgconfig"
# shellcheck disable=SC2046
cc "$root/app.c" -o "$root/app" $(pkg-config --cflags --libs evq) -Wl,-rpath,"$libdir"
grep -q "$libdir/libevq.so.0" <<<"$(ldd "$root/app")" || fail "the program does not load the packaged libevq.so.0"
grep -q 'Received event: user.created {"userId":"123","name":"John Doe"}' <<<"$("$root/app")" ||
  fail "the README's program, built against the packages, printed something else"
# and with CMake's find_package(evq)
mkdir "$root/cm"
cp "$root/app.c" "$root/cm/app.c"
cat >"$root/cm/CMakeLists.txt" <<'EOF'
cmake_minimum_required(VERSION 3.25)
project(app C)
find_package(evq REQUIRED)
add_executable(app app.c)
target_link_libraries(app PRIVATE evq::evq)
EOF
cmake -S "$root/cm" -B "$root/cm/build" -DCMAKE_PREFIX_PATH="$root/usr" \
  -DCMAKE_BUILD_RPATH="$libdir" >/dev/null
cmake --build "$root/cm/build" >/dev/null
grep -q "Received event: user.created" <<<"$("$root/cm/build/app")" ||
  fail "the README's program, built with CMake against the packages, failed"

# the tool, its page and its completion
grep -q "evq $version" <<<"$("$root/usr/bin/evq" --version)" || fail "the packaged evq does not run"
(cd "$root" && "$root/usr/bin/evq" demo memory:// >/dev/null) || fail "the packaged evq demo failed"
grep -q "serve" <<<"$(man -M "$root/usr/share/man" -P cat 1 evq 2>/dev/null)" ||
  fail "man evq finds nothing in the package"
grep -q "evq_queue_open" <<<"$(man -M "$root/usr/share/man" -P cat 3 evq_enqueue 2>/dev/null)" ||
  fail "man 3 evq_enqueue finds nothing in the package"
grep -q "redis.prefetch" <<<"$(man -M "$root/usr/share/man" -P cat 7 evq-redis 2>/dev/null)" ||
  fail "man 7 evq-redis finds nothing in the package"
grep -q _evq <<<"$(bash -c "source '$root/usr/share/bash-completion/completions/evq' && complete -p evq")" ||
  fail "the packaged completion does not register"
echo "check-deb: $lib, $dev and $tools unpack, depend on the client libraries, and build and run the README's program"
