"""Checks of one raw vision input item (nested lists or an array) against an ``InputSpec``.

``checked_item`` returns the item's values as a float64 array in one of the spec's accepted
shapes, or raises ``InputError`` naming the first bad element in document order (field relative
to the item, e.g. "[3][1]") or the shape. The fast path hands the whole item to numpy; only an
input it refuses (ragged, mixed types, booleans) is walked element by element.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, cast

import numpy as np
import torch

from .errors import InputError, describe_value
from .input_spec import InputSpec


def _field(index: Sequence[Any]) -> str:
    return "".join(f"[{int(i)}]" for i in index)


def _is_number(value: Any) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return False
    return isinstance(value, (int, float, np.integer, np.floating))


def _shape_text(shape: Sequence[int]) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"


def _expected_text(spec: InputSpec, ndim: int) -> str:
    for shape in spec.accepted_shapes:
        if len(shape) == ndim:
            return _shape_text(shape)
    return " or ".join(_shape_text(s) for s in spec.accepted_shapes)


def _shape_error(spec: InputSpec, shape: Sequence[int]) -> InputError:
    return InputError(
        "",
        tuple(shape),
        f"has shape {_shape_text(shape)}, expected {_expected_text(spec, len(shape))}",
    )


def checked_item(item: Any, spec: InputSpec) -> np.ndarray:
    """``item`` (a tensor, an array, nested lists or tuples) as float64 values in an accepted
    shape of ``spec``, each finite and in [low, high]; else ``InputError``."""
    if isinstance(item, torch.Tensor):
        item = item.detach().cpu()
        item = (item.float() if item.is_floating_point() else item).numpy()
    if isinstance(item, np.ndarray):
        if item.dtype.kind == "O":
            return checked_item(item.tolist(), spec)
        if item.dtype.kind not in "iuf":
            if item.shape not in spec.accepted_shapes:
                raise _shape_error(spec, item.shape)
            first = item.reshape(-1)[0].item() if item.size else None
            field = _field(np.unravel_index(0, item.shape)) if item.size else ""
            what = f"a boolean ({describe_value(first)})" if item.dtype.kind == "b" else None
            what = what or describe_value(first)
            raise InputError(field, first, f"is {what}, expected a number")
        if item.shape not in spec.accepted_shapes:
            raise _shape_error(spec, item.shape)
        return _checked_values(item.astype(np.float64, copy=False), spec)
    if not isinstance(item, (list, tuple)):
        expected = " or ".join(_shape_text(s) for s in spec.accepted_shapes)
        raise InputError(
            "", item, f"is {describe_value(item)}, expected an array of shape {expected}"
        )
    try:
        arr = np.asarray(item)
    except (ValueError, TypeError, OverflowError, RecursionError):
        arr = None  # ragged or deeply nested: the walk below names the element
    if arr is None or arr.dtype.kind not in "iuf":
        _walk(item, spec)  # raises for every structural or type problem it finds
        try:
            arr = np.asarray(item, dtype=np.float64)
        except (ValueError, TypeError, OverflowError) as exc:  # pragma: no cover - walk checks
            raise InputError("", None, "is not an array of numbers") from exc
    if arr.shape not in spec.accepted_shapes:
        raise _shape_error(spec, arr.shape)
    # numpy silently turns True into 1 next to numbers: look at the element types per row.
    if not _plain_numbers(item, arr.ndim):
        _walk(item, spec)
    return _checked_values(arr.astype(np.float64, copy=False), spec)


def _plain_numbers(item: Sequence[Any], ndim: int) -> bool:
    rows: list[Sequence[Any]] = [item]
    for _ in range(ndim - 1):
        rows = [child for row in rows for child in row]
    types: set[type] = set()
    for row in rows:
        types.update(map(type, row))
    return types <= {int, float}


def _walk(item: Sequence[Any], spec: InputSpec) -> None:
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
    if tuple(claimed) not in spec.accepted_shapes:
        # The first row's length is only a claim: a ragged array has no shape to report.
        _refuse_ragged(item, depth, spec)
        raise _shape_error(spec, claimed)
    _walk_node(item, tuple(claimed), (), spec)


def _refuse_ragged(item: Sequence[Any], depth: int, spec: InputSpec) -> None:
    """Raise for the first row (breadth first) whose length differs from its level's first row;
    return if the array is rectangular to ``depth`` levels."""
    level: list[tuple[tuple[int, ...], Any]] = [((), item)]
    for _ in range(depth - 1):
        level = [
            ((*index, i), child)
            for index, node in level
            if isinstance(node, (list, tuple))
            for i, child in enumerate(node)
        ]
        rows = [(index, node) for index, node in level if isinstance(node, (list, tuple))]
        if not rows:
            return
        first_index, first = rows[0]
        for index, node in rows[1:]:
            if len(node) != len(first):
                raise InputError(
                    _field(index),
                    len(node),
                    f"has length {len(node)}, but row {_field(first_index)} has length "
                    f"{len(first)}: the array is ragged (rows of unequal length), expected "
                    f"shape {_expected_text(spec, depth)}",
                )


def _walk_node(node: Any, shape: tuple[int, ...], index: tuple[int, ...], spec: InputSpec) -> None:
    if not shape:
        _check_element(node, index, spec)
        return
    if not isinstance(node, (list, tuple)):
        raise InputError(
            _field(index),
            node,
            f"is {describe_value(node)}, expected a list of {shape[0]} "
            + ("numbers" if len(shape) == 1 else "lists"),
        )
    if len(node) != shape[0]:
        raise InputError(_field(index), len(node), f"has length {len(node)}, expected {shape[0]}")
    for i, child in enumerate(node):
        _walk_node(child, shape[1:], (*index, i), spec)


def _check_element(value: Any, index: tuple[int, ...], spec: InputSpec) -> None:
    field = _field(index)
    if isinstance(value, (list, tuple)):
        raise InputError(field, value, "is a list, expected a number")
    if isinstance(value, (bool, np.bool_)):
        raise InputError(field, value, f"is a boolean ({describe_value(value)}), expected a number")
    if not _is_number(value):
        raise InputError(field, value, f"is {describe_value(value)}, expected a number")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf if value > 0 else -math.inf
    if not math.isfinite(number):
        reason = f"is {describe_value(value)}, expected a finite number"
        if isinstance(value, (int, np.integer)):
            reason = f"is {describe_value(value)}, {_range_text(spec)}"
        raise InputError(field, value, reason)
    if not spec.low <= number <= spec.high:
        raise InputError(field, value, f"is {describe_value(value)}, {_range_text(spec)}")


def _range_text(spec: InputSpec) -> str:
    return f"outside the accepted range [{spec.low:g}, {spec.high:g}]"


def _checked_values(arr: np.ndarray, spec: InputSpec) -> np.ndarray:
    """Finite and in [low, high]; names the first bad element in document order."""
    if arr.size:
        # Two reductions decide the common case (NaN fails both comparisons); the element-wise
        # mask below only runs to name a bad element.
        lo, hi = float(arr.min()), float(arr.max())
        if spec.low <= lo and hi <= spec.high and math.isfinite(lo) and math.isfinite(hi):
            return arr
    bad = ~np.isfinite(arr) | (arr < spec.low) | (arr > spec.high)
    if bad.any():
        flat = int(np.flatnonzero(bad)[0])
        index = np.unravel_index(flat, arr.shape)
        value = float(arr[index])
        if math.isfinite(value):
            reason = f"is {value:g}, {_range_text(spec)}"
        else:
            reason = f"is {value!r}, expected a finite number"
        raise InputError(_field(index), value, reason)
    return arr
