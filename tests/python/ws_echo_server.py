"""A WebSocket server on `websockets` that echoes every message as it came,
text as text and binary as binary.

It listens on 127.0.0.1 on a free port, prints {"port": N}, then one JSON
line for each connection's opening and closing:
  {"event": "open", "path": ..., "host": ..., "peer": ...}  (`peer`: the
      remora-peer-identity header, or null)
  {"event": "closed", "code": ..., "reason": ...}  (the close code the
      client sent; 1006 when the connection ended without one)
and serves until its stdin closes (the test that started it ended).
"""

import asyncio
import json
import sys

from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed

# Above the 1 MiB message the tests send.
MAX_MESSAGE = 4 * 2**20


def emit(event):
    print(json.dumps(event), flush=True)


async def echo(ws):
    headers = ws.request.headers
    emit(
        {
            "event": "open",
            "path": ws.request.path,
            "host": headers.get("Host"),
            "peer": headers.get("remora-peer-identity"),
        }
    )
    try:
        async for message in ws:
            await ws.send(message)
    except ConnectionClosed:
        pass
    emit({"event": "closed", "code": ws.close_code, "reason": ws.close_reason})


async def main():
    async with serve(echo, "127.0.0.1", 0, max_size=MAX_MESSAGE) as server:
        port = server.sockets[0].getsockname()[1]
        emit({"port": port})
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


if __name__ == "__main__":
    asyncio.run(main())
