#!/usr/bin/env bash
# Requests/s of the MockGateway (`holysheep mock-server`, in its own process) under wrk, with limits off
# and on, log off and on, plus the 429 path. Each row is the median of RUNS runs; the table is markdown,
# ready for README.md. Everything stays on 127.0.0.1 and every run is bounded by DURATION.
set -euo pipefail
cd "$(dirname "$0")/../.."

PY=${PY:-.venv/bin/python}
RUNS=${RUNS:-5}
DURATION=${DURATION:-5s}
CONNECTIONS=${CONNECTIONS:-64}
WRK_THREADS=${WRK_THREADS:-1}

if ! command -v wrk >/dev/null; then
    apt-get update -qq && apt-get install -y -qq wrk >/dev/null
fi

# Limits high enough that every request passes, so the row measures their bookkeeping; "refused" sets
# them low so nearly every request is answered 429.
PASSING="--rpm 1000000000 --tpm 1000000000000 --concurrency 100000 --window-s 1"
CONFIGS=(
    "limits off, log off|--no-log"
    "limits off, log on|"
    "limits on (all pass), log off|$PASSING --no-log"
    "limits on (all pass), log on|$PASSING"
    "limits on (rpm 1,000: nearly all 429), log on|--rpm 1000 --window-s 1"
)

out=$(mktemp)
server_pid=""
cleanup() {
    if [[ -n $server_pid ]]; then kill "$server_pid" 2>/dev/null || true; fi
    rm -f "$out"
}
trap cleanup EXIT

median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

echo "MockGateway under wrk: $(date -u +%Y-%m-%d), $(nproc) cores, $(wrk --version 2>&1 | head -1 | cut -d' ' -f1-2),"
echo "wrk -t$WRK_THREADS -c$CONNECTIONS -d$DURATION, chat completions (benches/gateway/chat.lua), median of $RUNS runs"
echo
echo "| configuration | requests/s | non-2xx in the last run |"
echo "|---|---:|---:|"
for config in "${CONFIGS[@]}"; do
    name=${config%%|*}
    # shellcheck disable=SC2086  # the flags are meant to split
    "$PY" -m holysheep mock-server --port 0 ${config#*|} >"$out" &
    server_pid=$!
    for _ in $(seq 100); do grep -q serving "$out" && break; sleep 0.1; done
    url=$(grep -o 'http://127.0.0.1:[0-9]*' "$out")
    rates=()
    for _ in $(seq "$RUNS"); do
        report=$(wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"$DURATION" -s benches/gateway/chat.lua "$url")
        rates+=("$(awk '/Requests\/sec/ { print $2 }' <<<"$report")")
        refused=$(awk '/Non-2xx/ { print $5 }' <<<"$report")
    done
    kill -INT "$server_pid"
    wait "$server_pid" || true
    server_pid=""
    printf '| %s | %.0f | %s |\n' "$name" "$(printf '%s\n' "${rates[@]}" | median)" "${refused:-0}"
done
