"""The tasks a model can serve; a model spec names one, a Hugging Face config implies one."""

from __future__ import annotations

from typing import Literal

Task = Literal["classification", "segmentation", "generation"]
TASKS: tuple[str, ...] = ("classification", "segmentation", "generation")
