"""`aim eval utility`'s figure: the accuracy curve stays visible where it lies on the agreement
curves (at σ = 0 all three are the clean model's)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service.cli import plots

pytestmark = pytest.mark.unit


def _pixels_of(image: np.ndarray, hex_colour: str, tolerance: float = 0.08) -> int:
    rgb = np.array([int(hex_colour[i : i + 2], 16) / 255 for i in (1, 3, 5)])
    return int((np.abs(image[..., :3] - rgb).max(axis=-1) < tolerance).sum())


def test_accuracy_is_drawn_on_top_of_identical_agreement_curves(tmp_path: Path) -> None:
    import matplotlib.image

    same = [0.9, 0.7, 0.5, 0.3]
    rows = [
        {"sigma": s, "accuracy": v, "agreement": v, "predicted_agreement": v}
        for s, v in zip([0, 1, 2, 4], same, strict=True)
    ]
    path = tmp_path / "utility.png"
    plots.utility(path, rows, "digits")
    image = matplotlib.image.imread(path)
    accuracy = _pixels_of(image, plots.ACCURACY_STYLE["color"])
    agreement = _pixels_of(image, plots.AGREEMENT_STYLE["color"])
    # Every curve has the same values: the accuracy curve, drawn last and thicker, covers the
    # agreement line wherever they overlap; only the legend's sample of it is left.
    assert accuracy > 5 * agreement > 0, (accuracy, agreement)


def test_the_three_curves_differ_in_colour_line_and_marker() -> None:
    styles = [plots.ACCURACY_STYLE, plots.AGREEMENT_STYLE, plots.PREDICTED_STYLE]
    for key in ("color", "linestyle"):
        assert len({s[key] for s in styles}) == 3, key
    assert plots.ACCURACY_STYLE["zorder"] > max(s["zorder"] for s in styles[1:])
    assert plots.ACCURACY_STYLE["marker"] != plots.AGREEMENT_STYLE["marker"]
