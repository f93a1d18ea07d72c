"""Loaders of user networks: TorchScript, torch.export, and `module:function` + safetensors.

Each returns a callable module in eval mode, or raises ``ModelLoadError`` naming the file (or the
factory spec) and the problem, so a bad config stops the server at start-up with one clear line.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import ModelLoadError

# generation models: see causal_lm.py (a local Hugging Face directory, not loaded here)

# Metadata (task, labels, input) a model file may carry, so a bare path can be served.
METADATA_FILE = "aim.json"
# Set on modules whose graph accepts a single batch size (a torch.export without dynamic dims).
FIXED_BATCH_ATTR = "_aim_fixed_batch"


def _existing_zip(path: str | os.PathLike[str], kind: str) -> Path:
    """Both TorchScript and .pt2 files are zip archives: check that before torch tries."""
    file = Path(path)
    if not file.exists():
        raise ModelLoadError(str(file), "file not found", kind)
    if not file.is_file():
        raise ModelLoadError(str(file), "not a regular file", kind)
    if not zipfile.is_zipfile(file):
        raise ModelLoadError(str(file), "not a zip archive (truncated or another format?)", kind)
    return file


def _metadata(raw: Any, file: Path, kind: str) -> dict[str, Any] | None:
    if not raw:
        return None
    try:
        data = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(
            str(file), f"{METADATA_FILE} inside is not JSON ({exc})", kind
        ) from exc
    if not isinstance(data, dict):
        raise ModelLoadError(str(file), f"{METADATA_FILE} inside is not a JSON object", kind)
    return data


def load_torchscript_with_metadata(
    path: str | os.PathLike[str], device: str | torch.device = "cpu"
) -> tuple[torch.jit.ScriptModule, dict[str, Any] | None]:
    """A TorchScript module in eval mode and the ``aim.json`` it carries (None without)."""
    kind = "TorchScript file"
    file = _existing_zip(path, kind)
    extra: dict[str, Any] = {METADATA_FILE: ""}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is deprecated
            module = torch.jit.load(str(file), map_location=device, _extra_files=extra)
    except Exception as exc:  # torch raises RuntimeError, ValueError, pickle errors, ...
        raise ModelLoadError(str(file), _first_line(exc), kind) from exc
    module.eval()
    return module, _metadata(extra.get(METADATA_FILE), file, kind)


def load_torchscript(path: str | os.PathLike[str]) -> torch.jit.ScriptModule:
    """A TorchScript module (``torch.jit.save``) in eval mode, on the CPU."""
    return load_torchscript_with_metadata(path)[0]


def load_export_with_metadata(
    path: str | os.PathLike[str],
) -> tuple[nn.Module, dict[str, Any] | None]:
    """The module of a ``torch.export.save`` file and the ``aim.json`` it carries."""
    kind = "torch.export file"
    file = _existing_zip(path, kind)
    extra: dict[str, Any] = {METADATA_FILE: ""}
    try:
        with _quiet_torch_export():
            program = torch.export.load(str(file), extra_files=extra)
        module = program.module()
    except Exception as exc:
        raise ModelLoadError(str(file), _first_line(exc), kind) from exc
    # Exported graphs refuse .eval() (they are already traced in inference mode).
    fixed = _static_batch(program)
    if fixed is not None:
        setattr(module, FIXED_BATCH_ATTR, fixed)
    return module, _metadata(extra.get(METADATA_FILE), file, kind)


def load_export(path: str | os.PathLike[str]) -> nn.Module:
    """The module of a ``torch.export`` (.pt2) file; see ``fixed_batch_size`` for its batch."""
    return load_export_with_metadata(path)[0]


@contextlib.contextmanager
def _quiet_torch_export() -> Iterator[None]:
    """torch.export logs a full traceback before raising on a bad file; our error says it all."""
    logger = logging.getLogger("torch.export")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _static_batch(program: torch.export.ExportedProgram) -> int | None:
    """The batch size baked into an export without a dynamic batch dimension, else None."""
    names = set(program.graph_signature.user_inputs)
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name in names:
            value = node.meta.get("val")
            shape = getattr(value, "shape", None)
            if shape is not None and len(shape) > 0 and isinstance(shape[0], int):
                return int(shape[0])
            return None
    return None


def fixed_batch_size(module: Any) -> int | None:
    """The only batch size ``module`` accepts (a static export), or None when any works."""
    value = getattr(module, FIXED_BATCH_ATTR, None)
    return int(value) if isinstance(value, int) else None


def load_factory(spec: str, weights: str | os.PathLike[str]) -> nn.Module:
    """``module:function`` builds the network (no arguments); safetensors weights load strictly."""
    module_name, sep, function_name = spec.partition(":")
    if not sep or not module_name or not function_name:
        raise ModelLoadError(spec, "expected 'module:function'", "factory")
    try:
        imported = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or any error raised while importing the module
        problem = f"cannot import {module_name!r}: {_first_line(exc)}"
        raise ModelLoadError(spec, problem, "factory") from exc
    factory = getattr(imported, function_name, None)
    if factory is None:
        raise ModelLoadError(spec, f"{module_name!r} has no attribute {function_name!r}", "factory")
    if not callable(factory):
        raise ModelLoadError(spec, f"{function_name!r} is not callable", "factory")
    try:
        network = factory()
    except Exception as exc:
        raise ModelLoadError(spec, f"calling it failed: {_first_line(exc)}", "factory") from exc
    if not isinstance(network, nn.Module):
        raise ModelLoadError(
            spec, f"it returned {type(network).__name__}, not a torch.nn.Module", "factory"
        )
    load_weights(network, weights)
    return network.eval()


def load_weights(network: nn.Module, weights: str | os.PathLike[str]) -> None:
    """Load a safetensors file into ``network``: same keys, same shapes, or ModelLoadError."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    kind = "weights file"
    file = Path(weights)
    if not file.is_file():
        raise ModelLoadError(str(file), "file not found", kind)
    try:
        state = load_file(str(file))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        problem = f"not a safetensors file ({_first_line(exc)})"
        raise ModelLoadError(str(file), problem, kind) from exc
    expected = network.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys {_few(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_few(unexpected)}")
        raise ModelLoadError(str(file), "; ".join(parts), kind)
    for key, tensor in expected.items():
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise ModelLoadError(
                str(file),
                f"{key!r} has shape {tuple(state[key].shape)}, the network expects "
                f"{tuple(tensor.shape)}",
                kind,
            )
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # e.g. a dtype the parameter cannot take
        raise ModelLoadError(str(file), _first_line(exc), kind) from exc


def _few(keys: list[str]) -> str:
    shown = ", ".join(repr(k) for k in keys[:3])
    return shown + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
