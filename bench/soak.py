"""A bounded soak of `aim serve` at saturation: does it stay up, answer only 2xx or 503 (queue
full), and keep its memory flat?

`aim serve` (CPU, auth on, keyed noise, gold/silver/bronze keys mixed per request) runs with a
small queue (`--queue-size`, default 64). First the peak: `--peak-connections` (default 32, the
compare_servers load, which the queue absorbs) for `--peak-duration` seconds gives the 2xx/s the
server sustains. Then `wrk` with more connections than the queue holds (`--connections`, default
256, 8× the peak load), so the queue fills and the server must shed load with 503: after a
`--warmup` run (default 10 s) comes the soak proper (`--duration`, default 60 s), whose 2xx/s is
the goodput. The peak is measured again right after the soak, and the goodput is printed as a
share of the mean of both peaks, `goodput: X 2xx/s, Y of peak` (both peaks and the share of
each are printed above it): a 2-core machine's speed drifts by 20-30 % within minutes, so a
peak taken only before the soak measured the drift as much as the overload (same code, one
peak: 0.68-0.97 of it in five runs). Every second
it samples the server's resident memory (VmRSS from /proc, summed over its process group) and
the `aim_queue_depth` gauge. Status codes come from two sides and are both reported: the wrk Lua
script's tally (what clients saw) and the server's `aim_requests_total` counter on /predict
(before/after difference). After the load it checks that /readyz and /predict still answer 200.

Prints requests by status, RSS at idle / soak start (after the warm-up) / end / max, and ends
with the verdict line

    soak: 0 non-503 5xx, rss start X MiB end Y MiB (growth Z%)

where the 5xx are those clients received (wrk's tally; the server's own count can be higher by
requests cut off when wrk stops, which is printed as a note), start is the RSS when the soak
proper begins (after the warm-up and once the server has drained it), end when it stops. Between
phases it waits until the server's request counter stands still, so leftovers of one phase are
not counted in the next. Writes everything (with the RSS time series) as JSON to `--out`. Exits 1
on any 5xx other than 503, if no request got a 2xx, if the server died, or if it does not answer
after the soak.

    python bench/soak.py [--duration 60] [--warmup 10] [--connections 256] [--queue-size 64]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from peers.harness import (
    HOST,
    BenchError,
    Server,
    aim_server,
    digit_bodies,
    finish_wrk,
    free_port,
    http,
    install_sigterm_handler,
    machine_info,
    prometheus_samples,
    requests_by_status,
    rss_mib,
    running,
    scrape,
    smoke_test,
    start_wrk,
    write_lines,
    wrk_command,
)


def delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    codes = sorted(set(after) | set(before))
    out = {c: after.get(c, 0) - before.get(c, 0) for c in codes}
    return {c: n for c, n in out.items() if n}


def bad_5xx(statuses: dict[str, int]) -> int:
    return sum(n for code, n in statuses.items() if code.startswith("5") and code != "503")


def counted_by_server(server: Server) -> dict[str, int]:
    text = scrape(server.base_url, timeout=10)
    if text is None:
        raise BenchError("GET /metrics failed")
    return requests_by_status(text)


def settle(server: Server, timeout: float = 20.0) -> dict[str, int]:
    """Counts by status once the server is done with what a stopped wrk left behind (the
    request counter unchanged over 0.5 s), so one phase's leftovers do not land in the next."""
    deadline = time.monotonic() + timeout
    last = counted_by_server(server)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = counted_by_server(server)
        if now == last:
            return now
        last = now
    return last


