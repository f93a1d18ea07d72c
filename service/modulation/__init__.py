"""The modulation core: pure torch, no web imports.

Utility noise (``utility``), focus (``focus``), fresh and keyed noise sources (``noise``), one
call for a mixed batch (``pipeline``) and calibration of σ against agreement (``calibration``).
"""

from .calibration import (
    decisions,
    expected_agreement,
    predicted_accuracy,
    sigma_for_agreement,
    survival_probability,
)
from .errors import ModulationArgumentError
from .focus import FocusEntry, apply_focus, focus_field
from .noise import FreshNoise, KeyedNoise, NoiseSource
from .pipeline import BatchModulation, modulate
from .utility import add_utility_noise

__all__ = [
    "BatchModulation",
    "FocusEntry",
    "FreshNoise",
    "KeyedNoise",
    "ModulationArgumentError",
    "NoiseSource",
    "add_utility_noise",
    "apply_focus",
    "decisions",
    "expected_agreement",
    "focus_field",
    "modulate",
    "predicted_accuracy",
    "sigma_for_agreement",
    "survival_probability",
]
