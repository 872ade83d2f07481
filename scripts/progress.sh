# Progress for the long steps of scripts/install.sh, install_vllm_cpu.sh and test.sh (sourced,
# not run). `pip install -q` and a C++ build print nothing for minutes; a silent CI log cannot be
# told from a hung one. So each long step announces itself with what it does and how long it takes
# on the 2-core CPU machine, prints a heartbeat line every PROGRESS_HEARTBEAT_S seconds (default 30,
# one line each: readable in a CI log, unlike pip's progress bars) while it runs, and says when it
# is done and how long it took.
#
#   progress_step TAG "what it does" "about 2 min" CMD [ARGS...]   # returns CMD's exit status
#
# prints, for example:
#   [install] 3/3 building litelvlm_kernels with its C++ extension (about 2 min on 2 cores) ...
#   [install] 3/3   ... still running: 30 s so far (about 2 min on 2 cores)
#   [install] 3/3   done in 97 s
#
#   CMD 2>&1 | prefix_lines "[main]"    # every line of CMD's output, as it comes, after "[main] "

PROGRESS_HEARTBEAT_S=${PROGRESS_HEARTBEAT_S:-30}

progress_step() {
    local tag=$1 what=$2 expected=$3
    shift 3
    case "$PROGRESS_HEARTBEAT_S" in
        '' | *[!0-9]* | 0) echo "$tag PROGRESS_HEARTBEAT_S must be a whole number of seconds > 0, got '$PROGRESS_HEARTBEAT_S'" >&2; return 2 ;;
    esac
    echo "$tag $what ($expected) ..."
    local t0=$SECONDS parent=$$
    # The heartbeat: `sleep` gets /dev/null as stdout so that, once the loop is killed, a sleep
    # still running holds no pipe open (a caller reading our output to EOF would wait for it).
    # A background job of a non-interactive shell ignores SIGINT, so the loop also stops by itself
    # once this script ($$) is gone (Ctrl-C, or `set -e` leaving before the kill below).
    (
        while sleep "$PROGRESS_HEARTBEAT_S" >/dev/null 2>&1 && kill -0 "$parent" 2>/dev/null; do
            echo "$tag   ... still running: $((SECONDS - t0)) s so far ($expected)"
        done
    ) &
    local beat=$! rc=0
    "$@" || rc=$?
    kill "$beat" 2>/dev/null || true
    wait "$beat" 2>/dev/null || true
    if [ "$rc" = 0 ]; then
        echo "$tag   done in $((SECONDS - t0)) s"
    else
        echo "$tag   FAILED (exit $rc) after $((SECONDS - t0)) s: $what" >&2
    fi
    return "$rc"
}

PROGRESS_FLUSH_S=${PROGRESS_FLUSH_S:-20}

# prefix_lines TAG: copy stdin to stdout, each line as soon as it is complete and prefixed with TAG,
# so that two commands streaming into one log (scripts/test.sh runs two pytest suites side by side)
# never cut into each other's lines: each line is one printf, i.e. one write. `pytest -q` writes its
# progress dots with no newline for ~80 tests (minutes under the Triton interpreter); a partial line
# that has waited PROGRESS_FLUSH_S seconds (default 20) is printed as a line of its own, at a moment
# when no output is arriving, so the dots still show while they come. `read -t` keeps what it read
# before timing out (bash >= 4).
prefix_lines() {
    local tag=$1 line pending="" last=$SECONDS rc
    while :; do
        rc=0
        IFS= read -r -t 1 line || rc=$?
        if [ "$rc" = 0 ]; then
            printf '%s %s\n' "$tag" "$pending$line"
            pending="" last=$SECONDS
            continue
        fi
        pending+=$line
        if [ "$rc" -le 128 ]; then  # end of input
            [ -z "$pending" ] || printf '%s %s\n' "$tag" "$pending"
            return 0
        fi
        # flush only when nothing came this second: bytes that did may be the start of a write that
        # the timeout cut, and its rest belongs on the same line
        if [ -z "$line" ] && [ -n "$pending" ] && [ $((SECONDS - last)) -ge "$PROGRESS_FLUSH_S" ]; then
            printf '%s %s\n' "$tag" "$pending"
            pending="" last=$SECONDS
        fi
    done
}
