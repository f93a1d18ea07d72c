"""The forward thread's cost per batch: `Engine.run` on bronze `digits` rows, in process.

    python bench/engine_batch.py [--rows 32] [--runs 50] [--threads 1] [--contend] [--profile]
                                 [--network]

Builds the engine as `aim serve` does (shipped `digits`, keyed noise, the replay memory centred
on the calibration split) and times `Engine.run` on batches of one-row bronze items, as the
batcher hands them over under load. Each run takes the next `--rows` of the 1,797 digits (the
memory stores first-seen rows and grows as in serving); after them the same images come again
(then every row matches an entry). Prints the median and quartiles over `--runs` batches of
both, and the number of torch calls from Python per batch (functions and tensor methods, counted
with a TorchFunctionMode: each is a trip through the GIL-held dispatcher). `--profile` adds a
cProfile of the first-seen batches (top functions by total time).

`--contend` times the same batches again while another thread spins in pure Python (as the
event loop does under load), at the server's GIL switch interval of 0.5 ms: each torch call
releases the GIL and must wait for it back, so the batch time there grows with the number of
calls. It also prints how much of its solo speed the spinning thread kept.

`--network` times the network's forward with its embedding alone, eager and as the traced graph
the service runs (service/models/graphs.py), alone and beside the same spinning thread.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import sys
import threading
import time
from typing import Any

import numpy as np
import torch
from torch.overrides import TorchFunctionMode

from service.models import load_model
from service.models.data import digits_splits
from service.modulation import KeyedNoise
from service.observability.metrics import Metrics
from service.serving.engine import Engine, PredictItem

SIGMA = 6.359  # bronze at utility 0.65 (docs/MODULATION.md)


class CountCalls(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        # Attribute reads (.shape, .device) are C getters, not operator calls: not counted.
        self.calls += getattr(func, "__name__", "") != "__get__"
        return func(*args, **(kwargs or {}))


def spin_rate(work: Any) -> float:
    """Iterations per second of a pure-Python loop on another thread while ``work()`` runs."""
    stop = threading.Event()
    count = [0]

    def spin() -> None:
        n = 0
        while not stop.is_set():
            n += 1
        count[0] = n

    thread = threading.Thread(target=spin)
    t0 = time.perf_counter()
    thread.start()
    work()
    stop.set()
    thread.join()
    return count[0] / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--contend", action="store_true")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--network", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model = load_model("digits")
    keyed = KeyedNoise(b"bench-engine")
    engine = Engine(model, keyed, Metrics())
    seed = keyed.tier_seed("bronze")
    splits = digits_splits()
    raw = np.concatenate([splits.get(s)[0] for s in ("train", "calibration", "heldout")])
    x = model.input_spec.normalize(raw[:, None])
    n = x.shape[0] // args.rows

    def batch(i: int) -> list[PredictItem]:
        rows = x[(i % n) * args.rows : (i % n + 1) * args.rows]
        return [PredictItem(r[None], "bronze", SIGMA, seed) for r in rows]

    def timed(batches: list[list[PredictItem]]) -> list[float]:
        out = []
        for items in batches:
            t0 = time.perf_counter()
            engine.run(items)
            out.append((time.perf_counter() - t0) * 1000)
        return out

    runs = min(args.runs, n - 2)
    engine.run(batch(n - 1))  # warm-up: tables, projections, allocator
    first = [batch(i) for i in range(runs)]
    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
    first_ms = timed(first)
    if args.profile:
        prof.disable()
    again_ms = timed(first)
    calls = []
    for items in (batch(runs), batch(0)):  # a first-seen batch, then one seen before
        counter = CountCalls()
        with counter:
            engine.run(items)
        calls.append(counter.calls)
    new_calls, again_calls = calls

    def line(name: str, ms: list[float], calls: int) -> str:
        q = statistics.quantiles(ms, n=4)
        return (
            f"{name:<11} median {statistics.median(ms):6.2f} ms  (q1 {q[0]:.2f}, q3 {q[2]:.2f})"
            f"  torch calls {calls}"
        )

    print(f"Engine.run, {args.rows} bronze digit rows, {runs} batches, {args.threads} thread(s)")
    print(line("first-seen", first_ms, new_calls))
    print(line("again", again_ms, again_calls))
    print(f"memory: {len(engine.memory or [])} entries, {engine.memory and engine.memory.stats}")
    if args.contend:
        sys.setswitchinterval(0.0005)  # service/serving/server.py ServerLimits.switch_interval_s
        solo = spin_rate(lambda: time.sleep(1.0))
        ms: list[float] = []
        shared = spin_rate(lambda: ms.extend(timed(first)))
        print(line("contended", ms, new_calls) + f"  spinner kept {shared / solo:.2f} of its speed")
    if args.network:
        network_lines(model, x[: args.rows])
    if args.profile:
        pstats.Stats(prof).sort_stats("tottime").print_stats(18)


def network_lines(model: Any, x: torch.Tensor) -> None:
    """The digits network's forward with its embedding alone: eager (the module's own method,
    one GIL trip per layer and op) and as the traced graph the service runs
    (service/models/graphs.py), each alone and beside a thread spinning in Python."""
    sys.setswitchinterval(0.0005)  # service/serving/server.py ServerLimits.switch_interval_s

    def eager(batch: torch.Tensor) -> Any:
        with torch.inference_mode():
            return model.module.forward_with_embedding(batch)

    def medians(fn: Any, runs: int = 200) -> float:
        fn(x)
        out = []
        for _ in range(runs):
            t0 = time.perf_counter()
            fn(x)
            out.append((time.perf_counter() - t0) * 1000)
        return statistics.median(out)

    for name, fn in (("eager", eager), ("graph", model.forward_with_embedding)):
        alone = medians(fn)
        beside: list[float] = []
        spin_rate(lambda fn=fn, out=beside: out.append(medians(fn, 100)))
        print(f"network {name:<6} {x.shape[0]} rows: median {alone:.2f} ms alone, "
              f"{beside[0]:.2f} ms beside a spinning thread")  # fmt: skip


if __name__ == "__main__":
    main()
