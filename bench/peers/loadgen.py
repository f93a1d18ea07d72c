"""A closed-loop HTTP/1.1 load generator in plain asyncio, for machines without `wrk` (the GPU
machine has none): `connections` keep-alive connections, each sending the next prepared request
as soon as the previous answer is in, for `duration` seconds after `warmup` seconds.

Cheap enough for large bodies and a few hundred requests per second per core; for the CPU
benches on small bodies use wrk (bench/peers/harness.py), which costs the server's CPU less.
"""

from __future__ import annotations

import asyncio
import itertools
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass
class LoadResult:
    duration_s: float
    latencies_ms: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    errors: int = 0

    @property
    def ok(self) -> int:
        return sum(n for code, n in self.statuses.items() if 200 <= code < 300)

    def as_dict(self) -> dict[str, Any]:
        lat = sorted(self.latencies_ms)

        def pct(p: float) -> float:
            return round(lat[min(len(lat) - 1, int(p / 100 * len(lat)))], 2) if lat else 0.0

        return {
            "requests": len(lat),
            "ok_rps": round(self.ok / self.duration_s, 1) if self.duration_s else 0.0,
            "p50_ms": pct(50),
            "p99_ms": pct(99),
            "mean_ms": round(statistics.fmean(lat), 2) if lat else 0.0,
            "statuses": dict(self.statuses),
            "errors": self.errors,
        }


def prepare(path: str, host: str, body: bytes, headers: dict[str, str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    if length:
        await reader.readexactly(length)
    return status


async def run_load(
    host: str, port: int, requests: list[bytes], connections: int, duration: float, warmup: float
) -> LoadResult:
    """Closed-loop load; only answers that start after the warm-up are counted."""
    start = time.perf_counter()
    measure_from = start + warmup
    stop_at = measure_from + duration
    result = LoadResult(duration_s=duration)
    counter = itertools.count()

    async def one_connection(offset: int) -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while (now := time.perf_counter()) < stop_at:
                req = requests[(next(counter) + offset) % len(requests)]
                writer.write(req)
                status = await _read_response(reader)
                done = time.perf_counter()
                if now >= measure_from:
                    result.latencies_ms.append((done - now) * 1000)
                    result.statuses[status] += 1
        except (OSError, asyncio.IncompleteReadError, ValueError):
            result.errors += 1
        finally:
            writer.close()

    await asyncio.gather(*(one_connection(i * 7919) for i in range(connections)))
    return result
