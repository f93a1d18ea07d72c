"""`aim calibrate` and `aim eval`: the paper's two kinds of figure, reproduced on our models.

Calibration inputs are unlabeled and never the held-out split that `aim eval` measures on.
Measured agreement averages several evaluation keys: keyed noise is deterministic per key, so
one key gives one draw, and the binomial error of a single draw on a few hundred images is larger
than the effect we want to show.

A generation model (a Hugging Face directory, or a config naming one) is measured per decoding
step by teacher forcing: calibration on its ``calibration.txt`` (or ``--inputs``, a text file),
evaluation on its ``heldout.txt``; every step of every line is one decision, labelled with the
true next token.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from ..modulation import (
    BatchModulation,
    FocusEntry,
    FreshNoise,
    KeyedNoise,
    NoiseSource,
    expected_agreement,
    focus_field,
    modulate,
    sigma_for_agreement,
)
from . import plots
from .progress import progress
from .usage import UsageError, check_targets

EVAL_SECRET = b"aim-eval-secret"  # evaluation only: fixed so figures are reproducible
BATCH = 256


def load(model: str) -> Any:
    from ..models import ModelLoadError, load_model

    try:
        return load_model(model, "cpu")
    except (ModelLoadError, OSError) as exc:
        raise UsageError(f"--model {model!r}: {exc}") from None


def forward_all(adapter: Any, inputs: torch.Tensor) -> torch.Tensor:
    return torch.cat(
        [adapter.forward(inputs[i : i + BATCH]).cpu() for i in range(0, len(inputs), BATCH)]
    )


def read_inputs(path: Path, adapter: Any) -> torch.Tensor:
    """Unlabeled inputs from .npy or .pt, each prepared (and validated) by the adapter, or a
    folder of PNG/JPEG images decoded as requests are."""
    import numpy as np

    if path.is_dir():
        from ..calibration.data import image_folder_inputs

        return image_folder_inputs(path, adapter)

    try:
        if path.suffix == ".npy":
            raw: Any = np.load(path, allow_pickle=False)
        else:
            raw = torch.load(path, map_location="cpu", weights_only=True).numpy()
        return torch.stack([adapter.prepare(item) for item in raw])
    except Exception as exc:  # missing, unreadable, not an array, items of the wrong shape
        reason = "no such file" if not path.exists() else f"{type(exc).__name__}: {exc}"
        raise UsageError(f"--inputs {str(path)!r}: {reason}") from None


def _decisions_argmax(logits: torch.Tensor) -> torch.Tensor:
    return logits.argmax(dim=1)


def calibrate_command(args: argparse.Namespace) -> int:
    from ..models import calibration_inputs

    adapter = load(args.model)
    if adapter.task != "generation" and getattr(adapter, "labels", None):
        check_targets(args.targets, len(adapter.labels))
    if adapter.task == "generation":
        logits = _generation_calibration_logits(adapter, args.inputs, args.targets)
    else:
        inputs = (
            read_inputs(args.inputs, adapter) if args.inputs else calibration_inputs(args.model)
        )
        logits = forward_all(adapter, inputs)
    results = []
    print(f"{'target':>8} {'sigma':>10} {'predicted_agreement':>20}")
    for target in progress(args.targets, "calibrating"):
        sigma = sigma_for_agreement(logits, target)
        predicted = expected_agreement(logits, sigma)
        results.append(
            {"target": target, "sigma": round(sigma, 6), "predicted_agreement": round(predicted, 6)}
        )
        print(f"{target:>8.4f} {sigma:>10.4f} {predicted:>20.4f}", flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


def _source(kind: str) -> NoiseSource:
    return (
        KeyedNoise(EVAL_SECRET) if kind == "keyed" else FreshNoise(torch.Generator().manual_seed(0))
    )


def _batches(n: int) -> Iterator[slice]:
    for i in range(0, n, BATCH):
        yield slice(i, min(n, i + BATCH))


def measure_utility(
    logits: torch.Tensor,
    labels: torch.Tensor,
    sigma: float,
    source: NoiseSource,
    keys: int,
) -> tuple[float, float]:
    """(accuracy, agreement) under σ, averaged over `keys` evaluation keys."""
    clean = _decisions_argmax(logits)
    acc = agree = 0.0
    n = logits.shape[0]
    for k in range(keys):
        seeds = (
            source.seeds([f"eval-{k}"] * n)
            if isinstance(source, KeyedNoise)
            else torch.zeros(n, dtype=torch.int64)
        )
        hits_acc = hits_agree = 0.0
        total = 0
        for s in _batches(n):
            # Classification serves the fine digest of the logits (a replay memory's first-seen
            # cell); segmentation the σ-scaled pixel digest, which modulate computes itself.
            cells = (
                source.fine_cells(logits[s], seeds[s])
                if isinstance(source, KeyedNoise) and logits.dim() == 2
                else None
            )
            sig = torch.full((s.stop - s.start,), sigma)
            out = modulate(logits[s], BatchModulation(sig, seeds[s], cells=cells), source)
            pred = _decisions_argmax(out)
            hits_acc += float((pred == labels[s]).sum())
            hits_agree += float((pred == clean[s]).sum())
            total += pred.numel()
        acc += hits_acc / total
        agree += hits_agree / total
    return acc / keys, agree / keys


def eval_utility_command(args: argparse.Namespace) -> int:
    from ..models import heldout

    adapter = load(args.model)
    if adapter.task == "generation":
        return _eval_generation_utility(args, adapter)
    inputs, labels = heldout(args.model)
    logits = forward_all(adapter, inputs)
    source = _source(args.noise)
    keys = args.keys if args.noise == "keyed" else max(1, args.keys // 10)
    rows = []
    for sigma in progress(args.sigmas, "sigmas"):
        accuracy, agreement = measure_utility(logits, labels, sigma, source, keys)
        predicted = expected_agreement(logits, sigma)
        rows.append(
            {
                "sigma": sigma,
                "accuracy": round(accuracy, 5),
                "agreement": round(agreement, 5),
                "predicted_agreement": round(predicted, 5),
            }
        )
    _write_outputs(args.out, "utility", rows, lambda path: plots.utility(path, rows, args.model))
    return 0


def eval_focus_command(args: argparse.Namespace) -> int:
    from ..models import heldout

    adapter = load(args.model)
    if adapter.task == "generation":  # --class names a token: its text or its id
        logits, labels = _generation_steps(adapter, adapter.heldout_file, "held-out text")
        token = _focus_token(adapter, args.cls)
        if token is None:
            return 2
        index, label = token, args.cls
    else:
        inputs, labels = heldout(args.model)
        logits = forward_all(adapter, inputs)
        names = list(adapter.labels)
        if args.cls in names:
            index = names.index(args.cls)
        elif args.cls.isdigit() and int(args.cls) < len(names):
            index = int(args.cls)
        else:
            print(
                f"aim eval focus: --class {args.cls!r} is not a label of {args.model}",
                file=sys.stderr,
            )
            return 2
        label = names[index]
    source = KeyedNoise(EVAL_SECRET)
    n = logits.shape[0]
    spatial = tuple(logits.shape[2:]) if logits.dim() == 4 else None
    rows = []
    for strength in progress(args.strengths, "strengths"):
        entry = FocusEntry.parse(index, args.direction, strength)
        share = acc = 0.0
        total = 0
        for s in _batches(n):
            m = s.stop - s.start
            field = focus_field([[entry]] * m, logits.shape[1], spatial)  # type: ignore[arg-type]
            seeds = source.seeds(["eval-0"] * m)
            out = modulate(logits[s], BatchModulation(torch.zeros(m), seeds, field), source)
            pred = _decisions_argmax(out)
            share += float((pred == index).sum())
            acc += float((pred == labels[s]).sum())
            total += pred.numel()
        rows.append(
            {
                "strength": strength,
                "class_share": round(share / total, 5),
                "accuracy": round(acc / total, 5),
            }
        )
    _write_outputs(
        args.out,
        "focus",
        rows,
        lambda path: plots.focus(path, rows, args.model, label, args.direction),
    )
    return 0


# Generation models ------------------------------------------------------------------------------

# Teacher-forced steps hold D·V logits: keep them near 1 GiB of float32 for large vocabularies.
_STEP_LOGITS_BUDGET = 1 << 28


def _generation_steps(lm: Any, file: Path, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forced step logits D×V of a text file's lines, and each step's true next token."""
    from ..calibration.data import teacher_forced_logits
    from ..models import read_texts

    steps = max(256, min(4096, _STEP_LOGITS_BUDGET // lm.vocab_size))
    return teacher_forced_logits(lm, read_texts(file, kind), max_tokens=steps)


def _generation_calibration_logits(
    lm: Any, inputs: Path | None, targets: list[float]
) -> torch.Tensor:
    """The calibration steps the server calibrates on: the model's calibration text (or
    ``--inputs``, a text file, one sample a line), shortlisted for the lowest target."""
    from ..calibration.data import generation_logits
    from ..models import read_texts

    file = inputs if inputs is not None else lm.calibration_file
    return generation_logits(lm, read_texts(file, "calibration text"), targets)


def _eval_generation_utility(args: argparse.Namespace, lm: Any) -> int:
    """``eval utility`` per decoding step: measured agreement and accuracy over ``--keys`` keys
    (keyed noise) or as many fresh draws, against the prediction from the same logits."""
    from ..calibration.data import shortlist_logits

    logits, labels = _generation_steps(lm, lm.heldout_file, "held-out text")
    source = _source(args.noise)
    draws = max(1, int(getattr(args, "keys", 20)))
    # The prediction on each step's shortlist of top logits, long enough for the largest σ.
    short = shortlist_logits(logits, max(args.sigmas))
    rows = []
    for sigma in progress(args.sigmas, "sigmas"):
        accuracy, agreement = measure_utility(logits, labels, sigma, source, draws)
        rows.append(
            {
                "sigma": sigma,
                "accuracy": round(accuracy, 5),
                "agreement": round(agreement, 5),
                "predicted_agreement": round(expected_agreement(short, sigma), 5),
                "decisions": int(logits.shape[0]),
                "draws": draws,
                "noise": args.noise,  # keyed: one draw per evaluation key
            }
        )
    _write_outputs(args.out, "utility", rows, lambda path: plots.utility(path, rows, lm.name))
    return 0


def _focus_token(lm: Any, token: str) -> int | None:
    """The token id ``--class`` names (an id, or a single token's text); None after saying why."""
    from ..models import InputError

    try:
        return int(lm.token_id(int(token) if token.isdigit() else token))
    except InputError as exc:
        print(f"aim eval focus: --class {token!r} {exc.reason}", file=sys.stderr)
        return None


def _write_outputs(
    out: Path, name: str, rows: list[dict[str, Any]], plot: Callable[[Path], None]
) -> None:
    """`out/name.csv` and `out/name.png`; the table on stdout, then where the files are."""
    out.mkdir(parents=True, exist_ok=True)
    _write_csv(out / f"{name}.csv", rows)
    plot(out / f"{name}.png")
    _print_rows(rows)
    print(f"wrote {out / name}.csv and {out / name}.png")


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _print_rows(rows: list[dict[str, Any]]) -> None:
    cols = list(rows[0])
    print(" ".join(f"{c:>20}" for c in cols))
    for r in rows:
        print(" ".join(f"{r[c]:>20}" for c in cols))
