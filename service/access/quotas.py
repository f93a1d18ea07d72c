"""Quotas: how many items (inputs, or generated tokens) an account may use at a tier per hour,
day or month.

Windows are calendar windows in UTC (the hour, the day, the month), so every replica agrees on
where one ends and `Retry-After` points at that end. A quota is checked when a request is
admitted and charged when it has been answered: a request admitted under the quota is served in
full, the next one is refused with 429 `quota_exceeded`. The counters live where the rest of the
shared state does (`service.access.sharedstate`), or in process (`LocalQuotaCounter`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone

PERIODS = ("h", "day", "month")
_ALIASES = {"h": "h", "hour": "h", "d": "day", "day": "day", "month": "month", "mo": "month"}


class QuotaError(ValueError):
    """A quota that does not parse; the message names the field and the bad value."""


@dataclass(frozen=True)
class Quota:
    """`limit` items per calendar `period` (UTC)."""

    limit: int
    period: str

    @classmethod
    def from_text(cls, text: object) -> Quota:
        """'500/h', '10000/day', '1000000/month'; ValueError (without a field) otherwise."""
        if not isinstance(text, str):
            raise ValueError(f"{text!r} has to be a string like '10000/day'")
        m = re.fullmatch(r"\s*(\d+)\s*/\s*([a-z]+)\s*", text)
        period = _ALIASES.get(m.group(2)) if m else None
        if m is None or period is None:
            raise ValueError(
                f"{text!r} is not a quota like '500/h', '10000/day' or '1000000/month'"
            )
        limit = int(m.group(1))
        if limit < 1:
            raise ValueError(f"{text!r} has to allow at least one item")
        return cls(limit, period)

    @classmethod
    def parse(cls, text: object, field_name: str) -> Quota:
        """`from_text`, with the field named in the error."""
        try:
            return cls.from_text(text)
        except ValueError as exc:
            raise QuotaError(f"{field_name}: {exc}") from None

    def window(self, now: float) -> tuple[int, int]:
        """The (start, end) of the window holding `now`, in Unix seconds."""
        t = datetime.fromtimestamp(now, timezone.utc)
        if self.period == "h":
            start = t.replace(minute=0, second=0, microsecond=0)
            return int(start.timestamp()), int(start.timestamp()) + 3600
        if self.period == "day":
            start = t.replace(hour=0, minute=0, second=0, microsecond=0)
            return int(start.timestamp()), int(start.timestamp()) + 86400
        start = t.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        end = (
            start.replace(year=start.year + 1, month=1)
            if start.month == 12
            else start.replace(month=start.month + 1)
        )
        return int(start.timestamp()), int(end.timestamp())

    def __str__(self) -> str:
        return f"{self.limit}/{self.period}"


class LocalQuotaCounter:
    """Counters in this process, seeded once per window from the persisted usage (`seed`), so
    a restart does not hand an account a fresh quota."""

    def __init__(self, seed: Callable[[str, str, int], int] | None = None) -> None:
        self._seed = seed
        self._used: dict[tuple[str, str, int], int] = {}

    def _get(self, key: tuple[str, str, int]) -> int:
        if key not in self._used:
            for old in [k for k in self._used if k[:2] == key[:2] and k[2] < key[2]]:
                del self._used[old]  # a past window is never asked for again
            self._used[key] = self._seed(*key) if self._seed is not None else 0
        return self._used[key]

    def used(self, account: str, tier: str, start: int) -> int:
        return self._get((account, tier, start))

    def add(self, account: str, tier: str, start: int, units: int) -> None:
        key = (account, tier, start)
        self._used[key] = self._get(key) + units
