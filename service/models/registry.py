"""Which model to serve: the shipped ones by name, user models by a spec, a config or a file.

A spec (the ``model:`` mapping of the config file) names the task, the loader, the file, the
labels and the input. ``ModelSpec.from_dict`` checks it and names the field of every problem, so
a typo reads "model.task: 'clasification' is not one of ...".
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from .architectures import DigitsCNN, SceneSegmenter
from .base import TASKS, InputSpec, Task, VisionModel
from .causal_lm import CausalLM
from .data import SCENE_CALIBRATION, SCENE_HELDOUT, SCENE_SIZE, digit_scenes, digits_splits
from .errors import ModelLoadError, describe_value
from .loaders import (
    fixed_batch_size,
    load_export_with_metadata,
    load_factory,
    load_torchscript_with_metadata,
    load_weights,
)

SHIPPED: tuple[str, ...] = ("digits", "digit-scenes")
ASSETS = Path(__file__).resolve().parent / "assets"
LOADERS: tuple[str, ...] = ("torchscript", "export", "factory", "huggingface")
CONFIG_SUFFIXES = (".yaml", ".yml", ".json")

DIGIT_LABELS = [str(d) for d in range(10)]
SCENE_LABELS = ["background", *DIGIT_LABELS]
DIGITS_INPUT = InputSpec(shape=(1, 8, 8), low=0.0, high=16.0, scale=16.0)
SCENES_INPUT = InputSpec(shape=(1, SCENE_SIZE, SCENE_SIZE), low=0.0, high=16.0, scale=16.0)

_FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
_SPEC_FIELDS = ("task", "loader", "path", "weights", "labels", "input", "name", "options")


@dataclass
class ModelSpec:
    """A user model: ``path`` is a file (resolved) or, for the factory loader, module:function."""

    task: Task
    loader: str
    path: str
    weights: Path | None = None
    labels: Path | list[str] | None = None
    input: InputSpec | None = None
    name: str = ""
    options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], base_dir: str | os.PathLike[str] = ".", field: str = "model"
    ) -> ModelSpec:
        """Validate a config mapping; relative paths resolve against ``base_dir`` (the config
        file's folder). Raises ValueError naming the field, e.g. "model.input.shape: ..."."""
        if not isinstance(data, Mapping):
            raise ValueError(
                f"{field}: expected a shipped model's name ({', '.join(SHIPPED)}) "
                "or a mapping with task, loader, path"
            )
        unknown = [k for k in data if k not in _SPEC_FIELDS]
        if unknown:
            raise ValueError(
                f"{field}.{unknown[0]}: unknown field (known: {', '.join(_SPEC_FIELDS)})"
            )
        base = Path(base_dir)
        task = data.get("task")
        if task is None:
            raise ValueError(f"{field}.task: missing (one of {', '.join(TASKS)})")
        if task not in TASKS:
            raise ValueError(
                f"{field}.task: {describe_value(task)} is not one of {', '.join(TASKS)}"
            )
        path = data.get("path")
        if not isinstance(path, str) or not path.strip():
            raise ValueError(f"{field}.path: {describe_value(path)} is not a file path")
        loader = data.get("loader")
        if loader is None:
            loader = _infer_loader(cast(Task, task), path, data.get("weights"))
        if loader not in LOADERS:
            raise ValueError(
                f"{field}.loader: {describe_value(loader)} is not one of {', '.join(LOADERS)}"
            )
        if (task == "generation") != (loader == "huggingface"):
            raise ValueError(
                f"{field}.loader: {loader!r} cannot load a {task} model "
                + (
                    "(use huggingface)"
                    if task == "generation"
                    else "(huggingface is for generation)"
                )
            )
        if loader == "factory":
            if not _FACTORY.match(path):
                raise ValueError(f"{field}.path: {path!r} is not 'module:function'")
            resolved = path
        else:
            resolved = str(_resolve(path, base))
        weights = data.get("weights")
        weights_path: Path | None = None
        if loader == "factory":
            if not isinstance(weights, str) or not weights.strip():
                raise ValueError(
                    f"{field}.weights: {describe_value(weights)} is not a path "
                    "(the factory loader needs a .safetensors file)"
                )
            weights_path = _resolve(weights, base)
        elif weights is not None:
            raise ValueError(f"{field}.weights: only the factory loader takes weights")
        labels = _parse_labels(data.get("labels"), base, f"{field}.labels")
        input_data = data.get("input")
        input_spec: InputSpec | None = None
        if task == "generation":
            if input_data is not None:
                raise ValueError(f"{field}.input: generation models take a prompt, not an input")
        elif input_data is None:
            raise ValueError(f"{field}.input: missing (e.g. {{shape: [3, 224, 224]}})")
        else:
            input_spec = InputSpec.from_dict(input_data, f"{field}.input")
        name = data.get("name")
        if name is None:
            name = _default_name(loader, path)
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"{field}.name: {describe_value(name)} is not a name")
        options = data.get("options", {})
        if not isinstance(options, Mapping):
            raise ValueError(f"{field}.options: {describe_value(options)} is not a mapping")
        return cls(
            task=cast(Task, task),
            loader=loader,
            path=resolved,
            weights=weights_path,
            labels=labels,
            input=input_spec,
            name=name.strip(),
            options=dict(options),
        )

    def to_dict(self) -> dict[str, Any]:
        """The spec as config data (paths absolute); ``from_dict`` reads it back."""
        out: dict[str, Any] = {"task": self.task, "loader": self.loader, "path": self.path}
        if self.weights is not None:
            out["weights"] = str(self.weights)
        if self.labels is not None:
            out["labels"] = str(self.labels) if isinstance(self.labels, Path) else self.labels
        if self.input is not None:
            out["input"] = {k: v for k, v in self.input.to_dict().items() if v is not None}
        out["name"] = self.name
        if self.options:
            out["options"] = self.options
        return out

    def read_labels(self) -> list[str] | None:
        """The label names (a file is read now), or None to number the network's classes."""
        if self.labels is None or isinstance(self.labels, list):
            return self.labels
        return read_labels(self.labels)


