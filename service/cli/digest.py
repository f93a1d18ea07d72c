"""`aim digest train`: train the replay digest encoder of a vision model on unlabeled inputs.

The digest is what the tier's replay memory keys on (docs/MODULATION.md): an encoder that maps
label-preserving copies of an input together and distinct inputs apart, trained contrastively on
the operator's own inputs (a folder of PNG/JPEG images or a .npy/.pt array file), prepared by
the model's own input spec. The file it writes is named in the model spec as ``digest: FILE``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}


def add_command(sub: Any) -> None:
    """``aim digest train`` (one line in ``main.build_parser`` registers it)."""
    digest = sub.add_parser("digest", help="the replay digest encoder of a vision model")
    digest_sub = digest.add_subparsers(dest="digest_command", required=True, metavar="ACTION")
    train = digest_sub.add_parser(
        "train",
        help="train a digest on unlabeled inputs",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    train.add_argument("--model", required=True, help="a shipped model name or a config/model path")
    train.add_argument(
        "--inputs", type=Path, required=True, help="a folder of PNG/JPEG images, or .npy/.pt"
    )
    train.add_argument("--out", type=Path, help="output file (default: <model>-digest.safetensors)")
    train.add_argument("--steps", type=int, default=600, help="training steps (default 600)")
    train.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    train.set_defaults(handler=train_command)


def read_folder(folder: Path, adapter: Any) -> torch.Tensor:
    """Every PNG/JPEG under ``folder`` (sorted), decoded and prepared by the model."""
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"--inputs: {folder} holds no .png/.jpg/.jpeg images")
    return torch.stack([adapter.decode_image(p.read_bytes()) for p in files])


def _reporter(steps: int) -> Any:
    """A tqdm bar on a terminal, else a plain line every tenth of the run."""
    if sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=steps, desc="digest", file=sys.stderr)

        def tick(step: int, loss: float) -> None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}")
            if step == steps:
                bar.close()

        return tick
    every = max(1, steps // 10)

    def line(step: int, loss: float) -> None:
        if step % every == 0 or step == steps:
            print(f"digest: {step}/{steps} loss {loss:.4f}", file=sys.stderr, flush=True)

    return line


def train_command(args: argparse.Namespace) -> int:
    from ..models import load_model
    from ..modulation.digest import save_digest
    from ..modulation.digest_training import separation, train_digest
    from .evaluation import read_inputs

    if args.steps < 1:
        raise ValueError(f"--steps: {args.steps} has to be at least 1")
    adapter: Any = load_model(args.model, "cpu")
    if getattr(adapter, "task", None) != "classification":
        raise ValueError(
            f"--model: {args.model} is a {adapter.task} model; the digest serves classification"
        )
    if not args.inputs.exists():
        raise ValueError(f"--inputs: {args.inputs} does not exist")
    if args.inputs.is_dir():
        inputs = read_folder(args.inputs, adapter)
    else:
        inputs = read_inputs(args.inputs, adapter)
    if len(inputs) < 8:
        raise ValueError(f"--inputs: {len(inputs)} inputs; contrastive training needs at least 8")
    low, high = float(inputs.min()), float(inputs.max())
    started = time.perf_counter()
    encoder = train_digest(
        inputs, low=low, high=high, steps=args.steps, seed=args.seed, progress=_reporter(args.steps)
    )
    for name, (a, b) in separation(encoder, inputs, low, high, seed=args.seed + 1).items():
        kind = "median, p95" if name == "nearest distinct" else "p5, median"
        print(f"{name:17s} {a:.3f} {b:.3f}  ({kind})")
    name = getattr(adapter, "name", "model")
    out = args.out or Path(f"{name}-digest.safetensors")
    save_digest(encoder, out)
    seconds = time.perf_counter() - started
    print(f"threshold {encoder.threshold:.3f}, {len(inputs)} inputs, {seconds:.0f} s")
    print(f"wrote {out}; name it in the model spec as `digest: {out}`")
    return 0
