"""Usage errors of the `aim` commands: one line naming the flag and the bad value, exit code 2.

`check_args` validates what can be checked before any model is loaded (counts, σ lists, target
agreements in (0, 1]); the commands raise `UsageError` for what needs the model (a target at or
below chance, 1/C; inputs of the wrong shape) and `main` prints it.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence


class UsageError(Exception):
    """A flag's value the command cannot use; the message names the flag and the value."""


def _fmt(values: Sequence[float]) -> str:
    return ",".join(f"{v:g}" for v in values)


def check_args(args: argparse.Namespace) -> None:
    """Counts ≥ 1, σ ≥ 0, target agreements in (0, 1]; raises `UsageError`."""
    keys = getattr(args, "keys", None)
    if isinstance(keys, int) and keys < 1:
        raise UsageError(f"--keys {keys}: has to be at least 1")
    for flag in ("sigmas", "strengths"):
        values: list[float] = getattr(args, flag, None) or []
        bad = [v for v in values if not v >= 0]
        if bad:
            raise UsageError(f"--{flag} {_fmt(values)}: {bad[0]:g} is negative")
    targets = getattr(args, "targets", None)
    if targets is not None:
        check_targets(targets)


def check_targets(targets: Sequence[float], classes: int | None = None) -> None:
    """Each target agreement in (1/C, 1] (C: the model's classes, once known): at or below
    chance no σ reaches it, above 1 none exists."""
    low = 1.0 / classes if classes else 0.0
    for t in targets:
        if not low < t <= 1.0:
            bound = f"1/{classes} = {low:.4g}" if classes else "0"
            raise UsageError(
                f"--targets {_fmt(targets)}: {t:g} is not an agreement in ({bound}, 1]"
            )