def _infer_loader(task: Task, path: str, weights: Any) -> str:
    if task == "generation":
        return "huggingface"
    if weights is not None or _FACTORY.match(path):
        return "factory"
    return "export" if path.endswith(".pt2") else "torchscript"


def _resolve(path: str, base: Path) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else (base / p).resolve()


def _default_name(loader: str, path: str) -> str:
    if loader == "factory":
        return path.rpartition(":")[2]
    return Path(path).stem or Path(path).name


def _parse_labels(value: Any, base: Path, field: str) -> Path | list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        if not value.strip():
            raise ValueError(f"{field}: '' is not a path")
        return _resolve(value, base)
    if isinstance(value, Sequence) and all(isinstance(v, (str, int)) for v in value):
        labels = [str(v) for v in value]
        _check_labels(labels, field)
        return labels
    raise ValueError(f"{field}: {describe_value(value)} is not a labels file or a list of names")


def _check_labels(labels: list[str], where: str) -> None:
    if not labels:
        raise ValueError(f"{where}: no labels")
    seen: dict[str, int] = {}
    for i, label in enumerate(labels):
        if label in seen:
            raise ValueError(f"{where}: label {label!r} appears twice ({seen[label] + 1}, {i + 1})")
        seen[label] = i


def read_labels(path: str | os.PathLike[str]) -> list[str]:
    """One label per line (blank lines skipped); ModelLoadError names the file otherwise."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ModelLoadError(str(file), "file not found", "labels file") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelLoadError(str(file), f"{type(exc).__name__}: {exc}", "labels file") from exc
    labels = [line.strip() for line in text.splitlines() if line.strip()]
    try:
        _check_labels(labels, "labels")
    except ValueError as exc:
        raise ModelLoadError(str(file), str(exc).removeprefix("labels: "), "labels file") from exc
    return labels


# -- loading -------------------------------------------------------------------------------------


def load_model(
    model: str | ModelSpec | os.PathLike[str], device: str | torch.device = "cpu"
) -> VisionModel | CausalLM:
    """A shipped model's name, a ``ModelSpec``, a config file (.yaml/.yml/.json with a ``model``
    entry), a model file (TorchScript, or .pt2 for torch.export) that carries its metadata, or a
    local Hugging Face directory (a generation model, loaded as a ``CausalLM``)."""
    if isinstance(model, ModelSpec):
        if model.task == "generation":
            return _load_causal_lm(model, device)
        return _load_spec(model, device)
    if isinstance(model, str) and model in SHIPPED:
        return _load_shipped(model, device)
    path = Path(model)
    if not path.exists():
        raise ModelLoadError(
            str(model), f"no such file, and not a shipped model ({', '.join(SHIPPED)})", "model"
        )
    if path.is_dir():
        spec = ModelSpec(task="generation", loader="huggingface", path=str(path.resolve()))
        spec.name = path.resolve().name
        return _load_causal_lm(spec, device)
    if path.suffix.lower() in CONFIG_SUFFIXES:
        return load_model(_spec_from_config(path), device)
    return _load_model_file(path, device)


def _spec_from_config(path: Path) -> str | ModelSpec | Path:
    import yaml  # JSON is YAML too

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ModelLoadError(str(path), f"{type(exc).__name__}: {exc}", "config file") from exc
    entry = data.get("model", data) if isinstance(data, dict) else data
    if isinstance(entry, str):
        return entry if entry in SHIPPED else _resolve(entry, path.parent)
    try:
        return ModelSpec.from_dict(entry, path.parent)
    except ValueError as exc:
        raise ModelLoadError(str(path), str(exc), "config file") from exc


def _load_model_file(path: Path, device: str | torch.device) -> VisionModel:
    if path.suffix == ".pt2":
        _, metadata = load_export_with_metadata(path)
        loader = "export"
    else:
        _, metadata = load_torchscript_with_metadata(path)
        loader = "torchscript"
    if metadata is None:
        raise ModelLoadError(
            str(path),
            "no aim.json inside (task, labels, input); serve it through a config with a model "
            "spec, or save it with _extra_files/extra_files={'aim.json': json.dumps(spec)}",
        )
    entry = {**metadata, "loader": loader, "path": str(path)}
    try:
        spec = ModelSpec.from_dict(entry, path.parent)
    except ValueError as exc:
        raise ModelLoadError(str(path), f"aim.json inside: {exc}") from exc
    return _load_spec(spec, device)


_GENERATION_OPTIONS = ("calibration_text", "calibration_tokens")


def _load_causal_lm(spec: ModelSpec, device: str | torch.device) -> CausalLM:
    """A generation spec: its Hugging Face directory, and the calibration options
    ``calibration_text`` (a file; relative to the model directory) and ``calibration_tokens``."""
    unknown = [k for k in spec.options if k not in _GENERATION_OPTIONS]
    if unknown:
        raise ModelLoadError(
            spec.path,
            f"model.options.{unknown[0]}: unknown option (known: {', '.join(_GENERATION_OPTIONS)})",
            "model spec",
        )
    text = spec.options.get("calibration_text")
    if text is not None and (not isinstance(text, str) or not text.strip()):
        raise ModelLoadError(
            spec.path, f"model.options.calibration_text: {describe_value(text)} is not a path"
        )
    tokens = spec.options.get("calibration_tokens")
    if tokens is not None and (
        not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 16
    ):
        raise ModelLoadError(
            spec.path,
            f"model.options.calibration_tokens: {describe_value(tokens)} is not an integer >= 16",
        )
    lm = CausalLM.load(spec.path, device)
    if spec.name:
        lm.name = spec.name
    if text is not None:
        lm.calibration_file = _resolve(text, Path(spec.path))
    if tokens is not None:
        lm.calibration_tokens = tokens
    return lm


def _load_spec(spec: ModelSpec, device: str | torch.device) -> VisionModel:
    if spec.task == "generation":  # pragma: no cover - load_model sends these to _load_causal_lm
        raise ModelLoadError(spec.path, "a generation spec loads with _load_causal_lm")
    module: Any
    if spec.loader == "torchscript":
        module, _ = load_torchscript_with_metadata(spec.path)
    elif spec.loader == "export":
        module, _ = load_export_with_metadata(spec.path)
    elif spec.loader == "factory":
        module = load_factory(spec.path, cast(Path, spec.weights))
    else:  # pragma: no cover - from_dict pairs huggingface with generation
        raise ModelLoadError(spec.path, f"loader {spec.loader!r} is not for {spec.task} models")
    input_spec = cast(InputSpec, spec.input)
    labels = spec.read_labels()
    if labels is None:
        labels = [str(i) for i in range(_probe_classes(module, spec, input_spec))]
    source = spec.path if spec.loader != "factory" else str(spec.weights)
    try:
        vision = VisionModel(
            module,
            name=spec.name,
            task=spec.task,
            labels=labels,
            input_spec=input_spec,
            device=device,
            fixed_batch=fixed_batch_size(module),
            source=source,
        )
        vision.warmup((1,))  # one forward now: a wrong shape or label count fails at start-up
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(source, _brief(exc)) from exc
    return vision


def _probe_classes(module: Any, spec: ModelSpec, input_spec: InputSpec) -> int:
    """Without labels, the class count comes from one forward pass on a neutral input."""
    fixed = fixed_batch_size(module) or 1
    try:
        with torch.inference_mode():
            out = module(torch.zeros(fixed, *input_spec.shape))
        out = out[0] if isinstance(out, (tuple, list)) else out
        if isinstance(out, Mapping):
            out = out.get("out", out.get("logits"))
        classes = int(out.shape[1])
    except Exception as exc:
        raise ModelLoadError(spec.path, f"probing the class count failed: {_brief(exc)}") from exc
    if classes < 1:
        raise ModelLoadError(spec.path, f"the network returns {classes} classes")
    return classes


def _brief(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def _load_shipped(name: str, device: str | torch.device) -> VisionModel:
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
    )


# -- bundled data --------------------------------------------------------------------------------


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


def metadata_json(
    task: Task, labels: Sequence[str], input_spec: InputSpec, name: str | None = None
) -> str:
    """The ``aim.json`` to embed in a TorchScript (``_extra_files``) or .pt2 (``extra_files``)
    file, so that ``load_model(path)`` can serve the bare file."""
    data: dict[str, Any] = {"task": task, "labels": [str(label) for label in labels]}
    data["input"] = {k: v for k, v in input_spec.to_dict().items() if v is not None}
    if name is not None:
        data["name"] = name
    return json.dumps(data)
