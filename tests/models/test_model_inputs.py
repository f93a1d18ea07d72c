"""VisionModel.prepare and decode_image: good inputs pass, bad ones name their field."""

from __future__ import annotations

import io
import struct
import zlib
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from service.models import InputError, InputSpec, VisionModel

pytestmark = pytest.mark.unit

GOOD = [[float((r + c) % 17) for c in range(8)] for r in range(8)]


def _with(value: Any, row: int = 2, col: int = 5) -> list[list[Any]]:
    item: list[list[Any]] = [list(r) for r in GOOD]
    item[row][col] = value
    return item


@pytest.fixture(scope="module")
def model() -> VisionModel:
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval()
    spec = InputSpec(shape=(1, 8, 8), low=0.0, high=16.0, scale=16.0)
    return VisionModel(
        net, name="t", task="classification", labels=[str(i) for i in range(10)], input_spec=spec
    )


@pytest.fixture(scope="module")
def rgb() -> VisionModel:
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 2)).eval()
    spec = InputSpec(shape=(3, 4, 4), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), scale=1.0)
    return VisionModel(net, name="rgb", task="classification", labels=["a", "b"], input_spec=spec)


def test_prepare_accepts_hw_chw_and_arrays(model: VisionModel) -> None:
    expected = torch.tensor(GOOD, dtype=torch.float32)[None] / 16
    assert torch.equal(model.prepare(GOOD), expected)
    assert torch.equal(model.prepare([GOOD]), expected)
    assert torch.equal(model.prepare(np.array(GOOD, dtype=np.int64)), expected)
    assert torch.equal(model.prepare(np.array([GOOD], dtype=np.float32)), expected)
    assert torch.equal(model.prepare(tuple(tuple(r) for r in GOOD)), expected)
    out = model.prepare(_with(np.float32(3.0)))  # numpy scalars inside lists are numbers too
    assert out.dtype == torch.float32 and out.shape == (1, 8, 8) and out.device.type == "cpu"


def test_prepare_applies_mean_and_std(rgb: VisionModel) -> None:
    item = np.full((3, 4, 4), 0.75)
    assert torch.allclose(rgb.prepare(item), torch.ones(3, 4, 4))
    with pytest.raises(InputError, match=r"has shape \(4, 4\), expected \(3, 4, 4\)"):
        rgb.prepare(np.zeros((4, 4)))  # H×W only for one channel


@pytest.mark.parametrize(
    ("item", "field", "reason"),
    [
        (GOOD[:7], "", "has shape (7, 8), expected (8, 8)"),
        ([GOOD, GOOD], "", "has shape (2, 8, 8), expected (1, 8, 8)"),
        ([[1.0] * 8] * 7 + [[1.0] * 7], "[7]", "has length 7, expected 8"),
        (
            [[1.0] * 2] + [[1.0] * 8] * 7,
            "[1]",
            "has length 8, but row [0] has length 2: the array is ragged",
        ),
        ([[1.0] * 8] * 7 + [5], "[7]", "is 5, expected a list of 8 numbers"),
        (_with([1]), "[2][5]", "is a list, expected a number"),
        (_with("3"), "[2][5]", 'is "3", expected a number'),
        (_with(None), "[2][5]", "is null, expected a number"),
        (_with(True), "[2][5]", "is a boolean (true), expected a number"),
        (_with(float("nan")), "[2][5]", "is nan, expected a finite number"),
        (_with(float("inf")), "[2][5]", "is inf, expected a finite number"),
        (_with(17), "[2][5]", "is 17, outside the accepted range [0, 16]"),
        (_with(-0.5), "[2][5]", "is -0.5, outside the accepted range [0, 16]"),
        (_with(1e300), "[2][5]", "is 1e+300, outside the accepted range [0, 16]"),
        (_with(10**400), "[2][5]", "outside the accepted range [0, 16]"),
        ([], "", "has shape (0,), expected"),
        (7, "", "is 7, expected an array of shape (1, 8, 8) or (8, 8)"),
        ("pixels", "", 'is "pixels", expected an array'),
        ({"x": 1}, "", "expected an array"),
        (np.zeros((8, 8), dtype=bool), "[0][0]", "is a boolean (false), expected a number"),
        (np.full((8, 8), np.nan), "[0][0]", "is nan, expected a finite number"),
        (np.zeros((8, 9)), "", "has shape (8, 9), expected (8, 8)"),
        (np.array([["a"] * 8] * 8), "[0][0]", 'is "a"'),
        (torch.full((1, 8, 8), 20.0), "[0][0][0]", "is 20, outside the accepted range"),
        ([[[[[1.0]]]]], "", "has shape (1, 1, 1, 1, 1), expected"),
        ([[[[[1.0]]]], 2.0], "", "is nested too deeply"),
    ],
)
def test_prepare_rejects_bad_input_naming_the_field(
    model: VisionModel, item: Any, field: str, reason: str
) -> None:
    with pytest.raises(InputError) as caught:
        model.prepare(item)
    err = caught.value
    assert err.field == field
    assert reason in err.reason
    assert err.message("inputs[3]") == f"`inputs[3]{field}` {err.reason}"
    assert str(err).startswith(f"`input{field}` ")