def soak(
    server: Server, keys: list[tuple[str, str]], workdir: Path, args: argparse.Namespace
) -> dict[str, Any]:
    bodies = digit_bodies(args.inputs)
    bodies_file = write_lines(workdir / "bodies.jsonl", bodies)
    keys_file = write_lines(workdir / "keys.txt", [k for _, k in keys])
    url = f"{server.base_url}/predict"
    common = {
        "bodies_file": bodies_file,
        "keys_file": keys_file,
        "connections": args.connections,
        "threads": args.threads,
    }
    assert server.proc is not None
    pgid = server.proc.pid
    smoke_test(server, bodies[0], keys)
    rss_idle = rss_mib(pgid)
    samples: list[dict[str, Any]] = []
    t0 = time.monotonic()

    def sample(phase: str) -> None:
        depth = None
        text = scrape(server.base_url, timeout=1.0)
        if text is not None:
            values = prometheus_samples(text, "aim_queue_depth")
            depth = round(values[0][1]) if values else None
        samples.append(
            {
                "t_s": round(time.monotonic() - t0, 2),
                "phase": phase,
                "rss_mib": round(rss_mib(pgid), 2),
                "queue_depth": depth,
            }
        )

    def load(phase: str, duration: float, log_name: str) -> Any:
        proc = start_wrk(wrk_command(url, duration=duration, **common), workdir / log_name)
        deadline = time.monotonic() + duration + 30
        next_sample = time.monotonic()
        while proc.poll() is None and time.monotonic() < deadline:
            if time.monotonic() >= next_sample:
                sample(phase)
                next_sample += args.sample_every
            time.sleep(min(0.1, max(0.0, next_sample - time.monotonic())))
        return finish_wrk(proc, workdir / log_name, max(1.0, deadline - time.monotonic()))

    def peak(when: str) -> Any:
        if args.peak_duration <= 0:
            return None
        print(
            f"peak {when}: {args.peak_duration:.0f} s at {args.peak_connections} connections",
            flush=True,
        )
        peak_cmd = wrk_command(
            url, duration=args.peak_duration, **{**common, "connections": args.peak_connections}
        )
        proc = start_wrk(peak_cmd, workdir / f"wrk-peak-{when}.txt")
        return finish_wrk(proc, workdir / f"wrk-peak-{when}.txt", args.peak_duration + 30)

    peak_before = peak("before")
    before_warmup = settle(server)
    warm = None
    if args.warmup > 0:
        print(f"warm-up: {args.warmup:.0f} s", flush=True)
        warm = load("warmup", args.warmup, "wrk-warmup.txt")
    before = settle(server)
    rss_start = rss_mib(pgid)
    print(f"soak: {args.duration:.0f} s at {args.connections} connections", flush=True)
    result = load("soak", args.duration, "wrk-soak.txt")
    rss_end = rss_mib(pgid)
    after = settle(server)
    sample("after")
    peak_after = peak("after")
    if not server.alive():
        raise BenchError(f"the server died during the soak; log:\n{server.log_tail()}")
    ready_status, _ = http("GET", server.base_url + "/readyz", timeout=10)
    predict_status, _ = http(
        "POST",
        url,
        bodies[0],
        {"Content-Type": "application/json", "X-API-Key": keys[0][1]},
        timeout=30,
    )
    return {
        "wrk": result,
        "peak_wrk": [p for p in (peak_before, peak_after) if p is not None],
        "warmup_wrk": warm,
        "server_counts": delta(after, before),
        "server_counts_warmup": delta(before, before_warmup),
        "rss_mib": {
            "idle": round(rss_idle, 1),
            "start": round(rss_start, 1),
            "end": round(rss_end, 1),
            "max": round(max([s["rss_mib"] for s in samples] + [rss_end, rss_start]), 1),
        },
        "max_queue_depth": max(
            (s["queue_depth"] for s in samples if s["queue_depth"] is not None), default=None
        ),
        "after": {"readyz": ready_status, "predict": predict_status},
        "samples": samples,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=60.0, help="soak seconds")
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds of load before")
    parser.add_argument("--connections", type=int, default=256)
    parser.add_argument("--peak-connections", type=int, default=32)
    parser.add_argument("--peak-duration", type=float, default=20.0, help="0: no peak run")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--queue-size", type=int, default=64, help="AIM_QUEUE_SIZE")
    parser.add_argument("--max-batch-size", type=int, default=32, help="AIM_MAX_BATCH_SIZE")
    parser.add_argument("--max-wait-ms", type=float, default=2.0, help="AIM_MAX_WAIT_MS")
    parser.add_argument("--inputs", type=int, default=64, help="distinct held-out digits")
    parser.add_argument("--keys-per-tier", type=int, default=1)
    parser.add_argument("--sample-every", type=float, default=1.0, help="RSS sampling seconds")
    parser.add_argument("--ready-timeout", type=float, default=300.0)
    parser.add_argument("--out", type=Path, default=Path("out/soak.json"))
    args = parser.parse_args()
    if args.duration < 1 or args.warmup < 0 or args.connections < 1 or args.sample_every <= 0:
        parser.error("--duration >= 1, --warmup >= 0, --connections >= 1, --sample-every > 0")
    if args.connections <= args.queue_size:
        print(
            f"note: {args.connections} connections cannot fill a queue of {args.queue_size}; "
            "expect no 503",
            file=sys.stderr,
        )
    install_sigterm_handler()
    info = machine_info()
    print(f"{info['cpus']} CPUs, load {info['loadavg_at_start']}, torch {info['torch']}")

    with tempfile.TemporaryDirectory(prefix="aim-soak-") as tmp:
        workdir = Path(tmp)
        env = {
            "AIM_QUEUE_SIZE": str(args.queue_size),
            "AIM_MAX_BATCH_SIZE": str(args.max_batch_size),
            "AIM_MAX_WAIT_MS": str(args.max_wait_ms),
        }
        server, keys = aim_server(workdir, free_port(), env, keys_per_tier=args.keys_per_tier)
        print(f"starting aim serve on {HOST}:{server.port} (queue {args.queue_size}) ...")
        try:
            with running(server, args.ready_timeout) as ready_s:
                print(f"ready after {ready_s:.1f} s", flush=True)
                r = soak(server, keys, workdir, args)
        except BenchError as exc:
            print(f"soak FAILED: {exc}", file=sys.stderr)
            return 1

    wrk = r["wrk"]
    server_counts = r["server_counts"]
    rss = r["rss_mib"]
    # The verdict counts what clients received. The server's own count may be higher: requests
    # still queued when wrk stops are cut off, and the server records how it saw them end.
    bad = bad_5xx(wrk.statuses)
    unseen = max(0, bad_5xx(server_counts) - bad)
    growth = 100.0 * (rss["end"] - rss["start"]) / rss["start"] if rss["start"] else 0.0
    lat = wrk.latency_ms
    print()
    print(
        f"requests: {wrk.requests} in {wrk.duration_s:.1f} s ({wrk.rps:.1f}/s, "
        f"{wrk.ok_rps:.1f} 2xx/s); p50 {lat['p50']:.2f} ms, p99 {lat['p99']:.2f} ms"
    )
    print(f"by status (wrk):      {json.dumps(wrk.statuses)}")
    print(f"by status (/metrics): {json.dumps(server_counts)}")
    print(f"socket errors (wrk):  {json.dumps(wrk.as_dict()['socket_errors'])}")
    if unseen > 0:
        print(
            f"note: the server counted {unseen} more non-503 5xx on /predict than clients "
            f"received: requests cut off when wrk stopped (up to {args.connections} in flight), "
            "recorded by the server as 5xx"
        )
    print(f"max queue depth seen: {r['max_queue_depth']} (queue size {args.queue_size})")
    print(
        f"rss: idle {rss['idle']:.1f} MiB, start (after {args.warmup:.0f} s warm-up) "
        f"{rss['start']:.1f} MiB, end {rss['end']:.1f} MiB, max {rss['max']:.1f} MiB"
    )
    after = r["after"]
    print(f"after the soak: /readyz {after['readyz']}, /predict {after['predict']}")

    peaks = r["peak_wrk"]
    peak_rps = sum(p.ok_rps for p in peaks) / len(peaks) if peaks else 0.0
    share = wrk.ok_rps / peak_rps if peak_rps else None
    for when, p in zip(("before", "after"), peaks, strict=False):
        alone = f"{wrk.ok_rps / p.ok_rps:.2f}" if p.ok_rps else "n/a"
        print(
            f"peak {when} the soak ({args.peak_connections} connections): {p.ok_rps:.1f} 2xx/s, "
            f"p99 {p.latency_ms['p99']:.2f} ms; goodput is {alone} of it"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    payload = {
        "peak_wrk": [p.as_dict() for p in peaks],
        "peak_2xx_per_s": round(peak_rps, 1) if peaks else None,
        "goodput_share_of_peak": round(share, 3) if share is not None else None,
        "machine": info,
        "settings": settings,
        "wrk": wrk.as_dict(),
        "warmup_wrk": r["warmup_wrk"].as_dict() if r["warmup_wrk"] else None,
        "server_counts": server_counts,
        "server_counts_warmup": r["server_counts_warmup"],
        "non_503_5xx": bad,
        "non_503_5xx_server_only": unseen,
        "rss_mib": rss,
        "rss_growth_pct": round(growth, 2),
        "max_queue_depth": r["max_queue_depth"],
        "after": after,
        "samples": r["samples"],
        "wrk_output": wrk.raw,
    }
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {args.out}")
    print(f"goodput: {wrk.ok_rps:.1f} 2xx/s, {share:.2f} of peak" if share is not None else
          f"goodput: {wrk.ok_rps:.1f} 2xx/s, n/a of peak")  # fmt: skip
    print(
        f"soak: {bad} non-503 5xx, rss start {rss['start']:.1f} MiB end {rss['end']:.1f} MiB "
        f"(growth {growth:.1f}%)"
    )
    # Under load a request is answered 2xx or 503 (queue full); anything else (a 400 from the
    # HTTP layer, a 4xx from a body mangled by shedding) is a bug the 5xx count would miss.
    other = {c: n for c, n in wrk.statuses.items() if not c.startswith("2") and c != "503"}
    if other:
        print(f"soak FAILED: statuses other than 2xx and 503: {other}", file=sys.stderr)
    ok = bad == 0 and not other and after["readyz"] == 200 and after["predict"] == 200
    if wrk.ok == 0:
        print("soak FAILED: no 2xx answer during the soak (server stalled?)", file=sys.stderr)
        ok = False
    return 0 if ok else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; server stopped", file=sys.stderr)
        sys.exit(130)
