"""What a user model is: a ``ModelSpec``, the config's ``model:`` mapping (its ``input:`` is an
``InputSpec``, see ``input_spec.py``).

A pydantic model. ``ModelSpec.from_dict`` names the field of every problem through the
translation that the HTTP 422s use too (``service/validation.py``), so a typo reads
"model.task: 'clasification' is not one of ...". Relative paths resolve against the config file's
folder, passed as validation context.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo
from pydantic import field_validator as check
from pydantic import model_validator as check_model

from ..validation import config_error
from .errors import ModelLoadError, describe_value
from .input_spec import InputSpec
from .tasks import TASKS, Task

LOADERS: tuple[str, ...] = ("torchscript", "export", "factory", "huggingface")
SHIPPED: tuple[str, ...] = ("digits", "digit-scenes")
"""The models shipped in the package (``shipped.py`` loads them), named instead of a spec."""
_FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def resolve_path(path: str, base: Path) -> Path:
    """``path`` as given when absolute (after ~), else under ``base``."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else (base / p).resolve()


def _base(info: ValidationInfo) -> Path:
    return Path((info.context or {}).get("base_dir", "."))


def _check_labels(labels: list[str]) -> None:
    if not labels:
        raise ValueError("no labels")
    seen: dict[str, int] = {}
    for i, label in enumerate(labels):
        if label in seen:
            raise ValueError(f"label {label!r} appears twice ({seen[label] + 1}, {i + 1})")
        seen[label] = i


