"""The figures `aim eval` writes: utility against σ, class share against focus strength."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a server or in CI
    import matplotlib.pyplot as plt

    return plt


def _plain_ticks(ax: Any, values: list[float]) -> None:
    """A tick at every measured value, labelled as typed (2, 0.5, 16), never as 10^x."""
    from matplotlib.ticker import FixedLocator, NullLocator

    ticks = sorted(set(values))
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([f"{v:g}" for v in ticks])


# The accuracy curve often lies on or near the agreement curves (at σ = 0 all three are the
# clean model's): drawn last, thick, in its own colour with hollow markers, it stays visible
# on top of them; the agreement curves are thinner and dashed.
ACCURACY_STYLE: dict[str, Any] = {
    "color": "#d62728",
    "linestyle": "-",
    "linewidth": 2.5,
    "marker": "D",
    "markersize": 7,
    "markerfacecolor": "white",
    "zorder": 4,
}
AGREEMENT_STYLE: dict[str, Any] = {
    "color": "#1f77b4",
    "linestyle": "--",
    "linewidth": 1.5,
    "marker": "s",
    "markersize": 4,
    "zorder": 3,
}
PREDICTED_STYLE: dict[str, Any] = {"color": "0.3", "linestyle": ":", "linewidth": 1.5, "zorder": 2}


def utility(path: Path, rows: list[dict[str, Any]], model: str) -> None:
    plt = _pyplot()
    sig = [float(r["sigma"]) for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    predicted = [r["predicted_agreement"] for r in rows]
    ax.plot(sig, predicted, label="agreement (predicted)", **PREDICTED_STYLE)
    ax.plot(sig, [r["agreement"] for r in rows], label="agreement (measured)", **AGREEMENT_STYLE)
    ax.plot(sig, [r["accuracy"] for r in rows], label="accuracy (measured)", **ACCURACY_STYLE)
    positive = [s for s in sig if s > 0]
    if positive and max(positive) / min(positive) > 8:
        # σ grids are usually doubling (1, 2, 4, ... 32): on a linear axis the low end, where
        # utility changes fastest, is squashed. Linear up to 1 so that σ = 0 still has a place.
        ax.set_xscale("symlog", linthresh=1.0, linscale=0.5)
        ax.set_xlabel("σ (log scale above 1)")
    else:
        ax.set_xlabel("σ")
    _plain_ticks(ax, sig)
    _save(plt, fig, ax, path, "share of decisions", f"Utility modulation: {model}")


def focus(path: Path, rows: list[dict[str, Any]], model: str, label: str, direction: str) -> None:
    plt = _pyplot()
    lam = [float(r["strength"]) for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(lam, [r["class_share"] for r in rows], "o-", label=f"share labelled {label!r}")
    ax.plot(lam, [r["accuracy"] for r in rows], "s-", label="accuracy")
    ax.set_xlabel("focus strength λ")
    _save(plt, fig, ax, path, "share", f"Focus {direction} on {label!r}: {model}")


def _save(plt: Any, fig: Any, ax: Any, path: Path, ylabel: str, title: str) -> None:
    """Shares on a 0..1 axis, a light grid and the legend; written at 120 dpi."""
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
