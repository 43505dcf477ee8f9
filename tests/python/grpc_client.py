"""A gRPC client on grpcio, raw bytes, calling `echo.Echo` (see
grpc_echo_server.py) at TARGET in plaintext HTTP/2 with the authority
`echo`, as an app calls its sidecar's outbound.

    grpc_client.py TARGET server-stream COUNT SIZE
    grpc_client.py TARGET client-stream COUNT
    grpc_client.py TARGET ping-pong ROUNDS INTERVAL_MS FIRST_DELAY_MS
    grpc_client.py TARGET delay MS
    grpc_client.py TARGET flood COUNT SIZE PAUSE_MS SERVER

Prints its result as one JSON object: {"code": "OK", ...} or, when the
call failed, {"code": "UNAVAILABLE", "details": ...}. `flood` reads a few
messages, stops reading for PAUSE_MS, prints {"paused": ..., "flooded": N}
with the count the server (at SERVER, called directly) handed to grpc,
waits for a line on stdin, then reads the rest.
"""

import json
import queue
import struct
import sys
import time

import grpc

import messages

AUTHORITY = "echo"
# Every call ends by then, whatever happens.
DEADLINE_S = 30.0
# What `flood` reads before it stops reading.
READ_BEFORE_PAUSE = 4


def channel(target, authority=AUTHORITY):
    options = [("grpc.enable_http_proxy", 0)]
    if authority:
        options.append(("grpc.default_authority", authority))
    return grpc.insecure_channel(target, options=options)


def method(name):
    return f"/echo.Echo/{name}"


def server_stream(ch, count, size):
    call = ch.unary_stream(method("Count"))
    asked = json.dumps({"count": int(count), "size": int(size)}).encode()
    received, intact = 0, True
    for i, m in enumerate(call(asked, timeout=DEADLINE_S)):
        intact = intact and m == messages.message(i, int(size))
        received += 1
    return {"received": received, "intact": intact}


def client_stream(ch, count):
    call = ch.stream_unary(method("Sum"))
    values = range(1, int(count) + 1)
    answer = call((struct.pack(">q", v) for v in values), timeout=DEADLINE_S)
    return {"answer": json.loads(answer), "expected": sum(values)}


def ping_pong(ch, rounds, interval_ms, first_delay_ms):
    """One message at a time, each sent once the last one's answer came."""
    outgoing = queue.Queue()

    def requests():
        while (m := outgoing.get()) is not None:
            yield m

    call = ch.stream_stream(method("PingPong"))
    metadata = (("first-delay-ms", first_delay_ms),)
    started = time.monotonic()
    answers = call(requests(), timeout=DEADLINE_S, metadata=metadata)
    matched = 0
    try:
        for i in range(int(rounds)):
            if i:
                time.sleep(int(interval_ms) / 1000)
            ping = f"ping {i} ".encode() + bytes(i % 256 for _ in range(i))
            outgoing.put(ping)
            if next(answers) == b"pong:" + ping:
                matched += 1
    finally:
        outgoing.put(None)
    extra = sum(1 for _ in answers)
    elapsed = time.monotonic() - started
    return {"matched": matched, "extra": extra, "seconds": round(elapsed, 3)}


def delay(ch, ms):
    call = ch.unary_unary(method("Delay"))
    return {"answer": call(ms.encode(), timeout=DEADLINE_S).decode()}


def flood(ch, count, size, pause_ms, server):
    count, size = int(count), int(size)
    call = ch.unary_stream(method("Flood"))
    asked = json.dumps({"count": count, "size": size}).encode()
    stream = call(asked, timeout=DEADLINE_S)
    received, intact = 0, True

    def read(n):
        nonlocal received, intact
        for _ in range(n):
            m = next(stream)
            intact = intact and m == messages.message(received, size)
            received += 1

    read(READ_BEFORE_PAUSE)
    time.sleep(int(pause_ms) / 1000)
    with channel(server, authority=None) as direct:
        counted = direct.unary_unary(method("Flooded"))(b"", timeout=DEADLINE_S)
    flooded = json.loads(counted)["flooded"]
    print(json.dumps({"paused": True, "read": received, "flooded": flooded}), flush=True)
    sys.stdin.readline()
    started = time.monotonic()
    read(count - received)
    rest = sum(1 for _ in stream)
    return {
        "received": received,
        "after_the_end": rest,
        "intact": intact,
        "flooded_at_pause": flooded,
        "seconds_after_pause": round(time.monotonic() - started, 3),
    }


MODES = {
    "server-stream": server_stream,
    "client-stream": client_stream,
    "ping-pong": ping_pong,
    "delay": delay,
    "flood": flood,
}


def main():
    target, mode, args = sys.argv[1], sys.argv[2], sys.argv[3:]
    with channel(target) as ch:
        try:
            result = {"code": "OK", **MODES[mode](ch, *args)}
        except grpc.RpcError as e:
            result = {"code": e.code().name, "details": e.details()}
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
