"""AIM serving: one model sold at several utility tiers by redistributing its logits."""

__version__ = "0.1.0"
