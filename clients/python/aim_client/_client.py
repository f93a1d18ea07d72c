"""`AimClient` and `AsyncAimClient`: twins over `BaseAimClient` that only send, sleep and read."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Generator
from types import TracebackType

import httpx

from ._base import (
    DEFAULT_MAX_RETRIES,
    DEFAULT_TIMEOUT,
    EVENT_STREAM,
    USER_AGENT,
    BaseAimClient,
)
from ._inputs import FocusArg, Inputs
from ._streaming import AsyncStream, EventReader, Stream
from ._types import (
    GenerationResult,
    ModelInfo,
    PredictResult,
    StreamEvent,
    parse_generation_result,
    parse_model_info,
    parse_predict_result,
)

__all__ = ["AimClient", "AsyncAimClient"]


class AimClient(BaseAimClient):
    """A client for one AIM server.

    Args:
        base_url: where the server listens, e.g. `http://127.0.0.1:8000`.
        api_key: the key sent as `X-API-Key`; defaults to the `AIM_API_KEY` environment variable.
            It never appears in `repr`, logs or error messages.
        tier: the tier to ask for (`X-AIM-Tier`) when a call names none; None uses the key's own.
            A request may lower the tier below the key's, never raise it.
        timeout: seconds to wait for the server (connect, read, write), or an `httpx.Timeout`.
        max_retries: how many times a call is retried after a 429, 502, 503 or 504 answer or a
            failure to connect, with exponential backoff and jitter, waiting out `Retry-After`
            when the server sends one. Other errors are raised at once.
        transport: an `httpx.BaseTransport` to send requests through, such as
            `httpx.MockTransport` or `httpx.WSGITransport` for tests.

    Use it as a context manager, or call `close()`, to release its connections.
    """

    def __init__(
        self,
        base_url: str | httpx.URL,
        *,
        api_key: str | None = None,
        tier: str | None = None,
        timeout: float | httpx.Timeout | None = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(
            base_url, api_key=api_key, tier=tier, timeout=timeout, max_retries=max_retries
        )
        self._http = httpx.Client(
            base_url=self._base_url,
            timeout=self._timeout,
            transport=transport,
            headers={"User-Agent": USER_AGENT},
        )
        self._sleep: Callable[[float], None] = time.sleep

    # --- calls ---------------------------------------------------------------------------------

    def predict(
        self,
        inputs: Inputs,
        *,
        tier: str | None = None,
        focus: FocusArg | None = None,
        top_k: int | None = None,
    ) -> PredictResult:
        """Classify or segment a batch of inputs (`POST /predict`); one prediction per input.

        `inputs` is a list of nested numeric lists, arrays with `.tolist()`, PNG/JPEG bytes or
        image paths (a single image may be passed alone); `focus` is one `Focus` or a list.
        """
        body = self._predict_body(inputs, focus=focus, top_k=top_k, tier=tier)
        response = self._send("POST", "/predict", body=body, tier=tier)
        return parse_predict_result(self._json(response), request_id=self._request_id(response))

    def generate(
        self,
        prompt: str,
        *,
        max_new_tokens: int = 32,
        temperature: float = 0.0,
        top_p: float = 1.0,
        focus: FocusArg | None = None,
        tier: str | None = None,
    ) -> GenerationResult:
        """Generate text from `prompt` (`POST /predict` on a generation model), all at once."""
        body = self._generate_body(
            prompt,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            focus=focus,
            tier=tier,
            stream=False,
        )
        response = self._send("POST", "/predict", body=body, tier=tier)
        return parse_generation_result(self._json(response), request_id=self._request_id(response))

    def stream(
        self,
        prompt: str,
        *,
        max_new_tokens: int = 32,
        temperature: float = 0.0,
        top_p: float = 1.0,
        focus: FocusArg | None = None,
        tier: str | None = None,
    ) -> Stream:
        """Generate text token by token: an iterator of `StreamEvent`, the last one final.

        Arguments are checked now; the request is sent when iteration starts. Use
        `with client.stream(...) as events:` to release the connection if you stop early.
        """
        body = self._generate_body(
            prompt,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            focus=focus,
            tier=tier,
            stream=True,
        )
        return Stream(self._events(body, tier))

    def model_info(self, *, tier: str | None = None) -> ModelInfo:
        """The served model: task, labels, input spec and the tiers this key may use."""
        response = self._send("GET", "/model", tier=tier)
        return parse_model_info(self._json(response))

    def health(self) -> bool:
        """Whether the server process is up (`GET /healthz`); False when it cannot be reached."""
        return self._probe("/healthz")

    def ready(self) -> bool:
        """Whether the server can take predictions (`GET /readyz`); False while it cannot."""
        return self._probe("/readyz")

    # --- lifecycle -----------------------------------------------------------------------------

    def close(self) -> None:
        """Release the client's connections."""
        self._http.close()

    def __enter__(self) -> AimClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- sending -------------------------------------------------------------------------------

    def _send(
        self,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        tier: str | None = None,
        stream: bool = False,
    ) -> httpx.Response:
        """Send with retries; return a successful response or raise the mapped error.

        With `stream=True` the successful response's body is left unread for the caller.
        """
        accept = EVENT_STREAM if stream else "application/json"
        attempt = 0
        while True:
            kwargs = self._request_kwargs(method, path, body=body, tier=tier, accept=accept)
            request = self._http.build_request(**kwargs)
            response: httpx.Response | None = None
            try:
                response = self._http.send(request, stream=stream)
                if not response.is_success and stream:
                    response.read()
            except httpx.RequestError as exc:
                if response is not None:  # the error body of a stream failed to arrive
                    response.close()
                delay = self._delay_after_transport_error(exc, attempt)
                if delay is None:
                    raise self._transport_error(exc, request) from exc
                reason = type(exc).__name__
            else:
                if response.is_success:
                    return response
                response.close()
                delay = self._delay_after_response(response, attempt)
                if delay is None:
                    raise self._api_error(response)
                reason = f"HTTP {response.status_code}"
            self._log_retry(request, reason, delay, attempt)
            self._sleep(delay)
            attempt += 1

    def _events(self, body: bytes, tier: str | None) -> Generator[StreamEvent, None, None]:
        response = self._send("POST", "/predict", body=body, tier=tier, stream=True)
        try:
            if not self._is_event_stream(response):  # a server that answered all at once
                response.read()
                result = parse_generation_result(self._json(response))
                yield StreamEvent(text=result.text, finish_reason=result.finish_reason or "stop")
                return
            reader = EventReader(status=response.status_code, request_id=self._request_id(response))
            for line in response.iter_lines():
                yield from reader.feed(line)
                if reader.done:
                    return
            yield from reader.close()
        except httpx.RequestError as exc:
            raise self._transport_error(exc, response.request) from exc
        finally:
            response.close()

    def _probe(self, path: str) -> bool:
        # One attempt, no retries: a probe answers "now", and 503 from /readyz means "not yet".
        request = self._http.build_request(**self._request_kwargs("GET", path))
        try:
            response = self._http.send(request)
        except httpx.TransportError:
            return False
        return response.is_success


