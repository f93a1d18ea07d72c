"""Where a model runs: the one place that turns "cpu" / "cuda" / "auto" into a torch device."""

from __future__ import annotations

import torch


def resolve_device(requested: str | torch.device) -> torch.device:
    """``"auto"`` is CUDA when there is a CUDA device, else the CPU; asking for CUDA on a machine
    without one fails here, naming the problem, instead of deep inside torch."""
    if str(requested) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            f"device {str(requested)!r} was asked for, but no CUDA device is available"
        )
    return device
