"""A WebSocket client on `websockets`: it connects to TARGET (host:port,
a sidecar's outbound or the server itself) asking for ws://HOST/PATH, so
that the request's Host is HOST, and then sends a text message, a binary
one and one of 1 MiB, each to be echoed, and closes with 1000.

    ws_client.py TARGET HOST PATH

Prints one JSON object: {"status": 101, "text": true, ..., "close_code":
the code the server closed with}, or, when the handshake was refused,
{"status": the refusal's, "body": ..., "remora_error": ...}.
"""

import asyncio
import json
import random
import sys

from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

MAX_MESSAGE = 4 * 2**20
LARGE = 2**20
# Every step ends by then, whatever happens.
TIMEOUT_S = 30


async def echoed(ws, message):
    await ws.send(message)
    return await ws.recv() == message


async def converse(target, host, path):
    address, port = target.rsplit(":", 1)
    try:
        ws = await connect(
            f"ws://{host}{path}",
            host=address,
            port=int(port),
            proxy=None,
            max_size=MAX_MESSAGE,
            open_timeout=TIMEOUT_S,
            close_timeout=TIMEOUT_S,
        )
    except InvalidStatus as refused:
        response = refused.response
        return {
            "status": response.status_code,
            "body": response.body.decode(errors="replace"),
            "remora_error": response.headers.get("remora-error"),
        }
    large = random.Random(7).randbytes(LARGE)
    result = {
        "status": ws.response.status_code,
        "text": await echoed(ws, "hello, chat"),
        "binary": await echoed(ws, bytes(range(256))),
        "large": await echoed(ws, large),
    }
    await ws.close(code=1000, reason="done")
    result["close_code"] = ws.close_code
    result["close_reason"] = ws.close_reason
    return result


def main():
    target, host, path = sys.argv[1:4]
    result = asyncio.run(asyncio.wait_for(converse(target, host, path), TIMEOUT_S))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
