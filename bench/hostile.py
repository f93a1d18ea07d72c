"""Hostile clients against `aim serve`: do slots at the edge come back, and is a normal client
served meanwhile and afterwards?

Opens `--connections` raw TCP connections (default 1,000, `--concurrency` at a time), of which
`--upgrades` (default 200) are keyless `POST /predict` with `Connection: Upgrade` and
`Upgrade: websocket` and no body, and `--pipelined` (default 100) carry a burst of four
pipelined `POST /predict` (keyed, keyless, malformed; half of them closed before reading the
answers); the rest are, in turn: a body cut short then closed, a body abandoned (held open
`--hold` s, then closed), a garbage request line, headers sent a byte at a time and never
finished, headers without a body then closed, and `Expect: 100-continue` then closed. A normal
client with a key sends `/predict` one after another meanwhile. At the end it reads `/metrics`
(waiting up to `--settle` s for requests still parked to expire) and prints the edge gauges and
whether the normal client was served:

    hostile: 1000 connections (200 upgrade, 100 pipelined, ...) in T s
    after: aim_admission_in_flight=0 aim_admission_waiting=0
    normal client: during 200×N 503×M; after: 200

    python bench/hostile.py [--url http://127.0.0.1:PORT --key KEY]   # else starts its own server

`run_attack` is what `tests/integration/test_hostile.py` runs against a real server.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx

DIGIT = json.dumps({"inputs": [[[0, 0, 5, 13, 9, 1, 0, 0]] * 8]}).encode()
GAUGES = ("aim_admission_in_flight", "aim_admission_waiting")


def _post(key: str | None, body: bytes, extra: str = "") -> bytes:
    auth = f"X-API-Key: {key}\r\n" if key else ""
    head = (
        "POST /predict HTTP/1.1\r\nHost: aim\r\nContent-Type: application/json\r\n"
        f"{auth}{extra}Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


@dataclass
class Report:
    kinds: Counter[str] = field(default_factory=Counter)
    errors: int = 0
    seconds: float = 0.0
    during: Counter[int] = field(default_factory=Counter)
    after: int = 0
    gauges: dict[str, float | None] = field(default_factory=dict)

    def lines(self) -> list[str]:
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(self.kinds.items(), key=lambda x: -x[1]))
        gauges = " ".join(
            f"{g}={'absent' if v is None else f'{v:g}'}" for g, v in self.gauges.items()
        )
        during = " ".join(f"{s}×{n}" for s, n in sorted(self.during.items()))
        return [
            f"hostile: {sum(self.kinds.values())} connections ({kinds}) in {self.seconds:.1f} s"
            f" ({self.errors} ended by the server before the client was done)",
            f"after: {gauges}",
            f"normal client: during {during or 'none'}; after: {self.after}",
        ]


class Attack:
    """The hostile connections, one coroutine per kind."""

    def __init__(self, host: str, port: int, key: str, hold_s: float) -> None:
        self.host, self.port, self.key, self.hold_s = host, port, key, hold_s

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(self.host, self.port)

    @staticmethod
    async def _read_some(reader: asyncio.StreamReader, seconds: float) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(reader.read(65536), seconds)

    async def upgrade(self, i: int) -> None:
        reader, writer = await self._open()
        writer.write(
            b"POST /predict HTTP/1.1\r\nHost: aim\r\nConnection: Upgrade\r\n"
            b"Upgrade: websocket\r\n\r\n"
        )
        await writer.drain()
        if i % 2:
            await self._read_some(reader, 0.5)
        writer.close()

    async def pipelined(self, i: int) -> None:
        reader, writer = await self._open()
        burst = [
            _post(self.key, DIGIT),
            _post(None, DIGIT),
            _post(self.key, b'{"inputs": "x"}'),
            _post(self.key, DIGIT),
        ]
        writer.write(b"".join(burst))
        await writer.drain()
        if i % 2:
            deadline = time.monotonic() + 5
            seen = b""
            while seen.count(b"HTTP/1.1 ") < len(burst) and time.monotonic() < deadline:
                chunk = await asyncio.wait_for(reader.read(65536), 5)
                if not chunk:
                    break
                seen += chunk
        writer.close()

    async def truncated(self, i: int) -> None:
        _, writer = await self._open()
        writer.write(_post(self.key if i % 2 else None, DIGIT)[:-20])
        await writer.drain()
        writer.close()

    async def abandoned(self, i: int) -> None:
        _, writer = await self._open()
        writer.write(_post(self.key if i % 2 else None, DIGIT)[:-20])
        await writer.drain()
        await asyncio.sleep(self.hold_s)
        writer.close()

    async def garbage(self, i: int) -> None:
        reader, writer = await self._open()
        writer.write(
            [b"\x16\x03\x01\x02\x00\x01", b"POST /predict HTTP/9.9\r\n\r\n", b"\r\n\r\n"][i % 3]
        )
        await writer.drain()
        await self._read_some(reader, 0.2)
        writer.close()

    async def slow_headers(self, i: int) -> None:
        _, writer = await self._open()
        for byte in _post(self.key, DIGIT)[:30]:
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0.01)
        writer.close()

    async def headers_only(self, i: int) -> None:
        _, writer = await self._open()
        head = _post(self.key if i % 2 else None, DIGIT)
        writer.write(head[: head.index(b"\r\n\r\n") + 4])
        await writer.drain()
        writer.close()

    async def expect_continue(self, i: int) -> None:
        reader, writer = await self._open()
        head = _post(self.key, DIGIT, "Expect: 100-continue\r\n")
        writer.write(head[: head.index(b"\r\n\r\n") + 4])
        await writer.drain()
        await self._read_some(reader, 0.2)
        writer.close()

    def plan(self, connections: int, upgrades: int, pipelined: int) -> list[str]:
        """The kind of each connection, the special ones spread evenly among the others."""
        others = [
            "truncated",
            "abandoned",
            "garbage",
            "slow_headers",
            "headers_only",
            "expect_continue",
        ]
        rest = max(0, connections - upgrades - pipelined)
        kinds = ["upgrade"] * upgrades + ["pipelined"] * pipelined
        kinds += [others[i % len(others)] for i in range(rest)]
        # Interleave deterministically: a stride walk over the list mixes the kinds.
        stride = 7 if len(kinds) % 7 else 11
        return [kinds[(i * stride) % len(kinds)] for i in range(len(kinds))]


def _gauges(text: str) -> dict[str, float | None]:
    values: dict[str, float | None] = dict.fromkeys(GAUGES)
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in values:
            values[name] = float(value)
    return values


async def run_attack(
    url: str,
    key: str,
    connections: int = 1000,
    upgrades: int = 200,
    pipelined: int = 100,
    concurrency: int = 64,
    hold_s: float = 1.0,
    settle_s: float = 15.0,
) -> Report:
    """The attack, a normal client meanwhile, then the gauges and one normal request."""
    parts = urlsplit(url)
    attack = Attack(parts.hostname or "127.0.0.1", parts.port or 80, key, hold_s)
    report = Report()
    kinds = attack.plan(connections, upgrades, pipelined)
    report.kinds.update(kinds)
    gate = asyncio.Semaphore(concurrency)
    done = asyncio.Event()

    async def one(i: int, kind: str) -> None:
        run: Callable[[int], Awaitable[None]] = getattr(attack, kind)
        async with gate:
            try:
                await run(i)
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError):
                report.errors += 1  # the server closed first (408, 400, 431): as it should

    headers = {"X-API-Key": key, "Content-Type": "application/json"}
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:

        async def normal() -> None:
            while not done.is_set():
                r = await client.post("/predict", content=DIGIT, headers=headers)
                report.during[r.status_code] += 1
                await asyncio.sleep(0.05)

        started = time.monotonic()
        normal_task = asyncio.create_task(normal())
        await asyncio.gather(*(one(i, k) for i, k in enumerate(kinds)))
        report.seconds = time.monotonic() - started
        done.set()
        await normal_task
        # Parked requests expire within the admission wait; connections the attack left open
        # are closed by now, so whatever is still counted after `settle_s` has leaked.
        deadline = time.monotonic() + settle_s
        while True:
            report.gauges = _gauges((await client.get("/metrics")).text)
            settled = all(v == 0 for v in report.gauges.values() if v is not None)
            if settled or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        report.after = (await client.post("/predict", content=DIGIT, headers=headers)).status_code
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a running server (else one is started)")
    parser.add_argument("--key", help="a key of the running server (with --url)")
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--upgrades", type=int, default=200)
    parser.add_argument("--pipelined", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--hold", type=float, default=1.0)
    parser.add_argument("--settle", type=float, default=15.0)
    args = parser.parse_args()
    attack = {
        "connections": args.connections,
        "upgrades": args.upgrades,
        "pipelined": args.pipelined,
        "concurrency": args.concurrency,
        "hold_s": args.hold,
        "settle_s": args.settle,
    }
    if args.url:
        report = asyncio.run(run_attack(args.url, args.key or "", **attack))
    else:
        from peers.harness import aim_server, free_port, running

        with tempfile.TemporaryDirectory(prefix="aim-hostile-") as tmp:
            server, keys = aim_server(Path(tmp), free_port(), {})
            with running(server, ready_timeout=300):
                url = f"http://127.0.0.1:{server.port}"
                report = asyncio.run(run_attack(url, keys[0][1], **attack))
    print("\n".join(report.lines()))
    leaked = any(v for v in report.gauges.values() if v)
    return 1 if leaked or report.after != 200 else 0


if __name__ == "__main__":
    sys.exit(main())
