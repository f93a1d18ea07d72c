"""Turn a validated request body into a work item: tier policy, focus entries, decoded inputs."""

from __future__ import annotations

import base64
import binascii
from typing import Any

import numpy as np
import torch
from starlette.concurrency import run_in_threadpool

from ..errors import InvalidInput
from ..modulation import FocusEntry, ModulationArgumentError
from ..serving.engine import PredictItem
from ..settings import Settings
from .deps import Caller
from .raw_image import RawImage
from .schemas import FocusItem

_ALL = ("all", "*")


async def prepare_inputs(
    inputs: list[Any], adapter: Any
) -> tuple[np.ndarray, list[tuple[int, int] | None]]:
    """Each input prepared by the model adapter, stacked, and each one's image size (None for a
    numeric input); errors name `inputs[i]...`.

    An array, not a tensor: no torch call runs on the event loop, where one may give up the GIL
    to the forward thread and then wait for it (the engine makes the batch a tensor)."""
    from ..models.errors import InputError

    prepare = getattr(adapter, "prepare_array", None)
    arrays = []
    sizes: list[tuple[int, int] | None] = []
    for i, item in enumerate(inputs):
        try:
            if isinstance(item, (dict, bytes)):
                data, field = (
                    (item, f"inputs[{i}]")
                    if isinstance(item, bytes)
                    else (_image_bytes(item, i), f"inputs[{i}].image_b64")
                )
                array, size = await run_in_threadpool(decode_image, data, adapter, field)
                arrays.append(array)
                sizes.append(size)
                continue
            elif prepare is not None:
                arrays.append(prepare(item))
            else:
                arrays.append(adapter.prepare(item).numpy())
            sizes.append(None)
        except InputError as exc:
            raise InvalidInput(
                f"`inputs[{i}]{exc.field}`: {exc.reason}", f"inputs[{i}]{exc.field}"
            ) from None
    if not arrays:
        raise InvalidInput("`inputs`: give at least one input", "inputs")
    return (arrays[0][None] if len(arrays) == 1 else np.stack(arrays)), sizes


def _image_bytes(item: dict[str, Any], i: int) -> bytes:
    extra = set(item) - {"image_b64"}
    if extra or not isinstance(item.get("image_b64"), str):
        raise InvalidInput(
            f"`inputs[{i}]`: an object input has exactly one field, image_b64 (a base64 string)",
            f"inputs[{i}]",
        )
    text: str = item["image_b64"]
    if text.startswith("data:"):
        # A data URL (`data:image/png;base64,...`), as browsers and canvas.toDataURL() give it.
        head, comma, text = text.partition(",")
        if not comma or not head.endswith(";base64"):
            raise InvalidInput(
                f"`inputs[{i}].image_b64`: is a data URL without `;base64,`; send the base64 "
                "of the PNG or JPEG file (with or without a `data:image/png;base64,` prefix)",
                f"inputs[{i}].image_b64",
            )
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(
            f"`inputs[{i}].image_b64`: is not valid base64; send the base64 of the PNG or JPEG "
            "file (standard alphabet, with padding)",
            f"inputs[{i}].image_b64",
        ) from None


def decode_image(data: bytes, adapter: Any, field: str) -> tuple[np.ndarray, tuple[int, int]]:
    """Encoded image bytes → the network's input (an array) and the image's own H×W; an
    undecodable image is a 422 naming ``field``."""
    from ..models.errors import InputError

    try:
        sized = getattr(adapter, "decode_image_sized", None)
        if sized is not None:
            array, size = sized(data)
            return array, size
        tensor: torch.Tensor = adapter.decode_image(data)
        return tensor.numpy(), (int(tensor.shape[-2]), int(tensor.shape[-1]))
    except InputError as exc:
        raise InvalidInput(f"`{field}`: {exc.reason}", field) from None


