#!/usr/bin/env python3
"""Opens COUNT HTTP/1.1 connections to 127.0.0.1:PORT at once, sends
REQUESTS keep-alive GETs (Host: HOST) on each, then holds them all open:
it prints `held N failed M` and waits for a line on stdin (or its end)
before closing them and printing `closed`."""

import asyncio
import sys


async def one(port, host, requests):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    for _ in range(requests):
        writer.write(request)
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        await reader.readexactly(length)
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(head.split(b"\r\n")[0].decode())
    return writer


async def main():
    port, host, count, requests = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    results = await asyncio.gather(
        *(one(port, host, requests) for _ in range(count)), return_exceptions=True
    )
    held = [r for r in results if not isinstance(r, BaseException)]
    print(f"held {len(held)} failed {count - len(held)}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    for writer in held:
        writer.close()
    print("closed", flush=True)


asyncio.run(main())
