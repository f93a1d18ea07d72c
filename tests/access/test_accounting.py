"""Quotas, usage metering and the admin routes, in process (the shared-state variants run against
a real Redis in tests/integration/test_scale_out.py)."""

from __future__ import annotations

import math
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.access.quotas import Quota, QuotaError
from service.access.usage import parse_time
from service.cli.main import main
from service.config import ConfigError, ServiceConfig
from tests.conftest import DIGITS_CONFIG, ClientFactory

pytestmark = pytest.mark.unit

ZERO = [[0.0] * 8 for _ in range(8)]
ADMIN = "admin-token-for-tests"
QUOTA_CONFIG: dict[str, Any] = {
    "model": "digits",
    "tiers": {**DIGITS_CONFIG["tiers"], "silver": {"utility": 0.85, "quota": "5/h"}},
}


def post(client: TestClient, key: str, inputs: int = 1, **headers: str) -> Any:
    return client.post(
        "/predict", json={"inputs": [ZERO] * inputs}, headers={"X-API-Key": key, **headers}
    )


def usage(client: TestClient, **params: str) -> dict[str, dict[str, Any]]:
    r = client.get("/admin/usage", params=params, headers={"Authorization": f"Bearer {ADMIN}"})
    assert r.status_code == 200, r.text
    return {f"{row['account']}/{row['tier']}": row for row in r.json()["accounts"]}


# --- quotas -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "period"), [("500/h", "h"), ("10000/day", "day"), ("7/month", "month")]
)
def test_quota_parses(text: str, period: str) -> None:
    assert Quota.parse(text, "q").period == period


@pytest.mark.parametrize("text", ["10/s", "0/day", "ten/day", "5", 5])
def test_bad_quota_names_the_field(text: object) -> None:
    with pytest.raises(QuotaError, match=r"tiers\.bronze\.quota"):
        Quota.parse(text, "tiers.bronze.quota")
    with pytest.raises(ConfigError, match=r"tiers\.bronze\.quota"):
        ServiceConfig.from_dict({"tiers": {"bronze": {"sigma": 1.0, "quota": text}}})


def test_quota_windows_are_utc_calendar_windows() -> None:
    at = datetime(2026, 12, 31, 22, 30, tzinfo=timezone.utc).timestamp()
    stamp = lambda *a: datetime(*a, tzinfo=timezone.utc).timestamp()  # noqa: E731
    assert Quota(1, "h").window(at) == (stamp(2026, 12, 31, 22), stamp(2026, 12, 31, 23))
    assert Quota(1, "day").window(at) == (stamp(2026, 12, 31), stamp(2027, 1, 1))
    assert Quota(1, "month").window(at) == (stamp(2026, 12, 1), stamp(2027, 1, 1))


def test_past_the_quota_is_429_quota_exceeded_until_the_window_ends(
    make_client: ClientFactory, api_keys: dict[str, str]
) -> None:
    with make_client(QUOTA_CONFIG) as client:
        statuses = [post(client, api_keys["silver"], inputs=2).status_code for _ in range(3)]
        # 2 + 2 items are under 5, the third request is admitted at 4 and served in full.
        assert statuses == [200, 200, 200]
        refused = post(client, api_keys["silver"])
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "quota_exceeded"
        _, end = Quota(5, "h").window(time.time())
        retry = int(refused.headers["Retry-After"])
        assert 1 <= retry <= math.ceil(end - time.time()) + 1
        # Other tiers have no quota; lowering a gold key to silver bills that same account's
        # silver quota only, and gold itself is not limited.
        assert post(client, api_keys["gold"]).status_code == 200


def test_a_restart_keeps_usage_and_the_quota_used(
    make_client: ClientFactory, api_keys: dict[str, str], tmp_path: Path
) -> None:
    with make_client(QUOTA_CONFIG, state_dir=tmp_path, admin_token=ADMIN) as client:
        for _ in range(3):
            assert post(client, api_keys["silver"], inputs=2).status_code == 200
    with make_client(QUOTA_CONFIG, state_dir=tmp_path, admin_token=ADMIN) as client:
        row = usage(client)["test-silver/silver"]
        assert (row["requests"], row["items"]) == (3, 6)
        assert post(client, api_keys["silver"]).json()["error"]["code"] == "quota_exceeded"


# --- usage --------------------------------------------------------------------------------------


