"""Focus modulation: z'_c += s · λ · |η| for each requested class c (η half-normal per decision).

A request names classes (one, several, or all) with a direction s ∈ {+1, −1} and a strength λ;
for segmentation an entry may add a box region that limits the pixels it applies to. Entries are
turned into one dense *focus field* (signed strengths per row and class, and per pixel when a
region is used) so that applying focus is a single vectorised expression over the batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ._checks import check_logits
from .errors import ModulationArgumentError

Region = tuple[int, int, int, int]


@dataclass(frozen=True)
class FocusEntry:
    """One focus request: which class, which way, how strongly, and optionally where."""

    class_index: int | None
    """Class to shift; ``None`` means every class."""
    direction: int
    """+1 ("up": the model sees more of the class) or −1 ("down")."""
    strength: float
    """λ ≥ 0, in logit units: the scale of the half-normal shift."""
    region: Region | None = None
    """Segmentation only: ``(x0, y0, x1, y1)`` pixel box, half-open, that the entry applies to."""

    def __post_init__(self) -> None:
        if self.direction not in (1, -1):
            raise ModulationArgumentError("direction", self.direction, "has to be +1 or -1")
        if not (isinstance(self.strength, int | float) and math.isfinite(self.strength)):
            raise ModulationArgumentError("strength", self.strength, "has to be a finite number")
        if self.strength < 0:
            raise ModulationArgumentError("strength", self.strength, "has to be non-negative")

    @classmethod
    def parse(
        cls,
        class_index: int | None,
        direction: str | int,
        strength: float,
        region: Sequence[int] | None = None,
    ) -> FocusEntry:
        """Build an entry from wire values: direction ``"up"``/``"down"`` or ±1."""
        signs: dict[str | int, int] = {"up": 1, "down": -1, 1: 1, -1: -1}
        sign = signs.get(direction)
        if sign is None:
            raise ModulationArgumentError("direction", direction, "has to be 'up' or 'down'")
        box = None
        if region is not None:
            if len(region) != 4:
                raise ModulationArgumentError("region", list(region), "has to be [x0, y0, x1, y1]")
            box = (int(region[0]), int(region[1]), int(region[2]), int(region[3]))
        return cls(class_index, sign, float(strength), box)


def focus_field(
    entries: Sequence[Sequence[FocusEntry]],
    num_classes: int,
    spatial: tuple[int, int] | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor | None:
    """Signed strengths s·λ per row and class: N×C, or N×C×H×W when an entry has a region.

    ``entries[i]`` are the focus entries of row ``i``. Returns ``None`` when no row asks for focus,
    so the common path pays nothing. Raises on unknown classes or regions outside the image.
    """
    rows = len(entries)
    if not any(entries):
        return None
    use_regions = any(e.region is not None for row in entries for e in row)
    if use_regions and spatial is None:
        raise ModulationArgumentError("region", "given", "is only allowed for segmentation")
    flat = torch.zeros(rows, num_classes, dtype=torch.float32)
    field = (
        torch.zeros(rows, num_classes, *spatial, dtype=torch.float32)
        if use_regions and spatial is not None
        else None
    )
    for i, row in enumerate(entries):
        for entry in row:
            ci = entry.class_index
            if ci is not None and not (0 <= ci < num_classes):
                raise ModulationArgumentError(
                    "class", ci, f"has to be a class index in [0, {num_classes})"
                )
            classes = slice(None) if ci is None else slice(ci, ci + 1)
            value = entry.direction * entry.strength
            if entry.region is None:
                flat[i, classes] += value
                continue
            assert field is not None and spatial is not None
            x0, y0, x1, y1 = entry.region
            height, width = spatial
            if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
                raise ModulationArgumentError(
                    "region",
                    list(entry.region),
                    f"has to satisfy 0 <= x0 < x1 <= {width} and 0 <= y0 < y1 <= {height}",
                )
            field[i, classes, y0:y1, x0:x1] += value
    if field is not None:
        field += flat[:, :, None, None]
        return field.to(device)
    return flat.to(device)


def apply_focus(
    logits: torch.Tensor, field: torch.Tensor | None, half_normal: torch.Tensor
) -> torch.Tensor:
    """Return ``logits + field · |η|``; entries with no focus come back bit-identical.

    ``field`` comes from :func:`focus_field` (N×C broadcasts over pixels); ``half_normal`` holds
    |η| with the shape of ``logits``. The input is never modified in place.
    """
    check_logits(logits)
    if field is None:
        return logits
    if half_normal.shape != logits.shape:
        raise ModulationArgumentError(
            "half_normal", tuple(half_normal.shape), f"has to have shape {tuple(logits.shape)}"
        )
    return focused(logits, field, half_normal)


def focused(logits: torch.Tensor, field: torch.Tensor, half_normal: torch.Tensor) -> torch.Tensor:
    """`apply_focus` without the argument checks, for callers that made them once."""
    f = field.to(logits.device, logits.dtype)
    if f.dim() < logits.dim():
        f = f.view(*f.shape, *([1] * (logits.dim() - f.dim())))
    return torch.where(f != 0, logits + f * half_normal, logits)
