"""Turning what callers pass to `predict` and `generate` into the JSON the server expects.

Inputs are a batch: the first axis indexes inputs. Each input is one of

- a nested list/tuple of numbers, or an object with `.tolist()` (a numpy array, a torch tensor);
- image bytes (PNG or JPEG), sent as `{"image_b64": ...}`;
- a `pathlib.Path` or `str` path to a PNG or JPEG file, read and sent the same way;
- a mapping, sent as it is (for example `{"image_b64": ...}` already encoded).

A single image (bytes or path) may be passed without wrapping it in a list. Arrays are duck-typed,
so numpy is never imported here.
"""

from __future__ import annotations

import base64
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol, TypeAlias, runtime_checkable

from ._types import Focus

__all__ = ["FocusArg", "Inputs", "SupportsToList", "encode_focus", "encode_inputs"]


@runtime_checkable
class SupportsToList(Protocol):
    """An array-like that converts itself to nested Python lists (numpy, torch, jax...)."""

    def tolist(self) -> Any: ...


Inputs: TypeAlias = (
    SupportsToList | Sequence[Any] | bytes | bytearray | str | os.PathLike[str] | Mapping[str, Any]
)
"""What `predict` takes: a batch of inputs, or one image (bytes or path)."""
FocusArg: TypeAlias = Focus | Mapping[str, Any] | Iterable[Focus | Mapping[str, Any]]
"""What `focus=` takes: one `Focus` (or its JSON mapping), or several."""

_IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff")
_BYTES = (bytes, bytearray, memoryview)


def encode_inputs(inputs: Inputs) -> list[Any]:
    """The `inputs` list of a `POST /predict` body; errors name the bad input, e.g. `inputs[2]`."""
    items: list[Any]
    if isinstance(inputs, (*_BYTES, str, os.PathLike, Mapping)):
        items = [inputs]
    elif isinstance(inputs, SupportsToList):
        batch = inputs.tolist()
        if not isinstance(batch, list):
            raise TypeError(
                "`inputs` must be a batch whose first axis indexes inputs, but the array is a "
                f"scalar ({batch!r}); wrap a single input in a list"
            )
        items = batch
    elif isinstance(inputs, Iterable):
        items = list(inputs)
    else:
        raise TypeError(
            "`inputs` must be a list of inputs (nested lists of numbers, arrays, image bytes or "
            f"image paths), but is {type(inputs).__name__}"
        )
    if not items:
        raise ValueError("`inputs` must hold at least one input, but is empty")
    return [_encode_item(item, f"inputs[{i}]") for i, item in enumerate(items)]


def _encode_item(item: Any, where: str) -> Any:
    if isinstance(item, Mapping):
        return dict(item)
    if isinstance(item, _BYTES):
        return _image(bytes(item), where)
    if isinstance(item, (str, os.PathLike)):
        try:
            with open(item, "rb") as f:
                data = f.read()
        except OSError as exc:
            raise ValueError(
                f"`{where}` is taken as the path of an image file, but {os.fspath(item)!r} "
                f"cannot be read ({exc.strerror or exc})"
            ) from exc
        return _image(data, where)
    if isinstance(item, SupportsToList):
        return _numbers(item.tolist(), where)
    if isinstance(item, (list, tuple, int, float)):
        return _numbers(item, where)
    raise TypeError(
        f"`{where}` must be a nested list of numbers, an array with .tolist(), image bytes or an "
        f"image path, but is {type(item).__name__}"
    )


def _image(data: bytes, where: str) -> dict[str, str]:
    # Raw pixel buffers (`array.tobytes()`) are a common mistake; catching them here gives a
    # clearer message than the server's decoder can.
    if not data.startswith(_IMAGE_MAGIC):
        raise ValueError(
            f"`{where}` must be PNG or JPEG image bytes, but starts with {data[:8]!r}; pass pixel "
            "arrays as nested lists or arrays instead"
        )
    return {"image_b64": base64.b64encode(data).decode("ascii")}


def _is_plain_number(value: object) -> bool:
    kind = type(value)
    return kind is int or (kind is float and math.isfinite(value))  # type: ignore[arg-type]


def _numbers(value: Any, where: str) -> Any:
    """`value` as nested lists of finite JSON numbers; errors name the element, e.g. `[0][3]`."""
    if isinstance(value, (list, tuple)):
        # Fast path for the innermost axis: a row of plain numbers needs no per-element work.
        if all(_is_plain_number(v) for v in value):
            return list(value)
        return [_numbers(v, f"{where}[{j}]") for j, v in enumerate(value)]
    if isinstance(value, bool):
        raise TypeError(f"`{where}` must be a number, but is {value!r}")
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"`{where}` must be a finite number, but is {value!r}")
        return float(value)
    if isinstance(value, SupportsToList):  # numpy scalars and arrays nested in lists
        return _numbers(value.tolist(), where)
    raise TypeError(f"`{where}` must be a number, but is {type(value).__name__} {value!r:.40}")


def encode_focus(focus: FocusArg | None) -> list[dict[str, Any]] | None:
    """The `focus` list of a request body, or None to leave it out."""
    if focus is None:
        return None
    entries: Iterable[Focus | Mapping[str, Any]] = (
        [focus] if isinstance(focus, (Focus, Mapping)) else focus
    )
    out: list[dict[str, Any]] = []
    for i, entry in enumerate(entries):
        if isinstance(entry, Focus):
            out.append(entry.to_json())
        elif isinstance(entry, Mapping):
            out.append(dict(entry))
        else:
            raise TypeError(
                f"`focus[{i}]` must be a Focus or a mapping, but is {type(entry).__name__}"
            )
    return out
