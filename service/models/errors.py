"""Errors of the model layer.

``ModelLoadError`` is an operator's problem (a config or a file), found at start-up.
``InputError`` is a client's problem (one input item), and carries the field relative to the item
so the serving layer can prefix ``inputs[i]`` and answer a 422 without parsing messages.
"""

from __future__ import annotations

from typing import Any

from ..validation import shown

_MAX_VALUE_CHARS = 60


def describe_value(value: Any) -> str:
    """A value in JSON's words (null, true, "text"), as the client sent it, cut short: a client
    may send a 400-digit integer or a long string."""
    return shown(value, _MAX_VALUE_CHARS)


class ModelLoadError(RuntimeError):
    """A model, its weights or its labels cannot be loaded; names the file (or spec) and why."""

    def __init__(self, source: str, problem: str, kind: str = "model file") -> None:
        self.source = source
        self.problem = problem
        super().__init__(f"cannot load {kind} '{source}': {problem}")


class InputError(ValueError):
    """One input item is malformed.

    ``field`` is relative to the item ("" for the item itself, "[1][2]" for an element);
    ``reason`` reads after the field name, e.g. "has shape (7, 8), expected (8, 8)".
    """

    def __init__(self, field: str, value: Any, reason: str) -> None:
        self.field = field
        self.value = value
        self.reason = reason
        super().__init__(self.message())

    def message(self, prefix: str | None = None) -> str:
        """The message with the field written as ``prefix + field``, e.g. `inputs[0][1]`.

        Without a prefix, a relative field ("" or "[1][2]") is shown under the name `input`.
        """
        if prefix is None:
            prefix = "input" if self.field == "" or self.field.startswith("[") else ""
        return f"`{prefix}{self.field}` {self.reason}"


def check_int(field: str, value: Any, low: int, high: int | None) -> None:
    """Refuse ``value`` unless it is an integer (not a bool) in [low, high]."""
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= low
    if not ok or (high is not None and value > high):
        bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise InputError(
            field, value, f"has to be an integer {bound}, but is {describe_value(value)}"
        )


def check_float(
    field: str, value: Any, low: float, low_open: bool = False, high: float | None = None
) -> None:
    """Refuse ``value`` unless it is a finite number in [low, high] ((low, high] if open)."""
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    number = float(value) if ok else float("nan")
    ok = ok and number == number and abs(number) != float("inf")
    ok = ok and (number > low if low_open else number >= low)
    ok = ok and (high is None or number <= high)
    if not ok:
        lo = "(" if low_open else "["
        bound = f"in {lo}{low}, {high}]" if high is not None else f">= {low}"
        raise InputError(
            field, value, f"has to be a number {bound}, but is {describe_value(value)}"
        )
