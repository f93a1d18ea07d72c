"""Throughput and latency of `aim serve` side by side with two peers, in one run, as ratios.

Same model (the shipped digits CNN, loaded with `service.models.load_model("digits")` in each
server), same load, same request bodies (one held-out 8×8 digit per request, cycling over
`--inputs` distinct digits), one server at a time on 127.0.0.1:

- ours:     `aim serve` on CPU with auth on, keyed noise, three tiers (gold/silver/bronze at
            utility 1.0/0.85/0.6); requests rotate over the tiers' keys, one key per request.
- litserve: bench/peers/litserve_server.py, LitServe batching (32, 2 ms), fresh noise σ = 4.
- fastapi:  bench/peers/plain_fastapi.py, one forward per request, fresh noise σ = 4.
- floor:    bench/peers/floor_fastapi.py, a bare async FastAPI endpoint that parses the same
            JSON body and answers a constant (no model): the framework's own cost per request.

Load: `wrk` (C, cheap on the CPU it shares with the server) with 2 threads and 32 connections
for `--duration` seconds after a `--warmup` run whose numbers are dropped; the Lua script
bench/peers/mixed_keys.lua rotates bodies and keys and tallies status codes. Prints req/s
(all answers and 2xx only), p50/p90/p99 latency, non-2xx counts, and the server's CPU while
measured (cores busy, and CPU ms per answer: its cost, apart from how much CPU the machine had
to give it) per server, writes the same as JSON to `--out`, and ends with the line

    ours/litserve req/s ratio: X.XX, p99 ratio: Y.YY
    ours/floor req/s share: Z.ZZ

(2xx req/s of ours over LitServe's; p99 of ours over LitServe's: lower is better; ours' 2xx req/s
as a share of the floor's). Each server's processes and OS threads are printed with its result.
Every server started here is stopped on exit, Ctrl-C or error (each runs in its own process
group).

    python bench/compare_servers.py [--duration 20] [--warmup 5] [--connections 32]
                                    [--servers ours,litserve,fastapi,floor] [--torch-threads N]
                                    [--workers N] [--out FILE]

`--workers N` runs ours as `aim serve --workers N` (service/serving/workers.py) with a private
redis-server for the limits and usage the workers share. `--servers ours,ours-redis` adds ours
with `AIM_REDIS_URL` (a private redis-server holding the replay memory, one Lua call per batch,
and the limits and usage) and ends with the line `ours-redis/ours req/s ratio: …, p99 ratio: …`:
what one memory for every replica costs one replica (its CPU figures leave out
redis-server's own).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from peers.harness import (
    HOST,
    PEERS,
    BenchError,
    Server,
    WrkResult,
    aim_server,
    cpu_seconds,
    digit_bodies,
    free_port,
    install_sigterm_handler,
    machine_info,
    prometheus_samples,
    redis_server,
    rss_mib,
    run_wrk,
    running,
    scrape,
    smoke_test,
    threads_per_process,
    write_lines,
    wrk_command,
)

SERVERS = ("ours", "litserve", "fastapi", "floor", "ours-redis")
DEFAULT_SERVERS = ("ours", "litserve", "fastapi", "floor")
SCRIPTS = {
    "litserve": "litserve_server.py",
    "fastapi": "plain_fastapi.py",
    "floor": "floor_fastapi.py",
}
READY = {"litserve": "/health", "fastapi": "/healthz", "floor": "/healthz"}


def build_server(
    name: str, workdir: Path, args: argparse.Namespace
) -> tuple[Server, list[tuple[str, str]]]:
    port = free_port()
    threads = threads_env(args.torch_threads)
    if name in ("ours", "ours-redis"):
        env = {
            "AIM_MAX_BATCH_SIZE": str(args.max_batch_size),
            "AIM_MAX_WAIT_MS": str(args.max_wait_ms),
            "AIM_QUEUE_SIZE": str(args.queue_size),
            "AIM_WORKERS": str(args.workers),
            **threads,
        }
        return aim_server(workdir, port, env, keys_per_tier=args.keys_per_tier, name=name)
    server = Server(
        name=name,
        command=[sys.executable, str(PEERS / SCRIPTS[name]), str(port)],
        port=port,
        ready_path=READY[name],
        log_path=workdir / f"{name}.log",
        env=threads,
    )
    return server, []


def threads_env(n: int) -> dict[str, str]:
    """Same intra-op thread count for every server (and every process a server forks);
    0 leaves each library's default (torch: one thread per core)."""
    return {"OMP_NUM_THREADS": str(n), "MKL_NUM_THREADS": str(n)} if n > 0 else {}


