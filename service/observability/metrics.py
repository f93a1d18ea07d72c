"""Prometheus metrics. Labels are tier and route, never a key.

Each app owns its registry, so several apps (tests) can live in one process. Recording goes
through `Metrics` methods that swallow their own errors: a metrics bug never breaks a request.

With `aim serve --workers N` (service/workers.py) every worker runs with
`PROMETHEUS_MULTIPROC_DIR` set: prometheus_client then keeps each value in a file of that
directory, and `/metrics` of whichever worker a scrape reaches merges every worker's files
(`exposition`): counters and histograms are summed, gauges as their `multiprocess_mode` says.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from functools import wraps
from typing import Any, ParamSpec

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

log = logging.getLogger(__name__)
P = ParamSpec("P")

_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_FAST = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
_BATCH = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


def _safe(fn: Callable[P, None]) -> Callable[P, None]:
    @wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> None:
        try:
            fn(*args, **kwargs)
        except Exception:
            log.exception("metrics hook failed")

    return wrapper


def exposition(registry: CollectorRegistry) -> bytes:
    """The text `/metrics` answers: this registry's samples, or (workers) every worker's."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not directory:
        return bytes(generate_latest(registry))
    from prometheus_client.multiprocess import MultiProcessCollector

    merged = CollectorRegistry()
    MultiProcessCollector(merged, path=directory)
    return bytes(generate_latest(merged))


class Metrics:
    """The service's metrics on a registry of its own."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self._request_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._wait_children: dict[str, Any] = {}
        r = self.registry
        self.requests = Counter(
            "aim_requests", "Requests answered", ["tier", "route", "status"], registry=r
        )
        self.latency = Histogram(
            "aim_request_duration_seconds",
            "Request latency",
            ["tier", "route"],
            buckets=_LATENCY,
            registry=r,
        )
        self.queue_wait = Histogram(
            "aim_queue_wait_seconds",
            "Time from enqueue to forward pass",
            ["tier"],
            buckets=_FAST,
            registry=r,
        )
        self.batch_size = Histogram(
            "aim_batch_size", "Rows per forward pass", buckets=_BATCH, registry=r
        )
        self.forward = Histogram(
            "aim_forward_seconds", "Model forward time per batch", buckets=_FAST, registry=r
        )
        self.modulation = Histogram(
            "aim_modulation_seconds", "Logit modulation time per batch", buckets=_FAST, registry=r
        )
        self.queue_depth = Gauge(
            "aim_queue_depth",
            "Requests waiting for a forward pass",
            registry=r,
            multiprocess_mode="livesum",  # with --workers: the sum over the live workers
        )
        self.admission_waiting = Gauge(
            "aim_admission_waiting",
            "Inference requests waiting at the edge for a slot (AIM_MAX_IN_FLIGHT)",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.admission_in_flight = Gauge(
            "aim_admission_in_flight",
            "Inference requests admitted at the edge and not yet ended",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.shed = Counter(
            "aim_shed",
            "Requests a full queue refused, or displaced for a higher tier's",
            ["tier"],
            registry=r,
        )
        self.tier_sigma = Gauge(
            "aim_tier_sigma",
            "σ each tier is served at",
            ["tier"],
            registry=r,
            multiprocess_mode="max",  # every worker calibrates the same σ
        )
        self.tokens = Counter("aim_tokens_generated", "Tokens generated", ["tier"], registry=r)
        self.replay_rows = Counter(
            "aim_replay_rows",
            "Rows looked up in the replay memory, by whether they reused a remembered input's cell",
            ["tier", "result"],
            registry=r,
        )
        self.replay_errors = Counter(
            "aim_replay_memory_errors",
            "Batches the shared replay memory (Redis) failed for and the replica's own served",
            registry=r,
        )
        self.ttft = Histogram(
            "aim_time_to_first_token_seconds",
            "Time to first token",
            ["tier"],
            buckets=_LATENCY,
            registry=r,
        )
        self.itl = Histogram(
            "aim_inter_token_latency_seconds",
            "Time between tokens",
            ["tier"],
            buckets=_FAST,
            registry=r,
        )

    @_safe
    def observe_request(self, tier: str, route: str, status: int, seconds: float) -> None:
        # The labelled children, looked up once per (tier, route, status): `labels()` takes a
        # lock and builds a key on every call (10 µs a request under load).
        key = (tier, route, status)
        children = self._request_children.get(key)
        if children is None:
            counter = self.requests.labels(tier, route, str(status))
            children = self._request_children[key] = (counter, self.latency.labels(tier, route))
        children[0].inc()
        children[1].observe(seconds)

    @_safe
    def observe_batch(
        self, rows: int, forward_s: float, modulation_s: float, waits: list[tuple[str, float]]
    ) -> None:
        self.batch_size.observe(rows)
        self.forward.observe(forward_s)
        self.modulation.observe(modulation_s)
        children = self._wait_children
        for tier, wait in waits:  # one labelled child per tier, looked up once
            child = children.get(tier)
            if child is None:
                child = children[tier] = self.queue_wait.labels(tier)
            child.observe(wait)

    @_safe
    def observe_replay(self, tier: str, rows: int, matched: int) -> None:
        self.replay_rows.labels(tier, "matched").inc(matched)
        self.replay_rows.labels(tier, "new").inc(rows - matched)

    @_safe
    def observe_replay_error(self) -> None:
        self.replay_errors.inc()

    @_safe
    def set_queue_depth(self, depth: int) -> None:
        self.queue_depth.set(depth)

    @_safe
    def observe_shed(self, tier: str) -> None:
        self.shed.labels(tier).inc()

    @_safe
    def set_sigma(self, tier: str, sigma: float) -> None:
        self.tier_sigma.labels(tier).set(sigma)
        # Every configured tier passes here at start-up: its shed series starts at 0, so the
        # dashboard shows "nothing shed" rather than "no data".
        self.shed.labels(tier)

    @_safe
    def observe_token(self, tier: str, first: bool, seconds: float) -> None:
        self.tokens.labels(tier).inc()
        (self.ttft if first else self.itl).labels(tier).observe(seconds)

    def __getattr__(self, name: str) -> Any:  # pragma: no cover - clearer error for typos
        raise AttributeError(f"Metrics has no metric {name!r}")
