"""The retry policy: 429/502/503/504 and failed connects are retried with backoff, honouring
`Retry-After`; everything else is raised at once."""

from __future__ import annotations

import httpx
import pytest
from aim_client import (
    AuthenticationError,
    BadRequestError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RateLimitError,
    ServerError,
    ServiceUnavailableError,
)

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("status", [429, 503])
def test_retry_waits_out_retry_after_then_succeeds(
    aim, server, error, ok_classification, sleeps, status
):
    server.reply(error(status, headers={"Retry-After": "2"}), ok_classification)

    result = aim.predict([[1, 2]])

    assert result[0].label == "3"
    assert sleeps == [2.0]
    assert len(server.requests) == 2


def test_retries_resend_the_same_request(aim, server, error, ok_classification):
    server.reply(error(429, headers={"Retry-After": "0"}), ok_classification)

    aim.predict([[1, 2]], tier="bronze", top_k=2)

    first, second = server.requests
    assert first.content == second.content
    assert first.headers == second.headers


def test_backoff_without_retry_after_doubles_with_jitter(make_aim, server, error, sleeps):
    server.reply(error(503))
    aim = make_aim(max_retries=3)
    aim.client._random = lambda: 1.0  # the top of the jitter range

    with pytest.raises(ServiceUnavailableError):
        aim.predict([[1, 2]])

    assert sleeps == [0.5, 1.0, 2.0]


def test_jitter_stays_within_half_to_full_backoff(make_aim, server, error, sleeps):
    server.reply(error(429))
    aim = make_aim(max_retries=2)
    aim.client._random = lambda: 0.0

    with pytest.raises(RateLimitError):
        aim.predict([[1, 2]])

    assert sleeps == [0.25, 0.5]


@pytest.mark.parametrize("max_retries", [0, 1, 4])
def test_gives_up_after_max_retries(make_aim, server, error, sleeps, max_retries):
    server.reply(error(429, headers={"Retry-After": "1"}))
    aim = make_aim(max_retries=max_retries)

    with pytest.raises(RateLimitError) as caught:
        aim.predict([[1, 2]])

    assert len(server.requests) == max_retries + 1
    assert sleeps == [1.0] * max_retries
    assert caught.value.retry_after == 1.0


def test_default_is_two_retries(aim, server, error, sleeps):
    server.reply(error(503, headers={"Retry-After": "0.1"}))

    with pytest.raises(ServiceUnavailableError):
        aim.predict([[1, 2]])

    assert len(server.requests) == 3


@pytest.mark.parametrize(
    ("status", "error_class"),
    [
        (400, BadRequestError),
        (401, AuthenticationError),
        (403, PermissionDeniedError),
        (413, PayloadTooLargeError),
        (422, BadRequestError),
        (500, ServerError),
    ],
)
def test_other_errors_are_never_retried(aim, server, error, sleeps, status, error_class):
    # Retry-After on these is ignored: the same request would fail the same way.
    server.reply(error(status, headers={"Retry-After": "1"}))

    with pytest.raises(error_class):
        aim.predict([[1, 2]])

    assert len(server.requests) == 1
    assert sleeps == []


@pytest.mark.parametrize("status", [502, 504])
def test_gateway_errors_are_retried(aim, server, error, ok_classification, sleeps, status):
    server.reply(error(status), ok_classification)

    aim.predict([[1, 2]])

    assert len(server.requests) == 2
    assert len(sleeps) == 1


def test_retry_after_beyond_the_cap_is_left_to_the_caller(aim, server, error, sleeps):
    server.reply(error(429, headers={"Retry-After": "3600"}))

    with pytest.raises(RateLimitError) as caught:
        aim.predict([[1, 2]])

    assert caught.value.retry_after == 3600.0
    assert len(server.requests) == 1
    assert sleeps == []


def test_connect_error_then_success(aim, server, ok_classification, sleeps):
    server.reply(httpx.ConnectError, ok_classification)

    assert aim.predict([[1, 2]])[0].index == 3
    assert len(sleeps) == 1


def test_model_info_is_retried_too(aim, server, error, sleeps):
    model = {"name": "digits", "task": "classification", "labels": [], "tiers": ["silver"]}
    server.reply(error(503, headers={"Retry-After": "1"}), httpx.Response(200, json=model))

    assert aim.model_info().name == "digits"
    assert sleeps == [1.0]
