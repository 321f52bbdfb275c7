#!/usr/bin/env bash
# The ABI check (make check-abi): compares the built libevq.so with the ABI
# of the release it must stay compatible with, abi/libevq.so.0.abi (an
# abidw dump of 0.2.0, the first release of the stable ABI), using
# Debian's abigail-tools.  Fails on a removed or changed function, a
# changed public type, a field inserted or retyped in a public struct;
# lets pass added functions and fields appended to the sized structs
# (abi/evq.suppr; evq.h, "The ABI").
#
#   scripts/abi.sh check LIB       the check
#   scripts/abi.sh baseline LIB    writes abi/libevq.so.0.abi from LIB (at a
#                                  release that may break the ABI: a new
#                                  soname)
set -euo pipefail
mode=${1:?usage: abi.sh check|baseline LIB}
lib=$(realpath "${2:?usage: abi.sh check|baseline LIB}")
cd "$(dirname "$0")/.."
base=abi/libevq.so.0.abi

command -v abidiff >/dev/null || { echo "abi.sh: abidiff is missing (apt-get install abigail-tools)" >&2; exit 1; }
[ -e "$lib" ] || { echo "abi.sh: no library at $lib" >&2; exit 1; }

dump() { # the public part of LIB, its paths relative to the sources
  abidw --headers-dir include --drop-private-types --no-corpus-path \
        --drop-undefined-syms "$1" | sed "s#'$PWD/#'#g; s#'$PWD'#'.'#g"
}

if [ "$mode" = baseline ]; then
  dump "$lib" >"$base"
  echo "abi.sh: wrote $base"
  exit 0
fi
[ "$mode" = check ] || { echo "abi.sh: unknown mode $mode" >&2; exit 2; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
diff_abi() { # abidiff's exit: bit 4 an ABI change, 8 an incompatible one
  abidiff --no-added-syms --suppressions abi/evq.suppr "$@" >"$tmp/report" 2>&1
}

# The check can fail: the baseline against itself less one function must
# be reported as an incompatible change (exit bit 8), not a tool error.
grep -v "<elf-symbol name='evq_version'" "$base" >"$tmp/less.abi"
rc=0
diff_abi "$base" "$tmp/less.abi" || rc=$?
if [ $(( rc & 8 )) -eq 0 ] || [ $(( rc & 1 )) -ne 0 ]; then
  echo "abi.sh: abidiff (exit $rc) did not see a removed function; the check is blind" >&2
  cat "$tmp/report" >&2
  exit 1
fi
grep -q "evq_version" "$tmp/report" || { echo "abi.sh: abidiff's report does not name the removed function" >&2; exit 1; }

dump "$lib" >"$tmp/now.abi"
if ! diff_abi "$base" "$tmp/now.abi"; then
  echo "abi.sh: $lib breaks the ABI of $base:" >&2
  cat "$tmp/report" >&2
  echo "abi.sh: append fields to the sized structs only, keep every" \
       "function's signature; a deliberate break needs a new soname and" \
       "'scripts/abi.sh baseline'" >&2
  exit 1
fi
echo "abi.sh: $lib keeps the ABI of $base ($(grep -c '<elf-symbol' "$base") symbols)"
