#!/usr/bin/env bash
# A/B of two kvnode binaries: writes per second and the nodes' CPU per write at w=majority.
#
# For each binary in turn (the pair alternated TRIALS times): a fresh 3-node `kvnode dev`
# cluster on 127.0.0.191-193, a warm-up, then ROUNDS rounds of the workload; node CPU is the
# three nodes' utime + stime (from /proc/PID/stat) over each measured command.
#
# Workloads (WORKLOAD):
# - `puts` (default): `kvctl --json bench --duration SECONDS --clients 64 --w majority`.
# - `watch`: issue 14's cost of watchers (docs/BENCHMARKS.md, "Watches"): each round runs
#   `watch_latency 0 WRITES 64` (no watchers: the baseline), then
#   `watch_latency spread 1000 WRITES 64` (1,000 watchers, a prefix each), and prints both.
#
# Usage: scripts/cpu-ab.sh OLD_KVNODE NEW_KVNODE
#   e.g. build the old one in a worktree: git worktree add /tmp/old REV &&
#        (cd /tmp/old && cargo build --release --bin kvnode) && cp /tmp/old/target/release/kvnode /tmp/kvnode-old
# Environment: TRIALS (2), ROUNDS (2), SECONDS_PER_ROUND (10, puts), WRITES (50000, watch),
# KVCTL (target/release/kvctl), WATCH_LATENCY (target/release/examples/watch_latency; build it
# with `cargo build --release --example watch_latency`).
# Needs: jq.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
OLD=${1:?usage: cpu-ab.sh OLD_KVNODE NEW_KVNODE}
NEW=${2:?usage: cpu-ab.sh OLD_KVNODE NEW_KVNODE}
TRIALS=${TRIALS:-2}
ROUNDS=${ROUNDS:-2}
SECONDS_PER_ROUND=${SECONDS_PER_ROUND:-10}
WRITES=${WRITES:-50000}
WORKLOAD=${WORKLOAD:-puts}
KVCTL=${KVCTL:-$REPO/target/release/kvctl}
WATCH_LATENCY=${WATCH_LATENCY:-$REPO/target/release/examples/watch_latency}
command -v jq >/dev/null || { echo "cpu-ab: needs jq" >&2; exit 2; }
case $WORKLOAD in
    puts) ;;
    watch) [ -x "$WATCH_LATENCY" ] || {
        echo "cpu-ab: $WATCH_LATENCY is missing: cargo build --release --example watch_latency" >&2
        exit 2
    } ;;
    *) echo "cpu-ab: WORKLOAD is puts or watch, not $WORKLOAD" >&2; exit 2 ;;
esac

stop_cluster() { # dir
    pkill -f -- "--first-ip 127.0.0.191" || true
    pkill -f -- "--config $1/node-" || true
    sleep 2
}

node_ticks() { # pids...
    local total=0 pid
    for pid in "$@"; do total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat"))); done
    echo "$total"
}

report() { # label round what writes/s seconds ticks
    awk -v label="$1" -v round="$2" -v what="$3" -v rate="$4" -v secs="$5" -v ticks="$6" \
        -v hz="$(getconf CLK_TCK)" 'BEGIN {
        printf "%s round %d, %s: %.0f writes/s, node CPU %.2f s, %.0f us per write\n",
            label, round, what, rate, ticks / hz, ticks / hz * 1e6 / (rate * secs)
    }'
}

# One watch_latency run (the arguments after --): prints the report line and its own output.
watch_round() { # label round what pids -- args...
    local label=$1 round=$2 what=$3 pids=$4 before after output rate
    shift 5
    before=$(node_ticks $pids)
    output=$("$WATCH_LATENCY" "$@")
    after=$(node_ticks $pids)
    rate=$(sed -n 's/.*(\([0-9]*\)\/s).*/\1/p' <<<"$output")
    # Node CPU over the whole run (opening the watchers too), per write.
    report "$label" "$round" "$what" "$rate" "$(awk -v n="$WRITES" -v r="$rate" \
        'BEGIN { print n / r }')" $((after - before))
    echo "    $output"
}

measure() { # binary label
    local bin=$1 label=$2 dir
    dir=$(mktemp -d -t replikv-cpu-ab-XXXXXX)
    "$bin" dev --dir "$dir" --first-ip 127.0.0.191 --base-port 27600 --resp-port 27610 \
        >"$dir.log" 2>&1 &
    sleep 4
    local kvctl=("$KVCTL" --config "$dir/client.toml")
    local pids
    pids=$(pgrep -f -- "--config $dir/node-" | tr '\n' ' ')
    if [ "$WORKLOAD" = watch ]; then
        export REPLIKV_CONFIG=$dir/client.toml
        "$WATCH_LATENCY" 0 20000 64 >/dev/null
        for round in $(seq 1 "$ROUNDS"); do
            watch_round "$label" "$round" "no watchers" "$pids" -- 0 "$WRITES" 64
            watch_round "$label" "$round" "1000 watchers" "$pids" -- spread 1000 "$WRITES" 64
        done
    else
        "${kvctl[@]}" bench --duration 5s --clients 64 --w majority >/dev/null
        for round in $(seq 1 "$ROUNDS"); do
            local before after throughput
            before=$(node_ticks $pids)
            throughput=$("${kvctl[@]}" --json bench --duration "${SECONDS_PER_ROUND}s" \
                --clients 64 --w majority | jq .throughput)
            after=$(node_ticks $pids)
            report "$label" "$round" puts "$throughput" "$SECONDS_PER_ROUND" $((after - before))
        done
    fi
    stop_cluster "$dir"
    rm -rf "$dir" "$dir.log"
}

for _ in $(seq 1 "$TRIALS"); do
    measure "$OLD" old
    measure "$NEW" new
done
