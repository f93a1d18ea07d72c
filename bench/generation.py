"""Generation batching: continuous vs static vs a plain `transformers` `generate` loop.

Closed-loop streams on the tiny LM (built by `scripts/make_tiny_lm.py`, or `--model DIR`): each
of N concurrent streams sends `--requests` requests one after the other, each waiting for the
last token of the one before. Requests differ in length (budgets cycle through 8, 16, 32 and 64
new tokens, EOS ignored so every run decodes the same tokens) and prompt, at σ = 0.5 with keyed
noise, greedy. Three ways to serve them, in process (no HTTP, so the figures are the batching's):

- `continuous`: `GenerationScheduler` (the server's), new requests join the running batch;
- `static`: the same scheduler with `continuous=False` (a batch runs to its end, as before);
- `hf-generate`: one request at a time through `model.generate` on one worker thread (a
  streamer stamps the first token), the plain way to serve a `transformers` model.

Time to first token counts from submission (queueing included); tokens/s is every generated token
over the wall time of the run. Each mode is warmed first (the model, and the keyed noise whose
tables are built on first use), as a running server is. Prints one line per mode and stream
count and ends with

    continuous/static at 32 streams: TTFT p99 X× better, tokens/s Y×

    python bench/generation.py [--streams 1,8,32] [--requests 4] [--model DIR] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from service.generation import GenerationRequest, GenerationScheduler  # noqa: E402
from service.models.causal_lm import CausalLM  # noqa: E402
from service.modulation import KeyedNoise  # noqa: E402

PROMPTS = ["the cow says", "count up: three four", "a banana is", "two plus three is", "anna"]
BUDGETS = (8, 16, 32, 64)
SIGMA = 0.5
MODES = ("continuous", "static", "hf-generate")


def build_tiny_lm(out: Path) -> Path:
    spec = importlib.util.spec_from_file_location("make_tiny_lm", ROOT / "scripts/make_tiny_lm.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    path: Path = module.build_tiny_lm(out, seed=0, steps=120)
    return path


def workload(lm: CausalLM, streams: int, per_stream: int) -> list[list[GenerationRequest]]:
    """Per stream, its requests in order (the same for every mode)."""
    source = KeyedNoise(b"bench")
    out = []
    for s in range(streams):
        requests = []
        for j in range(per_stream):
            prompt = PROMPTS[(s + j) % len(PROMPTS)]
            requests.append(
                GenerationRequest.for_prompt(
                    lm,
                    prompt,
                    max_new_tokens=BUDGETS[(s + j) % len(BUDGETS)],
                    sigma=SIGMA,
                    seed=source.tier_seed(f"bench-{s}"),
                    stop_on_eos=False,
                )
            )
        out.append(requests)
    return out


async def run_scheduler(
    lm: CausalLM,
    source: KeyedNoise,
    plan: list[list[GenerationRequest]],
    continuous: bool,
    max_rows: int,
) -> tuple[list[float], int, float]:
    scheduler = GenerationScheduler(
        lm, source, continuous=continuous, max_rows=max_rows, max_wait=0.002
    )
    scheduler.start()
    ttft: list[float] = []
    tokens = 0

    async def stream(requests: list[GenerationRequest]) -> None:
        nonlocal tokens
        for request in requests:
            sent = time.perf_counter()
            job = scheduler.submit(request, "bench", sent)
            first = True
            async for _ in job.tokens():
                if first:
                    ttft.append(time.perf_counter() - sent)
                    first = False
                tokens += 1

    started = time.perf_counter()
    await asyncio.gather(*(stream(r) for r in plan))
    wall = time.perf_counter() - started
    await scheduler.stop()
    return ttft, tokens, wall


class _FirstToken:
    """A `generate` streamer that stamps the first generated token (the prompt comes first)."""

    def __init__(self) -> None:
        self.calls = 0
        self.first: float | None = None

    def put(self, value: Any) -> None:
        self.calls += 1
        if self.calls == 2 and self.first is None:
            self.first = time.perf_counter()

    def end(self) -> None:
        pass


async def run_hf_generate(
    lm: CausalLM, plan: list[list[GenerationRequest]]
) -> tuple[list[float], int, float]:
    executor = ThreadPoolExecutor(max_workers=1)  # one model, one request at a time, FIFO
    loop = asyncio.get_running_loop()
    ttft: list[float] = []
    tokens = 0

    def generate(request: GenerationRequest) -> tuple[float, int]:
        streamer = _FirstToken()
        ids = torch.tensor([request.prompt_ids])
        with torch.inference_mode():
            out = lm.model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                do_sample=False,
                max_new_tokens=request.max_new_tokens,
                min_new_tokens=request.max_new_tokens,
                pad_token_id=lm.pad_token_id,
                streamer=streamer,
            )
        assert streamer.first is not None
        return streamer.first, int(out.shape[1] - ids.shape[1])

    async def stream(requests: list[GenerationRequest]) -> None:
        nonlocal tokens
        for request in requests:
            sent = time.perf_counter()
            first, n = await loop.run_in_executor(executor, generate, request)
            ttft.append(first - sent)
            tokens += n

    started = time.perf_counter()
    await asyncio.gather(*(stream(r) for r in plan))
    wall = time.perf_counter() - started
    executor.shutdown()
    return ttft, tokens, wall


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", default="1,8,32")
    parser.add_argument("--requests", type=int, default=4, help="requests per stream")
    parser.add_argument("--model", type=Path, help="a causal LM directory (default: tiny LM)")
    parser.add_argument("--max-rows", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--out", type=Path, help="write the figures as JSON")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    streams = [int(s) for s in args.streams.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        path = args.model or build_tiny_lm(Path(tmp) / "tiny-lm")
        lm = CausalLM.load(path)
        lm.warmup()
        # One source for every run, warmed like a server's: its tables are built on first use.
        source = KeyedNoise(b"bench")
        for continuous in (True, False):
            asyncio.run(run_scheduler(lm, source, workload(lm, 32, 1), continuous, args.max_rows))
        asyncio.run(run_hf_generate(lm, workload(lm, 1, 1)))
        rows = []
        for n in streams:
            plan = workload(lm, n, args.requests)
            for mode in MODES:
                if mode == "hf-generate":
                    ttft, tokens, wall = asyncio.run(run_hf_generate(lm, plan))
                else:
                    run = run_scheduler(lm, source, plan, mode == "continuous", args.max_rows)
                    ttft, tokens, wall = asyncio.run(run)
                row = {
                    "mode": mode,
                    "streams": n,
                    "requests": len(ttft),
                    "tokens": tokens,
                    "tokens_per_s": tokens / wall,
                    "ttft_p50_ms": 1000 * statistics.median(ttft),
                    "ttft_p99_ms": 1000 * percentile(ttft, 0.99),
                }
                rows.append(row)
                print(
                    f"{mode:>12} {n:>3} streams: {row['tokens_per_s']:8.1f} tokens/s, "
                    f"TTFT p50 {row['ttft_p50_ms']:8.1f} ms, p99 {row['ttft_p99_ms']:8.1f} ms",
                    flush=True,
                )
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2) + "\n")
    by = {(r["mode"], r["streams"]): r for r in rows}
    top = max(streams)
    cont, static = by[("continuous", top)], by[("static", top)]
    print(
        f"continuous/static at {top} streams: TTFT p99 "
        f"{static['ttft_p99_ms'] / cont['ttft_p99_ms']:.1f}x better, tokens/s "
        f"{cont['tokens_per_s'] / static['tokens_per_s']:.2f}x"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
