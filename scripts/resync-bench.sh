#!/usr/bin/env bash
# Resync benchmark: how fast a backup that missed many writes is brought back, and what the
# resync costs the cluster's write throughput.
#
# It runs a 3-node release cluster on 127.0.0.101-103 (client port 25190, peer port 25191), then:
#   1. baseline: `kvctl bench` for LOAD_SECS with every node up;
#   2. stops a backup, writes REQUESTS puts of VALUE_SIZE bytes (unique keys), restarts it and
#      times its catch-up with no other load: entries/s and MB/s of key+value payload;
#   3. the same again, but with `kvctl bench` running for LOAD_SECS from the moment the backup
#      restarts: the catch-up time under load, and the write throughput while the resync runs.
# "Caught up" means the backup's durable index (as it reports it in `kvctl status --node`)
# reached the primary's last index at the moment the backup restarted; the rate is taken from
# the primary's first contact with the restarted backup (the time from the restart is shown too).
# If the primary had compacted the entries the backup missed, the backup is sent a snapshot of
# the state instead: the script sees the primary's "offering a snapshot" log line, and that
# phase's rate is the state's payload (about one key per log index: every put has a new key).
#
# Usage (from anywhere in the repository):
#   scripts/resync-bench.sh                         # 1,000,000 puts of 100 bytes
#   REQUESTS=100000 LOAD_SECS=10 scripts/resync-bench.sh
# Environment: REQUESTS (1000000), VALUE_SIZE (100), CLIENTS (64), LOAD_SECS (20),
#   RETENTION (log_retention_bytes of the nodes; their default if unset), DIR (a temporary
#   directory if unset), KEEP=1 to keep DIR (logs, data) afterwards.
# Needs: cargo, jq.
set -euo pipefail

REQUESTS=${REQUESTS:-1000000}
VALUE_SIZE=${VALUE_SIZE:-100}
CLIENTS=${CLIENTS:-64}
LOAD_SECS=${LOAD_SECS:-20}
RETENTION=${RETENTION:-}
KEY_BYTES=18 # `kvctl bench` keys are bench-<12 digits>
CLIENT_PORT=25190
PEER_PORT=25191

REPO=$(cd "$(dirname "$0")/.." && pwd)
DIR=${DIR:-$(mktemp -d -t replikv-resync-bench-XXXXXX)}
mkdir -p "$DIR"
command -v jq >/dev/null || { echo "resync-bench: needs jq" >&2; exit 2; }

echo "building release binaries..." >&2
cargo build --release --bins --quiet --manifest-path "$REPO/Cargo.toml"
BIN=${CARGO_TARGET_DIR:-$REPO/target}/release
KVNODE=$BIN/kvnode
KVCTL=$BIN/kvctl

declare -A PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [[ "${KEEP:-0}" == 1 ]]; then
        echo "kept $DIR" >&2
    else
        rm -rf "$DIR"
    fi
}
trap cleanup EXIT

ip() { echo "127.0.0.$((100 + $1))"; }

MEMBERS=()
for id in 1 2 3; do
    MEMBERS+=(--member "$id=$(ip "$id"):$CLIENT_PORT,$(ip "$id"):$PEER_PORT")
done

start_node() {
    local id=$1
    local retention=()
    [[ -n "$RETENTION" ]] && retention=(--log-retention-bytes "$RETENTION")
    "$KVNODE" --id "$id" --client-addr "$(ip "$id"):$CLIENT_PORT" \
        --peer-addr "$(ip "$id"):$PEER_PORT" --data-dir "$DIR/node-$id" \
        --certs-dir "$DIR/certs" "${MEMBERS[@]}" "${retention[@]}" \
        >>"$DIR/node-$id.log" 2>&1 &
    PIDS[$id]=$!
}

# Stops node $1 (SIGTERM: it flushes) after noting its own durable index in STOPPED_AT.
stop_node() {
    local id=$1
    STOPPED_AT=$(kvctl --json status --node "$(ip "$id"):$CLIENT_PORT" | jq .durable_index)
    kill -TERM "${PIDS[$id]}"
    wait "${PIDS[$id]}" 2>/dev/null || true
    unset "PIDS[$id]"
}

kvctl() { "$KVCTL" --config "$DIR/client.toml" "$@"; }

# The primary's view of the cluster, as JSON (retried: an election may be running).
primary_status() {
    local status
    for _ in $(seq 1 100); do
        if status=$(kvctl --json status 2>/dev/null) &&
            [[ $(jq -r .role <<<"$status") == Primary ]]; then
            echo "$status"
            return
        fi
        sleep 0.2
    done
    echo "resync-bench: no primary" >&2
    exit 1
}

member_field() { # status id field
    jq -r --argjson id "$2" ".members[] | select(.member.id == \$id) | .$3 // 0" <<<"$1"
}

bench() { # extra kvctl bench flags...
    kvctl --json --timeout 30s bench --clients "$CLIENTS" --w majority \
        --value-size "$VALUE_SIZE" --key-space 1000000000000 "$@"
}

now() { date +%s.%N; }

