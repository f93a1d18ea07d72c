"""The aim-client SDK against a real server: answers, tiers, and the error tree."""

from __future__ import annotations

import pytest
from aim_client import (
    AimClient,
    AsyncAimClient,
    AuthenticationError,
    BadRequestError,
    PayloadTooLargeError,
    PermissionDeniedError,
)

from .conftest import LiveServer

pytestmark = pytest.mark.integration

DIGIT = [[0.0, 0, 5, 13, 9, 1, 0, 0]] + [[0.0] * 8] * 7


def test_sync_client_predicts_and_reports_the_tier(live_server: LiveServer) -> None:
    with AimClient(live_server.url, api_key=live_server.keys["gold"][0]) as client:
        assert client.health() and client.ready()
        info = client.model_info()
        assert info.name == "digits" and info.tiers == ("gold", "silver", "bronze")
        result = client.predict([DIGIT, DIGIT], top_k=2)
        assert len(result) == 2 and len(result[0].top_k) == 2
        assert client.predict([DIGIT], tier="bronze").tier == "bronze"


async def test_async_client_gets_what_the_sync_client_gets(live_server: LiveServer) -> None:
    key = live_server.keys["silver"][0]
    with AimClient(live_server.url, api_key=key) as client:
        expected = client.predict([DIGIT])
    async with AsyncAimClient(live_server.url, api_key=key) as aclient:
        got = await aclient.predict([DIGIT])
    assert got == expected


def test_errors_map_to_the_tree(live_server: LiveServer) -> None:
    with (
        AimClient(live_server.url, api_key="aim_unknown", max_retries=0) as client,
        pytest.raises(AuthenticationError),
    ):
        client.predict([DIGIT])
    with AimClient(live_server.url, api_key=live_server.keys["bronze"][0]) as client:
        with pytest.raises(PermissionDeniedError):
            client.predict([DIGIT], tier="gold")
        with pytest.raises(BadRequestError) as err:
            client.predict([DIGIT, [[1.0]]])
        assert err.value.field is not None and err.value.field.startswith("inputs[1]")
        with pytest.raises(PayloadTooLargeError):
            client.predict([DIGIT] * 65)