class AsyncAimClient(BaseAimClient):
    """The asyncio twin of `AimClient`: the same arguments and calls, awaited.

    `transport` is an `httpx.AsyncBaseTransport` (`httpx.MockTransport`, `httpx.ASGITransport`).
    Use it with `async with`, or `await client.close()`.
    """

    def __init__(
        self,
        base_url: str | httpx.URL,
        *,
        api_key: str | None = None,
        tier: str | None = None,
        timeout: float | httpx.Timeout | None = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(
            base_url, api_key=api_key, tier=tier, timeout=timeout, max_retries=max_retries
        )
        self._http = httpx.AsyncClient(
            base_url=self._base_url,
            timeout=self._timeout,
            transport=transport,
            headers={"User-Agent": USER_AGENT},
        )
        self._sleep: Callable[[float], Awaitable[None]] = asyncio.sleep

    # --- calls ---------------------------------------------------------------------------------

    async def predict(
        self,
        inputs: Inputs,
        *,
        tier: str | None = None,
        focus: FocusArg | None = None,
        top_k: int | None = None,
    ) -> PredictResult:
        """Classify or segment a batch of inputs (`POST /predict`); see `AimClient.predict`."""
        body = self._predict_body(inputs, focus=focus, top_k=top_k, tier=tier)
        response = await self._send("POST", "/predict", body=body, tier=tier)
        return parse_predict_result(self._json(response), request_id=self._request_id(response))

    async def generate(
        self,
        prompt: str,
        *,
        max_new_tokens: int = 32,
        temperature: float = 0.0,
        top_p: float = 1.0,
        focus: FocusArg | None = None,
        tier: str | None = None,
    ) -> GenerationResult:
        """Generate text from `prompt`, all at once; see `AimClient.generate`."""
        body = self._generate_body(
            prompt,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            focus=focus,
            tier=tier,
            stream=False,
        )
        response = await self._send("POST", "/predict", body=body, tier=tier)
        return parse_generation_result(self._json(response), request_id=self._request_id(response))

    def stream(
        self,
        prompt: str,
        *,
        max_new_tokens: int = 32,
        temperature: float = 0.0,
        top_p: float = 1.0,
        focus: FocusArg | None = None,
        tier: str | None = None,
    ) -> AsyncStream:
        """Generate text token by token: an async iterator of `StreamEvent`, the last one final.

        Not a coroutine: `async with client.stream(...) as events: async for event in events:`.
        Arguments are checked now; the request is sent when iteration starts.
        """
        body = self._generate_body(
            prompt,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            focus=focus,
            tier=tier,
            stream=True,
        )
        return AsyncStream(self._events(body, tier))

    async def model_info(self, *, tier: str | None = None) -> ModelInfo:
        """The served model: task, labels, input spec and the tiers this key may use."""
        response = await self._send("GET", "/model", tier=tier)
        return parse_model_info(self._json(response))

    async def health(self) -> bool:
        """Whether the server process is up (`GET /healthz`); False when it cannot be reached."""
        return await self._probe("/healthz")

    async def ready(self) -> bool:
        """Whether the server can take predictions (`GET /readyz`); False while it cannot."""
        return await self._probe("/readyz")

    # --- lifecycle -----------------------------------------------------------------------------

    async def close(self) -> None:
        """Release the client's connections."""
        await self._http.aclose()

    async def aclose(self) -> None:
        """Alias of `close`, the name httpx uses."""
        await self.close()

    async def __aenter__(self) -> AsyncAimClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # --- sending -------------------------------------------------------------------------------

    async def _send(
        self,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        tier: str | None = None,
        stream: bool = False,
    ) -> httpx.Response:
        """Send with retries; see `AimClient._send`."""
        accept = EVENT_STREAM if stream else "application/json"
        attempt = 0
        while True:
            kwargs = self._request_kwargs(method, path, body=body, tier=tier, accept=accept)
            request = self._http.build_request(**kwargs)
            response: httpx.Response | None = None
            try:
                response = await self._http.send(request, stream=stream)
                if not response.is_success and stream:
                    await response.aread()
            except httpx.RequestError as exc:
                if response is not None:  # the error body of a stream failed to arrive
                    await response.aclose()
                delay = self._delay_after_transport_error(exc, attempt)
                if delay is None:
                    raise self._transport_error(exc, request) from exc
                reason = type(exc).__name__
            else:
                if response.is_success:
                    return response
                await response.aclose()
                delay = self._delay_after_response(response, attempt)
                if delay is None:
                    raise self._api_error(response)
                reason = f"HTTP {response.status_code}"
            self._log_retry(request, reason, delay, attempt)
            await self._sleep(delay)
            attempt += 1

    async def _events(self, body: bytes, tier: str | None) -> AsyncGenerator[StreamEvent, None]:
        response = await self._send("POST", "/predict", body=body, tier=tier, stream=True)
        try:
            if not self._is_event_stream(response):  # a server that answered all at once
                await response.aread()
                result = parse_generation_result(self._json(response))
                yield StreamEvent(text=result.text, finish_reason=result.finish_reason or "stop")
                return
            reader = EventReader(status=response.status_code, request_id=self._request_id(response))
            async for line in response.aiter_lines():
                for event in reader.feed(line):
                    yield event
                if reader.done:
                    return
            for event in reader.close():
                yield event
        except httpx.RequestError as exc:
            raise self._transport_error(exc, response.request) from exc
        finally:
            await response.aclose()

    async def _probe(self, path: str) -> bool:
        # One attempt, no retries: a probe answers "now", and 503 from /readyz means "not yet".
        request = self._http.build_request(**self._request_kwargs("GET", path))
        try:
            response = await self._http.send(request)
        except httpx.TransportError:
            return False
        return response.is_success
