"""The async SDK in process against the real app, through httpx's ASGITransport."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from aim_client import AsyncAimClient, PermissionDeniedError, RateLimitError

from service.access.keys import KeyStore
from service.api.app import create_app
from service.config import ServiceConfig
from service.settings import Settings

pytestmark = pytest.mark.unit

DIGIT = [[0.0, 0, 5, 13, 9, 1, 0, 0]] + [[0.0] * 8] * 7


async def test_async_client_against_the_app(
    key_store: KeyStore, api_keys: dict[str, str], cache_dir: Path
) -> None:
    from tests.conftest import DIGITS_CONFIG, TEST_SECRET

    app = create_app(
        Settings(cache_dir=cache_dir, device="cpu"),
        ServiceConfig.from_dict(DIGITS_CONFIG),
        key_store,
        secret=TEST_SECRET,
    )
    async with app.router.lifespan_context(app):
        state = app.state.aim
        await asyncio.wait_for(state.ready.wait(), 120)
        transport = httpx.ASGITransport(app=app)
        async with AsyncAimClient(
            "http://aim.test", api_key=api_keys["silver"], transport=transport
        ) as client:
            assert await client.ready()
            info = await client.model_info()
            assert info.tiers == ("silver", "bronze", "trial")
            result = await client.predict([DIGIT, DIGIT], top_k=2)
            assert result.tier == "silver" and len(result) == 2
            with pytest.raises(PermissionDeniedError):
                await client.predict([DIGIT], tier="gold")
        async with AsyncAimClient(
            "http://aim.test", api_key=api_keys["trial"], transport=transport, max_retries=0
        ) as trial:
            with pytest.raises(RateLimitError) as err:
                for _ in range(5):
                    await trial.predict([DIGIT])
            assert err.value.retry_after is not None and err.value.retry_after >= 1
