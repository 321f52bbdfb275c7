#!/usr/bin/env bash
# The bash completion (completion/evq.bash) against the built tool:
# commands, flags, the schemes of this build, option names after -o.
#   test_completion.sh EVQ_TOOL
set -euo pipefail
tool=$(realpath "$1")
here=$(cd "$(dirname "$0")/../.." && pwd)
bin=$(mktemp -d)
trap 'rm -rf "$bin"' EXIT
ln -s "$tool" "$bin/evq"
export PATH="$bin:$PATH"
# shellcheck source=../../completion/evq.bash
source "$here/completion/evq.bash"
status=0

# complete LINE (the cursor at its end; a trailing space starts a new word)
complete_line() {
  read -r -a COMP_WORDS <<<"$1"
  [[ $1 == *" " ]] && COMP_WORDS+=("")
  COMP_CWORD=$((${#COMP_WORDS[@]} - 1))
  COMPREPLY=()
  _evq
  printf '%s\n' "${COMPREPLY[@]}"
}

expect() { # LINE, a word the completions must hold
  local got
  got=$(complete_line "$1")
  if ! grep -qx -- "$2" <<<"$got"; then
    echo "completion of '$1' lacks '$2': $(tr '\n' ' ' <<<"$got")" >&2
    status=1
  fi
}
refuse() { # LINE, a word the completions must not hold
  if complete_line "$1" | grep -qx -- "$2"; then
    echo "completion of '$1' offers '$2'" >&2
    status=1
  fi
}

expect "evq " produce
expect "evq se" serve
refuse "evq se" produce
expect "evq consume " "sqlite://"
expect "evq consume red" "redis+sentinel://"
expect "evq consume sqlite://x.db q --" "--count"
expect "evq consume sqlite://x.db q --ack " "after-read"
expect "evq serve sqlite://x.db#q --" "--token-file"
expect "evq consume redis://127.0.0.1:6379 q -o " "redis.prefetch="
expect "evq consume redis://127.0.0.1:6379 q -o redis.pre" "redis.prefix="
refuse "evq consume redis://127.0.0.1:6379 q -o " "sqlite.ack_flush_ms="
expect "evq options " "kafka"
expect "evq dead " "replay"
expect "evq help " "schedule"
[ $status -eq 0 ] && echo "completion: commands, flags, schemes and options complete"
exit $status
