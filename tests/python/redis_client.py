"""Python's `redis` package (PyPI) against one node's RESP door, as its own users write it.

Run by tests/resp.rs (`python_redis_package_works_against_a_backup`) with the door's host and
port and a `readwrite` user's name and password, on a 3-node cluster whose RESP doors serve only
authenticated callers.
Exits non-zero, with the reason, on the first answer that differs from what Redis gives.
"""

import sys

import redis


def expect(what, got, want):
    if got != want:
        sys.exit(f"{what}: got {got!r}, want {want!r}")


def main():
    host, port, user, password = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    # Without credentials the door answers every command but AUTH/HELLO/QUIT with NOAUTH.
    anonymous = redis.Redis(host=host, port=port, socket_timeout=30)
    try:
        anonymous.ping()
        sys.exit("an unauthenticated PING was answered")
    except (redis.AuthenticationError, redis.ResponseError) as error:
        if "Authentication required" not in str(error):
            sys.exit(f"an unauthenticated PING got an unexpected error: {error}")
    r = redis.Redis(
        host=host,
        port=port,
        username=user,
        password=password,
        socket_timeout=30,
        decode_responses=True,
    )

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
    keyspace_notifications(r)
    print("python redis client: every check passed")


def keyspace_notifications(r):
    """Committed changes announced on __keyspace@0__ (by pattern) and __keyevent@0__ (a channel),
    on a pub/sub connection of their own, while another connection writes."""
    p = r.pubsub()
    p.psubscribe("__keyspace@0__:py:note*")
    p.subscribe("__keyevent@0__:del")
    confirmed = set()
    while len(confirmed) < 2:
        message = p.get_message(timeout=10)
        if message is None:
            sys.exit(f"subscriptions not confirmed: {confirmed}")
        confirmed.add((message["type"], message["channel"]))
    expect(
        "subscription confirmations",
        confirmed,
        {("psubscribe", "__keyspace@0__:py:note*"), ("subscribe", "__keyevent@0__:del")},
    )
    expect("SET a watched key", r.set("py:note1", "a"), True)
    expect("SET an unwatched key", r.set("py:other", "b"), True)
    expect("DEL the watched key", r.delete("py:note1"), 1)
    # The door's node may announce deletes committed just before the subscription (a backup
    # applies on its tick, and a watch starts after what its node has applied): only
    # py:note1's are counted.
    received = []
    while len(received) < 3:
        message = p.get_message(timeout=10)
        if message is None:
            sys.exit(f"notifications missing; got {received}")
        entry = (message["type"], message["channel"], message["data"])
        if entry[0] == "message" and entry[2] != "py:note1":
            continue
        received.append(entry)
    keyspace = [m for m in received if m[0] == "pmessage"]
    expect(
        "keyspace notifications, in commit order",
        keyspace,
        [
            ("pmessage", "__keyspace@0__:py:note1", "set"),
            ("pmessage", "__keyspace@0__:py:note1", "del"),
        ],
    )
    expect(
        "keyevent notification",
        [m for m in received if m[0] == "message"],
        [("message", "__keyevent@0__:del", "py:note1")],
    )
    expect("nothing more", p.get_message(timeout=1), None)
    p.close()

    # A channel nothing would announce (replikv has no PUBLISH) is refused, not left silent.
    refused = r.pubsub()
    try:
        refused.subscribe("news")
        refused.get_message(timeout=5)
        sys.exit("a subscription to a plain channel was accepted")
    except redis.ResponseError as error:
        if "not a keyspace notification channel" not in str(error):
            sys.exit(f"a plain channel was refused with: {error}")
    refused.close()


if __name__ == "__main__":
    main()
