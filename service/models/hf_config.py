"""What a local Hugging Face directory's ``config.json`` says: its task (from the architecture's
head) and the file itself, read with errors in one line. Apart from ``hf_vision.py`` so that the
model spec can infer a directory's task without importing the model adapters."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import ModelLoadError
from .tasks import Task

KIND = "Hugging Face directory"
HEADS: dict[str, Task] = {
    "ForImageClassification": "classification",
    "ForSemanticSegmentation": "segmentation",
    "ForCausalLM": "generation",
}


def hf_task(directory: str | Path) -> Task:
    """The task of the model saved in ``directory``, from its config's architecture."""
    config = read_config(Path(directory))
    architectures = config.get("architectures") or []
    for arch in architectures:
        for suffix, task in HEADS.items():
            if isinstance(arch, str) and arch.endswith(suffix):
                return task
    named = ", ".join(map(str, architectures)) or "none named in config.json"
    raise ModelLoadError(
        str(directory),
        f"unsupported head {named} (supported: " + ", ".join(f"*{s}" for s in HEADS) + ")",
        KIND,
    )


def read_config(directory: Path) -> dict[str, Any]:
    missing = "no config.json (not a save_pretrained folder)"
    return read_json_object(directory, "config.json", missing, KIND)


def read_json_object(directory: Path, name: str, missing: str, kind: str) -> dict[str, Any]:
    """``directory/name`` as a JSON object. ModelLoadError in one line: ``missing`` naming the
    directory when the file is not there, else the file and its problem (as a ``kind``)."""
    file = directory / name
    if not file.is_file():
        raise ModelLoadError(str(directory), missing, KIND)
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(str(file), f"{type(exc).__name__}: {exc}", kind) from exc
    if not isinstance(data, dict):
        raise ModelLoadError(str(file), "not a JSON object", kind)
    return data
