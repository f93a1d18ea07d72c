"""Argument errors of the modulation core.

They name the argument and the bad value, so the serving layer can turn them into a 422 that
names the request field without parsing messages.
"""

from __future__ import annotations

from typing import Any


class ModulationArgumentError(ValueError):
    """An argument of a modulation function is out of its domain."""

    def __init__(self, argument: str, value: Any, reason: str) -> None:
        self.argument = argument
        self.value = value
        self.reason = reason
        super().__init__(f"`{argument}` {reason}, but is {value!r}")
