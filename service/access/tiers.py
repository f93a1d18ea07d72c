"""Tiers: their order, who may use which tier, and the per-tier limits (σ from calibration.py).

Tiers are ordered from highest to lowest utility; a key of one tier may ask for that tier or any
tier after it (lowering), never one before it (raising).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..config import TierConfig
from ..errors import Forbidden, InvalidInput, PayloadTooLarge, RateLimited
from .ratelimit import RateLimiter


@dataclass(frozen=True)
class Tier:
    """A tier as served: its rank (0 = highest), its σ and its limits."""

    name: str
    rank: int
    sigma: float
    utility: float | None
    limiter: RateLimiter | None
    focus: bool
    max_items: int | None


class TierTable:
    """The configured tiers, in order."""

    def __init__(self, tiers: list[Tier]) -> None:
        self._tiers = {t.name: t for t in tiers}
        self.order = [t.name for t in sorted(tiers, key=lambda t: t.rank)]

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._tiers[name] for name in self.order)

    def __contains__(self, name: object) -> bool:
        return name in self._tiers

    def get(self, name: str) -> Tier:
        return self._tiers[name]

    def allowed_for(self, key_tier: str) -> list[str]:
        """The key's tier and every tier below it."""
        return self.order[self._tiers[key_tier].rank :]

    def resolve(self, key_tier: str, requested: str | None) -> Tier:
        """The tier to serve: the key's own, or a lower one it asked for; never a higher one."""
        if requested is None or requested == "":
            return self._tiers[key_tier]
        if requested not in self._tiers:
            raise InvalidInput(
                f"tier {requested!r} does not exist; tiers: {', '.join(self.order)}",
                field="X-AIM-Tier",
            )
        tier = self._tiers[requested]
        if tier.rank < self._tiers[key_tier].rank:
            raise Forbidden(
                f"tier {requested!r} is above this key's tier {key_tier!r}", field="X-AIM-Tier"
            )
        return tier


def build_tiers(configs: Sequence[TierConfig], sigmas: Mapping[str, float]) -> TierTable:
    """The tiers as served, in config order, each at its σ (see ``calibration.tier_sigmas``)."""
    tiers = []
    for rank, cfg in enumerate(configs):
        limiter = RateLimiter(cfg.rate_limit) if cfg.rate_limit is not None else None
        tiers.append(
            Tier(cfg.name, rank, sigmas[cfg.name], cfg.utility, limiter, cfg.focus, cfg.max_items)
        )
    return TierTable(tiers)


def tier_policy(
    tiers: TierTable,
    key_tier: str,
    account: str,
    requested: str | None,
    *,
    items: int,
    focus: bool,
    max_items: int,
    rate_limit: bool = True,
) -> Tier:
    """The tier policy, in one place: the tier to serve (the key's own, or a lower one it asked
    for), then that tier's limits on one request: items per request (``max_items`` is the
    server-wide cap), focus, and the rate limit, which takes one request from ``account``'s
    bucket (unless ``rate_limit`` is false: the server charges it through
    ``service.access.accounting``, which may share the bucket between replicas). Cheap refusals, so
    they come before any decoding work."""
    tier = tiers.resolve(key_tier, requested)
    limit = min(max_items, tier.max_items or max_items)
    if items > limit:
        raise PayloadTooLarge(
            f"`inputs`: at most {limit} items per request for tier {tier.name!r}, got {items}",
            "inputs",
        )
    if focus and not tier.focus:
        raise Forbidden(f"tier {tier.name!r} does not include focus", "focus")
    if rate_limit and tier.limiter is not None:
        wait = tier.limiter.acquire(account)
        if wait > 0:
            raise RateLimited(
                f"rate limit of tier {tier.name!r} exceeded; retry in {wait:.2f}s",
                headers={"Retry-After": RateLimiter.retry_after_header(wait)},
            )
    return tier
