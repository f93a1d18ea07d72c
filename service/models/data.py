"""Bundled data of the shipped models: scikit-learn's 8×8 digits and synthetic digit scenes.

Everything comes from ``sklearn.datasets.load_digits`` (shipped with scikit-learn, no download).
The three splits are disjoint: ``train`` fits the weights, ``calibration`` (unlabeled use only)
calibrates σ, ``heldout`` measures accuracy. Calibration never sees held-out images, so
``aim eval`` measures on data that played no part in choosing σ.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

Split = Literal["train", "calibration", "heldout"]
Pair = tuple[np.ndarray, np.ndarray]

HELDOUT_FRACTION = 0.3
CALIBRATION_SIZE = 500
# A digit pixel belongs to the digit's class above this value (raw 0..16); the rest is background.
STROKE_THRESHOLD = 4.0
# Share of scene digits pasted at twice their size, so the segmenter sees more than one scale.
DOUBLE_SIZE_SHARE = 0.25
# The scene sets that calibration and evaluation use (train scenes are drawn fresh per epoch).
SCENE_SIZE = 32
SCENE_CALIBRATION = {"n": 64, "seed": 1}
SCENE_HELDOUT = {"n": 128, "seed": 2}
_SPLIT_INDEX: dict[str, int] = {"train": 0, "calibration": 1, "heldout": 2}


@dataclass(frozen=True)
class DigitsSplits:
    """Disjoint splits of the digits, each ``(x N×8×8 float32 in 0..16, y N int64)``."""

    train: Pair
    calibration: Pair
    heldout: Pair

    def get(self, split: Split) -> Pair:
        if split not in _SPLIT_INDEX:
            raise ValueError(f"split: {split!r} is not one of train, calibration, heldout")
        pair: Pair = getattr(self, split)
        return pair


def _frozen(x: np.ndarray) -> np.ndarray:
    # The splits are cached and shared between callers: make accidental in-place edits fail.
    x.setflags(write=False)
    return x


@lru_cache(maxsize=4)
def digits_splits(seed: int = 0) -> DigitsSplits:
    """Held-out = the stratified 30% test part (540 images); calibration = 500 stratified images
    of the rest; train = the remaining 1007. Arrays are read-only (shared cache)."""
    bunch = load_digits()
    x = np.asarray(bunch.images, dtype=np.float32)
    y = np.asarray(bunch.target, dtype=np.int64)
    x_rest, x_held, y_rest, y_held = train_test_split(
        x, y, test_size=HELDOUT_FRACTION, random_state=seed, stratify=y
    )
    x_train, x_cal, y_train, y_cal = train_test_split(
        x_rest, y_rest, test_size=CALIBRATION_SIZE, random_state=seed, stratify=y_rest
    )
    return DigitsSplits(
        train=(_frozen(x_train), _frozen(y_train)),
        calibration=(_frozen(x_cal), _frozen(y_cal)),
        heldout=(_frozen(x_held), _frozen(y_held)),
    )


def _free_corners(occupied: np.ndarray, side: int) -> np.ndarray:
    """All top-left corners (row, col) where a side×side box touches no occupied pixel."""
    size = occupied.shape[0]
    if side > size:
        return np.empty((0, 2), dtype=np.int64)
    # Summed-area table: the count of occupied pixels under every box in one vectorised step.
    table = np.zeros((size + 1, size + 1), dtype=np.int32)
    table[1:, 1:] = occupied.cumsum(0).cumsum(1)
    counts = (
        table[side:, side:] - table[:-side, side:] - table[side:, :-side] + table[:-side, :-side]
    )
    return np.argwhere(counts == 0)


def digit_scenes(split: Split, n: int, seed: int, size: int = 32, digits_seed: int = 0) -> Pair:
    """``n`` synthetic canvases (N×size×size float32 in 0..16) and masks (N×size×size int64).

    Each canvas holds 2–4 digits of ``split`` (a quarter of them at double size) at random
    non-overlapping places, on a zero background with light noise in half the canvases. The mask
    is d+1 where the digit's stroke is above ``STROKE_THRESHOLD``, else 0 (background).
    Deterministic for (split, n, seed, size, digits_seed).
    """
    if n < 0:
        raise ValueError(f"n: {n} is negative")
    if size < 16:
        raise ValueError(f"size: {size} is smaller than 16 (a canvas must hold two digits)")
    x_digits, y_digits = digits_splits(digits_seed).get(split)
    rng = np.random.default_rng([seed, _SPLIT_INDEX[split]])
    canvases = np.zeros((n, size, size), dtype=np.float32)
    masks = np.zeros((n, size, size), dtype=np.int64)
    for i in range(n):
        occupied = np.zeros((size, size), dtype=bool)
        for _ in range(int(rng.integers(2, 5))):
            k = int(rng.integers(len(x_digits)))
            digit = x_digits[k]
            if rng.random() < DOUBLE_SIZE_SHARE:
                digit = digit.repeat(2, axis=0).repeat(2, axis=1)
            corners = _free_corners(occupied, digit.shape[0])
            if len(corners) == 0 and digit.shape[0] > 8:
                digit = x_digits[k]
                corners = _free_corners(occupied, 8)
            if len(corners) == 0:
                continue  # the canvas is full; two digits always fit, see the size check
            r, c = corners[int(rng.integers(len(corners)))]
            side = digit.shape[0]
            occupied[r : r + side, c : c + side] = True
            canvases[i, r : r + side, c : c + side] = digit
            masks[i, r : r + side, c : c + side] = np.where(
                digit > STROKE_THRESHOLD, int(y_digits[k]) + 1, 0
            )
        if rng.random() < 0.5:
            # Noise only on empty pixels, and below the threshold: the mask stays exact.
            amplitude = rng.uniform(0.5, 2.0)
            noise = rng.uniform(0.0, amplitude, size=(size, size)).astype(np.float32)
            canvases[i] = np.where(canvases[i] == 0, noise, canvases[i])
    return canvases, masks
