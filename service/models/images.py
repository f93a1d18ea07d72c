"""Image decoding for vision models: PNG/JPEG bytes → the network's input, with the guards that
keep a hostile image cheap (size from the header, decoding bounded by the model's input side)."""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image

from .errors import InputError
from .input_spec import InputSpec

# Decompression-bomb guard: refuse before decoding anything larger (the header gives the size).
MAX_IMAGE_SIDE = 4096
MAX_IMAGE_PIXELS = MAX_IMAGE_SIDE * MAX_IMAGE_SIDE
_NOT_AN_IMAGE = "is not a PNG or JPEG image"


def image_side_limit(spec: InputSpec) -> int:
    """The largest image side decoded for a model of ``spec``: 8× its input side (at least 512).
    Decoding cost grows with the image, not with the model: 64 PNGs of 4096² in one
    allowed body cost 2.7 s of CPU for an 8×8 model. JPEGs are checked after their
    reduced-scale draft (up to 1/8 per side), so a large photo still fits."""
    _, height, width = spec.shape
    return max(8 * max(height, width), 512)


def decode_image(data: bytes, spec: InputSpec, max_side: int) -> torch.Tensor:
    """PNG/JPEG bytes → the network's input (grayscale or RGB, resized to H×W).

    Pixels 0..255 map linearly to [low, high]; then ``spec.normalize``. Images above 4096×4096
    pixels are refused from their header, before decoding; images with a side above
    ``max_side`` (after a JPEG's reduced-scale draft) before converting.
    """
    return torch.from_numpy(decode_image_sized(data, spec, max_side)[0])


def decode_image_sized(
    data: bytes,
    spec: InputSpec,
    max_side: int,
    preprocessor: Callable[[Image.Image], np.ndarray] | None = None,
) -> tuple[np.ndarray, tuple[int, int]]:
    """``decode_image`` as a float32 array, and the image's own H×W (a segmenter's mask size).

    With ``preprocessor`` (a Hugging Face model's processor, ``preprocess.py``) the decoded RGB
    image goes through it instead of the squashing resize, and a JPEG is decoded at full scale
    unless it is above ``max_side``: a reduced-scale draft changes the pixels, and the model's own
    processor sees the full image.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise InputError("", type(data).__name__, _NOT_AN_IMAGE)
    channels, height, width = spec.shape
    if channels not in (1, 3):
        raise InputError("", None, f"cannot be an image: the model takes {channels} channels")
    mode = "L" if channels == 1 else "RGB"
    try:
        image = Image.open(io.BytesIO(bytes(data)), formats=["PNG", "JPEG"])
    except Image.DecompressionBombError as exc:
        raise InputError("", None, f"is larger than {MAX_IMAGE_SIDE}×{MAX_IMAGE_SIDE}") from exc
    except Exception as exc:  # Pillow raises many types for garbage; all mean the same here
        raise InputError("", f"{len(data)} bytes", _NOT_AN_IMAGE) from exc
    with image:
        w, h = image.size
        if w * h > MAX_IMAGE_PIXELS:
            raise InputError(
                "",
                (w, h),
                f"is a {w}×{h} image, more than {MAX_IMAGE_SIDE}×{MAX_IMAGE_SIDE} pixels",
            )
        if image.format == "JPEG" and (preprocessor is None or max(w, h) > max_side):
            image.draft(mode, (width, height))  # decode big JPEGs at a reduced scale
        _check_decoded_size(image.size, spec, max_side)
        try:
            converted = image.convert(mode)
            if preprocessor is not None:
                return preprocessor(converted), (h, w)
            shrinking = converted.width >= width and converted.height >= height
            resample = Image.Resampling.BOX if shrinking else Image.Resampling.BILINEAR
            resized = converted.resize((width, height), resample)
            pixels = np.asarray(resized, dtype=np.float32)
        except Exception as exc:  # truncated or corrupt data surfaces only when decoding
            raise InputError("", f"{len(data)} bytes", _NOT_AN_IMAGE) from exc
    pixels = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
    raw = spec.low + (spec.high - spec.low) * (pixels / 255.0)
    return spec.normalize_array(raw), (h, w)


def _check_decoded_size(size: tuple[int, int], spec: InputSpec, limit: int) -> None:
    w, h = size
    if max(w, h) > limit:
        _, height, width = spec.shape
        raise InputError(
            "",
            (w, h),
            f"is a {w}×{h} image; this model takes {width}×{height}, so at most "
            f"{limit}×{limit} is decoded (JPEGs up to 8× that, at a reduced scale)",
        )
