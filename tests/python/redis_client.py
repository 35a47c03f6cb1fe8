"""Python's `redis` package (PyPI) against one node's RESP door, as its own users write it.

Run by tests/resp.rs (`python_redis_package_works_against_a_backup`) with the door's host and
port, on a 3-node cluster whose RESP doors serve callers without credentials as `readwrite`.
Exits non-zero, with the reason, on the first answer that differs from what Redis gives.
"""

import sys

import redis


def expect(what, got, want):
    if got != want:
        sys.exit(f"{what}: got {got!r}, want {want!r}")


def main():
    host, port = sys.argv[1], int(sys.argv[2])
    r = redis.Redis(host=host, port=port, socket_timeout=30, decode_responses=True)

    expect("PING", r.ping(), True)
    expect("SET", r.set("py:greeting", "hello"), True)
    expect("GET", r.get("py:greeting"), "hello")
    expect("GET of a missing key", r.get("py:missing"), None)
    expect("EXISTS", r.exists("py:greeting", "py:missing"), 1)

    # A pipeline without a transaction: every reply comes back, in order.
    pipe = r.pipeline(transaction=False)
    for n in range(200):
        pipe.set(f"py:pipelined:{n}", str(n))
    for n in range(200):
        pipe.get(f"py:pipelined:{n}")
    replies = pipe.execute()
    expect("pipelined SET replies", replies[:200], [True] * 200)
    expect("pipelined GET replies", replies[200:], [str(n) for n in range(200)])
    expect("MGET", r.mget(["py:pipelined:7", "py:missing", "py:pipelined:9"]), ["7", None, "9"])

    # MULTI/EXEC is refused with a clear error, not half applied.
    try:
        transaction = r.pipeline(transaction=True)
        transaction.set("py:in-a-transaction", "x")
        transaction.execute()
        sys.exit("MULTI/EXEC was accepted")
    except redis.ResponseError as error:
        if "MULTI is not supported" not in str(error):
            sys.exit(f"MULTI/EXEC refused with an unclear error: {error}")
    expect("GET after the refused transaction", r.get("py:in-a-transaction"), None)

    # WAIT: both backups hold this connection's last write durably.
    expect("SET before WAIT", r.set("py:waited", "1"), True)
    expect("WAIT 2", r.wait(2, 5000), 2)

    expect("DEL", r.delete("py:greeting", "py:missing"), 1)
    expect("GET after DEL", r.get("py:greeting"), None)

    # Errors come back as Redis's own texts.
    try:
        r.execute_command("NOSUCHCOMMAND")
        sys.exit("an unknown command was accepted")
    except redis.ResponseError as error:
        if not str(error).startswith("unknown command 'NOSUCHCOMMAND'"):
            sys.exit(f"unknown command answered with: {error}")
    print("python redis client: every check passed")


if __name__ == "__main__":
    main()
