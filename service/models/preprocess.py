"""A Hugging Face image processor's numbers, applied on the request path with PIL and numpy.

``ImagePreprocessor.from_file`` reads a directory's ``preprocessor_config.json`` (what
``ViTImageProcessor``, ``SegformerImageProcessor``, ``ConvNextImageProcessor``,
``BitImageProcessor`` and their kin save); ``__call__`` turns a decoded RGB image into the
float32 C×H×W array the network takes. Each step is done as transformers' PIL backend does it:
PIL resize with the config's resample filter, integer centre crop, float64 rescale cast to
float32, float32 normalise. So the network sees the very same numbers and the answers match the
model's own processor (tests/models/test_hf_vision.py), with no transformers call per request.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .errors import ModelLoadError, describe_value
from .hf_config import read_json_object

PROCESSOR_FILE = "preprocessor_config.json"
_KIND = "image processor config"
# ConvNeXt's processor resizes the short side to size/crop_pct and crops only below this side.
_CONVNEXT_CROP_BELOW = 384


@dataclass(frozen=True)
class ImagePreprocessor:
    """Resize (to ``size`` H×W, or the short side to ``shortest_edge``), centre crop, rescale,
    normalise: the steps ``transformers``' image processors share."""

    size: tuple[int, int] | None
    """Exact H×W to resize to (ViT, SegFormer); None when ``shortest_edge`` applies."""
    shortest_edge: int | None
    """Resize the short side to this, keeping the aspect ratio."""
    crop: tuple[int, int] | None
    """Centre crop H×W after resizing (None: no crop)."""
    resample: int
    rescale: float | None
    mean: tuple[float, float, float] | None
    std: tuple[float, float, float] | None

    @property
    def output_shape(self) -> tuple[int, int, int]:
        """C×H×W of what ``__call__`` returns."""
        if self.crop is not None:
            return (3, *self.crop)
        if self.size is not None:
            return (3, *self.size)
        # Without a crop a short-side resize gives a size per image; from_file refuses that.
        raise ValueError("a shortest_edge resize without a crop has no fixed output shape")

    def __call__(self, image: Image.Image) -> np.ndarray:
        """A decoded image (any mode, any size) → float32 C×H×W, as the model's processor."""
        if image.mode != "RGB":
            image = image.convert("RGB")
        w, h = image.size
        if self.size is not None:
            new_h, new_w = self.size
        elif self.shortest_edge is not None:
            new_h, new_w = shortest_edge_size(h, w, self.shortest_edge)
        else:
            new_h, new_w = h, w
        if (new_w, new_h) != (w, h):
            image = image.resize((new_w, new_h), resample=Image.Resampling(self.resample))
        pixels = np.asarray(image)  # H×W×3 uint8
        if self.crop is not None:
            pixels = center_crop(pixels, *self.crop)
        x = pixels.transpose(2, 0, 1)
        if self.rescale is not None:
            x = (x.astype(np.float64) * self.rescale).astype(np.float32)
        else:
            x = x.astype(np.float32)
        if self.mean is not None and self.std is not None:
            mean = np.asarray(self.mean, dtype=np.float32)[:, None, None]
            std = np.asarray(self.std, dtype=np.float32)[:, None, None]
            x = (x - mean) / std
        return np.ascontiguousarray(x, dtype=np.float32)

    @classmethod
    def from_file(cls, directory: str | Path) -> ImagePreprocessor:
        """The processor saved in ``directory``; ModelLoadError names a missing file or an
        unsupported setting (one line, at start-up)."""
        missing = f"no {PROCESSOR_FILE} (save the model's image processor with save_pretrained)"
        data = read_json_object(Path(directory), PROCESSOR_FILE, missing, _KIND)
        file = Path(directory) / PROCESSOR_FILE
        try:
            return _parse(data)
        except ValueError as exc:
            raise ModelLoadError(str(file), str(exc), _KIND) from None


