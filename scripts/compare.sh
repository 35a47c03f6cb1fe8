#!/usr/bin/env bash
# Side by side (issue 11): replikv (`kvnode dev`, 3 nodes), Redis 7 (a primary and 2 replicas,
# appendonly yes, appendfsync always) and etcd 3.4 (3 members), all on loopback, each in its own
# temporary directory, driven by one closed-loop load generator (examples/compare_load),
# workload by workload, interleaved; prints one table of medians, ratios and issue 11's goals.
# Every process it starts is stopped on exit (a trap), and the temporary directory removed.
#
# Usage: scripts/compare.sh [--rounds 3] [--seconds 10] [--warmup 2] [--clients 64]
#                           [--systems replikv,redis,etcd] [--workloads put-majority,...]
#                           (systems also: replikv-http, replikv-resp: replikv's HTTP and RESP
#                           doors, on the same kvnode dev cluster)
#                           [--json FILE] [--dir BASE] [--keep] [--no-noop] [--no-build]
#                           [-- more flags of `compare_load run`]
# Installs nothing: it names what is missing. On Debian:
#   apt-get install -y redis-server redis-tools etcd-server etcd-client
# Ports: 127.0.0.1:$PORT_BASE.. for Redis, etcd and the no-op server, $PORT_BASE+40 on
# 127.0.0.41-43 for replikv (PORT_BASE=26400 unless set in the environment).
# The method and what each flag means: docs/BENCHMARKS.md, "Side by side with Redis and etcd".
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD

rounds=3 seconds=10 warmup=2 clients=64
systems=replikv,redis,etcd
workloads=put-majority,put-all,put-one,put-single-client,get-linearizable
json="" base="${TMPDIR:-/tmp}" keep=0 noop=1 build=1
extra=()
usage() { sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; }
while (($#)); do
    case "$1" in
        --rounds) rounds=$2; shift 2 ;;
        --seconds) seconds=$2; shift 2 ;;
        --warmup) warmup=$2; shift 2 ;;
        --clients) clients=$2; shift 2 ;;
        --systems) systems=$2; shift 2 ;;
        --workloads) workloads=$2; shift 2 ;;
        --json) json=$2; shift 2 ;;
        --dir) base=$2; shift 2 ;;
        --keep) keep=1; shift ;;
        --no-noop) noop=0; shift ;;
        --no-build) build=0; shift ;;
        --) shift; extra=("$@"); break ;;
        -h|--help) usage; exit 0 ;;
        *) echo "compare.sh: unknown flag $1" >&2; usage >&2; exit 2 ;;
    esac
done
wants() { [[ ",$systems," == *",$1,"* ]]; }
# Any replikv system (its QUIC client, or one of its doors) needs the dev cluster.
wants_replikv() { wants replikv || wants replikv-http || wants replikv-resp; }

# --- what is needed, and what is missing ---
missing=()
if wants redis; then
    command -v redis-server >/dev/null || missing+=("redis-server (package redis-server)")
    command -v redis-cli >/dev/null || missing+=("redis-cli (package redis-tools)")
fi
if wants etcd; then
    command -v etcd >/dev/null || missing+=("etcd (package etcd-server)")
    command -v etcdctl >/dev/null || missing+=("etcdctl (package etcd-client)")
