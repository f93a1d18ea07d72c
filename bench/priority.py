"""Tier priority under a flood: a sequential top-tier client while the lowest tier floods.

`aim serve` (the digits classifier, CPU, keyed noise, gold/silver/bronze, `--queue-size`
default 64) is measured twice with one sequential gold client (one keep-alive connection, the
next request when the last answer is in, `--requests` each time):

1. idle: nothing else runs;
2. flood: `wrk` floods bronze from `--connections` (default 128) connections meanwhile: from
   bronze keys, or with `--flood-from gold-as-bronze` from gold keys lowered to bronze
   (`X-AIM-Tier: bronze`), which must queue as bronze: the tier served ranks a request, not its key.

The queue serves higher tiers first, and a full queue sheds bronze (503) to make room for gold,
so gold's wait is bounded by the batch in flight rather than by the flood. Prints gold's p50 /
p99 both times, gold's errors, bronze's answers by status, `aim_shed_total` by tier, and ends with

    gold p99 idle X ms, flood Y ms, limit max(3 x idle, 25 ms) = Z ms: within|over

    python bench/priority.py [--requests 400] [--connections 128] [--queue-size 64]
                             [--flood-from bronze|gold-as-bronze]
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from peers.harness import (
    HOST,
    BenchError,
    aim_server,
    digit_bodies,
    finish_wrk,
    free_port,
    install_sigterm_handler,
    prometheus_samples,
    running,
    scrape,
    start_wrk,
    subprocess_env,
    write_lines,
    wrk_command,
)


def gold_client(port: int, key: str, bodies: list[bytes], requests: int) -> tuple[list[float], int]:
    """Latencies (s) of `requests` sequential gold requests, and how many were not 200."""
    conn = http.client.HTTPConnection(HOST, port, timeout=30)
    latencies, errors = [], 0
    headers = {"X-API-Key": key, "Content-Type": "application/json"}
    try:
        for i in range(requests):
            started = time.perf_counter()
            conn.request("POST", "/predict", body=bodies[i % len(bodies)], headers=headers)
            response = conn.getresponse()
            response.read()
            latencies.append(time.perf_counter() - started)
            errors += response.status != 200
    finally:
        conn.close()
    return latencies, errors


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=400, help="gold requests per phase")
    parser.add_argument("--connections", type=int, default=128, help="bronze connections")
    parser.add_argument("--queue-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument(
        "--flood-from",
        choices=("bronze", "gold-as-bronze"),
        default="bronze",
        help="the flood's keys: bronze keys, or gold keys (not the measured client's) lowered "
        "to bronze with X-AIM-Tier",
    )
    parser.add_argument("--out", type=Path, help="write the figures as JSON")
    args = parser.parse_args(argv)
    install_sigterm_handler()
    bodies = digit_bodies(64)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        port = free_port()
        env = subprocess_env({"AIM_QUEUE_SIZE": str(args.queue_size)})
        server, keys = aim_server(work, port, env, keys_per_tier=4)
        golds = [k for tier, k in keys if tier == "gold"]
        gold = golds[0]
        if args.flood_from == "bronze":
            flood_keys, lower_to = [k for tier, k in keys if tier == "bronze"], None
        else:  # the other gold keys, each request asking to be served as bronze
            flood_keys, lower_to = golds[1:], "bronze"
        flooders = write_lines(work / "flood-keys.txt", flood_keys)
        bodies_file = write_lines(work / "bodies.txt", bodies)
        with running(server, ready_timeout=120):
            gold_client(port, gold, bodies, 50)  # warm-up
            idle, idle_errors = gold_client(port, gold, bodies, args.requests)
            # wrk runs longer than the gold client needs under load; it is stopped after.
            duration = max(10.0, 4 * sum(idle) + 10)
            command = wrk_command(
                f"http://{HOST}:{port}/predict",
                bodies_file,
                flooders,
                duration,
                args.connections,
                args.threads,
                tier=lower_to,
            )
            wrk = start_wrk(command, work / "wrk.log")
            time.sleep(2.0)  # the flood is on and the queue full
            flood, flood_errors = gold_client(port, gold, bodies, args.requests)
            bronze_result = finish_wrk(wrk, work / "wrk.log", duration + 30)
            metrics = scrape(server.base_url) or ""
    shed = {s[0].get("tier", ""): s[1] for s in prometheus_samples(metrics, "aim_shed_total")}
    idle_p99, flood_p99 = 1000 * p99(idle), 1000 * p99(flood)
    limit = max(3 * idle_p99, 25.0)
    figures = {
        "gold_idle_p50_ms": 1000 * statistics.median(idle),
        "gold_idle_p99_ms": idle_p99,
        "gold_flood_p50_ms": 1000 * statistics.median(flood),
        "gold_flood_p99_ms": flood_p99,
        "gold_errors": idle_errors + flood_errors,
        "flood_from": args.flood_from,
        "bronze": bronze_result.as_dict(),
        "shed": shed,
    }
    print(f"gold idle:  p50 {figures['gold_idle_p50_ms']:.1f} ms, p99 {idle_p99:.1f} ms")
    print(f"gold flood: p50 {figures['gold_flood_p50_ms']:.1f} ms, p99 {flood_p99:.1f} ms")
    print(f"gold errors: {figures['gold_errors']}; shed by tier: {shed}")
    print(
        f"flood from {args.flood_from} ({args.connections} connections): {bronze_result.as_dict()}"
    )
    if args.out:
        args.out.write_text(json.dumps(figures, indent=2) + "\n")
    verdict = "within" if flood_p99 <= limit and figures["gold_errors"] == 0 else "over"
    print(
        f"gold p99 idle {idle_p99:.1f} ms, flood {flood_p99:.1f} ms, "
        f"limit max(3 x idle, 25 ms) = {limit:.1f} ms: {verdict}"
    )
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except BenchError as exc:
        print(f"priority bench failed: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
