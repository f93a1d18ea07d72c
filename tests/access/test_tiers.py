"""service/access/tiers.py: the tier table and the one tier-policy function every route applies."""

from __future__ import annotations

import pytest

from service.access.tiers import Tier, TierTable, build_tiers, tier_policy
from service.config import TierConfig
from service.errors import Forbidden, InvalidInput, PayloadTooLarge, RateLimited

pytestmark = pytest.mark.unit


@pytest.fixture
def tiers() -> TierTable:
    configs = (
        TierConfig.parse("gold", {"sigma": 0.0}),
        TierConfig.parse("silver", {"sigma": 1.0, "max_items": 4}),
        TierConfig.parse("bronze", {"sigma": 9.0, "focus": False, "rate_limit": "1/m"}),
    )
    return build_tiers(configs, {"gold": 0.0, "silver": 1.0, "bronze": 9.0})


def admit(tiers: TierTable, requested: str | None, items: int = 1, focus: bool = False) -> Tier:
    return tier_policy(tiers, "gold", "acct", requested, items=items, focus=focus, max_items=8)


def test_a_key_may_lower_its_tier_but_never_raise_it(tiers: TierTable) -> None:
    assert admit(tiers, None).name == "gold"
    assert admit(tiers, "silver").sigma == 1.0
    with pytest.raises(Forbidden, match="above this key's tier"):
        tier_policy(tiers, "silver", "a", "gold", items=1, focus=False, max_items=8)
    with pytest.raises(InvalidInput, match="does not exist") as err:
        admit(tiers, "platinum")
    assert err.value.field == "X-AIM-Tier"


def test_items_per_request_are_capped_by_the_tier_and_the_server(tiers: TierTable) -> None:
    assert admit(tiers, "silver", items=4).name == "silver"
    with pytest.raises(PayloadTooLarge, match=r"at most 4 items .* tier 'silver', got 5"):
        admit(tiers, "silver", items=5)
    with pytest.raises(PayloadTooLarge, match="at most 8 items"):
        admit(tiers, "gold", items=9)


def test_focus_and_the_rate_limit_belong_to_the_tier(tiers: TierTable) -> None:
    assert admit(tiers, "gold", focus=True).name == "gold"
    with pytest.raises(Forbidden, match="does not include focus") as err:
        admit(tiers, "bronze", focus=True)
    assert err.value.field == "focus"
    assert admit(tiers, "bronze").name == "bronze"  # the burst of one
    with pytest.raises(RateLimited) as limited:
        admit(tiers, "bronze")
    assert int(limited.value.headers["Retry-After"]) >= 1
    other = tier_policy(tiers, "bronze", "other", None, items=1, focus=False, max_items=8)
    assert other.name == "bronze"  # buckets are per account