fi
command -v cargo >/dev/null || missing+=("cargo (a Rust toolchain)")
if ((${#missing[@]})); then
    printf 'compare.sh: missing %s\n' "${missing[@]}" >&2
    echo "install with: apt-get install -y redis-server redis-tools etcd-server etcd-client" >&2
    exit 2
fi
if wants redis; then
    version=$(redis-server --version | sed -n 's/.*v=\([0-9]*\)\..*/\1/p')
    if [[ "${version:-0}" -lt 7 ]]; then
        echo "compare.sh: warning: redis-server is version ${version:-unknown}, issue 11 compares with Redis 7" >&2
    fi
fi

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"
if ((build)); then
    cargo build --release --quiet --bin kvnode --bin kvctl --example compare_load
fi
bin="$CARGO_TARGET_DIR/release"
load="$bin/examples/compare_load"

port_base=${PORT_BASE:-26400}
redis_ports=($((port_base)) $((port_base + 1)) $((port_base + 2)))
etcd_client_ports=($((port_base + 10)) $((port_base + 11)) $((port_base + 12)))
etcd_peer_ports=($((port_base + 20)) $((port_base + 21)) $((port_base + 22)))
noop_port=$((port_base + 30))
replikv_port=$((port_base + 40))
replikv_first_ip=127.0.0.41

work=$(mktemp -d "$base/replikv-compare.XXXXXX")
filesystem=$(stat -f -c %T "$work")
if [[ "$filesystem" == tmpfs || "$filesystem" == ramfs ]]; then
    echo "compare.sh: warning: $work is on $filesystem, where fsync costs nothing; use --dir on a disk" >&2
fi
started=()
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    for pid in "${started[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${started[@]}"; do
        # `kvnode dev` stops its nodes on SIGTERM; give everyone a few seconds, then SIGKILL.
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if ((keep)); then
        echo "kept $work" >&2
    else
        rm -rf "$work"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Retries "$@" every 0.2 s for up to $1 seconds (first argument), quietly.
wait_for() {
    local seconds=$1
    shift
    for _ in $(seq $((seconds * 5))); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.2
    done
    echo "compare.sh: gave up waiting for: $*" >&2
    return 1
}
join() { local IFS=,; echo "$*"; }

args=(run --rounds "$rounds" --seconds "$seconds" --warmup-seconds "$warmup" --clients "$clients"
    --workloads "$workloads")
driven=()

# --- Redis: a primary and two replicas, AOF fsynced on every write ---
if wants redis; then
    redis_pids=()
    for i in 0 1 2; do
        dir="$work/redis-$i"
        mkdir -p "$dir"
        replica=()
        if ((i > 0)); then replica=(--replicaof 127.0.0.1 "${redis_ports[0]}"); fi
        redis-server --port "${redis_ports[$i]}" --bind 127.0.0.1 --protected-mode no \
            --dir "$dir" --appendonly yes --appendfsync always --save "" \
            --daemonize no --logfile "$dir/redis.log" "${replica[@]}" &
        redis_pids+=($!)
        started+=($!)
    done
    for port in "${redis_ports[@]}"; do
        wait_for 30 redis-cli -p "$port" ping
    done
    replicas_online() {
        [[ $(redis-cli -p "${redis_ports[0]}" info replication | grep -c 'state=online') -eq 2 ]]
    }
    wait_for 60 replicas_online
    for port in "${redis_ports[@]}"; do
        settings="$(redis-cli -p "$port" config get appendonly | tail -1) $(redis-cli -p "$port" config get appendfsync | tail -1)"
        if [[ "$settings" != "yes always" ]]; then
            echo "compare.sh: Redis on :$port runs with appendonly, appendfsync = $settings, not yes, always" >&2
            exit 1
        fi
    done
    echo "Redis $(redis-server --version | sed -n 's/.*v=\([^ ]*\).*/\1/p'): primary 127.0.0.1:${redis_ports[0]}, replicas :${redis_ports[1]} :${redis_ports[2]} (pids $(join "${redis_pids[@]}"))" >&2
    args+=(--redis "127.0.0.1:${redis_ports[0]}" --redis-pids "$(join "${redis_pids[@]}")")
    driven+=(redis)
fi

# --- etcd: three members ---
if wants etcd; then
    etcd_pids=()
    cluster=""
    for i in 0 1 2; do
        cluster+="${cluster:+,}m$i=http://127.0.0.1:${etcd_peer_ports[$i]}"
    done
    for i in 0 1 2; do
        dir="$work/etcd-$i"
        mkdir -p "$dir"
        etcd --name "m$i" --data-dir "$dir/data" \
            --listen-client-urls "http://127.0.0.1:${etcd_client_ports[$i]}" \
            --advertise-client-urls "http://127.0.0.1:${etcd_client_ports[$i]}" \
            --listen-peer-urls "http://127.0.0.1:${etcd_peer_ports[$i]}" \
            --initial-advertise-peer-urls "http://127.0.0.1:${etcd_peer_ports[$i]}" \
            --initial-cluster "$cluster" --initial-cluster-state new \
            --initial-cluster-token replikv-compare --logger zap --log-level warn \
            >"$dir/etcd.log" 2>&1 &
        etcd_pids+=($!)
        started+=($!)
    done
    endpoints=$(join "${etcd_client_ports[@]/#/127.0.0.1:}")
    wait_for 60 etcdctl --endpoints "$endpoints" endpoint health
    echo "etcd $(etcd --version | sed -n 's/^etcd Version: //p'): members $endpoints (pids $(join "${etcd_pids[@]}"))" >&2
    args+=(--etcd "$endpoints" --etcd-pids "$(join "${etcd_pids[@]}")")
    driven+=(etcd)
fi

# --- replikv: kvnode dev, three nodes (HTTP door on the port after the peer port, RESP door on
# the one after that) ---
if wants_replikv; then
    dir="$work/replikv"
    mkdir -p "$dir"
    "$bin/kvnode" dev --dir "$dir" --base-port "$replikv_port" --first-ip "$replikv_first_ip" \
        --resp-port "$((replikv_port + 3))" >"$dir/dev.out" 2>&1 &
    dev_pid=$!
    started+=("$dev_pid")
    wait_for 60 test -f "$dir/client.toml"
    wait_for 60 "$bin/kvctl" --config "$dir/client.toml" put compare-probe ready
    node_pids=$(pgrep -P "$dev_pid" | paste -sd, -)
    echo "replikv: kvnode dev on $replikv_first_ip-43:$replikv_port (node pids $node_pids)" >&2
    args+=(--replikv-config "$dir/client.toml" --replikv-pids "$node_pids")
    ips=(127.0.0.41 127.0.0.42 127.0.0.43)
    args+=(--replikv-http "$(join "${ips[@]/%/:$((replikv_port + 2))}")")
    args+=(--replikv-resp "$(join "${ips[@]/%/:$((replikv_port + 3))}")")
    # The doors take the dev cluster's admin credentials, which `kvnode dev` keeps beside
    # client.toml once a primary has accepted them.
    wait_for 60 test -s "$dir/admin.token"
    args+=(--replikv-http-authorization "Bearer $(cat "$dir/admin.token")")
    args+=(--replikv-resp-auth "admin:$(cat "$dir/admin.password")")
    for system in replikv replikv-http replikv-resp; do
        if wants "$system"; then driven+=("$system"); fi
    done
fi

# --- the no-op server: the generator's own ceiling ---
if ((noop)); then
    "$load" noop-server --listen "127.0.0.1:$noop_port" 2>"$work/noop.log" &
    started+=($!)
    args+=(--noop "127.0.0.1:$noop_port" --noop-pids "$!")
    wait_for 10 bash -c "exec 3<>/dev/tcp/127.0.0.1/$noop_port"
fi

if [[ -n "$json" ]]; then args+=(--json "$json"); fi
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg); $(nproc) CPUs; data in $work ($filesystem)" >&2
# The systems in one fixed order, whatever order they were started in.
order=()
for system in replikv replikv-http replikv-resp redis etcd; do
    if [[ " ${driven[*]} " == *" $system "* ]]; then order+=("$system"); fi
done
# In the background and waited for, so that a signal to this script stops the run at once (bash
# runs a trap only after the foreground command ends, but interrupts `wait`).
"$load" "${args[@]}" --systems "$(join "${order[@]}")" "${extra[@]}" &
generator=$!
started+=("$generator")
wait "$generator"
