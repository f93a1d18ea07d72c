"""Exact billing (issue 23): quotas reserved before serving and settled after, one charge across
a window boundary, idempotent usage flushes against a real `redis-server`, expiring usage keys,
and no bill for a client that went away mid-upload."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis as redis_client

from service.access import accounting as accounting_module
from service.access.accounting import Accounting
from service.access.keys import create_key
from service.access.sharedstate import RedisState, StateDown
from service.config import ServiceConfig
from service.errors import QuotaExceeded
from service.settings import Settings
from tests.integration.conftest import free_port, start_server, stop_server
from tests.integration.test_scale_out import Redis

pytestmark = pytest.mark.integration

TIERS = ServiceConfig.from_dict(
    {"model": "digits", "tiers": {"gold": {"utility": 1.0, "quota": "5/h"}}}
).tiers


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    server = Redis(f"redis://127.0.0.1:{port}/0", port, tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


def accounting(redis_url: str | None = None) -> Accounting:
    settings = Settings(redis_url=redis_url) if redis_url else Settings()
    return Accounting(settings, TIERS)


def _flush_redis(url: str) -> None:
    redis_client.Redis.from_url(url).flushall()


@pytest.mark.parametrize("shared", [False, True], ids=["in-process", "redis"])
async def test_concurrent_requests_cannot_overshoot_the_quota(shared: bool, redis_url: str) -> None:
    """8 requests of one item at once against a quota of 5 items: 5 served, 3 refused (two
    replicas sharing Redis count as one)."""
    if shared:
        _flush_redis(redis_url)
    replicas = [accounting(redis_url if shared else None) for _ in range(2 if shared else 1)]

    async def request(i: int) -> bool:
        acc = replicas[i % len(replicas)]
        try:
            reservation = await acc.admit("acct", "gold", None, 1)
        except QuotaExceeded:
            return False
        await asyncio.sleep(0.01)  # served meanwhile: the others are admitted concurrently
        acc.record("acct", "gold", 200, 1, 0, 1, reservation)
        return True

    served = await asyncio.gather(*(request(i) for i in range(8)))
    assert sum(served) == 5
    for acc in replicas:
        await acc.stop()


@pytest.mark.parametrize("shared", [False, True], ids=["in-process", "redis"])
async def test_a_failed_request_gets_its_reservation_back(shared: bool, redis_url: str) -> None:
    if shared:
        _flush_redis(redis_url)
    acc = accounting(redis_url if shared else None)
    for _ in range(6):  # six failures in a row use nothing of a quota of 5
        reservation = await acc.admit("acct", "gold", None, 1)
        acc.record("acct", "gold", 500, 1, 0, 1, reservation)
        await asyncio.gather(*acc._pending)
    assert await acc.admit("acct", "gold", None, 5) is not None
    await acc.stop()


@pytest.mark.parametrize("shared", [False, True], ids=["in-process", "redis"])
async def test_a_request_answered_after_the_window_rolls_over_is_charged_once(
    shared: bool, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if shared:
        _flush_redis(redis_url)
    acc = accounting(redis_url if shared else None)
    quota = acc.quotas["gold"]
    start, end = quota.window(time.time())
    clock = [end - 0.5]
    monkeypatch.setattr(accounting_module.time, "time", lambda: clock[0])
    reservation = await acc.admit("acct", "gold", None, 4)  # admitted in the old window
    clock[0] = end + 0.5  # answered in the new one
    acc.record("acct", "gold", 200, 4, 0, 4, reservation)
    await asyncio.gather(*acc._pending)
    if shared:
        assert acc.redis is not None
        assert await acc.redis.used("acct", "gold", start) == 4
        assert await acc.redis.used("acct", "gold", end) == 0
    else:
        assert acc.local_quota.used("acct", "gold", end) == 0
    # The whole quota of the new window is there: 5 more one-item requests, the 6th refused.
    for _ in range(5):
        r = await acc.admit("acct", "gold", None, 1)
        acc.record("acct", "gold", 200, 1, 0, 1, r)
    with pytest.raises(QuotaExceeded):
        await acc.admit("acct", "gold", None, 1)
    rows = await acc.usage(None, None)
    assert [(r["requests"], r["items"]) for r in rows] == [(6, 9)]
    await acc.stop()


async def test_a_retried_flush_is_counted_once_and_usage_keys_expire(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis applies a flush but the answer times out: the retry carries the same flush id and
    adds nothing."""
    _flush_redis(redis_url)
    acc = accounting(redis_url)
    assert acc.redis is not None
    real = RedisState.add_usage
    calls: list[str] = []

    async def applied_then_timed_out(self: RedisState, rows: Any, flush_id: str, *a: Any) -> bool:
        calls.append(flush_id)
        result = await real(self, rows, flush_id, *a)
        if len(calls) == 1:
            raise StateDown("usage: Redis failed: TimeoutError")
        return result

    monkeypatch.setattr(RedisState, "add_usage", applied_then_timed_out)
    acc.record("acct", "gold", 200, 3, 0, 3)
    await acc.flush()  # applied, but reported as failed: kept
    assert acc._unsent
    await acc.flush()  # retried with the same id
    assert len(calls) == 2 and calls[0] == calls[1] and not acc._unsent
    rows = await acc.usage(None, None)
    assert [(r["requests"], r["items"]) for r in rows] == [(1, 3)]
    direct = redis_client.Redis.from_url(redis_url)
    keys = [k.decode() for k in direct.keys("aim:usage:*") if k != b"aim:usage:minutes"]
    assert keys and all(direct.ttl(k) > 0 for k in keys)  # expire after the retention
    await acc.stop()


def test_a_client_gone_mid_upload_is_not_billed(tmp_path: Path) -> None:
    from tests.integration.conftest import CONFIG

    keys_file = tmp_path / "keys.yaml"
    _, key = create_key(keys_file, "gold", "uploader")
    env = {"AIM_ADMIN_TOKEN": "admin-token", "AIM_STATE_DIR": str(tmp_path / "state")}
    server = start_server(tmp_path, CONFIG, keys_file, env)
    try:
        port = int(server.url.rsplit(":", 1)[1])
        body = b'{"inputs": [[[0, 0, 5, 13, 9, 1, 0, 0]]]}'
        head = (
            f"POST /predict HTTP/1.1\r\nHost: aim\r\nX-API-Key: {key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body) + 100}\r\n\r\n"
        )
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", port)) as s:
                s.sendall(head.encode() + body)  # 100 bytes short, then gone
        ok = httpx.post(
            server.url + "/predict",
            json={"inputs": [[[0] * 8] * 8]},
            headers={"X-API-Key": key},
            timeout=30,
        )
        assert ok.status_code == 200
        admin = {"Authorization": "Bearer admin-token"}
        deadline = time.monotonic() + 20
        rows: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            rows = httpx.get(server.url + "/admin/usage", headers=admin, timeout=10).json()[
                "accounts"
            ]
            if rows:
                break
            time.sleep(0.2)
    finally:
        stop_server(server)
    assert [(r["requests"], r["errors"]) for r in rows] == [(1, 0)]
