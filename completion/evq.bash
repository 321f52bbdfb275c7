# bash completion for evq(1): commands, their flags, the URL schemes this
# build has (from `evq --help`), and queue option names after -o (from
# `evq options SCHEME`, the scheme of the URL on the line).
# Installed as share/bash-completion/completions/evq.

_evq_schemes()
{
    evq --help 2>/dev/null | sed -n 's/^Built with: //p' | tr ' ' '\n'
}

_evq()
{
    local cur prev cmd i url="" scheme=""
    COMPREPLY=()
    cur=${COMP_WORDS[COMP_CWORD]}
    prev=${COMP_WORDS[COMP_CWORD-1]}
    # the commands as `evq --help` lists them (the tool's one table)
    local commands
    commands="$(evq --help 2>/dev/null | sed -n '3,/^$/p' |
        awk '/^  [a-z]/ {print $1}' | tr '|' '\n') help"

    if [ "$COMP_CWORD" -eq 1 ]; then
        COMPREPLY=($(compgen -W "$commands --help" -- "$cur"))
        return
    fi
    cmd=${COMP_WORDS[1]}

    # the first URL on the line names the backend whose options -o takes
    for ((i = 2; i < COMP_CWORD; i++)); do
        case ${COMP_WORDS[i]} in
        *://*) url=${COMP_WORDS[i]}; break ;;
        esac
    done
    scheme=${url%%://*}

    case $prev in
    -o | -O)
        if [ -n "$scheme" ]; then
            local names
            names=$(evq options "$scheme" 2>/dev/null |
                sed -n 's/^  \([a-z][a-z0-9_.]*\)  .*/\1=/p')
            compopt -o nospace 2>/dev/null
            COMPREPLY=($(compgen -W "$names" -- "$cur"))
        fi
        return
        ;;
    --ack)
        COMPREPLY=($(compgen -W "read after-read write" -- "$cur"))
        return
        ;;
    --token-file)
        COMPREPLY=($(compgen -f -- "$cur"))
        return
        ;;
    options)
        COMPREPLY=($(compgen -W "$(_evq_schemes | sed 's,://$,,')" -- "$cur"))
        return
        ;;
    dead)
        COMPREPLY=($(compgen -W "list replay purge" -- "$cur"))
        return
        ;;
    esac

    if [[ $cur == -* ]]; then
        local flags="--help -o"
        case $cmd in
        produce) flags+=" --type --data --source --subject --attr --delay --retry-ms" ;;
        consume) flags+=" --count --timeout --ack --no-ack" ;;
        stats) flags+=" --prometheus" ;;
        pause) flags+=" --status" ;;
        dead) flags+=" --count --timeout" ;;
        schedule) flags+=" --cron --type --data --source --subject --attr --tz --catch-up --for" ;;
        relay) flags+=" -O --once --window --retry-ms" ;;
        serve) flags+=" --listen --token-file --allow-host" ;;
        bench) flags+=" --events --size --producers --workers --batch --warmup --async --queue --keep --json" ;;
        esac
        COMPREPLY=($(compgen -W "$flags" -- "$cur"))
        return
    fi

    # a URL where none was given yet
    if [ -z "$url" ] && [ "$cmd" != options ] && [ "$cmd" != help ]; then
        compopt -o nospace 2>/dev/null
        COMPREPLY=($(compgen -W "$(_evq_schemes)" -- "$cur"))
        return
    fi
    if [ "$cmd" = help ]; then
        COMPREPLY=($(compgen -W "$commands" -- "$cur"))
    fi
}
complete -F _evq evq
