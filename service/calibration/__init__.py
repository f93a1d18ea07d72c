"""Calibration: the σ that gives each tier its target agreement.

``data`` says what each model kind calibrates on (the calibration set and its logits), ``sigmas``
turns targets into σ (the math lives in ``service.modulation.calibration``), ``cache`` keeps the
results keyed by everything they depend on, validated before use.
"""
