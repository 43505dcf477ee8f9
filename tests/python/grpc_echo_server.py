"""A gRPC server on grpcio's generic handlers: raw bytes, no protobuf.

It listens on 127.0.0.1 on a free port, prints {"port": N} on one line
and serves until its stdin closes (the test that started it ended).

Methods of `echo.Echo`:
  Count     unary-stream: the request is JSON {"count": N, "size": S};
            answers messages.message(0..N, S).
  Sum       stream-unary: each request is an 8-byte big-endian integer;
            answers JSON {"count": N, "sum": S}.
  PingPong  stream-stream: answers each message with b"pong:" + it; the
            metadata `first-delay-ms` holds back the first answer (and so
            the response headers) that long.
  Delay     unary-unary: the request is a number of milliseconds;
            answers b"done" after that long.
  Flood     unary-stream: as Count, as fast as the caller takes them,
            counting the messages handed to grpc.
  Flooded   unary-unary: JSON {"flooded": N}, that count so far.
"""

import json
import struct
import sys
import threading
import time
from concurrent import futures

import grpc

import messages

SERVICE = "echo.Echo"
# Every call of a test is bounded by its client's deadline; this bounds a
# first delay that a test got wrong.
MAX_FIRST_DELAY_S = 10.0


class Flooded:
    def __init__(self):
        self.lock = threading.Lock()
        self.count = 0

    def add(self):
        with self.lock:
            self.count += 1

    def get(self):
        with self.lock:
            return self.count


flooded = Flooded()


def count(request, context):
    asked = json.loads(request)
    for i in range(asked["count"]):
        yield messages.message(i, asked["size"])


def total(request_iterator, context):
    values = [struct.unpack(">q", m)[0] for m in request_iterator]
    return json.dumps({"count": len(values), "sum": sum(values)}).encode()


def ping_pong(request_iterator, context):
    metadata = dict(context.invocation_metadata())
    delay = min(int(metadata.get("first-delay-ms", "0")) / 1000, MAX_FIRST_DELAY_S)
    for i, message in enumerate(request_iterator):
        if i == 0 and delay:
            time.sleep(delay)
        yield b"pong:" + message


def delay(request, context):
    time.sleep(min(int(request) / 1000, MAX_FIRST_DELAY_S))
    return b"done"


def flood(request, context):
    asked = json.loads(request)
    for i in range(asked["count"]):
        # grpc asks for the next message once it has sent the last one.
        flooded.add()
        yield messages.message(i, asked["size"])


def flooded_so_far(request, context):
    return json.dumps({"flooded": flooded.get()}).encode()


def main():
    handlers = {
        "Count": grpc.unary_stream_rpc_method_handler(count),
        "Sum": grpc.stream_unary_rpc_method_handler(total),
        "PingPong": grpc.stream_stream_rpc_method_handler(ping_pong),
        "Delay": grpc.unary_unary_rpc_method_handler(delay),
        "Flood": grpc.unary_stream_rpc_method_handler(flood),
        "Flooded": grpc.unary_unary_rpc_method_handler(flooded_so_far),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE, handlers),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(json.dumps({"port": port}), flush=True)
    sys.stdin.read()
    server.stop(grace=None)


if __name__ == "__main__":
    main()
