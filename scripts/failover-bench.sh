#!/usr/bin/env bash
# Failover time of a 3-node replikv cluster: SIGKILL the primary, time the first write the new
# primary acknowledges (seen by probes, by a warm client session and by fresh `kvctl put`
# processes), restart the killed node, repeat. Builds the release binaries first.
#
# Usage: scripts/failover-bench.sh [--trials 10] [--json] [--port 27679]
# The measurement itself is examples/failover_bench.rs; its --help lists every option.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo build --release --quiet --bin kvnode --bin kvctl --example failover_bench
exec target/release/examples/failover_bench --kvnode target/release/kvnode \
    --kvctl target/release/kvctl "$@"
