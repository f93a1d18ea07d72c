"""The GPU path in one prepared script (under 10 minutes on one GPU): serving ResNet-50 against
LitServe and against a raw batched forward, and keyed modulation against the memory floor.

1. Serving (needs torchvision; skipped, and said so, where it does not import): ResNet-50 from
   torchvision with random weights, traced to TorchScript, served by `aim serve` (auth, keyed
   noise, three tiers) and by LitServe (bench/peers/litserve_image.py: batching, fresh noise)
   on the same device, one server at a time, with binary image payloads (one 224×224 PNG per
   request, base64 in JSON as both servers take it), driven by the asyncio load generator
   (bench/peers/loadgen.py; the GPU machine has no wrk). Prints images/s and p50/p99 per
   server and each server's share of the raw batched forward (images/s of `model(x)` at the
   servers' batch size on the same device, inputs already there).
2. Modulation: keyed noise (`service.modulation.modulate`, σ = 4) on 64×1000, 64×128256 and
   8×150×512×512 logits against the memory floor (one read and one write of the logits:
   `out.copy_(logits)`), plus fresh noise for reference.
3. Fused kernel: keyed noise + argmax in one Triton kernel is not built yet; the line says so.

    python bench/gpu.py                 # the GPU run (device cuda)
    python bench/gpu.py --small         # CPU, small shapes, short load: checks the script

Real-size models from transformers configs (no torchvision needed) have their own bench, which
takes the device too: `python bench/real_model.py --device cuda --models vit-b16,resnet50`
(ViT-B/16 and ResNet-50 served from their Hugging Face directories and exported files, against
LitServe and the raw batched forward on the same GPU).

Writes everything as JSON to `--out` and ends with

    gpu: ours X img/s, litserve Y img/s, raw Z img/s; keyed/floor A, B, C
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from modulation import timed
from peers.harness import (
    HOST,
    PEERS,
    SECRET,
    TIERS,
    BenchError,
    Server,
    aim_command,
    free_port,
    install_sigterm_handler,
    make_keys,
    run_main,
    running,
)
from peers.loadgen import prepare, run_load

GPU_SHAPES = [(64, 1000), (64, 128256), (8, 150, 512, 512)]
SMALL_SHAPES = [(64, 1000), (64, 8192), (2, 150, 64, 64)]


# --- modulation -----------------------------------------------------------------------------


def modulation(shapes: list[tuple[int, ...]], device: torch.device, repeats: int) -> list[dict]:
    from service.modulation import BatchModulation, FreshNoise, KeyedNoise, modulate

    keyed, fresh = KeyedNoise(b"bench-gpu"), FreshNoise()
    rows = []
    for shape in shapes:
        logits = torch.randn(shape, device=device) * 4
        n = shape[0]
        params = BatchModulation(
            torch.full((n,), 4.0, device=device), keyed.seeds(["silver"] * n).to(device)
        )
        out = torch.empty_like(logits)
        floor = timed(lambda o=out, x=logits: o.copy_(x), repeats, device)
        keyed_ms = timed(lambda x=logits, p=params: modulate(x, p, keyed), repeats, device)
        fresh_ms = timed(lambda x=logits, p=params: modulate(x, p, fresh), repeats, device)
        gbytes = 2 * logits.numel() * logits.element_size() / 1e9
        row = {
            "shape": list(shape),
            "floor_ms": round(floor, 4),
            "floor_gb_s": round(gbytes / (floor / 1000), 1),
            "keyed_ms": round(keyed_ms, 4),
            "fresh_ms": round(fresh_ms, 4),
            "keyed_over_floor": round(keyed_ms / floor, 2),
        }
        rows.append(row)
        print(
            f"modulation {tuple(shape)!s:<22} floor {floor:9.3f} ms "
            f"({row['floor_gb_s']:7.1f} GB/s)  keyed {keyed_ms:9.3f} ms  fresh {fresh_ms:9.3f} ms"
            f"  keyed/floor {row['keyed_over_floor']:.2f}",
            flush=True,
        )
        del logits, out
    return rows


# --- serving --------------------------------------------------------------------------------


def torchvision_or_reason() -> tuple[Any, str | None]:
    try:
        import torchvision  # noqa: F401
        from torchvision.models import resnet50
    except Exception as exc:  # torchvision missing or broken (it does not import everywhere)
        return None, f"{type(exc).__name__}: {exc}"
    return resnet50, None


def write_model(workdir: Path, resnet50: Any, size: int) -> tuple[Path, Path]:
    model = resnet50(weights=None).eval()
    traced = torch.jit.trace(model, torch.zeros(1, 3, size, size))
    path = workdir / "resnet50.pt"
    traced.save(str(path))
    labels = workdir / "labels.txt"
    labels.write_text("".join(f"class-{i}\n" for i in range(1000)))
    return path, labels


def image_bodies(count: int, size: int) -> list[bytes]:
    from PIL import Image

    gen = torch.Generator().manual_seed(0)
    bodies = []
    for _ in range(count):
        pixels = torch.randint(0, 256, (size, size, 3), generator=gen, dtype=torch.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels.numpy()).save(buf, format="PNG")
        item = {"image_b64": base64.b64encode(buf.getvalue()).decode()}
        bodies.append(json.dumps({"inputs": [item]}).encode())
    return bodies


def raw_forward(
    model_path: Path, device: torch.device, batch: int, size: int, repeats: int
) -> float:
    model = torch.jit.load(str(model_path), map_location=device).eval()
    x = torch.randn(batch, 3, size, size, device=device)
    with torch.inference_mode():
        ms = timed(lambda: model(x), repeats, device)
    return batch / (ms / 1000)


def servers(
    workdir: Path, model_path: Path, labels: Path, device: str, size: int, batch: int
) -> dict[str, tuple[Server, list[tuple[str, str]]]]:
    import yaml

    spec = {
        "task": "classification",
        "loader": "torchscript",
        "path": str(model_path),
        "labels": str(labels),
        "input": {
            "shape": [3, size, size],
            "mean": [0.485, 0.456, 0.406],
            "std": [0.229, 0.224, 0.225],
        },
    }
    tiers = {name: {"sigma": s} for name, s in (("gold", 0.0), ("silver", 2.0), ("bronze", 6.0))}
    config = workdir / "aim.yaml"
    config.write_text(yaml.safe_dump({"model": spec, "tiers": tiers}, sort_keys=False))
    keys_file = workdir / "keys.yaml"
    keys = make_keys(keys_file, list(TIERS), 1)
    port = free_port()
    ours = Server(
        name="ours",
        command=[*aim_command(), "serve", "--config", str(config), "--keys-file", str(keys_file),
                 "--host", HOST, "--port", str(port), "--device", device],
        port=port,
        ready_path="/readyz",
        log_path=workdir / "ours.log",
        env={"AIM_SECRET": SECRET, "AIM_MAX_BATCH_SIZE": str(batch), "AIM_QUEUE_SIZE": "512"},
    )  # fmt: skip
    lport = free_port()
    lit = Server(
        name="litserve",
        command=[sys.executable, str(PEERS / "litserve_image.py"), str(lport), str(model_path),
                 device, str(size), str(batch)],
        port=lport,
        ready_path="/health",
        log_path=workdir / "litserve.log",
    )  # fmt: skip
    return {"ours": (ours, keys), "litserve": (lit, [])}


def stand_in(weights: None = None) -> torch.nn.Module:
    """A small CNN with ResNet-50's interface (3×H×W in, 1000 logits out), to check the
    serving path where torchvision does not import (`--stand-in`); its figures are not
    ResNet-50's."""
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, stride=2, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(16, 1000),
    )


