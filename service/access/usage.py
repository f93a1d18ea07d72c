"""Usage metering: per account and tier, the requests, items and tokens answered (2xx) and the
errors, in one-minute buckets (UTC), so `since`/`until` select whole minutes.

Requests are counted into an in-memory buffer (`UsageBuffer`, no I/O on the request path) and
flushed about once a second to a store: SQLite under `AIM_STATE_DIR` (`SqliteUsage`) for a
single replica, Redis (`service.access.sharedstate`) for several, or memory only (`MemoryUsage`)
when neither is configured. The buffer is flushed when the server stops, so a restart loses
nothing billable; a crash loses at most the last second.
"""

from __future__ import annotations

import csv
import io
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Protocol

COLUMNS = ("requests", "items", "tokens", "errors")
# `units` is what quotas count (items, or generated tokens for a generation model); it is kept
# beside the billed columns so a restarted replica can seed its quota counters from the store.
_STORED = (*COLUMNS, "units")
BUCKET_S = 60

Key = tuple[int, str, str]  # (minute start, account, tier)
Counts = list[int]  # in _STORED order


def bucket(at: float) -> int:
    return int(at // BUCKET_S) * BUCKET_S


def parse_time(text: str, field_name: str) -> float:
    """Unix seconds, or ISO 8601 (`2026-12-01`, `2026-12-01T18:00:00Z`; naive times are UTC)."""
    value = text.strip()
    try:
        return float(value)
    except ValueError:
        pass
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"{field_name}: {text!r} is not a time (Unix seconds, or ISO 8601 like "
            "2026-12-01T18:00:00Z)"
        ) from None
    return (t if t.tzinfo else t.replace(tzinfo=timezone.utc)).timestamp()


class UsageBuffer:
    """Counts not yet flushed to the store. Thread-safe; `drain` hands them over at once."""

    def __init__(self) -> None:
        self._rows: dict[Key, Counts] = {}
        self._lock = threading.Lock()

    def add(
        self, account: str, tier: str, ok: bool, items: int, tokens: int, units: int, at: float
    ) -> None:
        delta = [1, items, tokens, 0, units] if ok else [0, 0, 0, 1, 0]
        key = (bucket(at), account, tier)
        with self._lock:
            row = self._rows.setdefault(key, [0] * len(_STORED))
            for i, d in enumerate(delta):
                row[i] += d

    def drain(self) -> dict[Key, Counts]:
        with self._lock:
            rows, self._rows = self._rows, {}
        return rows

    def restore(self, rows: dict[Key, Counts]) -> None:
        """Put back rows a failed flush could not store (merged with what came since)."""
        with self._lock:
            for key, counts in rows.items():
                row = self._rows.setdefault(key, [0] * len(_STORED))
                for i, c in enumerate(counts):
                    row[i] += c

    def rows(self) -> dict[Key, Counts]:
        with self._lock:
            return {k: list(v) for k, v in self._rows.items()}


def select(
    rows: Iterable[tuple[Key, Counts]], since: float | None, until: float | None
) -> Iterator[tuple[Key, Counts]]:
    """The rows of the minutes that start in [since's minute, until)."""
    for (minute, account, tier), counts in rows:
        if (since is None or minute >= bucket(since)) and (until is None or minute < until):
            yield (minute, account, tier), counts


def summarise(rows: Iterable[tuple[Key, Counts]]) -> list[dict[str, object]]:
    """Rows summed per (account, tier), as `/admin/usage` answers them."""
    totals: dict[tuple[str, str], Counts] = {}
    for (_, account, tier), counts in rows:
        row = totals.setdefault((account, tier), [0] * len(_STORED))
        for i, c in enumerate(counts):
            row[i] += c
    return [
        {"account": account, "tier": tier, **dict(zip(COLUMNS, counts, strict=False))}
        for (account, tier), counts in sorted(totals.items())
    ]


def to_csv(accounts: list[dict[str, object]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, ["account", "tier", *COLUMNS], lineterminator="\n")
    writer.writeheader()
    writer.writerows(accounts)
    return out.getvalue()


class UsageStore(Protocol):
    """Where flushed usage lives."""

    def add(self, rows: dict[Key, Counts]) -> None: ...

    def query(self, since: float | None, until: float | None) -> list[tuple[Key, Counts]]: ...

    def units_since(self, account: str, tier: str, start: float) -> int: ...


class MemoryUsage:
    """Usage in this process only (no `AIM_STATE_DIR`, no Redis): lost on restart."""

    def __init__(self) -> None:
        self._rows = UsageBuffer()

    def add(self, rows: dict[Key, Counts]) -> None:
        self._rows.restore(rows)

    def query(self, since: float | None, until: float | None) -> list[tuple[Key, Counts]]:
        return list(select(self._rows.rows().items(), since, until))

    def units_since(self, account: str, tier: str, start: float) -> int:
        rows = self._rows.rows().items()
        return sum(c[4] for (m, a, t), c in rows if a == account and t == tier and m >= start)


class SqliteUsage:
    """Usage in `DIR/usage.sqlite3` (WAL: `aim usage` reads while the server writes)."""

    def __init__(self, state_dir: Path) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        self.path = state_dir / "usage.sqlite3"
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=10)
        with self._lock, self._db:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS usage (minute INTEGER, account TEXT, tier TEXT, "
                + ", ".join(f"{c} INTEGER NOT NULL DEFAULT 0" for c in _STORED)
                + ", PRIMARY KEY (minute, account, tier))"
            )

    def add(self, rows: dict[Key, Counts]) -> None:
        names = ", ".join(_STORED)
        marks = ", ".join("?" for _ in _STORED)
        updates = ", ".join(f"{c} = {c} + excluded.{c}" for c in _STORED)
        sql = (
            f"INSERT INTO usage (minute, account, tier, {names}) VALUES (?, ?, ?, {marks}) "
            f"ON CONFLICT (minute, account, tier) DO UPDATE SET {updates}"
        )
        with self._lock, self._db:
            self._db.executemany(sql, [(*key, *counts) for key, counts in rows.items()])

    def query(self, since: float | None, until: float | None) -> list[tuple[Key, Counts]]:
        lo = bucket(since) if since is not None else -(2**62)
        hi = until if until is not None else 2**62
        with self._lock:
            cur = self._db.execute(
                f"SELECT minute, account, tier, {', '.join(_STORED)} FROM usage "
                "WHERE minute >= ? AND minute < ?",
                (lo, hi),
            )
            return [((r[0], r[1], r[2]), list(r[3:])) for r in cur.fetchall()]

    def units_since(self, account: str, tier: str, start: float) -> int:
        with self._lock:
            (total,) = self._db.execute(
                "SELECT COALESCE(SUM(units), 0) FROM usage "
                "WHERE account = ? AND tier = ? AND minute >= ?",
                (account, tier, start),
            ).fetchone()
        return int(total)

    def close(self) -> None:
        with self._lock:
            self._db.close()
