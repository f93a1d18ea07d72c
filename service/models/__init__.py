"""Model adapters, loaders, bundled data and the shipped models (``digits``, ``digit-scenes``).

``spec.py`` says what a user model is, ``loading.py`` loads one, ``shipped.py`` holds the two
that ship. ``load_model`` turns a shipped name, a ``ModelSpec``, a config file or a model file
into a ``VisionModel``: ``prepare``/``decode_image`` check one client item, ``forward`` gives
logits.
A generation spec or a Hugging Face directory loads as a ``CausalLM`` (see causal_lm.py; decoding is
in ``service.generation``).
"""

from .architectures import DigitsCNN, SceneSegmenter
from .base import VisionModel
from .causal_lm import CausalLM, read_texts
from .data import DigitsSplits, digit_scenes, digits_splits
from .device import resolve_device
from .errors import InputError, ModelLoadError
from .input_spec import InputSpec
from .loaders import fixed_batch_size, load_export, load_factory, load_torchscript, load_weights
from .loading import load_model
from .scoring import accuracy, confusion_matrix, mean_iou
from .shipped import SHIPPED, calibration_inputs, heldout, model_card
from .spec import LOADERS, TASKS, ModelSpec, Task, metadata_json, read_labels

__all__ = [
    "LOADERS",
    "SHIPPED",
    "TASKS",
    "CausalLM",
    "DigitsCNN",
    "DigitsSplits",
    "InputError",
    "InputSpec",
    "ModelLoadError",
    "ModelSpec",
    "SceneSegmenter",
    "Task",
    "VisionModel",
    "accuracy",
    "calibration_inputs",
    "confusion_matrix",
    "digit_scenes",
    "digits_splits",
    "fixed_batch_size",
    "heldout",
    "load_export",
    "load_factory",
    "load_model",
    "load_torchscript",
    "load_weights",
    "mean_iou",
    "metadata_json",
    "model_card",
    "read_labels",
    "read_texts",
    "resolve_device",
]