def serving(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    resnet50, reason = torchvision_or_reason()
    if resnet50 is None and not args.stand_in:
        print(f"serving: skipped (torchvision does not import: {reason})", flush=True)
        return {"skipped": reason}
    if resnet50 is None:
        print(f"serving: torchvision does not import ({reason}); a stand-in CNN instead")
        resnet50 = stand_in
    size = 64 if args.small else 224
    with tempfile.TemporaryDirectory(prefix="aim-gpu-") as tmp:
        workdir = Path(tmp)
        model_path, labels = write_model(workdir, resnet50, size)
        raw = raw_forward(model_path, device, args.batch, size, args.repeats)
        print(f"raw forward: {raw:.1f} img/s (batch {args.batch}, {size}×{size})", flush=True)
        bodies = image_bodies(16, size)
        out: dict[str, Any] = {
            "model": "resnet50" if resnet50 is not stand_in else "stand-in CNN",
            "raw_img_s": round(raw, 1),
            "image_side": size,
        }
        for name, (server, keys) in servers(
            workdir, model_path, labels, device.type, size, args.batch
        ).items():
            try:
                with running(server, args.ready_timeout):
                    requests = [
                        prepare("/predict", HOST, body, {"Content-Type": "application/json",
                                **({"X-API-Key": keys[i % len(keys)][1]} if keys else {})})
                        for i, body in enumerate(bodies)
                    ]  # fmt: skip
                    result = asyncio.run(
                        run_load(HOST, server.port, requests, args.connections,
                                 args.duration, args.warmup)
                    )  # fmt: skip
            except BenchError as exc:
                print(f"[{name}] FAILED: {exc}", file=sys.stderr, flush=True)
                out[name] = {"error": str(exc)}
                continue
            r = result.as_dict()
            r["share_of_raw"] = round(r["ok_rps"] / raw, 3) if raw else None
            out[name] = r
            print(
                f"[{name}] {r['ok_rps']:.1f} img/s, p50 {r['p50_ms']:.1f} ms, p99 "
                f"{r['p99_ms']:.1f} ms, statuses {r['statuses']}, share of raw forward "
                f"{r['share_of_raw']}",
                flush=True,
            )
        return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--small", action="store_true", help="CPU-sized shapes and load")
    parser.add_argument("--device", default=None, help="default: cuda, or cpu with --small")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--batch", type=int, default=None, help="server and raw batch size")
    parser.add_argument("--connections", type=int, default=None)
    parser.add_argument("--duration", type=float, default=None)
    parser.add_argument("--warmup", type=float, default=None)
    parser.add_argument("--skip-serving", action="store_true")
    parser.add_argument(
        "--stand-in", action="store_true", help="without torchvision: serve a small CNN instead"
    )
    parser.add_argument("--ready-timeout", type=float, default=300.0)
    parser.add_argument("--out", type=Path, default=Path("out/gpu.json"))
    args = parser.parse_args()
    small = args.small
    args.device = args.device or ("cpu" if small else "cuda")
    args.repeats = args.repeats or (3 if small else 20)
    args.batch = args.batch or (8 if small else 64)
    args.connections = args.connections or (8 if small else 128)
    args.duration = args.duration or (5.0 if small else 30.0)
    args.warmup = args.warmup if args.warmup is not None else (2.0 if small else 10.0)
    install_sigterm_handler()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu: no CUDA device here; run with --small for the CPU check", file=sys.stderr)
        return 2
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    started = time.time()
    print(
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, device {card}, torch "
        f"{torch.__version__}, {'small shapes' if small else 'full shapes'}",
        flush=True,
    )
    mod = modulation(SMALL_SHAPES if small else GPU_SHAPES, device, args.repeats)
    print("fused keyed-noise + argmax kernel (Triton): not built; keyed/floor above is the "
          "unfused torch path", flush=True)  # fmt: skip
    serve = {"skipped": "--skip-serving"} if args.skip_serving else serving(args, device)
    payload = {
        "device": card,
        "torch": torch.__version__,
        "small": small,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "modulation": mod,
        "serving": serve,
        "wall_s": round(time.time() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {args.out} ({payload['wall_s']} s)")

    def ips(name: str) -> str:
        r = serve.get(name)
        return f"{r['ok_rps']:.1f}" if isinstance(r, dict) and "ok_rps" in r else "n/a"

    raw = f"{serve['raw_img_s']:.1f}" if "raw_img_s" in serve else "n/a"
    ratios = ", ".join(f"{m['keyed_over_floor']:.2f}" for m in mod)
    print(f"gpu: ours {ips('ours')} img/s, litserve {ips('litserve')} img/s, raw {raw} img/s; "
          f"keyed/floor {ratios}")  # fmt: skip
    return 0


if __name__ == "__main__":
    run_main(main)