class ModelSpec(BaseModel):
    """A user model: ``path`` is a file (resolved) or, for the factory loader, module:function."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    task: Task
    loader: str = Field(default=None, validate_default=True)
    """Inferred from the task and path when not given."""
    path: str = Field(default=None, validate_default=True)
    weights: Path | None = Field(default=None, validate_default=True)
    labels: Path | list[str] | None = None
    input: InputSpec | None = Field(default=None, validate_default=True)
    name: str = Field(default=None, validate_default=True)
    """Defaults to the file's stem (the function's name for the factory loader)."""
    options: dict[str, Any] = Field(default_factory=dict)
    calibration: Path | None = None
    """A folder of unlabeled images (PNG/JPEG) that `utility:` tiers of a vision model
    calibrate on."""
    digest: Path | None = None
    """The replay digest encoder (``aim digest train``); without one the tier's replay memory
    keys on a weaker digest (the penultimate layer, or the centred logits)."""

    @check("task", mode="before")
    @classmethod
    def _task(cls, task: Any) -> Any:
        if task not in TASKS:
            raise ValueError(f"{describe_value(task)} is not one of {', '.join(TASKS)}")
        return task

    @check_model(mode="before")
    @classmethod
    def _infer_loader(cls, data: Any, info: ValidationInfo) -> Any:
        if not isinstance(data, Mapping):
            return data
        if data.get("loader") == "huggingface" and data.get("task") is None:
            # The directory's config names the task (its architecture's head).
            from .hf_config import hf_task

            path = data.get("path")
            if not isinstance(path, str) or not path.strip():
                raise ValueError("path: a Hugging Face directory is needed to infer the task")
            try:
                return {**data, "task": hf_task(resolve_path(path, _base(info)))}
            except ModelLoadError as exc:
                raise ValueError(f"task: not given and not inferred: {exc}") from None
        if data.get("loader") is not None:
            return data
        task, path = data.get("task"), data.get("path")
        if task == "generation":
            loader = "huggingface"
        elif not isinstance(path, str):
            return data  # the path's own error says what is wrong
        elif data.get("weights") is not None or _FACTORY.match(path):
            loader = "factory"
        else:
            loader = "export" if path.endswith(".pt2") else "torchscript"
        return {**data, "loader": loader}

    @check("loader", mode="before")
    @classmethod
    def _loader(cls, loader: Any, info: ValidationInfo) -> Any:
        if loader is None:  # no path to infer it from: the path's error is the one to read
            return "torchscript"
        if loader not in LOADERS:
            raise ValueError(f"{describe_value(loader)} is not one of {', '.join(LOADERS)}")
        task = info.data.get("task")
        if task == "generation" and loader != "huggingface":
            raise ValueError(f"{loader!r} cannot load a {task} model (use huggingface)")
        return loader

    @check("path", mode="before")
    @classmethod
    def _path(cls, path: Any, info: ValidationInfo) -> Any:
        if not isinstance(path, str) or not path.strip():
            raise ValueError(f"{describe_value(path)} is not a file path")
        if info.data.get("loader") == "factory":
            if not _FACTORY.match(path):
                raise ValueError(f"{path!r} is not 'module:function'")
            return path
        if info.context is None:  # built in code, not read from a config: taken as given
            return path
        return str(resolve_path(path, _base(info)))

    @check("weights", mode="before")
    @classmethod
    def _weights(cls, weights: Any, info: ValidationInfo) -> Any:
        if info.data.get("loader") != "factory":
            if weights is not None:
                raise ValueError("only the factory loader takes weights")
            return None
        if not isinstance(weights, str | Path) or not str(weights).strip():
            raise ValueError(
                f"{describe_value(weights)} is not a path "
                "(the factory loader needs a .safetensors file)"
            )
        return resolve_path(str(weights), _base(info))

    @check("labels", mode="before")
    @classmethod
    def _labels(cls, value: Any, info: ValidationInfo) -> Any:
        if value is None or isinstance(value, Path):
            return value
        if isinstance(value, str):
            if not value.strip():
                raise ValueError("'' is not a path")
            return resolve_path(value, _base(info))
        if isinstance(value, Sequence) and all(isinstance(v, (str, int)) for v in value):
            labels = [str(v) for v in value]
            _check_labels(labels)
            return labels
        raise ValueError(f"{describe_value(value)} is not a labels file or a list of names")

    @check("input", mode="before")
    @classmethod
    def _input(cls, value: Any, info: ValidationInfo) -> Any:
        task = info.data.get("task")
        if task == "generation" and value is not None:
            raise ValueError("generation models take a prompt, not an input")
        if info.data.get("loader") == "huggingface" and value is not None:
            raise ValueError("a Hugging Face model's input comes from its image processor")
        if task is not None and task != "generation" and value is None:
            if info.data.get("loader") == "huggingface":
                return None
            raise ValueError("missing (e.g. {shape: [3, 224, 224]})")
        return value

    @check("name", mode="before")
    @classmethod
    def _name(cls, name: Any, info: ValidationInfo) -> Any:
        if name is None:
            path = str(info.data.get("path", ""))
            if info.data.get("loader") == "factory":
                return path.rpartition(":")[2]
            return Path(path).stem or Path(path).name
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"{describe_value(name)} is not a name")
        return name.strip()

    @check("calibration", mode="before")
    @classmethod
    def _calibration(cls, value: Any, info: ValidationInfo) -> Any:
        if value is None:
            return None
        if info.data.get("task") == "generation":
            raise ValueError("generation models calibrate on options.calibration_text")
        if not isinstance(value, str | Path) or not str(value).strip():
            raise ValueError(f"{describe_value(value)} is not a folder of images")
        return resolve_path(str(value), _base(info))

    @check("digest", mode="before")
    @classmethod
    def _digest(cls, value: Any, info: ValidationInfo) -> Any:
        if value is None or isinstance(value, Path):
            return value
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{describe_value(value)} is not a path (aim digest train)")
        return resolve_path(value, _base(info))

    @check("options", mode="before")
    @classmethod
    def _options(cls, options: Any) -> Any:
        if not isinstance(options, Mapping):
            raise ValueError(f"{describe_value(options)} is not a mapping")
        return dict(options)

    @classmethod
    def from_dict(
        cls, data: Any, base_dir: str | os.PathLike[str] = ".", field: str = "model"
    ) -> ModelSpec:
        """Validate a config mapping; relative paths resolve against ``base_dir`` (the config
        file's folder). Raises ValueError naming the field, e.g. "model.input.shape: ..."."""
        if not isinstance(data, Mapping):
            raise ValueError(
                f"{field}: expected a shipped model's name ({', '.join(SHIPPED)}) "
                "or a mapping with task, loader, path"
            )
        try:
            return cls.model_validate(data, context={"base_dir": Path(base_dir)})
        except ValidationError as exc:
            raise config_error(exc, field) from None

    def to_dict(self) -> dict[str, Any]:
        """The spec as config data (paths absolute); ``from_dict`` reads it back."""
        out: dict[str, Any] = {"task": self.task, "loader": self.loader, "path": self.path}
        if self.weights is not None:
            out["weights"] = str(self.weights)
        if self.digest is not None:
            out["digest"] = str(self.digest)
        if self.labels is not None:
            out["labels"] = str(self.labels) if isinstance(self.labels, Path) else self.labels
        if self.input is not None:
            out["input"] = {k: v for k, v in self.input.to_dict().items() if v is not None}
        out["name"] = self.name
        if self.options:
            out["options"] = self.options
        if self.calibration is not None:
            out["calibration"] = str(self.calibration)
        return out

    def read_labels(self) -> list[str] | None:
        """The label names (a file is read now), or None to number the network's classes."""
        if self.labels is None or isinstance(self.labels, list):
            return self.labels
        return read_labels(self.labels)


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
        _check_labels(labels)
    except ValueError as exc:
        raise ModelLoadError(str(file), str(exc), "labels file") from exc
    return labels


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
