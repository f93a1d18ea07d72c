"""Real-size vision models: `aim serve` against LitServe and the model's own batched forward,
in one run, per model, as ratios.

Models (random weights from transformers configs; no hub): ViT-Ti/16 (hidden 192, 12 layers,
3 heads, 224², 1,000 classes) and ResNet-50 (ResNetConfig's defaults, ConvNeXt-style 224 crop),
each saved with `save_pretrained` next to its image processor (scripts/make_hf_vision.py), and
exported with `torch.export` (dynamic batch, `aim.json` inside) for the file loader. `--small`
swaps in tiny shapes (the test runs that; its figures mean nothing).

Per model, on 127.0.0.1, each server under the same load: `--clients` keep-alive connections in
a closed loop (bench/peers/loadgen.py), each request one 640×480 JPEG (cycling over 16 distinct
photo-like images). One server runs at a time; ours-hf, LitServe and the two forwards take
turns (`--rounds`, the order reversed every other round, each server started afresh for its
turn), so that the machine's drift over minutes falls on all of them alike; each figure is over
its turns' summed `--seconds`. ours-json follows ours-hf's first turn on the same server,
ours-export comes last, each for one turn's length:

- ours-hf:     `aim serve` of `model: {loader: huggingface, path: DIR}`, auth on, keyed noise,
               three tiers; the JPEG as a raw `image/jpeg` body.
- ours-json:   the same server, the JPEG as `{"inputs": [{"image_b64": ...}]}` (LitServe's body).
- ours-export: `aim serve` of the exported .pt2 file (its own squashing resize), raw body.
- litserve:    bench/peers/litserve_hf.py on the same directory: transformers' processor, batch
               `--batch`, 2 ms, fresh noise; JSON body.
- forward:     the raw batched forward of the same network in this process (batch `--batch`,
               every core), in images/s: what the cores can do with no serving at all. It runs
               the network as `aim serve` does (`load_model`: a traced graph, oneDNN-fused where
               that is faster, service/models/graphs.py), so the share measures the serving.
- forward-eager: the same, with transformers' own eager model (what LitServe runs).

Prints a table and ends, per model, with the line

    <model>: ours/litserve req/s ratio: X.XX, ours/forward share: Y.YY

(ours = ours-hf with raw bodies, 2xx req/s; the share is of the forward's images/s).

    python bench/real_model.py [--models vit,resnet50] [--seconds 20] [--rounds 2] [--warmup 3]
                               [--clients 8] [--batch 8] [--device cpu|cuda] [--small]
                               [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peers.harness import (
    HOST,
    PEERS,
    REPO,
    BenchError,
    Server,
    free_port,
    install_sigterm_handler,
    make_keys,
    run_main,
    running,
)
from peers.loadgen import LoadResult, prepare, run_load

MODELS = {
    "vit": ("vit", "vit-tiny"),
    "resnet50": ("resnet50", "resnet-tiny"),
    "vit-b16": ("vit-b16", "vit-tiny"),
}
TIERS = {"gold": {"utility": 1.0}, "silver": {"sigma": 2.0}, "bronze": {"sigma": 6.0}}
SECRET = "bench-secret"
IMAGES = 16


def photos(count: int, width: int = 640, height: int = 480) -> list[bytes]:
    """Distinct photo-like JPEGs (smooth colour fields with detail), quality 90."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    for _ in range(count):
        coarse = (rng.random((height // 32, width // 32, 3)) * 255).astype(np.uint8)
        base = Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)
        pixels = np.asarray(base, dtype=np.int16) + rng.integers(-12, 13, (height, width, 3))
        buf = io.BytesIO()
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def build_models(kind: str, workdir: Path) -> tuple[Path, Path]:
    """The HF directory and its torch.export file (dynamic batch, aim.json inside)."""
    import importlib.util

    import torch

    spec = importlib.util.spec_from_file_location(
        "make_hf_vision", REPO / "scripts/make_hf_vision.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    directory = module.build(kind, workdir / kind)
    from service.models import load_model, metadata_json

    model = load_model(directory)
    example = torch.zeros(2, *model.input_spec.shape)
    batch = torch.export.Dim("batch", min=1, max=256)
    program = torch.export.export(
        model.module, (example,), dynamic_shapes={"pixel_values": {0: batch}}
    )
    file = workdir / f"{kind}.pt2"
    meta = metadata_json(model.task, model.labels, model.input_spec, name=f"{kind}-export")
    torch.export.save(program, str(file), extra_files={"aim.json": meta})
    return directory, file


class Forwards:
    """The network batched in this process, prepared inputs, every core: as `aim serve` runs it
    (`load_model`) and as transformers' own eager model (what LitServe runs)."""

    def __init__(self, directory: Path, batch: int, device: str) -> None:
        import torch
        from transformers import AutoConfig
        from transformers import AutoModelForImageClassification as Classifier
        from transformers import AutoModelForSemanticSegmentation as Segmenter

        from service.models import load_model

        torch.set_num_threads(os.cpu_count() or 1)
        self.device = device
        self.batch = batch
        self.ours = load_model(directory, device)
        arch = AutoConfig.from_pretrained(directory).architectures[0]
        auto = Segmenter if arch.endswith("ForSemanticSegmentation") else Classifier
        self.eager = auto.from_pretrained(directory).eval().to(device)
        self.x = torch.randn(batch, *self.ours.input_spec.shape).to(self.ours.device)
        self.rates: dict[str, list[tuple[int, float]]] = {"forward": [], "forward-eager": []}

    def run(self, which: str, seconds: float) -> None:
        """Time ``which`` for ``seconds`` after one warm call; kept for ``rate``."""
        import torch

        def once() -> None:
            if which == "forward":
                self.ours.forward(self.x)
            else:
                self.eager(pixel_values=self.x)
            if self.device == "cuda":
                torch.cuda.synchronize()

        with torch.inference_mode():
            once()
            done, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < seconds:
                once()
                done += self.batch
            self.rates[which].append((done, time.perf_counter() - t0))

    def rate(self, which: str) -> float:
        """Images/s over every run of ``which``."""
        runs = self.rates[which]
        seconds = sum(s for _, s in runs)
        return sum(n for n, _ in runs) / seconds if seconds else 0.0


def aim(name: str, model: str, workdir: Path, device: str) -> tuple[Server, str]:
    import yaml

    config = workdir / f"{name}.yaml"
    entry: Any = {"loader": "huggingface", "path": model} if name == "ours-hf" else model
    config.write_text(yaml.safe_dump({"model": entry, "tiers": TIERS}, sort_keys=False))
    keys_file = workdir / f"{name}-keys.yaml"
    keys_file.unlink(missing_ok=True)
    key = make_keys(keys_file, ["gold"], 1)[0][1]
    port = free_port()
    command = [sys.executable, "-m", "service.cli", "serve", "--config", str(config)]
    command += ["--keys-file", str(keys_file), "--host", HOST, "--port", str(port)]
    command += ["--device", device]
    env = {"AIM_SECRET": SECRET, "AIM_NOISE": "keyed", "AIM_CACHE_DIR": str(workdir / "cache")}
    server = Server(name, command, port, "/readyz", workdir / f"{name}.log", env=env)
    return server, key


def litserve(directory: Path, workdir: Path, device: str, batch: int) -> Server:
    port = free_port()
    command = [sys.executable, str(PEERS / "litserve_hf.py"), str(port), str(directory), device]
    command.append(str(batch))
    return Server("litserve", command, port, "/health", workdir / "litserve.log")


def requests(images: list[bytes], key: str | None, raw: bool) -> list[bytes]:
    out = []
    for data in images:
        headers = {"X-API-Key": key} if key else {}
        if raw:
            body, headers["Content-Type"] = data, "image/jpeg"
        else:
            payload = {"inputs": [{"image_b64": base64.b64encode(data).decode()}]}
            body, headers["Content-Type"] = json.dumps(payload).encode(), "application/json"
        out.append(prepare("/predict", f"{HOST}", body, headers))
    return out


def load(server: Server, reqs: list[bytes], seconds: float, args: argparse.Namespace) -> LoadResult:
    return asyncio.run(run_load(HOST, server.port, reqs, args.clients, seconds, args.warmup))


def summary(results: list[LoadResult]) -> dict[str, Any]:
    """One row from one or more measurements of a server: rates over their summed time."""
    total = LoadResult(duration_s=sum(r.duration_s for r in results))
    for r in results:
        total.latencies_ms += r.latencies_ms
        total.statuses.update(r.statuses)
        total.errors += r.errors
    out = total.as_dict()
    non_2xx = sum(n for code, n in total.statuses.items() if not 200 <= code < 300)
    out["errors"] = total.errors + non_2xx
    return out


def preprocess_ms(model: Any, directory: Path, images: list[bytes]) -> dict[str, float]:
    """Milliseconds per image on one core: our decode + preprocessing of ``model`` (what `aim
    serve` runs per request) and transformers' processor on a PIL-decoded image (what LitServe
    runs)."""
    import torch
    from PIL import Image
    from transformers import AutoImageProcessor

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        processor = AutoImageProcessor.from_pretrained(str(directory))

        def theirs(data: bytes) -> Any:
            image = Image.open(io.BytesIO(data)).convert("RGB")
            return processor(image, return_tensors="pt")["pixel_values"]

        out = {}
        for label, fn in (("ours", model.decode_image_sized), ("transformers", theirs)):
            fn(images[0])
            t0 = time.perf_counter()
            for _ in range(3):
                for data in images:
                    fn(data)
            out[label] = (time.perf_counter() - t0) * 1000 / (3 * len(images))
        return out
    finally:
        torch.set_num_threads(threads)


def budget_line(name: str, rows: dict[str, Any], cores: int) -> str:
    """The CPU ceiling of each server: cores over (forward + preprocessing) core-ms per image,
    ours with the network as we run it, LitServe's with transformers' eager model. HTTP, JSON
    and the load generator come on top, so the real rates sit below."""
    forward, eager = rows["forward"]["ok_rps"], rows.get("forward-eager", {}).get("ok_rps")
    if not forward or not eager or "preprocess_ms" not in rows:
        return f"{name}: no CPU budget (no forward rate)"
    core_ms, eager_ms = cores * 1000.0 / forward, cores * 1000.0 / eager
    ours, theirs = rows["preprocess_ms"]["ours"], rows["preprocess_ms"]["transformers"]
    ceiling_ours = cores * 1000.0 / (core_ms + ours)
    ceiling_peer = cores * 1000.0 / (eager_ms + theirs)
    return (
        f"{name}: per image: forward {core_ms:.1f} core-ms ours, {eager_ms:.1f} eager; "
        f"preprocessing {ours:.1f} ms ours, {theirs:.1f} transformers': CPU ceilings ours "
        f"{ceiling_ours:.1f}, litserve {ceiling_peer:.1f} req/s "
        f"(ratio at most {ceiling_ours / ceiling_peer:.2f})"
    )


def bench_model(name: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    kind = MODELS[name][1 if args.small else 0]
    directory, exported = build_models(kind, workdir)
    images = photos(IMAGES)
    rows: dict[str, Any] = {}
    ready = 600.0
    ours, key = aim("ours-hf", str(directory), workdir, args.device)
    peer = litserve(directory, workdir, args.device, args.batch)
    forwards = Forwards(directory, args.batch, args.device)
    raw = requests(images, key, raw=True)
    litserve_reqs = requests(images, None, raw=False)
    parts: dict[str, list[LoadResult]] = {"ours-hf": [], "litserve": []}
    share = args.seconds / args.rounds
    # The machine's speed drifts by 10-20 % within minutes (other guests on the host), so the
    # servers and the forward take turns in rounds, the order reversed every other round, and
    # each figure is over the sum of its turns. One server runs at a time: an idle LitServe
    # still polls its queues (about a tenth of a core), which would slow whatever it sits beside.
    for turn in range(args.rounds):
        order = ["ours-hf", "litserve", "forward", "forward-eager"]
        for which in order if turn % 2 == 0 else order[::-1]:
            if which == "ours-hf":
                with running(ours, ready):
                    parts[which].append(load(ours, raw, share, args))
                    if turn == 0:
                        reqs = requests(images, key, raw=False)
                        rows["ours-json"] = summary([load(ours, reqs, share, args)])
            elif which == "litserve":
                with running(peer, ready):
                    parts[which].append(load(peer, litserve_reqs, share, args))
            else:
                forwards.run(which, share)
    rows["ours-hf"] = summary(parts["ours-hf"])
    rows["litserve"] = summary(parts["litserve"])
    del forwards.eager
    server, export_key = aim("ours-export", str(exported), workdir, args.device)
    with running(server, ready):
        reqs = requests(images, export_key, raw=True)
        rows["ours-export"] = summary([load(server, reqs, share, args)])
    for which in ("forward", "forward-eager"):
        rows[which] = {"ok_rps": round(forwards.rate(which), 1)}
    if args.device == "cpu":
        rows["preprocess_ms"] = preprocess_ms(forwards.ours, directory, images)
    shown = ["ours-hf", "ours-json", "ours-export", "litserve", "forward", "forward-eager"]
    return {k: rows[k] for k in shown} | {k: v for k, v in rows.items() if k not in shown}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="vit,resnet50")
    parser.add_argument(
        "--seconds", type=float, default=20.0, help="measured seconds per server, over its turns"
    )
    parser.add_argument("--rounds", type=int, default=2, help="turns each server takes")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--small", action="store_true", help="tiny shapes (a smoke run)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    install_sigterm_handler()
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in names if m not in MODELS]
    if unknown:
        raise BenchError(f"--models: {unknown[0]!r} is not one of {', '.join(MODELS)}")
    if args.rounds < 1 or args.seconds <= 0:
        raise BenchError("--rounds must be at least 1 and --seconds above 0")
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="aim-real-model-") as tmp:
        for name in names:
            results[name] = bench_model(name, args, Path(tmp))
    lines = []
    for name, rows in results.items():
        print(f"\n{name} ({args.device}, {args.clients} clients, {args.seconds:g} s, 640×480 JPEG)")
        print(f"{'server':<13} {'2xx req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
        for server, row in rows.items():
            if server == "preprocess_ms":
                continue
            print(
                f"{server:<13} {row['ok_rps']:>10.1f} {row.get('p50_ms', 0):>8.1f} "
                f"{row.get('p99_ms', 0):>8.1f} {row.get('errors', 0):>7}"
            )
        ours, peer, fwd = (
            rows["ours-hf"]["ok_rps"],
            rows["litserve"]["ok_rps"],
            rows["forward"]["ok_rps"],
        )
        lines.append(
            f"{name}: ours/litserve req/s ratio: {ours / peer if peer else float('inf'):.2f}, "
            f"ours/forward share: {ours / fwd if fwd else 0.0:.2f}"
        )
        if args.device == "cpu":
            print(budget_line(name, rows, os.cpu_count() or 1))
    if args.out:
        args.out.write_text(
            json.dumps({"args": vars(args) | {"out": str(args.out)}, "results": results}, indent=2)
        )
    print()
    for line in lines:
        print(line)
    return 0


if __name__ == "__main__":
    run_main(main)
