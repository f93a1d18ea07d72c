"""A local Hugging Face vision directory (``save_pretrained``) served as a ``VisionModel``.

The task comes from the config's architecture (``…ForImageClassification`` → classification,
``…ForSemanticSegmentation`` → segmentation, ``…ForCausalLM`` → generation, which
``causal_lm.py`` loads), the labels from ``id2label``, the preprocessing from the directory's
``preprocessor_config.json`` (``preprocess.py``). Anything else fails at start-up with one line
naming the head or the missing file. Never touches the hub (``local_files_only``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .base import VisionModel
from .errors import ModelLoadError
from .preprocess import ImagePreprocessor
from .spec import InputSpec, Task

_KIND = "Hugging Face directory"
_HEADS: dict[str, Task] = {
    "ForImageClassification": "classification",
    "ForSemanticSegmentation": "segmentation",
    "ForCausalLM": "generation",
}


def hf_task(directory: str | Path) -> Task:
    """The task of the model saved in ``directory``, from its config's architecture."""
    config = _config(Path(directory))
    architectures = config.get("architectures") or []
    for arch in architectures:
        for suffix, task in _HEADS.items():
            if isinstance(arch, str) and arch.endswith(suffix):
                return task
    named = ", ".join(map(str, architectures)) or "none named in config.json"
    raise ModelLoadError(
        str(directory),
        f"unsupported head {named} (supported: " + ", ".join(f"*{s}" for s in _HEADS) + ")",
        _KIND,
    )


def _config(directory: Path) -> dict[str, Any]:
    file = directory / "config.json"
    if not file.is_file():
        raise ModelLoadError(str(directory), "no config.json (not a save_pretrained folder)", _KIND)
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(str(file), f"{type(exc).__name__}: {exc}", _KIND) from exc
    if not isinstance(data, dict):
        raise ModelLoadError(str(file), "not a JSON object", _KIND)
    return data


class LogitsOnly(nn.Module):
    """A transformers model called on ``pixel_values``, answering its logits tensor alone."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.model(pixel_values=pixel_values).logits
        return logits


def load_hf_vision(
    directory: str | Path,
    device: str | torch.device = "cpu",
    name: str | None = None,
) -> VisionModel:
    """An image classifier or semantic segmenter saved with ``save_pretrained`` (plus its image
    processor), as a ``VisionModel``; ModelLoadError in one line otherwise."""
    path = Path(directory)
    task = hf_task(path)
    if task == "generation":
        raise ModelLoadError(str(path), "a causal LM: serve it with task: generation", _KIND)
    preprocessor = ImagePreprocessor.from_file(path)
    config = _config(path)
    labels = _labels(config, path)
    try:
        import transformers

        auto = (
            transformers.AutoModelForImageClassification
            if task == "classification"
            else transformers.AutoModelForSemanticSegmentation
        )
        model = auto.from_pretrained(str(path), local_files_only=True)
    except ImportError as exc:  # pragma: no cover - the llm extra installs it
        raise ModelLoadError(
            str(path), "needs transformers (pip install 'aim[llm]')", _KIND
        ) from exc
    except Exception as exc:
        lines = str(exc).strip().splitlines()
        problem = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
        raise ModelLoadError(str(path), problem, _KIND) from exc
    model.eval()
    rescale = preprocessor.rescale
    input_spec = InputSpec(
        shape=preprocessor.output_shape,
        low=0.0,
        high=255.0,
        # Numeric inputs are pixels 0..255 at the model's size: the processor's own numbers.
        scale=1.0 / rescale if rescale else 1.0,
        mean=preprocessor.mean,
        std=preprocessor.std,
    )
    vision = VisionModel(
        LogitsOnly(model),
        name=name or path.resolve().name,
        task=task,
        labels=labels,
        input_spec=input_spec,
        device=device,
        source=str(path),
        preprocessor=preprocessor,
        native_output=task == "segmentation",
    )
    vision.warmup((1,))  # a wrong head or label count fails now, not on the first request
    return vision


def _labels(config: dict[str, Any], path: Path) -> list[str]:
    raw = config.get("id2label")
    if not isinstance(raw, dict) or not raw:
        raise ModelLoadError(str(path), "config.json has no id2label", _KIND)
    try:
        pairs = sorted((int(k), str(v)) for k, v in raw.items())
    except ValueError as exc:
        raise ModelLoadError(str(path), f"config.json id2label: {exc}", _KIND) from None
    if [i for i, _ in pairs] != list(range(len(pairs))):
        raise ModelLoadError(str(path), "config.json id2label is not numbered 0..N-1", _KIND)
    labels = [v for _, v in pairs]
    if len(set(labels)) != len(labels):  # random configs name them LABEL_0..; real ones differ
        labels = [f"{v} ({i})" if labels.count(v) > 1 else v for i, v in enumerate(labels)]
    return labels
