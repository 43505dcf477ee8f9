"""The messages the gRPC scripts stream, each recognisable on its own:
message `i` of `size` bytes is `i` (4 bytes, big-endian) and then a run of
bytes counting up from `i` (mod 251), so a lost, doubled, reordered or
damaged one is found."""

import struct

_CYCLE = bytes(range(251))


def message(i: int, size: int) -> bytes:
    """Message `i`, `size` bytes long (4 at least)."""
    body = size - 4
    start = i % 251
    run = _CYCLE * ((start + body) // 251 + 1)
    return struct.pack(">I", i) + run[start : start + body]
