"""Loading a model: a shipped name, a ``ModelSpec``, a config file, a model file that carries its
metadata, or a local Hugging Face directory (an image classifier or semantic segmenter,
``hf_vision.py``, or a causal LM, ``causal_lm.py``)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import torch

from .base import VisionModel
from .causal_lm import CausalLM
from .errors import ModelLoadError, describe_value
from .hf_config import hf_task
from .hf_vision import load_hf_vision
from .loaders import (
    fixed_batch_size,
    load_export_with_metadata,
    load_factory,
    load_torchscript_with_metadata,
)
from .shipped import SHIPPED, load_shipped
from .spec import InputSpec, ModelSpec, resolve_path

CONFIG_SUFFIXES = (".yaml", ".yml", ".json")


def load_model(
    model: str | ModelSpec | os.PathLike[str], device: str | torch.device = "cpu"
) -> VisionModel | CausalLM:
    """A shipped model's name, a ``ModelSpec``, a config file (.yaml/.yml/.json with a ``model``
    entry), a model file (TorchScript, or .pt2 for torch.export) that carries its metadata, or a
    local Hugging Face directory (a vision model, or a causal LM loaded as a ``CausalLM``)."""
    if isinstance(model, ModelSpec):
        if model.task == "generation":
            return _load_causal_lm(model, device)
        if model.loader == "huggingface":
            return load_hf_vision(model.path, device, model.name)
        return _load_spec(model, device)
    if isinstance(model, str) and model in SHIPPED:
        return load_shipped(model, device)
    path = Path(model)
    if not path.exists():
        raise ModelLoadError(
            str(model), f"no such file, and not a shipped model ({', '.join(SHIPPED)})", "model"
        )
    if path.is_dir():
        if hf_task(path) != "generation":
            return load_hf_vision(path, device)
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
        return entry if entry in SHIPPED else resolve_path(entry, path.parent)
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
        lm.calibration_file = resolve_path(text, Path(spec.path))
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