def bench_one(
    name: str, workdir: Path, bodies_file: Path, body: bytes, args: argparse.Namespace
) -> dict[str, Any]:
    server, keys = build_server(name, workdir, args)
    keys_file = write_lines(workdir / f"{name}-keys.txt", [k for _, k in keys]) if keys else None
    url = f"{server.base_url}/predict"
    print(f"[{name}] starting on {HOST}:{server.port} ...", flush=True)
    with contextlib.ExitStack() as stack:
        # The workers count limits and usage in Redis; ours-redis also keeps its replay memory
        # there (one Lua call per batch), the cost of one memory for every replica.
        if name == "ours-redis" or (name == "ours" and args.workers > 1):
            server.env["AIM_REDIS_URL"] = stack.enter_context(redis_server(workdir))
        return measure(name, server, keys, keys_file, url, bodies_file, body, args, workdir)


def measure(
    name: str,
    server: Server,
    keys: list[tuple[str, str]],
    keys_file: Path | None,
    url: str,
    bodies_file: Path,
    body: bytes,
    args: argparse.Namespace,
    workdir: Path,
) -> dict[str, Any]:
    with running(server, args.ready_timeout) as ready_s:
        print(f"[{name}] ready after {ready_s:.1f} s; smoke test, then warm-up", flush=True)
        smoke_test(server, body, keys)
        common = {
            "bodies_file": bodies_file,
            "keys_file": keys_file,
            "connections": args.connections,
            "threads": args.threads,
        }
        if args.warmup > 0:
            warm = wrk_command(url, duration=args.warmup, **common)
            run_wrk(warm, args.warmup, workdir / f"{name}-warmup.txt")
        print(f"[{name}] measuring for {args.duration:.0f} s", flush=True)
        cpu_before = cpu_seconds(server.proc.pid) if server.proc else 0.0
        batches_before = batch_totals(server.base_url) if name.startswith("ours") else None
        result = run_wrk(
            wrk_command(url, duration=args.duration, **common),
            args.duration,
            workdir / f"{name}-wrk.txt",
        )
        cpu = (cpu_seconds(server.proc.pid) - cpu_before) if server.proc else 0.0
        batches = batch_totals(server.base_url) if batches_before is not None else None
        rss = rss_mib(server.proc.pid) if server.proc else 0.0
        threads = threads_per_process(server.proc.pid) if server.proc else []
        if not server.alive():
            raise BenchError(f"{name} died under load; log:\n{server.log_tail()}")
        if result.ok == 0:
            raise BenchError(
                f"{name} gave no 2xx answer in {args.duration:.0f} s under load (statuses "
                f"{result.statuses}, socket errors {result.socket_errors}): stalled?; log:\n"
                f"{server.log_tail()}"
            )
    report(name, result)
    rows_per_batch = None
    if batches is not None and batches_before is not None and batches[0] > batches_before[0]:
        count, rows = batches[0] - batches_before[0], batches[1] - batches_before[1]
        rows_per_batch = round(rows / count, 1)
        print(f"[{name}] {count:.0f} batches while measured, {rows_per_batch} rows each on average")
    print(f"[{name}] {len(threads)} process(es), OS threads per process {threads}", flush=True)
    return {
        "processes": len(threads),
        "threads_per_process": threads,
        **result.as_dict(),
        "ready_s": round(ready_s, 2),
        "rss_mib_after": round(rss, 1),
        # The server's CPU per answer while measured (its processes, all threads): what it
        # costs, apart from how much CPU the machine had to give it.
        "cpu_ms_per_request": round(1000 * cpu / result.requests, 3) if result.requests else None,
        "cpu_cores": round(cpu / result.duration_s, 2) if result.duration_s else None,
        "rows_per_batch": rows_per_batch,
        "keys": len(keys),
        "wrk_output": result.raw,
    }


def batch_totals(base_url: str) -> tuple[float, float] | None:
    """(forward passes, rows) so far, from ours' `aim_batch_size` histogram."""
    text = scrape(base_url)
    if text is None:
        return None
    count = sum(v for _, v in prometheus_samples(text, "aim_batch_size_count"))
    rows = sum(v for _, v in prometheus_samples(text, "aim_batch_size_sum"))
    return count, rows


def report(name: str, r: WrkResult) -> None:
    lat = r.latency_ms
    print(
        f"[{name}] {r.rps:8.1f} req/s ({r.ok_rps:.1f} 2xx/s), p50 {lat['p50']:.2f} ms, "
        f"p99 {lat['p99']:.2f} ms, non-2xx {r.non_2xx}, socket errors {r.socket_errors}",
        flush=True,
    )


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def fmt(x: float | None, digits: int = 2) -> str:
    return f"{x:.{digits}f}" if x is not None else "n/a"


