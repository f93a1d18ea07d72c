"""service/config.py: the config file as pydantic models; every refusal names its field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from service.config import ConfigError, RateLimit, ServiceConfig

pytestmark = pytest.mark.unit


def _tier(**fields: Any) -> dict[str, Any]:
    return {"tiers": {"gold": {"utility": 1.0}, "bronze": fields}}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (_tier(utility=1.5), "tiers.bronze.utility: 1.5 has to be in (0, 1]"),
        (_tier(utility=True), "tiers.bronze.utility: True has to be in (0, 1]"),
        (_tier(utility=0.5, sigma=1), "tiers.bronze: give exactly one of `utility` or `sigma`"),
        (_tier(), "tiers.bronze: give exactly one of `utility` or `sigma`"),
        (_tier(sigma=float("inf")), "tiers.bronze.sigma: inf has to be a finite number >= 0"),
        (_tier(sigma=1, rate_limit="5/x"), "tiers.bronze.rate_limit: '5/x' is not a rate"),
        (_tier(sigma=1, rate_limit="0/s"), "tiers.bronze.rate_limit: '0/s' has to allow"),
        (_tier(sigma=1, rate_limit=5), "tiers.bronze.rate_limit: 5 has to be a string"),
        (_tier(sigma=1, focus="yes"), "tiers.bronze.focus: 'yes' has to be true or false"),
        (_tier(sigma=1, max_items=0), "tiers.bronze.max_items: 0 has to be an integer >= 1"),
        (_tier(sigma=1, sigmaa=1), "tiers.bronze.sigmaa: unknown field"),
        (_tier(sigma=1, name="x"), "tiers.bronze.name: unknown field"),
        ({"tiers": {"bro nze": {"sigma": 1}}}, "tiers: 'bro nze' is not a valid tier name"),
        ({"tiers": {}}, "tiers: has to be a non-empty mapping"),
        ({"tiers": {"b": 3}}, "tiers.b: has to be a mapping like {utility: 0.85}"),
        ({"model": 3}, "model: 3 has to be a model name or a model spec mapping"),
        ({"modle": "digits"}, "config: unknown field(s) ['modle']"),
        ([], "config: has to be a mapping"),
    ],
)
def test_every_refusal_names_the_field(raw: Any, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        ServiceConfig.from_dict(raw)
    assert str(caught.value).startswith(message), str(caught.value)


def test_tiers_keep_their_order_and_values(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(
        "model: digit-scenes\n"
        "tiers:\n"
        "  top: {utility: 1}\n"
        "  low: {sigma: 2, rate_limit: '120/m', max_items: 4, focus: false}\n"
    )
    config = ServiceConfig.load(path)
    assert config.model == "digit-scenes" and config.base_dir == tmp_path
    top, low = config.tiers
    assert (top.name, top.utility, top.sigma, top.focus) == ("top", 1.0, None, True)
    assert (low.name, low.sigma, low.max_items, low.focus) == ("low", 2.0, 4, False)
    assert low.rate_limit == RateLimit(rate=2.0, burst=2.0)
    assert [t.name for t in ServiceConfig().tiers] == ["gold", "silver", "bronze"]


def test_a_missing_or_broken_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        ServiceConfig.load(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("tiers: [")
    with pytest.raises(ConfigError, match="not valid YAML"):
        ServiceConfig.load(tmp_path / "bad.yaml")
