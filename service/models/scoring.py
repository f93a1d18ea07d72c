"""Scores of the shipped models on their held-out data: accuracy and mean IoU."""

from __future__ import annotations

import torch


def accuracy(predicted: torch.Tensor, target: torch.Tensor) -> float:
    """Share of decisions (samples or pixels) where the predicted class is the target."""
    if predicted.shape != target.shape:
        raise ValueError(f"predicted: shape {tuple(predicted.shape)} != {tuple(target.shape)}")
    return float((predicted == target).double().mean()) if target.numel() else 0.0


def confusion_matrix(predicted: torch.Tensor, target: torch.Tensor, classes: int) -> torch.Tensor:
    """classes×classes counts, rows = target, columns = predicted."""
    if predicted.shape != target.shape:
        raise ValueError(f"predicted: shape {tuple(predicted.shape)} != {tuple(target.shape)}")
    index = target.reshape(-1).to(torch.int64) * classes + predicted.reshape(-1).to(torch.int64)
    return torch.bincount(index, minlength=classes * classes).reshape(classes, classes)


def mean_iou(predicted: torch.Tensor, target: torch.Tensor, classes: int) -> float:
    """Mean over classes of TP / (TP + FP + FN), pooled over all pixels; background included.

    A class absent from both prediction and target has no IoU and is left out of the mean.
    """
    counts = confusion_matrix(predicted, target, classes).double()
    tp = counts.diag()
    union = counts.sum(0) + counts.sum(1) - tp
    present = union > 0
    return float((tp[present] / union[present]).mean()) if bool(present.any()) else 0.0
