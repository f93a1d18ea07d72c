"""Error answers and transport failures become the documented exception tree."""

from __future__ import annotations

import logging
import pickle

import aim_client
import httpx
import pytest
from aim_client import (
    AimError,
    APIError,
    AuthenticationError,
    BadRequestError,
    InvalidResponseError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RateLimitError,
    ServerError,
    ServiceUnavailableError,
)

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("status", "error_class"),
    [
        (401, AuthenticationError),
        (403, PermissionDeniedError),
        (413, PayloadTooLargeError),
        (422, BadRequestError),
        (400, BadRequestError),
        (404, BadRequestError),
        (429, RateLimitError),
        (500, ServerError),
        (503, ServiceUnavailableError),
    ],
)
def test_each_status_raises_its_error_class(make_aim, server, error, status, error_class):
    server.reply(
        error(status, code="the_code", message="the message", headers={"X-Request-ID": "rid-7"})
    )
    aim = make_aim(max_retries=0)

    with pytest.raises(error_class) as caught:
        aim.predict([[1, 2]])

    err = caught.value
    assert isinstance(err, APIError)
    assert isinstance(err, AimError)
    assert (err.status, err.code, err.message, err.request_id) == (
        status,
        "the_code",
        "the message",
        "rid-7",
    )
    assert "the message" in str(err)
    assert "rid-7" in str(err)


def test_service_unavailable_is_a_server_error():
    assert issubclass(ServiceUnavailableError, ServerError)


def test_unprocessable_input_names_the_field(aim, server, error):
    server.reply(error(422, code="invalid_input", message="expected 8x8", field="inputs[0]"))

    with pytest.raises(BadRequestError) as caught:
        aim.predict([[1, 2]])

    assert caught.value.field == "inputs[0]"
    assert "inputs[0]" in str(caught.value)


@pytest.mark.parametrize(
    ("status", "error_class"), [(429, RateLimitError), (503, ServiceUnavailableError)]
)
def test_retry_after_is_carried_by_the_error(make_aim, server, error, status, error_class):
    server.reply(error(status, headers={"Retry-After": "1.5"}))
    aim = make_aim(max_retries=0)

    with pytest.raises(error_class) as caught:
        aim.predict([[1, 2]])

    assert caught.value.retry_after == 1.5


def test_retry_after_may_be_an_http_date(make_aim, server, error):
    server.reply(error(429, headers={"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}))
    aim = make_aim(max_retries=0)

    with pytest.raises(RateLimitError) as caught:
        aim.predict([[1, 2]])

    assert caught.value.retry_after == 0.0  # a date in the past means "now"


def test_error_without_retry_after_has_none(make_aim, server, error):
    server.reply(error(503))
    aim = make_aim(max_retries=0)

    with pytest.raises(ServiceUnavailableError) as caught:
        aim.predict([[1, 2]])

    assert caught.value.retry_after is None


def test_error_body_that_is_not_json_still_maps_by_status(make_aim, server):
    server.reply(httpx.Response(502, text="<html>Bad Gateway</html>"))
    aim = make_aim(max_retries=0)

    with pytest.raises(ServerError) as caught:
        aim.predict([[1, 2]])

    assert caught.value.status == 502
    assert caught.value.code == "http_502"
    assert "Bad Gateway" in caught.value.message


def test_framework_validation_errors_are_read_too(aim, server):
    # A route's own validation (FastAPI's shape) still yields a field in the contract's notation.
    detail = [{"loc": ["body", "inputs", 0], "msg": "Input should be a valid list"}]
    server.reply(httpx.Response(422, json={"detail": detail}))

    with pytest.raises(BadRequestError) as caught:
        aim.predict([[1, 2]])

    assert caught.value.field == "inputs[0]"
    assert caught.value.message == "Input should be a valid list"


def test_success_that_is_not_json_raises_invalid_response(aim, server):
    server.reply(httpx.Response(200, text="not json"))

    with pytest.raises(InvalidResponseError):
        aim.predict([[1, 2]])


def test_success_missing_contract_fields_raises_invalid_response(aim, server):
    server.reply(httpx.Response(200, json={"model": "digits", "tier": "silver"}))

    with pytest.raises(InvalidResponseError, match="predictions"):
        aim.predict([[1, 2]])


def test_read_timeout_maps_to_timeout_error_without_retry(aim, server, sleeps):
    server.reply(httpx.ReadTimeout)

    with pytest.raises(aim_client.TimeoutError) as caught:
        aim.predict([[1, 2]])

    assert isinstance(caught.value, AimError)
    assert isinstance(caught.value.__cause__, httpx.ReadTimeout)
    assert len(server.requests) == 1
    assert sleeps == []


def test_connect_timeout_is_retried_then_maps_to_timeout_error(aim, server, sleeps):
    server.reply(httpx.ConnectTimeout)

    with pytest.raises(aim_client.TimeoutError):
        aim.predict([[1, 2]])

    assert len(server.requests) == 3
    assert len(sleeps) == 2


def test_connect_error_is_retried_then_maps_to_connection_error(aim, server, sleeps):
    server.reply(httpx.ConnectError)

    with pytest.raises(aim_client.ConnectionError) as caught:
        aim.predict([[1, 2]])

    assert isinstance(caught.value.__cause__, httpx.ConnectError)
    assert len(server.requests) == 3
    assert len(sleeps) == 2


def test_transport_errors_are_not_the_builtins():
    # `except TimeoutError` in user code must not silently catch ours, nor ours theirs.
    assert not issubclass(aim_client.TimeoutError, TimeoutError)
    assert not issubclass(aim_client.ConnectionError, ConnectionError)


def test_errors_survive_pickling():
    err = RateLimitError("slow down", status=429, code="rate_limited", retry_after=2.0)

    copy = pickle.loads(pickle.dumps(err))

    assert type(copy) is RateLimitError
    assert (copy.status, copy.code, copy.message, copy.retry_after) == (
        429,
        "rate_limited",
        "slow down",
        2.0,
    )


# --- the API key never leaks -------------------------------------------------------------------


def test_repr_hides_the_key(aim, api_key):
    assert api_key not in repr(aim.client)
    assert "***" in repr(aim.client)
    assert api_key not in repr(vars(aim.client))


def test_key_echoed_by_the_server_is_redacted_from_errors(aim, server, error, api_key):
    server.reply(error(401, message=f"unknown key {api_key}", field=api_key))

    with pytest.raises(AuthenticationError) as caught:
        aim.predict([[1, 2]])

    err = caught.value
    for text in (str(err), repr(err), err.message, err.field or ""):
        assert api_key not in text


def test_key_is_not_in_transport_errors_nor_logs(make_aim, server, api_key, caplog):
    server.reply(httpx.ConnectError)
    aim = make_aim(max_retries=1)

    with caplog.at_level(logging.DEBUG), pytest.raises(aim_client.ConnectionError) as caught:
        aim.predict([[1, 2]])

    assert api_key not in str(caught.value)
    assert "retry 1 of 1" in caplog.text
    assert api_key not in caplog.text
