"""Live keys: a running server reloads its keys file when it changes, and on SIGHUP.

A background task compares the file's (inode, size, mtime) once a second, so a key added or
revoked with `aim keys` (an atomic rename: a new inode) or by an editor is live within about a
second. A file that does not parse keeps the last good set and logs an error: a typo must not
open the door, and must not refuse every key either. The error is logged once per distinct
problem, and the file is retried on every poll until it parses again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge

from .keys import KeysFileError, KeyStore, read_keys_file

log = logging.getLogger(__name__)

POLL_SECONDS = 1.0

Signature = tuple[int, int, int] | None


def file_signature(path: Path) -> Signature:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class KeysWatcher:
    """Keeps `store` in step with `path`. `reload()` may also be called directly."""

    def __init__(
        self,
        store: KeyStore,
        path: Path,
        tiers: set[str],
        registry: CollectorRegistry | None = None,
        poll_seconds: float = POLL_SECONDS,
    ) -> None:
        self.store = store
        self.path = path
        self.tiers = tiers
        self.poll_seconds = poll_seconds
        self._seen: Signature = file_signature(path)
        self._last_error: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._pending: asyncio.Task[bool] | None = None  # a SIGHUP reload (held: not collected)
        self.reloads = Counter(
            "aim_keys_reloads",
            "Keys file reloads, by result (ok, or failed: the last good set kept)",
            ["result"],
            registry=registry,
        )
        self.loaded = Gauge(
            "aim_keys_loaded",
            "Keys the server accepts now",
            registry=registry,
            multiprocess_mode="min",  # with --workers: the worker that has reloaded least
        )
        self.loaded.set(len(store))

    def reload(self) -> bool:
        """Read the file; on success swap the key set, else keep it and log. True if swapped."""
        signature = file_signature(self.path)
        try:
            records = read_keys_file(self.path, self.tiers)
            self.store.replace(records)
        except KeysFileError as exc:
            self.reloads.labels("failed").inc()
            if str(exc) != self._last_error:
                log.error(
                    "keys file not reloaded; the last good keys stay in force",
                    extra={"error": str(exc), "keys": len(self.store)},
                )
                self._last_error = str(exc)
            return False
        self._seen, self._last_error = signature, None
        self.reloads.labels("ok").inc()
        self.loaded.set(len(self.store))
        log.info("keys file reloaded", extra={"keys": len(self.store)})
        return True

    def changed(self) -> bool:
        return self._last_error is not None or file_signature(self.path) != self._seen

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.poll_seconds)
            if self.changed():
                # Reading and parsing is file I/O: off the event loop.
                await asyncio.to_thread(self.reload)

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._run(), name="aim-keys-watch")
        # Signal handlers can only be set from the main thread (not under a TestClient).
        with contextlib.suppress(ValueError, RuntimeError, NotImplementedError, AttributeError):
            loop.add_signal_handler(signal.SIGHUP, self._on_sighup)

    def _on_sighup(self) -> None:
        log.info("SIGHUP: reloading the keys file")
        self._pending = asyncio.get_running_loop().create_task(asyncio.to_thread(self.reload))

    async def stop(self) -> None:
        with contextlib.suppress(ValueError, RuntimeError, NotImplementedError, AttributeError):
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
