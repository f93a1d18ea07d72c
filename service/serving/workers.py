"""Several server processes on one port: `aim serve --workers N`.

One process serves at most one core's worth of Python: the event loop and the forward thread
share one GIL, and with every client waiting on the same batch they take turns, so under load a
2-core machine sat at 1.05 busy cores (docs/PERFORMANCE.md, "Workers"). N workers are N
complete servers (each its own model, batcher and event loop) accepting on one listening
socket, with everything that decides an answer or a limit shared between them:

- **the socket**: bound here, inherited by every worker (`AIM_WORKER_FD`); the kernel hands
  each new connection to one of the workers waiting in accept;
- **keyed noise**: a pure function of the server secret, tier and input, so every worker gives
  the same answer; with `--demo` the parent makes the secret and the keys and hands both on as
  files (mode 0600, in a private directory removed at exit), so the demo keys work everywhere;
- **the replay memory**: one file the workers map (`AIM_WORKER_MEMORY`,
  `modulation/shared_rings.py`): near-duplicate queries reuse one noise cell whichever worker
  they reach;
- **rate limits, quotas and usage**: Redis (`AIM_REDIS_URL`), required with more than one
  worker, since each worker counting on its own would multiply every limit by N;
- **metrics**: `PROMETHEUS_MULTIPROC_DIR` (a private directory): each worker writes its samples
  there, and `/metrics` of any worker answers for all of them (`metrics.exposition`).

Per worker, by design: the admission queue and in-flight bound (`AIM_QUEUE_SIZE` and the rest
are per worker, as on replicas) and readiness.

The parent loads no model (it checks the config, keys and secret before any worker starts). It
starts a worker that dies again after `RESTART_DELAY_S`; one that dies `CRASH_LOOP` times in a
row, each within `QUICK_DEATH_S` of its start, stops them all with its exit code, since it
would only fail again. A worker whose model fails to load or whose runtime fails to start
exits 1 after logging why in one line (`aim serve`), and is started again like any other.
SIGTERM or SIGINT stop every worker gracefully (uvicorn's 30 s), then the parent exits. SIGHUP
is forwarded to every worker, which reloads its keys file; the parent and the workers keep
serving.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

FD_ENV = "AIM_WORKER_FD"
MEMORY_ENV = "AIM_WORKER_MEMORY"
METRICS_ENV = "PROMETHEUS_MULTIPROC_DIR"
QUICK_DEATH_S = 30.0
CRASH_LOOP = 3
RESTART_DELAY_S = 1.0
STOP_TIMEOUT_S = 40.0
"""How long stopping workers may take (their graceful shutdown is 30 s) before SIGKILL."""


@dataclass(frozen=True)
class WorkerContext:
    """What a worker process was handed by its parent (None: not a worker)."""

    fd: int
    memory: Path | None

    @classmethod
    def from_env(cls) -> WorkerContext | None:
        fd = os.environ.get(FD_ENV)
        if not fd:
            return None
        memory = os.environ.get(MEMORY_ENV)
        return cls(int(fd), Path(memory) if memory else None)

    def listening_socket(self) -> socket.socket:
        return socket.socket(fileno=self.fd)  # family and type are read from the descriptor


def bind(host: str, port: int) -> socket.socket:
    """The listening socket every worker accepts on (inheritable)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


class Supervisor:
    """Starts ``count`` workers running ``command`` on ``sock``, restarts the ones that die,
    stops them all on SIGTERM/SIGINT. ``env`` is added to each worker's environment."""

    def __init__(
        self,
        command: Sequence[str],
        count: int,
        sock: socket.socket,
        env: dict[str, str],
    ) -> None:
        self.command = list(command)
        self.count = count
        self.sock = sock
        self.env = env
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.started: dict[int, float] = {}
        self.quick_deaths: dict[int, int] = {}
        self.stopping = False

    def _start(self, index: int) -> None:
        env = {
            **os.environ,
            **self.env,
            FD_ENV: str(self.sock.fileno()),
        }
        self.procs[index] = subprocess.Popen(self.command, env=env, pass_fds=(self.sock.fileno(),))
        self.started[index] = time.monotonic()
        log.info("worker started", extra={"worker": index, "pid": self.procs[index].pid})

    def _stop_all(self, *_: object) -> None:
        self.stopping = True
        for proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)

    def _forward_hup(self, *_: object) -> None:
        log.info("SIGHUP: forwarded to every worker (keys reload)")
        for proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGHUP)

    def run(self) -> int:
        """Serve until stopped; the exit code (0, or a worker's start-up failure)."""
        previous = {s: signal.signal(s, self._stop_all) for s in (signal.SIGTERM, signal.SIGINT)}
        previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, self._forward_hup)
        code = 0
        try:
            for index in range(self.count):
                self._start(index)
            while not self.stopping:
                time.sleep(0.2)
                for index, proc in list(self.procs.items()):
                    rc = proc.poll()
                    if rc is None or self.stopping:
                        continue
                    self._forget(proc.pid)
                    quick = time.monotonic() - self.started[index] < QUICK_DEATH_S
                    self.quick_deaths[index] = self.quick_deaths.get(index, 0) + 1 if quick else 0
                    if self.quick_deaths[index] >= CRASH_LOOP:
                        log.error(
                            "worker keeps failing at start; stopping",
                            extra={"worker": index, "rc": rc},
                        )
                        code = rc or 1
                        self._stop_all()
                        break
                    log.error("worker exited; starting it again", extra={"worker": index, "rc": rc})
                    time.sleep(RESTART_DELAY_S)
                    self._start(index)
        finally:
            self._stop_all()
            deadline = time.monotonic() + STOP_TIMEOUT_S
            for proc in self.procs.values():
                try:
                    proc.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return code

    def _forget(self, pid: int) -> None:
        """Drop a dead worker's live gauges from the merged metrics (its counters stay)."""
        metrics_dir = self.env.get(METRICS_ENV)
        if metrics_dir:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(pid, metrics_dir)


@contextlib.contextmanager
def private_dir(prefix: str) -> Iterator[Path]:
    """A directory only this user can read, removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        path.chmod(0o700)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def worker_command(argv: Sequence[str], extra: Sequence[str]) -> list[str]:
    """This `aim serve` again, as one worker: the same flags, then ``extra`` (later flags win)."""
    return [sys.executable, "-m", "service.cli", *argv, *extra, "--workers", "1"]