def test_usage_counts_2xx_work_and_errors_per_account_and_tier(
    make_client: ClientFactory, api_keys: dict[str, str]
) -> None:
    with make_client(admin_token=ADMIN) as client:
        ok = [post(client, api_keys["gold"], inputs=n).status_code for n in (1, 2, 3)]
        lowered = post(client, api_keys["gold"], inputs=2, **{"X-AIM-Tier": "bronze"})
        bad = client.post("/predict", json={"inputs": []}, headers={"X-API-Key": api_keys["gold"]})
        unknown = post(client, "aim_not-a-key")
        assert ok == [200] * 3 and lowered.status_code == 200
        assert bad.status_code == 422 and unknown.status_code == 401
        rows = usage(client)
    assert rows["test-gold/gold"] == {
        "account": "test-gold",
        "tier": "gold",
        "requests": 3,
        "items": 6,
        "tokens": 0,
        "errors": 1,
    }
    assert rows["test-gold/bronze"]["requests"] == 1  # billed at the tier served
    assert rows["test-gold/bronze"]["items"] == 2
    assert not any(key.startswith("aim_") for key in rows)


def test_usage_since_and_until_select_minutes(
    make_client: ClientFactory, api_keys: dict[str, str]
) -> None:
    with make_client(admin_token=ADMIN) as client:
        assert post(client, api_keys["silver"]).status_code == 200
        now = time.time()
        assert usage(client, since=str(now - 120))["test-silver/silver"]["requests"] == 1
        assert usage(client, until=str(now - 120)) == {}
        iso = datetime.fromtimestamp(now + 120, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        assert usage(client, since=iso) == {}
        bad = client.get(
            "/admin/usage",
            params={"since": "yesterday"},
            headers={"Authorization": f"Bearer {ADMIN}"},
        )
        assert bad.status_code == 422 and bad.json()["error"]["field"] == "since"


def test_admin_routes_need_the_admin_token(
    make_client: ClientFactory, api_keys: dict[str, str]
) -> None:
    with make_client(admin_token=ADMIN) as client:
        assert client.get("/admin/usage").status_code == 401
        key_only = client.get("/admin/usage", headers={"X-API-Key": api_keys["gold"]})
        assert key_only.status_code == 401
        as_bearer = client.get(
            "/admin/usage", headers={"Authorization": f"Bearer {api_keys['gold']}"}
        )
        assert as_bearer.status_code == 403
        wrong = client.get("/admin/usage", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 403
    with make_client() as client:  # no admin token: the admin routes do not exist
        r = client.get("/admin/usage", headers={"Authorization": f"Bearer {ADMIN}"})
        assert r.status_code == 404
        assert "/admin/usage" not in client.get("/openapi.json").text


def test_aim_usage_prints_the_stored_usage_as_csv(
    make_client: ClientFactory,
    api_keys: dict[str, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with make_client(state_dir=tmp_path) as client:
        for n in (1, 4):
            assert post(client, api_keys["bronze"], inputs=n).status_code == 200
    assert main(["usage", "--state-dir", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["account,tier,requests,items,tokens,errors", "test-bronze,bronze,2,5,0,0"]
    assert main(["usage", "--state-dir", str(tmp_path), "--since", "2999-01-01"]) == 0
    assert capsys.readouterr().out.splitlines() == ["account,tier,requests,items,tokens,errors"]
    assert main(["usage", "--state-dir", str(tmp_path), "--until", "soon"]) == 2
    assert "--until" in capsys.readouterr().err


def test_parse_time_reads_unix_seconds_and_iso() -> None:
    assert parse_time("1700000000", "t") == 1700000000.0
    assert parse_time("2026-12-01T00:00:00Z", "t") == parse_time("2026-12-01", "t")
    with pytest.raises(ValueError, match="since"):
        parse_time("noon", "since")


def test_generation_usage_and_quota_count_generated_tokens(
    make_client: ClientFactory, api_keys: dict[str, str], tiny_lm_dir: Path
) -> None:
    model = {"task": "generation", "loader": "huggingface", "path": str(tiny_lm_dir)}
    tiers = {"gold": {"utility": 1.0}, "silver": {"sigma": 1.0, "quota": "1/day"}}
    config = {"model": model, "tiers": {**tiers, "bronze": {"sigma": 2.0}, "trial": {"sigma": 3.0}}}
    body = {"prompt": "the cow says", "max_new_tokens": 6}
    with make_client(config, admin_token=ADMIN) as client:
        gold = {"X-API-Key": api_keys["gold"]}
        answer = client.post("/predict", json=body, headers=gold).json()
        with client.stream("POST", "/predict", json={**body, "stream": True}, headers=gold) as r:
            streamed = [line for line in r.iter_lines() if line.startswith('data: {"token"')]
        silver = {"X-API-Key": api_keys["silver"]}
        first = client.post("/predict", json=body, headers=silver).json()
        refused = client.post("/predict", json=body, headers=silver)
        rows = usage(client)
    gold_row = rows["test-gold/gold"]
    generated = len(answer["tokens"]) + len(streamed)
    assert (gold_row["requests"], gold_row["items"], gold_row["tokens"]) == (2, 2, generated)
    # The quota counts generated tokens: the first answer used up "1/day".
    assert len(first["tokens"]) >= 1
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "quota_exceeded"
    assert rows["test-silver/silver"]["tokens"] == len(first["tokens"])
