"""`loader: huggingface` for vision: the answers equal transformers' own processor and model."""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from service.models import ModelLoadError, ModelSpec, load_model
from service.models.preprocess import ImagePreprocessor

pytestmark = pytest.mark.unit

# Within each model's decode bound (8× its side, at least 512): above it a JPEG is decoded at a
# reduced scale, which changes its pixels.
SIZES = [(500, 375), (100, 300), (33, 47), (96, 96)]


def _reference(directory: Path, data: bytes) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' own processor output and logits for one encoded image."""
    from transformers import AutoConfig, AutoImageProcessor
    from transformers import AutoModelForImageClassification as Classifier
    from transformers import AutoModelForSemanticSegmentation as Segmenter

    arch = AutoConfig.from_pretrained(directory).architectures[0]
    auto = Segmenter if arch.endswith("ForSemanticSegmentation") else Classifier
    processor = AutoImageProcessor.from_pretrained(directory)
    model = auto.from_pretrained(directory).eval()
    pixels = processor(Image.open(io.BytesIO(data)), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        return pixels, model(pixel_values=pixels).logits


@pytest.mark.parametrize("name", ["vit", "resnet", "segformer"])
def test_preprocessing_and_logits_equal_transformers(
    hf_vision_dirs: dict[str, Path], photo: Callable[..., bytes], name: str
) -> None:
    model = load_model(hf_vision_dirs[name])
    sizes = [*SIZES, (640, 480)] if name == "segformer" else SIZES
    for i, (w, h) in enumerate(sizes):
        data = photo(w, h, seed=i)
        pixels, logits = _reference(hf_vision_dirs[name], data)
        ours, size = model.decode_image_sized(data)
        assert size == (h, w)
        assert np.array_equal(ours, pixels[0].numpy())
        out = model.forward(torch.from_numpy(ours)[None])
        assert torch.allclose(out, logits, atol=1e-5)


def test_task_labels_and_input_come_from_the_directory(hf_vision_dirs: dict[str, Path]) -> None:
    vit = load_model(hf_vision_dirs["vit"])
    seg = load_model(str(hf_vision_dirs["segformer"]))
    assert (vit.task, vit.num_classes, vit.input_spec.shape) == ("classification", 10, (3, 32, 32))
    assert vit.labels[0] == "LABEL_0"
    assert (seg.task, seg.num_classes, seg.input_spec.shape) == ("segmentation", 6, (3, 96, 96))
    res = load_model(hf_vision_dirs["resnet"])
    # ConvNeXt's processor: short side to 48/0.875, then a 48² centre crop.
    assert res.preprocessor is not None and res.preprocessor.crop == (48, 48)
    spec = ModelSpec.from_dict({"loader": "huggingface", "path": str(hf_vision_dirs["vit"])})
    assert spec.task == "classification" and spec.input is None


def test_numeric_inputs_are_pixels_at_the_model_size(hf_vision_dirs: dict[str, Path]) -> None:
    model = load_model(hf_vision_dirs["vit"])
    pixels = np.random.default_rng(0).integers(0, 256, (3, 32, 32))
    buf = io.BytesIO()
    Image.fromarray(pixels.transpose(1, 2, 0).astype(np.uint8)).save(buf, "PNG")
    decoded, _ = model.decode_image_sized(buf.getvalue())
    assert np.allclose(model.prepare_array(pixels.tolist()), decoded, atol=1e-6)


def test_unsupported_head_fails_in_one_line(
    hf_vision_dirs: dict[str, Path], tmp_path: Path
) -> None:
    bad = tmp_path / "detector"
    shutil.copytree(hf_vision_dirs["vit"], bad)
    config = json.loads((bad / "config.json").read_text())
    config["architectures"] = ["DetrForObjectDetection"]
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError) as err:
        load_model(bad)
    message = str(err.value)
    assert "unsupported head DetrForObjectDetection" in message and "\n" not in message
    with pytest.raises(ValueError, match="unsupported head DetrForObjectDetection"):
        ModelSpec.from_dict({"loader": "huggingface", "path": str(bad)})


def test_missing_processor_config_fails_in_one_line(
    hf_vision_dirs: dict[str, Path], tmp_path: Path
) -> None:
    bare = tmp_path / "bare"
    shutil.copytree(hf_vision_dirs["segformer"], bare)
    (bare / "preprocessor_config.json").unlink()
    with pytest.raises(ModelLoadError) as err:
        load_model(bare)
    assert "no preprocessor_config.json" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("config", "problem"),
    [
        ({"do_resize": True, "size": {"longest_edge": 224}}, "size"),
        ({"size": {"shortest_edge": 224}}, "shortest_edge without a centre crop"),
        ({"size": {"height": 8, "width": 8}, "image_mean": [0.5]}, "image_mean"),
        ({"size": {"height": 8, "width": 8}, "do_pad": True}, "do_pad"),
    ],
)
def test_unsupported_processor_settings_are_named(
    tmp_path: Path, config: dict[str, object], problem: str
) -> None:
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match=problem):
        ImagePreprocessor.from_file(tmp_path)


@pytest.mark.parametrize("name", ["vit", "resnet", "segformer"])
def test_the_forward_runs_as_one_traced_graph(hf_vision_dirs: dict[str, Path], name: str) -> None:
    # Eager, each op gives the GIL back and waits for it behind the event loop and the
    # decoding threads; the trace (checked equal to eager at load) is one call without it.
    model = load_model(hf_vision_dirs[name])
    model.forward(torch.zeros(2, *model.input_spec.shape))
    assert isinstance(model._graphs.get("forward"), torch.jit.ScriptModule)
