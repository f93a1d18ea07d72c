"""Slow clients against `aim serve`: are connections that send a header byte per second closed
by the header deadline, and do the other clients keep their latency meanwhile?

Starts `aim serve` (auth, keyed noise, three tiers; `AIM_HEADER_TIMEOUT_S`, default 10 s), runs
`wrk` (`--connections`, default 16) alone for `--baseline` seconds, then again for `--duration`
seconds (default 60) while `--slow` connections (default 300) each send one byte of a request
header every `--interval` seconds (default 1), each one the server closes replaced at once.
Reports how many slow connections the server closed and how long they had lived, and wrk's
2xx/s and latency alone and under the slow clients:

    slow clients: M held for D s, N closed by the server (each after A–B s); normal clients
    p99 X ms alone, Y ms with the slow clients

    python bench/slowloris.py [--slow 300] [--interval 1] [--duration 60] [--header-timeout 10]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import select
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from peers.harness import (
    HOST,
    BenchError,
    aim_server,
    finish_wrk,
    free_port,
    install_sigterm_handler,
    machine_info,
    run_main,
    run_wrk,
    running,
    smoke_test,
    start_wrk,
    wrk_command,
    wrk_setup,
)

SLOW_REQUEST = b"POST /predict HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"s" * 4096


def slow_clients(port: int, count: int, interval: float, duration: float) -> dict[str, Any]:
    """`count` connections sending one header byte every `interval` s for `duration` s; one
    the server closes is replaced at once by a new one (an attacker keeps its count up), so
    `count` slow connections press on the server throughout. Returns how many the server
    closed and how long each had lived."""
    started = time.monotonic()
    socks = [socket.create_connection((HOST, port)) for _ in range(count)]
    born = [started] * count
    sent = [0] * count
    lifetimes: list[float] = []
    while time.monotonic() - started < duration:
        for i, s in enumerate(socks):
            try:
                s.send(SLOW_REQUEST[sent[i] % len(SLOW_REQUEST) :][:1])
                sent[i] += 1
            except OSError:
                pass  # closed under us: seen by the select below
        tick = time.monotonic() + interval
        while (left := tick - time.monotonic()) > 0:
            readable, _, _ = select.select(socks, [], [], left)
            for s in readable:
                i = socks.index(s)
                with contextlib.suppress(OSError):
                    data = s.recv(4096)
                    if data and not data.startswith(b"HTTP/1.1 408 "):
                        continue
                lifetimes.append(time.monotonic() - born[i])
                s.close()
                socks[i] = socket.create_connection((HOST, port))
                born[i], sent[i] = time.monotonic(), 0
    for s in socks:
        s.close()
    return {
        "slow_connections": count,
        "closed_by_server": len(lifetimes),
        "lifetime_s": [round(min(lifetimes), 2), round(max(lifetimes), 2)] if lifetimes else None,
        "still_open_at_end": count,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--slow", type=int, default=300, help="slow connections")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between bytes")
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--baseline", type=float, default=10.0)
    parser.add_argument("--header-timeout", type=float, default=10.0, help="AIM_HEADER_TIMEOUT_S")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections")
    parser.add_argument("--out", type=Path, default=Path("out/slowloris.json"))
    args = parser.parse_args()
    install_sigterm_handler()
    info = machine_info()
    print(f"{info['cpus']} CPUs, load {info['loadavg_at_start']}")
    import threading

    with tempfile.TemporaryDirectory(prefix="aim-slow-") as tmp:
        workdir = Path(tmp)
        env = {"AIM_HEADER_TIMEOUT_S": str(args.header_timeout), "OMP_NUM_THREADS": "1"}
        server, keys = aim_server(workdir, free_port(), env)
        bodies, common = wrk_setup(workdir, keys, args.connections, 1)
        url = f"{server.base_url}/predict"
        try:
            with running(server, 300):
                smoke_test(server, bodies[0], keys)
                alone = run_wrk(
                    wrk_command(url, duration=args.baseline, **common),
                    args.baseline,
                    workdir / "alone.txt",
                )
                wrk = start_wrk(
                    wrk_command(url, duration=args.duration, **common), workdir / "with.txt"
                )
                result: dict[str, Any] = {}
                slow = threading.Thread(
                    target=lambda: result.update(
                        slow_clients(server.port, args.slow, args.interval, args.duration)
                    )
                )
                slow.start()
                under = finish_wrk(wrk, workdir / "with.txt", args.duration + 60)
                slow.join(timeout=args.duration + 60)
                if not server.alive():
                    raise BenchError(f"the server died; log:\n{server.log_tail()}")
        except BenchError as exc:
            print(f"slowloris FAILED: {exc}", file=sys.stderr)
            return 1
    payload = {
        "machine": info,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "slow": result,
        "alone": alone.as_dict(),
        "with_slow": under.as_dict(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    for name, r in (("alone", alone), ("with slow clients", under)):
        lat = r.latency_ms
        print(
            f"{name:>18}: {r.ok_rps:.1f} 2xx/s, p50 {lat['p50']:.2f} ms, "
            f"p99 {lat['p99']:.2f} ms, non-2xx {r.non_2xx}"
        )
    span = result.get("lifetime_s")
    when = f"each after {span[0]:.1f}–{span[1]:.1f} s" if span else "none closed"
    closed = result.get("closed_by_server", 0)
    print(
        f"slow clients: {args.slow} held for {args.duration:.0f} s, {closed} closed by the "
        f"server ({when}); normal clients p99 {alone.latency_ms['p99']:.2f} ms alone, "
        f"{under.latency_ms['p99']:.2f} ms with the slow clients"
    )
    lived_too_long = span is not None and span[1] > args.header_timeout + 2 * args.interval
    return 0 if closed >= args.slow and not lived_too_long else 1


if __name__ == "__main__":
    run_main(main)
