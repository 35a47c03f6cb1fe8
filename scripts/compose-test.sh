#!/usr/bin/env bash
# The compose test: the 3-node cluster of deploy/docker-compose.yml in containers, end to end.
#
#   scripts/compose-test.sh [BIN_DIR]
#
# 1. builds the image FROM scratch out of the release binaries in BIN_DIR (default
#    target/release: CI built them for `cargo test --release` already);
# 2. `docker-compose up -d`, waits until every node's healthcheck passes;
# 3. writes a key through one node's HTTP door (TLS, admin client certificate), reads it back
#    through every node's door, and with kvctl on the host over the published QUIC ports;
# 4. `docker kill`s the primary's container and checks that writes continue through another
#    node;
# 5. starts the container again and checks that it catches up (a stale read on it sees the write
#    made while it was down);
# 6. `docker-compose down -v`, also when a step fails.
#
# Docker missing is a failure, never a skip: this test exists to show the deployment works.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin_dir="${1:-${CARGO_TARGET_DIR:-$root/target}/release}"
project="replikv-compose-test"
compose=(docker-compose --project-name "$project" --project-directory "$root/deploy" -f "$root/deploy/docker-compose.yml")
# Patience for anything that waits (an election, a restart): bounds a failure, does not time a pass.
patience=60

fail() {
    echo "compose-test: FAILED: $*" >&2
    exit 1
}

for tool in docker docker-compose curl; do
    command -v "$tool" >/dev/null 2>&1 || fail "$tool is not installed (this test needs Docker, docker-compose and curl; it is never skipped)"
done
docker info >/dev/null 2>&1 || fail "the Docker daemon does not answer (docker info failed)"

# Settings from deploy/.env, for the published ports.
set -a
# shellcheck source=../deploy/.env
. "$root/deploy/.env"
set +a
export REPLIKV_IMAGE="replikv:compose-test"

work="$(mktemp -d)"
cleanup() {
    status=$?
    if [ "$status" -ne 0 ]; then
        echo "--- container logs (last lines) ---" >&2
        "${compose[@]}" logs --tail 40 >&2 || true
    fi
    "${compose[@]}" down -v --remove-orphans >/dev/null 2>&1 || true
    rm -rf "$work"
    exit "$status"
}
trap cleanup EXIT

"$root/deploy/build-image.sh" "$bin_dir" "$REPLIKV_IMAGE"
"${compose[@]}" down -v --remove-orphans >/dev/null 2>&1 || true
"${compose[@]}" up -d

published_port() {
    case "$1" in
        1) echo "$KV1_HTTP_PUBLISHED" ;;
        2) echo "$KV2_HTTP_PUBLISHED" ;;
        3) echo "$KV3_HTTP_PUBLISHED" ;;
    esac
}

container() {
    "${compose[@]}" ps -q "kv$1"
}

wait_healthy() {
    local id=$1 deadline=$((SECONDS + patience))
    until [ "$(docker inspect -f '{{.State.Health.Status}}' "$(container "$id")")" = healthy ]; do
        [ "$SECONDS" -lt "$deadline" ] || fail "kv$id is not healthy after ${patience}s"
        sleep 1
    done
}

for id in 1 2 3; do
    wait_healthy "$id"
done
echo "every node is healthy"

# The admin token: the one-shot admin-token service records it once the nodes are healthy.
token_service="$("${compose[@]}" ps -q admin-token)"
[ -n "$token_service" ] || fail "no admin-token container"
[ "$(docker wait "$token_service")" = 0 ] || fail "the admin-token service failed: $(docker logs "$token_service" 2>&1 | tail -5)"
# The certificates and the token live in the shared volume; the finished setup containers hold it.
docker cp "$("${compose[@]}" ps -q certs):/certs" "$work/certs"
docker cp "$token_service:/certs/admin.token" "$work/certs/admin.token"
token="$(cat "$work/certs/admin.token")"
[ -n "$token" ] || fail "the admin token is empty"
kv() { # kv NODE METHOD PATH [curl args...]: with the admin token, as an HTTP client would
    local id=$1 method=$2 path=$3
    shift 3
    curl --silent --show-error --max-time 30 --request "$method" \
        --cacert "$work/certs/ca.pem" --header "Authorization: Bearer $token" \
        "https://127.0.0.1:$(published_port "$id")$path" "$@"
}
# Without the token (and without a client certificate) the door refuses: 401.
[ "$(curl --silent --output /dev/null --write-out '%{http_code}' --cacert "$work/certs/ca.pem" \
    "https://127.0.0.1:$(published_port 1)/v1/kv/compose-key")" = 401 ] || fail "a request without a token was not refused with 401"

# Anything from the status: the primary's id.
primary_of() {
    kv "$1" GET /v1/status | grep -o '"primary":[0-9]*' | cut -d: -f2
}

eventually() { # eventually WHAT COMMAND...: retries COMMAND until it succeeds or patience runs out
    local what=$1 deadline=$((SECONDS + patience))
    shift
    until "$@" >/dev/null 2>&1; do
        [ "$SECONDS" -lt "$deadline" ] || fail "$what: not within ${patience}s"
        sleep 1
    done
}

reads_back() { # reads_back NODE KEY VALUE [CONSISTENCY]
    local answer
    answer="$(kv "$1" GET "/v1/kv/$2?consistency=${4:-linearizable}")"
    [ "$answer" = "$3" ]
}

writes() { # writes NODE KEY VALUE
    kv "$1" PUT "/v1/kv/$2?w=majority&timeout=2s" --fail --data-binary "$3"
}

eventually "a primary is known" primary_of 1
eventually "the first write" writes 1 compose-key before-failover
for id in 1 2 3; do
    eventually "kv$id reads the write back" reads_back "$id" compose-key before-failover
done
echo "wrote through kv1 and read back through every node"

# kvctl from the host, over the published QUIC client ports.
cat >"$work/client.toml" <<TOML
nodes = ["127.0.0.1:$KV1_CLIENT_PUBLISHED", "127.0.0.1:$KV2_CLIENT_PUBLISHED", "127.0.0.1:$KV3_CLIENT_PUBLISHED"]
certs_dir = "$work/certs"
client_name = "admin"
TOML
kvctl_reads() {
    [ "$("$bin_dir/kvctl" --config "$work/client.toml" --timeout 10s get compose-key)" = before-failover ]
}
eventually "kvctl on the host reads the write" kvctl_reads
echo "kvctl on the host reads it too"

primary="$(primary_of 1)"
[ -n "$primary" ] || fail "no primary in kv1's status"
survivor=$((primary % 3 + 1))
docker kill "$(container "$primary")" >/dev/null
echo "killed kv$primary, the primary"
eventually "a write through kv$survivor after the primary died" writes "$survivor" compose-key after-failover
eventually "kv$survivor reads the new value" reads_back "$survivor" compose-key after-failover
echo "writes continue through kv$survivor"

docker start "$(container "$primary")" >/dev/null
wait_healthy "$primary"
eventually "kv$primary catches up" reads_back "$primary" compose-key after-failover stale
echo "kv$primary restarted and caught up"
echo "compose-test: passed"