def _parse(data: dict[str, Any]) -> ImagePreprocessor:
    kind = str(data.get("image_processor_type", ""))
    if data.get("do_pad"):
        raise ValueError(f"do_pad: padding is not supported ({kind or 'unknown processor'})")
    size: tuple[int, int] | None = None
    shortest: int | None = None
    crop: tuple[int, int] | None = None
    if data.get("do_resize", True):
        raw = data.get("size")
        if isinstance(raw, int) and not isinstance(raw, bool):
            raw = {"shortest_edge": raw} if "crop_size" in data else {"height": raw, "width": raw}
        if not isinstance(raw, dict):
            raise ValueError(f"size: {describe_value(raw)} is not a size mapping")
        if "height" in raw and "width" in raw:
            size = (_side(raw["height"], "size.height"), _side(raw["width"], "size.width"))
        elif "shortest_edge" in raw and "longest_edge" not in raw:
            shortest = _side(raw["shortest_edge"], "size.shortest_edge")
        else:
            raise ValueError(f"size: {raw!r} is not supported (height/width or shortest_edge)")
    if "crop_pct" in data and shortest is not None:  # ConvNeXt's own resize
        if shortest < _CONVNEXT_CROP_BELOW:
            crop = (shortest, shortest)
            shortest = int(shortest / float(data["crop_pct"]))
        else:
            size, shortest = (shortest, shortest), None
    if data.get("do_center_crop"):
        raw = data.get("crop_size")
        if isinstance(raw, int) and not isinstance(raw, bool):
            raw = {"height": raw, "width": raw}
        if not isinstance(raw, dict) or "height" not in raw or "width" not in raw:
            raise ValueError(f"crop_size: {describe_value(raw)} is not {{height, width}}")
        crop = (_side(raw["height"], "crop_size.height"), _side(raw["width"], "crop_size.width"))
    if shortest is not None and crop is None:
        raise ValueError("size.shortest_edge without a centre crop gives no fixed input size")
    if size is None and shortest is None:
        raise ValueError("do_resize is false: images of any size have no fixed input size")
    rescale = float(data.get("rescale_factor", 1 / 255)) if data.get("do_rescale", True) else None
    mean = std = None
    if data.get("do_normalize", True):
        mean, std = (
            _triple(data.get("image_mean"), "image_mean"),
            _triple(data.get("image_std"), "image_std"),
        )
    return ImagePreprocessor(
        size=size,
        shortest_edge=shortest,
        crop=crop,
        resample=int(data.get("resample", Image.Resampling.BILINEAR)),
        rescale=rescale,
        mean=mean,
        std=std,
    )


def _side(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= 4096:
        raise ValueError(f"{field}: {describe_value(value)} is not a side in pixels")
    return value


def _triple(value: Any, field: str) -> tuple[float, float, float]:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (float(value),) * 3
    if isinstance(value, list) and len(value) == 3:
        return (float(value[0]), float(value[1]), float(value[2]))
    raise ValueError(f"{field}: {describe_value(value)} is not three numbers (RGB)")


def shortest_edge_size(height: int, width: int, edge: int) -> tuple[int, int]:
    """H×W with the short side ``edge`` (the long side truncated, as transformers does)."""
    short, long = (height, width) if height <= width else (width, height)
    new_long = int(edge * long / short)
    return (edge, new_long) if height <= width else (new_long, edge)


def center_crop(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    """The centre H×W of an H×W×C array (zero-padded where the image is smaller)."""
    h, w = pixels.shape[:2]
    if h < height or w < width:
        padded = np.zeros((max(h, height), max(w, width), *pixels.shape[2:]), pixels.dtype)
        top, left = (padded.shape[0] - h) // 2, (padded.shape[1] - w) // 2
        padded[top : top + h, left : left + w] = pixels
        pixels, h, w = padded, padded.shape[0], padded.shape[1]
    top, left = (h - height) // 2, (w - width) // 2
    return pixels[top : top + height, left : left + width]
