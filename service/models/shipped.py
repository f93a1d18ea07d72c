"""The shipped models, ``digits`` and ``digit-scenes``: their networks, labels and inputs, and
the bundled data (calibration and held-out splits, model cards) that only they have."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import cast

import numpy as np
import torch
from torch import nn

from .architectures import DigitsCNN, SceneSegmenter
from .base import VisionModel
from .data import SCENE_CALIBRATION, SCENE_HELDOUT, SCENE_SIZE, digit_scenes, digits_splits
from .loaders import load_weights
from .spec import SHIPPED, InputSpec, Task

ASSETS = Path(__file__).resolve().parent / "assets"

DIGIT_LABELS = [str(d) for d in range(10)]
SCENE_LABELS = ["background", *DIGIT_LABELS]
DIGITS_INPUT = InputSpec(shape=(1, 8, 8), low=0.0, high=16.0, scale=16.0)
SCENES_INPUT = InputSpec(shape=(1, SCENE_SIZE, SCENE_SIZE), low=0.0, high=16.0, scale=16.0)


def load_shipped(name: str, device: str | torch.device) -> VisionModel:
    network: nn.Module
    if name == "digits":
        network, task, labels, spec = DigitsCNN(), "classification", DIGIT_LABELS, DIGITS_INPUT
    else:
        network, task, labels, spec = SceneSegmenter(), "segmentation", SCENE_LABELS, SCENES_INPUT
    weights = ASSETS / f"{name}.safetensors"
    load_weights(network, weights)
    return VisionModel(
        network.eval(),
        name=name,
        task=cast(Task, task),
        labels=labels,
        input_spec=spec,
        device=device,
        source=str(weights),
        graphs=True,  # their control flow depends on shapes only (models/graphs.py)
    )


def _check_bundled(name: str) -> None:
    if name not in SHIPPED:
        raise ValueError(
            f"model {name!r} has no bundled data (only the shipped models do: {', '.join(SHIPPED)})"
        )


@lru_cache(maxsize=4)
def _bundled(name: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    if name == "digits":
        x, y = digits_splits().get(split)  # type: ignore[arg-type]
        return x[:, None], y
    sizes = SCENE_CALIBRATION if split == "calibration" else SCENE_HELDOUT
    x, masks = digit_scenes(split, sizes["n"], sizes["seed"], size=SCENE_SIZE)  # type: ignore[arg-type]
    return x[:, None], masks


def _input_spec(name: str) -> InputSpec:
    return DIGITS_INPUT if name == "digits" else SCENES_INPUT


def calibration_inputs(name: str) -> torch.Tensor:
    """Unlabeled calibration inputs, prepared for the network: digits 500×1×8×8, digit-scenes
    64×1×32×32. Never the held-out data that ``heldout`` returns."""
    _check_bundled(name)
    x, _ = _bundled(name, "calibration")
    return _input_spec(name).normalize(x)


def heldout(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Prepared held-out inputs and labels: digits 540 images and classes; digit-scenes 128
    canvases (128×1×32×32) and their masks (128×32×32, 0 = background, d + 1 = digit d)."""
    _check_bundled(name)
    x, y = _bundled(name, "heldout")
    return _input_spec(name).normalize(x), torch.from_numpy(np.array(y, dtype=np.int64))


def model_card(name: str) -> str:
    """The markdown model card of a shipped model."""
    _check_bundled(name)
    return (ASSETS / f"{name}.md").read_text(encoding="utf-8")
