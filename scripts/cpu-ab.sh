#!/usr/bin/env bash
# A/B of two kvnode binaries: puts per second and the nodes' CPU per put at w=majority.
#
# For each binary in turn (the pair alternated TRIALS times): a fresh 3-node `kvnode dev`
# cluster on 127.0.0.191-193, a 5 s warm-up, then ROUNDS rounds of
# `kvctl --json bench --duration SECONDS --clients 64 --w majority`; node CPU is the three
# nodes' utime + stime (from /proc/PID/stat) over the round.
#
# Usage: scripts/cpu-ab.sh OLD_KVNODE NEW_KVNODE
#   e.g. build the old one in a worktree: git worktree add /tmp/old REV &&
#        (cd /tmp/old && cargo build --release --bin kvnode) && cp /tmp/old/target/release/kvnode /tmp/kvnode-old
# Environment: TRIALS (2), ROUNDS (2), SECONDS_PER_ROUND (10), KVCTL (target/release/kvctl).
# Needs: jq.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
OLD=${1:?usage: cpu-ab.sh OLD_KVNODE NEW_KVNODE}
NEW=${2:?usage: cpu-ab.sh OLD_KVNODE NEW_KVNODE}
TRIALS=${TRIALS:-2}
ROUNDS=${ROUNDS:-2}
SECONDS_PER_ROUND=${SECONDS_PER_ROUND:-10}
KVCTL=${KVCTL:-$REPO/target/release/kvctl}
command -v jq >/dev/null || { echo "cpu-ab: needs jq" >&2; exit 2; }

stop_cluster() { # dir
    pkill -f -- "--first-ip 127.0.0.191" || true
    pkill -f -- "--config $1/node-" || true
    sleep 2
}

measure() { # binary label
    local bin=$1 label=$2 dir
    dir=$(mktemp -d -t replikv-cpu-ab-XXXXXX)
    "$bin" dev --dir "$dir" --first-ip 127.0.0.191 --base-port 27600 --resp-port 27610 \
        >"$dir.log" 2>&1 &
    sleep 4
    local kvctl=("$KVCTL" --config "$dir/client.toml")
    "${kvctl[@]}" bench --duration 5s --clients 64 --w majority >/dev/null
    local pids
    pids=$(pgrep -f -- "--config $dir/node-" | tr '\n' ' ')
    for round in $(seq 1 "$ROUNDS"); do
        local before=0 after=0 throughput pid
        for pid in $pids; do before=$((before + $(awk '{print $14 + $15}' "/proc/$pid/stat"))); done
        throughput=$("${kvctl[@]}" --json bench --duration "${SECONDS_PER_ROUND}s" --clients 64 \
            --w majority | jq .throughput)
        for pid in $pids; do after=$((after + $(awk '{print $14 + $15}' "/proc/$pid/stat"))); done
        awk -v label="$label" -v round="$round" -v rate="$throughput" -v ticks=$((after - before)) \
            -v secs="$SECONDS_PER_ROUND" -v hz="$(getconf CLK_TCK)" 'BEGIN {
            printf "%s round %d: %.0f puts/s, node CPU %.2f s, %.0f us per put\n",
                label, round, rate, ticks / hz, ticks / hz * 1e6 / (rate * secs)
        }'
    done
    stop_cluster "$dir"
    rm -rf "$dir" "$dir.log"
}

for _ in $(seq 1 "$TRIALS"); do
    measure "$OLD" old
    measure "$NEW" new
done