def focus_entries(
    items: list[FocusItem], labels: list[str], task: str, max_entries: int
) -> list[FocusEntry]:
    if len(items) > max_entries:
        raise InvalidInput(f"`focus`: at most {max_entries} entries, got {len(items)}", "focus")
    entries = []
    for i, f in enumerate(items):
        where = f"focus[{i}]"
        if f.token is not None:
            raise InvalidInput(
                f"`{where}.token`: only generation models take tokens", f"{where}.token"
            )
        if f.region is not None and task != "segmentation":
            raise InvalidInput(
                f"`{where}.region`: only segmentation models take a region", f"{where}.region"
            )
        index = class_index(f.class_, labels, f"{where}.class")
        try:
            entries.append(FocusEntry.parse(index, f.direction, f.strength, f.region))
        except ModulationArgumentError as exc:
            raise InvalidInput(
                f"`{where}.{exc.argument}`: {exc}", f"{where}.{exc.argument}"
            ) from None
    return entries


def class_index(value: str | int | None, labels: list[str], field: str) -> int | None:
    """A label (string) or an index (integer); 'all'/'*' is every class."""
    if value is None:
        raise InvalidInput(f"`{field}`: name a class (label, index, or 'all')", field)
    if isinstance(value, str):
        if value in _ALL:
            return None
        if value in labels:
            return labels.index(value)
        raise InvalidInput(f"`{field}`: unknown class {value!r}", field)
    if isinstance(value, int) and 0 <= value < len(labels):
        return value
    raise InvalidInput(f"`{field}`: class index {value!r} is not in [0, {len(labels)})", field)


def _no_regions(entries: list[FocusEntry]) -> None:
    """A Hugging Face segmenter's logits are on its own coarser grid (noise and focus are drawn
    there); a region in image pixels is not mapped onto it yet, so it is refused, not misplaced."""
    for i, e in enumerate(entries):
        if e.region is not None:
            raise InvalidInput(
                f"`focus[{i}].region`: this model takes focus on whole images only (no region)",
                f"focus[{i}].region",
            )


def check_region(entries: list[FocusEntry], shape: tuple[int, ...]) -> None:
    height, width = shape[-2], shape[-1]
    for i, e in enumerate(entries):
        if e.region is None:
            continue
        x0, y0, x1, y1 = e.region
        if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
            raise InvalidInput(
                f"`focus[{i}].region`: {list(e.region)} is outside the {width}×{height} image "
                "(need 0 <= x0 < x1 <= width, 0 <= y0 < y1 <= height)",
                f"focus[{i}].region",
            )


async def _admit(
    items: int,
    focus: list[FocusItem],
    top_k: int | None,
    caller: Caller,
    settings: Settings,
    tier: str | None,
) -> tuple[Caller, list[FocusEntry], int]:
    """Admit at the tier, check focus and top_k: cheap refusals before any decoding work."""
    caller = await caller.admit(items, bool(focus), tier)
    adapter = caller.runtime.adapter
    entries = focus_entries(focus, adapter.labels, adapter.task, settings.max_focus_entries)
    if adapter.task == "segmentation":
        if getattr(adapter, "native_output", False):
            _no_regions(entries)
        check_region(entries, tuple(adapter.input_spec.shape))
    k = 1 if top_k is None else top_k
    if top_k is None:
        k = min(3, len(adapter.labels))
    if k > len(adapter.labels):
        raise InvalidInput(f"`top_k`: {k} is more than the {len(adapter.labels)} classes", "top_k")
    return caller, entries, k


async def build_image_item(raw: RawImage, caller: Caller, settings: Settings) -> PredictItem:
    """``build_item`` for a raw image body: one image, knobs from headers or query."""
    caller, entries, k = await _admit(1, raw.focus, raw.top_k, caller, settings, raw.tier)
    adapter = caller.runtime.adapter
    array, size = await run_in_threadpool(decode_image, raw.data, adapter, "body")
    return PredictItem(
        array[None], caller.tier.name, caller.tier.sigma, caller.seed, entries, k, sizes=[size]
    )


async def build_item(
    inputs: list[Any],
    focus: list[FocusItem],
    top_k: int | None,
    caller: Caller,
    settings: Settings,
    tier: str | None = None,
) -> PredictItem:
    """Admit the request at its tier (``tier``, when the body names one, lowers it), then
    decode: cheap refusals come before any decoding work."""
    caller, entries, k = await _admit(len(inputs), focus, top_k, caller, settings, tier)
    adapter = caller.runtime.adapter
    array, sizes = await prepare_inputs(inputs, adapter)
    return PredictItem(
        array, caller.tier.name, caller.tier.sigma, caller.seed, entries, k, sizes=sizes
    )
