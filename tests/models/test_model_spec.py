"""ModelSpec.from_dict names the field of every problem."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from service.models import ModelSpec

pytestmark = pytest.mark.unit

BASE: dict[str, Any] = {
    "task": "classification",
    "loader": "torchscript",
    "path": "net.pt",
    "input": {"shape": [3, 32, 32]},
}


def _with(**changes: Any) -> dict[str, Any]:
    data = {**BASE, **changes}
    return {k: v for k, v in data.items() if v is not None}


def _input(**changes: Any) -> dict[str, Any]:
    return _with(input={"shape": [3, 32, 32], **changes})


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("digits", "model: expected a shipped model's name"),
        (
            _with(task="foo"),
            'model.task: "foo" is not one of classification, segmentation, generation',
        ),
        ({k: v for k, v in BASE.items() if k != "task"}, "model.task: missing"),
        (_with(loader="onnx"), 'model.loader: "onnx" is not one of torchscript, export, factory'),
        (
            _with(loader="huggingface"),
            "model.input: a Hugging Face model's input comes from its image processor",
        ),
        (
            {"loader": "huggingface", "path": "/nowhere"},
            "model: task: not given and not inferred",
        ),
        (_with(task="generation"), "model.loader: 'torchscript' cannot load a generation model"),
        (_with(path=None), "model.path: null is not a file path"),
        (_with(path=""), 'model.path: "" is not a file path'),
        (_with(path=3), "model.path: 3 is not a file path"),
        (
            _with(loader="factory", path="x.py", weights="w.safetensors"),
            "model.path: 'x.py' is not 'module:function'",
        ),
        (_with(loader="factory", path="mod:build"), "model.weights: null is not a path"),
        (_with(weights="w.safetensors"), "model.weights: only the factory loader takes weights"),
        (_with(labels=5), "model.labels: 5 is not a labels file or a list of names"),
        (_with(labels=["a", "a"]), "model.labels: label 'a' appears twice"),
        (_with(labels=[]), "model.labels: no labels"),
        (_with(input=None), "model.input: missing"),
        (_with(input=[3, 32, 32]), "model.input: expected a mapping"),
        (_with(tpye="x"), "model.tpye: unknown field"),
        (_with(name=""), 'model.name: "" is not a name'),
        (_with(options=[1]), "model.options: [1] is not a mapping"),
        (_input(shape=[32, 32]), "model.input.shape: [32, 32] is not [channels, height, width]"),
        (_input(shape=[3, 0, 32]), "model.input.shape: [3, 0, 32] is not"),
        (_input(shape=[3, 32.5, 32]), "model.input.shape"),
        (_input(shape=None), "model.input.shape: null is not"),
        (_input(mean=[0.5, 0.5]), "model.input.mean: has 2 values, expected one per channel (3)"),
        (_input(std=[1, 0, 1]), "model.input.std: [1.0, 0.0, 1.0] has to be positive"),
        (_input(std="x"), 'model.input.std: "x" is not a number or a list of numbers'),
        (_input(low=2, high=1), "model.input.high: 1 is not above low (2)"),
        (_input(high=float("inf")), "model.input.high: inf is not a finite number"),
        (_input(low=True), "model.input.low: true is not a number"),
        (_input(scale=0), "model.input.scale: 0 is not positive"),
        (_input(sacle=1), "model.input.sacle: unknown field"),
        (
            {"task": "generation", "path": "lm", "input": {"shape": [1, 1, 1]}},
            "model.input: generation models take a prompt",
        ),
    ],
)
def test_validation_names_the_field(data: Any, message: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError) as caught:
        ModelSpec.from_dict(data, tmp_path)
    assert message in str(caught.value)


def test_defaults_and_resolution(tmp_path: Path) -> None:
    spec = ModelSpec.from_dict({**BASE, "labels": "labels.txt"}, tmp_path)
    assert spec.path == str(tmp_path / "net.pt") and spec.labels == tmp_path / "labels.txt"
    assert spec.name == "net" and spec.weights is None and spec.options == {}
    assert spec.input is not None
    assert (spec.input.low, spec.input.high, spec.input.scale) == (0.0, 1.0, 1.0)
    assert spec.input.mean is None and spec.input.std is None
    inferred = ModelSpec.from_dict(
        {"task": "segmentation", "path": "/abs/seg.pt2", "input": {"shape": [1, 8, 8]}}, tmp_path
    )
    assert inferred.loader == "export" and inferred.path == "/abs/seg.pt2"
    factory = ModelSpec.from_dict(
        {
            "task": "classification",
            "path": "pkg.mod:make",
            "weights": "w.safetensors",
            "input": {"shape": [1, 8, 8], "low": 0, "high": 255, "mean": 0.5},
        },
        tmp_path,
    )
    assert factory.loader == "factory" and factory.path == "pkg.mod:make"
    assert factory.weights == tmp_path / "w.safetensors" and factory.name == "make"
    assert factory.input is not None and factory.input.scale == 255.0
    assert factory.input.mean == (0.5,) and factory.input.std == (1.0,)


def test_custom_field_prefix(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"^config\.model\.task: missing"):
        ModelSpec.from_dict({"path": "x.pt"}, tmp_path, field="config.model")
