"""The modulation core: pure torch, no web imports.

Utility noise (``utility``), focus (``focus``), fresh and keyed noise sources (``noise``), the
per-tier replay memory (``memory``) and its rings shared by the worker processes of one host
(``shared_rings``), one call for a mixed batch (``pipeline``) and calibration of σ against
agreement (``calibration``).
"""

from .calibration import (
    MAX_SIGMA,
    decisions,
    expected_agreement,
    memory_anchors,
    predicted_accuracy,
    served_agreement,
    served_noise,
    sigma_for_agreement,
    sigma_for_served_agreement,
    survival_probability,
    valid_cached_sigma,
)
from .digest import DigestEncoder, load_digest, save_digest
from .errors import ModulationArgumentError
from .focus import FocusEntry, apply_focus, focus_field
from .memory import ReplayMemory
from .noise import FreshNoise, KeyedNoise, NoiseSource
from .pipeline import BatchModulation, modulate
from .shared_rings import SharedRings
from .utility import add_utility_noise

__all__ = [
    "MAX_SIGMA",
    "BatchModulation",
    "DigestEncoder",
    "FocusEntry",
    "FreshNoise",
    "KeyedNoise",
    "ModulationArgumentError",
    "NoiseSource",
    "ReplayMemory",
    "SharedRings",
    "add_utility_noise",
    "apply_focus",
    "decisions",
    "expected_agreement",
    "focus_field",
    "load_digest",
    "memory_anchors",
    "modulate",
    "predicted_accuracy",
    "save_digest",
    "served_agreement",
    "served_noise",
    "sigma_for_agreement",
    "sigma_for_served_agreement",
    "survival_probability",
    "valid_cached_sigma",
]