# Restarts node $1 (stopped by stop_node) and waits until its durable index reaches the
# primary's last index at the restart. Sets CAUGHT_UP to "entries target-index
# seconds-from-restart seconds-from-first-contact" (the last leaves out the process start and the
# first heartbeat).
# Not run in a subshell: the node it starts must be this shell's child.
restart_and_time_catch_up() {
    local id=$1 status from=$STOPPED_AT target started contact="" durable health
    status=$(primary_status)
    target=$(jq -r .last_index <<<"$status")
    started=$(now)
    start_node "$id"
    while :; do
        # The backup's own durable index (the primary's view of it restarts from 0 after an
        # election); the primary's view of its health, for the progress line.
        durable=$(kvctl --json --timeout 1s status --node "$(ip "$id"):$CLIENT_PORT" 2>/dev/null |
            jq .durable_index) || durable=$from
        status=$(primary_status)
        health=$(member_field "$status" "$id" health)
        if [[ -z "$contact" && "$health" != Unreachable ]]; then contact=$(now); fi
        printf '\r   node %s: %-12s durable index %s of %s   ' "$id" "$health" "$durable" "$target" >&2
        ((durable >= target)) && break
        sleep 0.2
    done
    echo >&2
    local done_at
    done_at=$(now)
    CAUGHT_UP="$((target - from)) $target $(awk -v a="$done_at" -v b="$started" -v c="${contact:-$started}" \
        'BEGIN { print a - b, a - c }')"
}

# Snapshot offers in the nodes' logs so far.
snapshot_offers() { cat "$DIR"/node-*.log | grep -c "offering a snapshot" || true; }

# label entries keys-in-state seconds-from-restart seconds-from-contact snapshots-offered
report_resync() {
    awk -v label="$1" -v entries="$2" -v keys="$3" -v total="$4" -v secs="$5" -v snapshots="$6" \
        -v bytes="$((KEY_BYTES + VALUE_SIZE))" 'BEGIN {
        if (snapshots > 0) {
            rate = keys / secs
            printf "%-28s snapshot of %9d keys in %6.1f s (%.1f s from the restart): %8.0f keys/s, %6.1f MB/s of payload\n",
                label, keys, secs, total, rate, rate * bytes / 1e6
        } else {
            rate = entries / secs
            printf "%-28s log of %9d entries in %6.1f s (%.1f s from the restart): %8.0f entries/s, %6.1f MB/s of payload\n",
                label, entries, secs, total, rate, rate * bytes / 1e6
        }
    }'
}

echo "cluster in $DIR" >&2
hosts=()
for id in 1 2 3; do hosts+=(--node-host "$id=$(ip "$id")"); done
"$KVCTL" certs init --dir "$DIR/certs" --nodes 3 "${hosts[@]}" --client admin:admin >/dev/null
cat >"$DIR/client.toml" <<EOF
nodes = ["$(ip 1):$CLIENT_PORT", "$(ip 2):$CLIENT_PORT", "$(ip 3):$CLIENT_PORT"]
certs_dir = "certs"
client_name = "admin"
timeout_ms = 30000
EOF
for id in 1 2 3; do start_node "$id"; done
status=$(primary_status)
primary=$(jq -r .node_id <<<"$status")
backup=$(jq -r --argjson p "$primary" '[.members[].member.id | select(. != $p)][0]' <<<"$status")
echo "primary: node $primary; the backup that falls behind: node $backup" >&2

echo "1. baseline: ${LOAD_SECS}s of puts, every node up" >&2
baseline=$(bench --duration "${LOAD_SECS}s" | jq .throughput)

echo "2. node $backup stopped; $REQUESTS puts of $VALUE_SIZE bytes" >&2
stop_node "$backup"
outage=$(bench --requests "$REQUESTS" | jq .throughput)
echo "   restarting node $backup, no other load" >&2
offers=$(snapshot_offers)
restart_and_time_catch_up "$backup"
read -r idle_entries idle_keys idle_total idle_secs <<<"$CAUGHT_UP"
idle_snapshots=$(($(snapshot_offers) - offers))

echo "3. node $backup stopped again; $REQUESTS more puts" >&2
stop_node "$backup"
bench --requests "$REQUESTS" >/dev/null
echo "   restarting node $backup while ${LOAD_SECS}s of puts run" >&2
bench --duration "${LOAD_SECS}s" >"$DIR/during.json" &
load_pid=$!
offers=$(snapshot_offers)
restart_and_time_catch_up "$backup"
read -r busy_entries busy_keys busy_total busy_secs <<<"$CAUGHT_UP"
busy_snapshots=$(($(snapshot_offers) - offers))
wait "$load_pid"
during=$(jq .throughput "$DIR/during.json")


echo
echo "resync benchmark: $REQUESTS puts of $VALUE_SIZE-byte values missed by one backup, $CLIENTS clients, w=majority"
report_resync "catch-up, no other load" "$idle_entries" "$idle_keys" "$idle_total" "$idle_secs" \
    "$idle_snapshots"
report_resync "catch-up under write load" "$busy_entries" "$busy_keys" "$busy_total" "$busy_secs" \
    "$busy_snapshots"
printf '%-28s %8.0f puts/s\n' "writes, all nodes up" "$baseline"
printf '%-28s %8.0f puts/s\n' "writes, one backup down" "$outage"
printf '%-28s %8.0f puts/s (the %ss run that started with the restart)\n' \
    "writes during the resync" "$during" "$LOAD_SECS"
echo "snapshots offered: $idle_snapshots, then $busy_snapshots (log_retention_bytes: ${RETENTION:-node default})"
