"""Where `aim serve` spends its time under load: a py-spy sampling profile of the server while
`wrk` drives it with the compare_servers load (auth, keyed noise, three tiers mixed).

Starts `aim serve` (bench/peers/harness.py), warms it up, then samples every thread of the server
with `py-spy record --format raw` (collapsed stacks) for `--duration` seconds while wrk runs, and
prints the functions with the most samples: self time (the frame on top of the stack) and
inclusive time (the frame anywhere on the stack), as a share of the event loop thread's samples
and of the forward thread's. Needs py-spy (`pip install py-spy`) and the right to ptrace the
server (root, or kernel.yama.ptrace_scope 0).

    python bench/profile_server.py [--duration 15] [--connections 32] [--top 25] [--out FILE]
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from peers.harness import (
    BenchError,
    aim_server,
    finish_wrk,
    free_port,
    install_sigterm_handler,
    running,
    smoke_test,
    start_wrk,
    wrk_command,
    wrk_setup,
)


def py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(found).exists():
        raise BenchError("py-spy is not installed (pip install py-spy)")
    return found


def summarise(collapsed: str, top: int) -> str:
    """Self and inclusive sample counts per function, per thread kind (loop / forward / other)."""
    self_count: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    incl_count: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    totals: collections.Counter[str] = collections.Counter()
    for line in collapsed.splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        frames = stack.split(";")
        thread = frames[0]
        kind = (
            "forward" if "aim-forward" in thread else "loop" if "MainThread" in thread else "other"
        )
        count = int(n)
        totals[kind] += count
        names = [
            f.split(" (")[0] + " (" + f.split(" (")[-1] if " (" in f else f for f in frames[1:]
        ]
        if names:
            self_count[kind][names[-1]] += count
        for name in set(names):
            incl_count[kind][name] += count
    out = []
    for kind in ("loop", "forward", "other"):
        if not totals[kind]:
            continue
        out.append(f"== {kind} thread(s): {totals[kind]} samples")
        out.append("  self %   function")
        for name, c in self_count[kind].most_common(top):
            out.append(f"  {100 * c / totals[kind]:6.1f}   {name}")
        out.append("  incl %   function")
        for name, c in incl_count[kind].most_common(top):
            out.append(f"  {100 * c / totals[kind]:6.1f}   {name}")
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=15.0, help="sampled seconds")
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument(
        "--gil",
        action="store_true",
        help="only samples of the thread holding the GIL (where Python time really goes when "
        "threads contend for it; without, a thread waiting for the GIL is blamed on its frame)",
    )
    parser.add_argument("--env", action="append", default=[], help="extra AIM_X=Y for the server")
    parser.add_argument("--out", type=Path, default=Path("out/profile.txt"))
    args = parser.parse_args()
    install_sigterm_handler()
    spy = py_spy()
    env = {"AIM_QUEUE_SIZE": "256", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env.update(dict(kv.split("=", 1) for kv in args.env))
    with tempfile.TemporaryDirectory(prefix="aim-profile-") as tmp:
        workdir = Path(tmp)
        server, keys = aim_server(workdir, free_port(), env)
        bodies, common = wrk_setup(workdir, keys, args.connections, 2)
        url = f"{server.base_url}/predict"
        with running(server, 300) as ready_s:
            print(f"ready after {ready_s:.1f} s", flush=True)
            smoke_test(server, bodies[0], keys)
            total = args.warmup + args.duration + 2
            wrk = start_wrk(wrk_command(url, duration=total, **common), workdir / "wrk.txt")
            time.sleep(args.warmup)
            assert server.proc is not None
            raw = workdir / "profile.txt"
            subprocess.run(
                [spy, "record", "--pid", str(server.proc.pid), "--format", "raw", "--threads",
                 "--rate", str(args.rate), "--duration", str(round(args.duration)),
                 "--nonblocking", "--output", str(raw), *(["--gil"] if args.gil else [])],
                check=True, capture_output=True, timeout=args.duration + 60,
            )  # fmt: skip
            result = finish_wrk(wrk, workdir / "wrk.txt", 60)
            collapsed = raw.read_text()
    report = summarise(collapsed, args.top)
    head = (
        f"load: wrk -t2 -c{args.connections}, {result.rps:.1f} req/s "
        f"({result.ok_rps:.1f} 2xx/s), p99 {result.latency_ms['p99']:.2f} ms"
    )
    print(head)
    print(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(head + "\n" + report + "\n")
    args.out.with_suffix(".collapsed").write_text(collapsed)
    print(f"wrote {args.out} and {args.out.with_suffix('.collapsed')}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"profile FAILED: {exc}", file=sys.stderr)
        sys.exit(1)
