#!/usr/bin/env python3
"""Sends GETs (Host: HOST) to 127.0.0.1:PORT at a fixed RATE per second for
SECONDS, over kept-alive HTTP/1.1 connections (a new one whenever none is
free), and times each from when it was due, so that a stall counts against
every request it delays. Prints a line every 10s and a summary:
`total N errors E p50_ms X p99_ms Y max_ms Z`."""

import asyncio
import sys
import time


class Connection:
    def __init__(self, reader, writer):
        self.reader, self.writer = reader, writer

    async def get(self, request):
        self.writer.write(request)
        await self.writer.drain()
        head = await self.reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        await self.reader.readexactly(length)
        return head.split(b" ", 2)[1]


def percentile(sorted_values, p):
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * p))]


async def main():
    port, host, rate, seconds = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    request = f"GET /soak HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    free = []
    latencies, window, errors, window_errors = [], [], 0, 0
    error_kinds = {}
    start = time.monotonic()

    async def one(due):
        nonlocal errors, window_errors
        conn = free.pop() if free else None
        try:
            if conn is None:
                conn = Connection(*await asyncio.open_connection("127.0.0.1", port))
            status = await asyncio.wait_for(conn.get(request), 10)
            if status != b"200":
                raise RuntimeError(f"status {status.decode()}")
            free.append(conn)
        except Exception as e:  # every failure counts; the kind is reported
            errors += 1
            window_errors += 1
            kind = type(e).__name__ if not isinstance(e, RuntimeError) else str(e)
            error_kinds[kind] = error_kinds.get(kind, 0) + 1
            if conn is not None:
                conn.writer.close()
        took = (time.monotonic() - due) * 1000
        latencies.append(took)
        window.append(took)

    tasks = set()
    next_report = start + 10
    total = rate * seconds
    for i in range(total):
        due = start + i / rate
        now = time.monotonic()
        if due > now:
            await asyncio.sleep(due - now)
        task = asyncio.create_task(one(due))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        if time.monotonic() >= next_report:
            window.sort()
            print(
                f"{int(time.monotonic() - start):4d}s requests {len(window)} errors {window_errors} "
                f"p50_ms {percentile(window, 0.5):.2f} p99_ms {percentile(window, 0.99):.2f}",
                flush=True,
            )
            window, window_errors = [], 0
            next_report += 10
    await asyncio.gather(*tasks)
    latencies.sort()
    print(
        f"total {len(latencies)} errors {errors} p50_ms {percentile(latencies, 0.5):.2f} "
        f"p99_ms {percentile(latencies, 0.99):.2f} max_ms {latencies[-1]:.2f} kinds {error_kinds}",
        flush=True,
    )


asyncio.run(main())
