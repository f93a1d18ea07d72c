"""The adapter between a vision network and the service: input checks, decoding, forward.

``VisionModel`` wraps any nn.Module-like callable (eager, TorchScript, torch.export) that maps
N×C×H×W float inputs to logits (N×K for classification, N×K×H×W for segmentation). Clients send
raw values (e.g. 0..16 for the digits); ``prepare`` checks them, divides by ``InputSpec.scale``
and applies mean/std, so the network always sees the same preprocessing.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .device import resolve_device
from .errors import InputError, describe_value
from .spec import InputSpec, Task

VISION_TASKS: tuple[str, ...] = ("classification", "segmentation")

# Decompression-bomb guard: refuse before decoding anything larger (the header gives the size).
MAX_IMAGE_SIDE = 4096
MAX_IMAGE_PIXELS = MAX_IMAGE_SIDE * MAX_IMAGE_SIDE
_NOT_AN_IMAGE = "is not a PNG or JPEG image"


def _field(index: Sequence[Any]) -> str:
    return "".join(f"[{int(i)}]" for i in index)


def _is_number(value: Any) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return False
    return isinstance(value, (int, float, np.integer, np.floating))


def _shape_text(shape: Sequence[int]) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"


class VisionModel:
    """A classifier or segmenter with its labels and input spec, ready for batched inference.

    ``module`` maps a float32 batch N×C×H×W on ``device`` to logits; ``fixed_batch`` is set for
    modules compiled for one batch size (a static torch.export graph): ``forward`` then runs the
    batch in chunks of that size. ``source`` (a file) is hashed by ``fingerprint`` when the
    module has no state dict.
    """

    def __init__(
        self,
        module: Any,
        *,
        name: str,
        task: Task,
        labels: Sequence[str],
        input_spec: InputSpec,
        device: str | torch.device = "cpu",
        fixed_batch: int | None = None,
        source: str | None = None,
    ) -> None:
        if task not in VISION_TASKS:
            raise ValueError(f"task: {task!r} is not one of {', '.join(VISION_TASKS)}")
        if not labels:
            raise ValueError("labels: a vision model needs at least one label")
        self.module = module
        self.name = name
        self.task: Task = task
        self.labels: list[str] = [str(label) for label in labels]
        self.input_spec = input_spec
        self.fixed_batch = fixed_batch
        self.source = source
        self.device = torch.device("cpu")
        self._fingerprint: str | None = None
        self.to(device)

    def __repr__(self) -> str:
        return (
            f"VisionModel(name={self.name!r}, task={self.task!r}, classes={self.num_classes}, "
            f"input={self.input_spec.shape}, device={self.device})"
        )

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    # -- inputs ---------------------------------------------------------------------------------

    def prepare(self, item: Any) -> torch.Tensor:
        """Check one raw item (nested lists or an array) and return the network's input.

        Accepts the spec's C×H×W shape, or H×W for one channel. Raises ``InputError`` naming the
        first bad element (field relative to the item, e.g. "[3][1]") or the shape.
        """
        raw = self._checked_array(item)
        return self.input_spec.normalize(raw.reshape(self.input_spec.shape))

    def _expected_text(self, ndim: int) -> str:
        for shape in self.input_spec.accepted_shapes:
            if len(shape) == ndim:
                return _shape_text(shape)
        return " or ".join(_shape_text(s) for s in self.input_spec.accepted_shapes)

    def _shape_error(self, shape: Sequence[int]) -> InputError:
        return InputError(
            "",
            tuple(shape),
            f"has shape {_shape_text(shape)}, expected {self._expected_text(len(shape))}",
        )

    def _checked_array(self, item: Any) -> np.ndarray:
        if isinstance(item, torch.Tensor):
            item = item.detach().cpu()
            item = (item.float() if item.is_floating_point() else item).numpy()
        if isinstance(item, np.ndarray):
            if item.dtype.kind == "O":
                return self._checked_array(item.tolist())
            if item.dtype.kind not in "iuf":
                if item.shape not in self.input_spec.accepted_shapes:
                    raise self._shape_error(item.shape)
                first = item.reshape(-1)[0].item() if item.size else None
                field = _field(np.unravel_index(0, item.shape)) if item.size else ""
                kind = "a boolean" if item.dtype.kind == "b" else "not a number"
                raise InputError(
                    field, first, f"is {describe_value(first)}: {kind}, expected a number"
                )
            if item.shape not in self.input_spec.accepted_shapes:
                raise self._shape_error(item.shape)
            return self._checked_values(item.astype(np.float64, copy=False))
        if not isinstance(item, (list, tuple)):
            expected = " or ".join(_shape_text(s) for s in self.input_spec.accepted_shapes)
            raise InputError(
                "", item, f"is {describe_value(item)}, expected an array of shape {expected}"
            )
        try:
            arr = np.asarray(item)
        except (ValueError, TypeError, OverflowError, RecursionError):
            arr = None  # ragged or deeply nested: the walk below names the element
        if arr is None or arr.dtype.kind not in "iuf":
            self._walk(item)  # raises for every structural or type problem it finds
            try:
                arr = np.asarray(item, dtype=np.float64)
            except (ValueError, TypeError, OverflowError) as exc:  # pragma: no cover - walk checks
                raise InputError("", None, "is not an array of numbers") from exc
        if arr.shape not in self.input_spec.accepted_shapes:
            raise self._shape_error(arr.shape)
        # numpy silently turns True into 1 next to numbers: look at the element types per row.
        if not self._plain_numbers(item, arr.ndim):
            self._walk(item)
        return self._checked_values(arr.astype(np.float64, copy=False))

    @staticmethod
    def _plain_numbers(item: Sequence[Any], ndim: int) -> bool:
        rows: list[Sequence[Any]] = [item]
        for _ in range(ndim - 1):
            rows = [child for row in rows for child in row]
        types: set[type] = set()
        for row in rows:
            types.update(map(type, row))
        return types <= {int, float}

    def _walk(self, item: Sequence[Any]) -> None:
        """Find the first bad element in document order, for inputs the fast path refused."""
        depth, node = 0, cast(Any, item)
        while isinstance(node, (list, tuple)) and depth < 4:
            depth += 1
            node = node[0] if len(node) else None
        if isinstance(node, (list, tuple)):
            raise InputError("", None, "is nested too deeply, expected an array of numbers")
        claimed = [len(item)]
        node = item
        for _ in range(depth - 1):
            node = node[0]
            claimed.append(len(node))
        if tuple(claimed) not in self.input_spec.accepted_shapes:
            raise self._shape_error(claimed)
        self._walk_node(item, tuple(claimed), ())

    def _walk_node(self, node: Any, shape: tuple[int, ...], index: tuple[int, ...]) -> None:
        if not shape:
            self._check_element(node, index)
            return
        if not isinstance(node, (list, tuple)):
            raise InputError(
                _field(index),
                node,
                f"is {describe_value(node)}, expected a list of {shape[0]} "
                + ("numbers" if len(shape) == 1 else "lists"),
            )
        if len(node) != shape[0]:
            raise InputError(
                _field(index), len(node), f"has length {len(node)}, expected {shape[0]}"
            )
        for i, child in enumerate(node):
            self._walk_node(child, shape[1:], (*index, i))

    def _check_element(self, value: Any, index: tuple[int, ...]) -> None:
        field = _field(index)
        if isinstance(value, (list, tuple)):
            raise InputError(field, value, "is a list, expected a number")
        if isinstance(value, (bool, np.bool_)):
            raise InputError(field, value, f"is {value!r}: a boolean, expected a number")
        if not _is_number(value):
            raise InputError(field, value, f"is {describe_value(value)}, expected a number")
        try:
            number = float(value)
        except OverflowError:
            number = math.inf if value > 0 else -math.inf
        if not math.isfinite(number):
            reason = f"is {describe_value(value)}, expected a finite number"
            if isinstance(value, (int, np.integer)):
                reason = f"is {describe_value(value)}, {self._range_text()}"
            raise InputError(field, value, reason)
        if not self.input_spec.low <= number <= self.input_spec.high:
            raise InputError(field, value, f"is {describe_value(value)}, {self._range_text()}")

    def _range_text(self) -> str:
        return f"outside the accepted range [{self.input_spec.low:g}, {self.input_spec.high:g}]"

    def _checked_values(self, arr: np.ndarray) -> np.ndarray:
        """Finite and in [low, high]; names the first bad element in document order."""
        spec = self.input_spec
        bad = ~np.isfinite(arr) | (arr < spec.low) | (arr > spec.high)
        if bad.any():
            flat = int(np.flatnonzero(bad)[0])
            index = np.unravel_index(flat, arr.shape)
            value = float(arr[index])
            if math.isfinite(value):
                reason = f"is {value:g}, {self._range_text()}"
            else:
                reason = f"is {value!r}, expected a finite number"
            raise InputError(_field(index), value, reason)
        return arr

    def decode_image(self, data: bytes) -> torch.Tensor:
        """PNG/JPEG bytes → the network's input (grayscale or RGB, resized to H×W).

        Pixels 0..255 map linearly to [low, high]; then the same normalisation as ``prepare``.
        Images above 4096×4096 pixels are refused from their header, before decoding.
        """
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise InputError("", type(data).__name__, _NOT_AN_IMAGE)
        channels, height, width = self.input_spec.shape
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
            if image.format == "JPEG":
                image.draft(mode, (width, height))  # decode big JPEGs at a reduced scale
            self._check_decoded_size(image.size)
            try:
                converted = image.convert(mode)
                shrinking = converted.width >= width and converted.height >= height
                resample = Image.Resampling.BOX if shrinking else Image.Resampling.BILINEAR
                resized = converted.resize((width, height), resample)
                pixels = np.asarray(resized, dtype=np.float32)
            except Exception as exc:  # truncated or corrupt data surfaces only when decoding
                raise InputError("", f"{len(data)} bytes", _NOT_AN_IMAGE) from exc
        pixels = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
        spec = self.input_spec
        raw = spec.low + (spec.high - spec.low) * (pixels / 255.0)
        return spec.normalize(raw)

    def max_image_side(self) -> int:
        """The largest image side decoded for this model: 8× its input side (at least 512).
        Decoding cost grows with the image, not with the model: 64 PNGs of 4096² in one
        allowed body cost 2.7 s of CPU for an 8×8 model. JPEGs are checked after their
        reduced-scale draft (up to 1/8 per side), so a large photo still fits."""
        _, height, width = self.input_spec.shape
        return max(8 * max(height, width), 512)

    def _check_decoded_size(self, size: tuple[int, int]) -> None:
        w, h = size
        limit = self.max_image_side()
        if max(w, h) > limit:
            _, height, width = self.input_spec.shape
            raise InputError(
                "",
                (w, h),
                f"is a {w}×{h} image; this model takes {width}×{height}, so at most "
                f"{limit}×{limit} is decoded (JPEGs up to 8× that, at a reduced scale)",
            )

    # -- inference ------------------------------------------------------------------------------

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        """N×C×H×W prepared inputs (any device) → float32 logits on ``self.device``.

        Classification gives N×K, segmentation N×K×H×W (resized to the input's H×W when the
        network answers at a lower resolution).
        """
        if batch.dim() != 4 or tuple(batch.shape[1:]) != self.input_spec.shape:
            layout = "×".join(map(str, self.input_spec.shape))
            raise ValueError(f"batch: shape {tuple(batch.shape)} is not N×{layout}")
        with torch.inference_mode():
            x = batch.to(self.device, torch.float32)
            n = x.shape[0]
            if self.fixed_batch is None or n == self.fixed_batch:
                out = self._call(x)
            else:
                out = torch.cat(
                    [
                        self._call_padded(x[i : i + self.fixed_batch])
                        for i in range(0, n, self.fixed_batch)
                    ]
                )
            return self._checked_output(out, n)

    def forward_with_embedding(
        self, batch: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``forward``, and the network's embedding for the replay memory (N×D) when the network
        has a ``forward_with_embedding`` (the shipped digits CNN); else (logits, None)."""
        embed = getattr(self.module, "forward_with_embedding", None)
        if embed is None or self.fixed_batch is not None:
            return self.forward(batch), None
        with torch.inference_mode():
            x = batch.to(self.device, torch.float32)
            out, embedding = embed(x)
            out = self._checked_output(out, x.shape[0])
            return out, embedding.reshape(x.shape[0], -1).to(out.device, torch.float32)

    def _call_padded(self, chunk: torch.Tensor) -> torch.Tensor:
        size = cast(int, self.fixed_batch)
        missing = size - chunk.shape[0]
        if missing:
            chunk = torch.cat([chunk, chunk[:1].expand(missing, *chunk.shape[1:])])
        return self._call(chunk)[: size - missing]

    def _call(self, x: torch.Tensor) -> torch.Tensor:
        out = self.module(x)
        # Common wrappers: torchvision segmenters return {"out": ...}, some models a tuple.
        if isinstance(out, Mapping):
            out = out.get("out", out.get("logits", next(iter(out.values()), None)))
        elif isinstance(out, (tuple, list)) and out:
            out = out[0]
        if not isinstance(out, torch.Tensor):
            raise RuntimeError(f"model {self.name!r} returned {type(out).__name__}, not a tensor")
        return out

    def _checked_output(self, out: torch.Tensor, n: int) -> torch.Tensor:
        want = 2 if self.task == "classification" else 4
        shape = tuple(out.shape)
        if out.dim() != want or shape[0] != n or shape[1] != self.num_classes:
            layout = "N×K" if want == 2 else "N×K×H×W"
            raise RuntimeError(
                f"model {self.name!r} returned logits of shape {shape}; expected {layout} with "
                f"N={n} and K={self.num_classes} (one per label)"
            )
        if want == 4 and shape[2:] != self.input_spec.shape[1:]:
            out = F.interpolate(out.float(), size=self.input_spec.shape[1:], mode="bilinear")
        return out.to(self.device, torch.float32)

    def to(self, device: str | torch.device) -> VisionModel:
        """Move the network; "auto" picks CUDA when there is one."""
        target = resolve_device(device)
        moved = self.module.to(target) if hasattr(self.module, "to") else self.module
        self.module = moved if moved is not None else self.module
        self.device = target
        return self

    def warmup(self, batch_sizes: Sequence[int] = (1, 8)) -> None:
        """Run a batch of each size once (allocations, kernel selection, output checks)."""
        spec = self.input_spec
        item = spec.normalize(np.full(spec.shape, spec.low, dtype=np.float32))
        for size in batch_sizes:
            self.forward(item.expand(size, *spec.shape))
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def fingerprint(self) -> str:
        """sha256 over the weights (state dict in key order, else the model file), the labels,
        the task and the input spec: a stable key for cached calibrations."""
        if self._fingerprint is None:
            digest = hashlib.sha256()
            state = self.module.state_dict() if hasattr(self.module, "state_dict") else {}
            if state:
                for key, tensor in state.items():
                    t = tensor.detach().to("cpu").contiguous()
                    digest.update(f"{key}|{t.dtype}|{tuple(t.shape)}\n".encode())
                    digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
            elif self.source is not None:
                with open(self.source, "rb") as handle:
                    for block in iter(lambda: handle.read(1 << 20), b""):
                        digest.update(block)
            else:
                raise RuntimeError(f"model {self.name!r} has neither a state dict nor a file")
            meta = {"labels": self.labels, "task": self.task, "input": self.input_spec.to_dict()}
            digest.update(json.dumps(meta, sort_keys=True).encode())
            self._fingerprint = digest.hexdigest()
        return self._fingerprint