def summary_table(results: dict[str, dict[str, Any]]) -> None:
    print()
    head = f"{'server':<10} {'req/s':>9} {'2xx/s':>9} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8}"
    print(
        head + f" {'non-2xx':>8} {'sock err':>8} {'rss MiB':>8} {'procs':>5} {'cores':>5}", end=""
    )
    print(f" {'cpu ms/req':>10}")
    for name, r in results.items():
        if "error" in r:
            print(f"{name:<10} failed: {r['error'].splitlines()[0]}")
            continue
        lat = r["latency_ms"]
        print(
            f"{name:<10} {r['rps']:>9.1f} {r['ok_rps']:>9.1f} {lat['p50']:>8.2f} "
            f"{lat['p90']:>8.2f} {lat['p99']:>8.2f} {r['non_2xx']:>8} "
            f"{sum(r['socket_errors'].values()):>8} {r['rss_mib_after']:>8.1f} "
            f"{r['processes']:>5} {fmt(r['cpu_cores']):>5} {fmt(r['cpu_ms_per_request'], 3):>10}"
        )
    print()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=20.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=5.0, help="unmeasured seconds before")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument(
        "--servers",
        default=",".join(DEFAULT_SERVERS),
        help=f"comma-separated, of {','.join(SERVERS)}",
    )
    parser.add_argument("--inputs", type=int, default=64, help="distinct held-out digits")
    parser.add_argument("--keys-per-tier", type=int, default=1)
    parser.add_argument("--max-batch-size", type=int, default=32, help="ours: AIM_MAX_BATCH_SIZE")
    parser.add_argument("--max-wait-ms", type=float, default=2.0, help="ours: AIM_MAX_WAIT_MS")
    parser.add_argument("--queue-size", type=int, default=256, help="ours: AIM_QUEUE_SIZE")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="ours: AIM_WORKERS (more than one also starts a private redis-server)",
    )
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=0,
        help="OMP_NUM_THREADS for every server (0: library default, one per core)",
    )
    parser.add_argument("--ready-timeout", type=float, default=300.0, help="seconds per server")
    parser.add_argument("--cooldown", type=float, default=3.0, help="idle seconds between servers")
    parser.add_argument("--out", type=Path, default=Path("out/compare_servers.json"))
    args = parser.parse_args()
    names = [n.strip() for n in args.servers.split(",") if n.strip()]
    unknown = set(names) - set(SERVERS)
    if unknown or not names:
        parser.error(f"--servers: choose from {', '.join(SERVERS)}")
    if args.duration < 1 or args.warmup < 0 or args.connections < 1:
        parser.error("--duration >= 1, --warmup >= 0 and --connections >= 1")
    install_sigterm_handler()

    info = machine_info()
    print(
        f"{info['cpus']} CPUs, load {info['loadavg_at_start']}, torch {info['torch']}, "
        f"litserve {info['litserve']}, {info['wrk']}"
    )
    print(
        f"load: wrk -t{args.threads} -c{args.connections}, {args.warmup:.0f} s warm-up + "
        f"{args.duration:.0f} s measured per server, {args.inputs} distinct digits, torch "
        f"threads {args.torch_threads or 'default'}"
    )
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="aim-bench-") as tmp:
        workdir = Path(tmp)
        bodies = digit_bodies(args.inputs)
        bodies_file = write_lines(workdir / "bodies.jsonl", bodies)
        for i, name in enumerate(names):
            if i:
                time.sleep(args.cooldown)
            try:
                results[name] = bench_one(name, workdir, bodies_file, bodies[0], args)
            except BenchError as exc:
                print(f"[{name}] FAILED: {exc}", file=sys.stderr, flush=True)
                results[name] = {"error": str(exc)}

    summary_table(results)

    def metric(name: str, key: str) -> float | None:
        r = results.get(name, {})
        if "error" in r or not r:
            return None
        value: float = r["ok_rps"] if key == "rps" else r["latency_ms"]["p99"]
        return value

    ratios = {
        f"ours/{peer}": {
            "rps": ratio(metric("ours", "rps"), metric(peer, "rps")),
            "p99": ratio(metric("ours", "p99"), metric(peer, "p99")),
        }
        for peer in ("litserve", "fastapi", "floor")
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    payload = {"machine": info, "settings": settings, "servers": results, "ratios": ratios}
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {args.out}")
    fa = ratios["ours/fastapi"]
    print(f"ours/fastapi req/s ratio: {fmt(fa['rps'])}, p99 ratio: {fmt(fa['p99'])}")
    ls_ = ratios["ours/litserve"]
    print(f"ours/litserve req/s ratio: {fmt(ls_['rps'])}, p99 ratio: {fmt(ls_['p99'])}")
    print(f"ours/floor req/s share: {fmt(ratios['ours/floor']['rps'])}")
    if "ours-redis" in results:
        rps = ratio(metric("ours-redis", "rps"), metric("ours", "rps"))
        p99 = ratio(metric("ours-redis", "p99"), metric("ours", "p99"))
        payload["ratios"]["ours-redis/ours"] = {"rps": rps, "p99": p99}
        args.out.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"ours-redis/ours req/s ratio: {fmt(rps)}, p99 ratio: {fmt(p99)}")
    return 1 if any("error" in r for r in results.values()) else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; servers stopped", file=sys.stderr)
        sys.exit(130)