def test_input_error_message_format() -> None:
    err = InputError("", (7, 8), "has shape (7, 8), expected (8, 8)")
    assert err.message("inputs[0]") == "`inputs[0]` has shape (7, 8), expected (8, 8)"
    assert err.value == (7, 8)


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def test_decode_png_matches_prepare(model: VisionModel) -> None:
    pixels = (np.array(GOOD) * 255 / 16).round().astype(np.uint8)
    big = np.kron(pixels, np.ones((4, 4), dtype=np.uint8))  # 32×32, shrinks back exactly
    decoded = model.decode_image(_png(big))
    assert decoded.shape == (1, 8, 8) and decoded.dtype == torch.float32
    assert torch.allclose(decoded, model.prepare(GOOD), atol=1 / 255)
    rgb_png = _png(np.stack([big] * 3, axis=-1))  # colour input becomes grayscale
    assert torch.allclose(model.decode_image(rgb_png), decoded, atol=1 / 255)


def test_decode_jpeg_and_rgb(rgb: VisionModel) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (20, 10), (255, 0, 255)).save(buf, format="JPEG", quality=95)
    out = rgb.decode_image(buf.getvalue())
    assert out.shape == (3, 4, 4)
    # 255 → high (1.0) → (1 - 0.5) / 0.25 = 2; 0 → -2 (JPEG is lossy: loose tolerance)
    assert torch.allclose(out[0], torch.full((4, 4), 2.0), atol=0.1)
    assert torch.allclose(out[1], torch.full((4, 4), -2.0), atol=0.1)


def _chunk(kind: bytes, payload: bytes) -> bytes:
    body = kind + payload
    return struct.pack(">I", len(payload)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)


def _png_header_only(width: int, height: int) -> bytes:
    """A valid PNG start claiming a huge image, with a few bytes of pixel data (a bomb's head)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x00\x01garbage\xff" * 10, "is not a PNG or JPEG image"),
        (b"just a text file\nwith two lines\n", "is not a PNG or JPEG image"),
        (b"", "is not a PNG or JPEG image"),
        (_png(np.zeros((8, 8), dtype=np.uint8))[:40], "is not a PNG or JPEG image"),
        (_png_header_only(5000, 5000), "more than 4096×4096 pixels"),
        (_png_header_only(20000, 20000), "4096×4096"),
    ],
)
def test_decode_rejects_bad_bytes(model: VisionModel, data: bytes, reason: str) -> None:
    with pytest.raises(InputError) as caught:
        model.decode_image(data)
    assert reason in caught.value.reason
    assert caught.value.field == ""


def _jpeg(side: int) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (side, side), 128).save(buf, format="JPEG")
    return buf.getvalue()


def test_decoding_is_bounded_by_the_model_input(model: VisionModel) -> None:
    """An 8×8 model decodes PNGs up to 512² and JPEGs whose 1/8 draft fits: a 1024² PNG is
    refused from its header, before any pixel is decoded; a 4096² JPEG is drafted to 512²."""
    assert model.max_image_side() == 512
    with pytest.raises(InputError) as caught:
        model.decode_image(_png_header_only(1024, 1024))
    assert "at most 512×512" in caught.value.reason
    assert model.decode_image(_png(np.zeros((512, 512), dtype=np.uint8))).shape == (1, 8, 8)
    assert model.decode_image(_jpeg(4096)).shape == (1, 8, 8)
    with pytest.raises(InputError, match="1024×1024 image"):
        model.decode_image(_png(np.zeros((1024, 1024), dtype=np.uint8)))


def test_decode_rejects_other_formats(model: VisionModel) -> None:
    buf = io.BytesIO()
    Image.new("L", (8, 8)).save(buf, format="GIF")
    with pytest.raises(InputError, match="not a PNG or JPEG"):
        model.decode_image(buf.getvalue())


def test_forward_checks_output_against_labels() -> None:
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 4)).eval()
    spec = InputSpec(shape=(1, 8, 8))
    bad = VisionModel(net, name="bad", task="classification", labels=["a", "b"], input_spec=spec)
    with pytest.raises(RuntimeError, match="K=2"):
        bad.forward(torch.zeros(1, 1, 8, 8))


def test_forward_chunks_a_fixed_batch_module() -> None:
    calls: list[int] = []

    class Fixed(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            calls.append(x.shape[0])
            assert x.shape[0] == 4
            return x.flatten(1)[:, :3] * 2

    spec = InputSpec(shape=(1, 2, 2))
    model = VisionModel(
        Fixed(),
        name="f",
        task="classification",
        labels=["a", "b", "c"],
        input_spec=spec,
        fixed_batch=4,
    )
    x = torch.rand(10, 1, 2, 2)
    assert torch.equal(model.forward(x), x.flatten(1)[:, :3] * 2)
    assert calls == [4, 4, 4]


def test_segmentation_output_is_resized_to_the_input() -> None:
    net = nn.Conv2d(1, 3, 2, stride=2).eval()  # answers at half resolution
    spec = InputSpec(shape=(1, 8, 8))
    seg = VisionModel(net, name="s", task="segmentation", labels=["a", "b", "c"], input_spec=spec)
    assert seg.forward(torch.zeros(2, 1, 8, 8)).shape == (2, 3, 8, 8)
