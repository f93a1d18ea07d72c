"""Loaders round-trip a small model; every broken file or spec raises ModelLoadError naming it."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from service.models import (
    InputSpec,
    ModelLoadError,
    ModelSpec,
    fixed_batch_size,
    load_export,
    load_factory,
    load_model,
    load_torchscript,
    metadata_json,
)

pytestmark = pytest.mark.unit

HERE = Path(__file__).resolve().parent
SPEC = InputSpec(shape=(1, 4, 4))
LABELS = ["cat", "dog", "owl"]


def _tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()


def _x(n: int = 2) -> torch.Tensor:
    return torch.rand(n, 1, 4, 4, generator=torch.Generator().manual_seed(1))


def _save_torchscript(module: nn.Module, path: Path, metadata: str | None = None) -> None:
    extra = {"aim.json": metadata} if metadata is not None else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.trace(module, _x()), str(path), _extra_files=extra)


@pytest.fixture
def factory_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(HERE))


def test_torchscript_round_trip(tmp_path: Path) -> None:
    net, path = _tiny(), tmp_path / "tiny.pt"
    _save_torchscript(net, path, metadata_json("classification", LABELS, SPEC, name="tiny"))
    loaded = load_torchscript(path)
    assert torch.allclose(loaded(_x()), net(_x()))
    model = load_model(path)  # a bare file with its aim.json inside
    assert model.name == "tiny" and model.labels == LABELS and model.input_spec == SPEC
    assert torch.allclose(model.forward(_x(5)), net(_x(5)))


def test_export_round_trip_with_static_batch(tmp_path: Path) -> None:
    net, path = _tiny(), tmp_path / "tiny.pt2"
    program = torch.export.export(net, (_x(2),))
    extra = {"aim.json": metadata_json("classification", LABELS, SPEC)}
    torch.export.save(program, str(path), extra_files=extra)
    loaded = load_export(path)
    assert fixed_batch_size(loaded) == 2
    assert torch.allclose(loaded(_x(2)), net(_x(2)), atol=1e-6)
    model = load_model(path)
    assert model.fixed_batch == 2 and model.name == "tiny"
    assert torch.allclose(model.forward(_x(5)), net(_x(5)), atol=1e-6)  # chunked by 2, padded


def test_factory_round_trip(tmp_path: Path, factory_path: None) -> None:
    from factory_model import build

    net = build()
    weights = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(weights))
    loaded = load_factory("factory_model:build", weights)
    assert not loaded.training
    assert torch.allclose(loaded(_x()), net(_x()))
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\n\nowl\n")
    spec = ModelSpec.from_dict(
        {
            "task": "classification",
            "loader": "factory",
            "path": "factory_model:build",
            "weights": "w.safetensors",
            "labels": "labels.txt",
            "input": {"shape": [1, 4, 4]},
        },
        base_dir=tmp_path,
    )
    model = load_model(spec)
    assert model.labels == LABELS and model.name == "build"
    assert torch.allclose(model.forward(_x()), net(_x()))
    assert model.fingerprint() == load_model(spec).fingerprint()


def test_config_file_and_label_probe(tmp_path: Path) -> None:
    _save_torchscript(_tiny(), tmp_path / "net.pt")
    config = tmp_path / "aim.yaml"
    config.write_text(
        "model:\n  task: classification\n  path: net.pt\n  input: {shape: [1, 4, 4]}\n"
    )
    model = load_model(config)
    assert model.labels == ["0", "1", "2"]  # no labels: numbered from the network's output
    (tmp_path / "shipped.yaml").write_text("model: digits\n")
    assert load_model(tmp_path / "shipped.yaml").name == "digits"


@pytest.mark.parametrize("loader", [load_torchscript, load_export])
def test_file_loaders_name_the_file(tmp_path: Path, loader: object) -> None:
    assert callable(loader)
    missing = tmp_path / "missing.pt"
    with pytest.raises(ModelLoadError, match=r"'.*missing\.pt': file not found"):
        loader(missing)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a model at all")
    with pytest.raises(ModelLoadError, match=r"'.*garbage\.pt': not a zip archive"):
        loader(garbage)
    with pytest.raises(ModelLoadError, match="not a regular file"):
        loader(tmp_path)


def test_wrong_kind_of_zip_is_refused(tmp_path: Path) -> None:
    ts = tmp_path / "net.pt"
    _save_torchscript(_tiny(), ts)
    with pytest.raises(ModelLoadError, match=r"cannot load torch\.export file '.*net\.pt'"):
        load_export(ts)
    weights = tmp_path / "w.safetensors"
    save_file({"a": torch.zeros(1)}, str(weights))
    with pytest.raises(ModelLoadError, match=r"'.*w\.safetensors'"):
        load_torchscript(weights)


def test_bare_file_without_metadata_is_explained(tmp_path: Path) -> None:
    path = tmp_path / "bare.pt"
    _save_torchscript(_tiny(), path)
    with pytest.raises(ModelLoadError, match=r"'.*bare\.pt': no aim\.json inside"):
        load_model(path)


def test_factory_errors(tmp_path: Path, factory_path: None) -> None:
    from factory_model import build

    good = tmp_path / "good.safetensors"
    save_file({k: v.contiguous() for k, v in build().state_dict().items()}, str(good))
    cases = [
        ("no_colon", good, "expected 'module:function'"),
        ("no_such_module_xyz:build", good, "cannot import 'no_such_module_xyz'"),
        ("factory_model:missing", good, "has no attribute 'missing'"),
        ("factory_model:NOT_CALLABLE", good, "is not callable"),
        ("factory_model:broken", good, "calling it failed: RuntimeError: the factory is broken"),
        ("factory_model:not_a_module", good, "not a torch.nn.Module"),
    ]
    for spec, weights, problem in cases:
        with pytest.raises(ModelLoadError, match=f"factory '{spec}'") as caught:
            load_factory(spec, weights)
        assert problem in str(caught.value)


def test_factory_weights_errors(tmp_path: Path, factory_path: None) -> None:
    def weights(name: str, tensors: dict[str, torch.Tensor]) -> Path:
        path = tmp_path / name
        save_file(tensors, str(path))
        return path

    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 64)
    cases = [
        (tmp_path / "nope.safetensors", "'.*nope.safetensors': file not found"),
        (garbage, "'.*garbage.safetensors': not a safetensors file"),
        (weights("few.safetensors", {"fc.weight": torch.zeros(3, 16)}), "missing keys 'fc.bias'"),
        (
            weights(
                "extra.safetensors",
                {"fc.weight": torch.zeros(3, 16), "fc.bias": torch.zeros(3), "x": torch.zeros(1)},
            ),
            "unexpected keys 'x'",
        ),
        (
            weights(
                "shape.safetensors", {"fc.weight": torch.zeros(3, 15), "fc.bias": torch.zeros(3)}
            ),
            r"'fc.weight' has shape \(3, 15\), the network expects \(3, 16\)",
        ),
    ]
    for path, problem in cases:
        with pytest.raises(ModelLoadError, match=problem):
            load_factory("factory_model:build", path)


def test_labels_problems_name_the_labels_file(tmp_path: Path) -> None:
    _save_torchscript(_tiny(), tmp_path / "net.pt")
    base = {"task": "classification", "path": "net.pt", "input": {"shape": [1, 4, 4]}}
    with pytest.raises(ModelLoadError, match=r"labels file '.*nolabels\.txt': file not found"):
        load_model(ModelSpec.from_dict({**base, "labels": "nolabels.txt"}, tmp_path))
    (tmp_path / "two.txt").write_text("a\nb\n")
    with pytest.raises(ModelLoadError, match=r"'.*net\.pt'.*K=2"):
        load_model(ModelSpec.from_dict({**base, "labels": "two.txt"}, tmp_path))
    (tmp_path / "dup.txt").write_text("a\nb\na\n")
    with pytest.raises(ModelLoadError, match="label 'a' appears twice"):
        load_model(ModelSpec.from_dict({**base, "labels": "dup.txt"}, tmp_path))
    wrong_input = {**base, "input": {"shape": [1, 5, 5]}}
    with pytest.raises(ModelLoadError, match=r"'.*net\.pt'"):
        load_model(ModelSpec.from_dict(wrong_input, tmp_path))


def test_generation_specs_load_as_causal_lm(tmp_path: Path) -> None:
    spec = ModelSpec.from_dict({"task": "generation", "path": "lm"}, tmp_path)
    assert spec.loader == "huggingface" and spec.path == str(tmp_path / "lm")
    with pytest.raises(ModelLoadError, match=r"lm.*does not exist"):
        load_model(spec)


def test_spec_round_trips_through_dict(tmp_path: Path) -> None:
    data = {
        "task": "segmentation",
        "loader": "export",
        "path": "m/seg.pt2",
        "labels": ["bg", "fg"],
        "input": {"shape": [3, 16, 16], "mean": [0.5, 0.4, 0.3], "std": 0.2, "high": 255},
    }
    spec = ModelSpec.from_dict(data, tmp_path)
    assert spec.path == str(tmp_path / "m" / "seg.pt2") and spec.name == "seg"
    assert spec.input is not None and spec.input.scale == 255 and spec.input.std == (0.2,) * 3
    assert ModelSpec.from_dict(spec.to_dict(), "/elsewhere") == spec
    assert json.loads(json.dumps(spec.to_dict()))["input"]["shape"] == [3, 16, 16]
