"""Selling access: API keys, tiers, rate limits, quotas, usage, and the state they share.

Everything here answers "may this caller have this work, at this tier, now?" and "what did each
account use?". It knows nothing of HTTP (``service.api`` turns its errors into answers) and nothing
of models.
"""
