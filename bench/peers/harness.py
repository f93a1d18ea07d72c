"""Shared plumbing of the HTTP benches: servers in their own process groups (always stopped),
request bodies from the held-out digits, bench keys, bounded `wrk` runs, RSS and /metrics reads.

Everything talks to 127.0.0.1 only, and every wait here has a deadline.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
PEERS = Path(__file__).resolve().parent
LUA_SCRIPT = PEERS / "mixed_keys.lua"
HOST = "127.0.0.1"
TIERS = {"gold": {"utility": 1.0}, "silver": {"utility": 0.85}, "bronze": {"utility": 0.6}}
SECRET = "bench-secret"


class BenchError(RuntimeError):
    """A bench step failed; the message says which and why."""


def install_sigterm_handler() -> None:
    """SIGTERM (and SIGHUP) raise KeyboardInterrupt, so `finally` blocks stop the servers."""

    def _raise(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, _raise)
    with contextlib.suppress(AttributeError, ValueError):
        signal.signal(signal.SIGHUP, _raise)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def subprocess_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def aim_command() -> list[str]:
    """`aim` next to this interpreter (the venv's console script), else `python -m service.cli`."""
    script = Path(sys.executable).with_name("aim")
    return [str(script)] if script.exists() else [sys.executable, "-m", "service.cli"]


def wrk_binary() -> str:
    found = shutil.which("wrk") or ("/usr/bin/wrk" if Path("/usr/bin/wrk").exists() else None)
    if found is None:
        raise BenchError("wrk is not installed (Debian/Ubuntu: apt-get install wrk)")
    return found


# --- HTTP on loopback (urllib: nothing to install, every call has a timeout) -------------------


def http(
    method: str,
    url: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 5.0,
) -> tuple[int, bytes]:
    """(status, body); connection failures give status 0."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, OSError, TimeoutError):
        return 0, b""


# --- servers ----------------------------------------------------------------------------------


@dataclass
class Server:
    """A server process started in its own session (so its process group holds all it forks)."""

    name: str
    command: list[str]
    port: int
    ready_path: str
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("wb")
        try:
            self.proc = subprocess.Popen(
                self.command,
                cwd=REPO,
                env=subprocess_env(self.env),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            log.close()

    def wait_ready(self, timeout: float) -> float:
        """Seconds until `ready_path` answered 200; raises if the process dies or time runs out."""
        assert self.proc is not None
        t0 = time.monotonic()
        deadline = t0 + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(
                    f"{self.name} exited with code {self.proc.returncode} before it was ready; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            status, _ = http("GET", self.base_url + self.ready_path, timeout=2.0)
            if status == 200:
                return time.monotonic() - t0
            time.sleep(0.25)
        raise BenchError(
            f"{self.name} was not ready after {timeout:.0f} s; log {self.log_path}:\n"
            f"{self.log_tail()}"
        )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM to the whole process group, SIGKILL to what is left after `grace` seconds."""
        if self.proc is None:
            return
        pgid = self.proc.pid  # start_new_session: the leader's pid is the group id
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                self.proc.poll()  # reaps the leader once it exits
                if not group_pids(pgid):
                    break
                time.sleep(0.1)
            if not group_pids(pgid):
                break
        self.proc.poll()


@contextlib.contextmanager
def running(server: Server, ready_timeout: float) -> Iterator[float]:
    """Start `server`, yield the seconds it took to be ready, and always stop it."""
    try:
        server.start()
        yield server.wait_ready(ready_timeout)
    finally:
        server.stop()


@contextlib.contextmanager
def redis_server(workdir: Path) -> Iterator[str]:
    """A private `redis-server` (no persistence) on a free loopback port; yields its URL."""
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not Path(binary).exists():
        raise BenchError(
            "redis-server is not installed (Debian/Ubuntu: apt-get install redis-server)"
        )
    port = free_port()
    server = Server(
        name="redis",
        command=[binary, "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no"],
        port=port,
        ready_path="",
        log_path=workdir / "redis.log",
    )
    server.start()
    try:
        deadline = time.monotonic() + 20
        while not _answers_ping(port):
            if time.monotonic() > deadline or not server.alive():
                raise BenchError(f"redis-server did not answer; log:\n{server.log_tail()}")
            time.sleep(0.1)
        yield f"redis://{HOST}:{port}/0"
    finally:
        server.stop()


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=1.0) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def group_pids(pgid: int) -> list[int]:
    """Pids of live (non-zombie) processes in process group `pgid` (Linux /proc)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        rest = _stat_fields(int(entry))
        if rest is not None and len(rest) > 2 and rest[0] != "Z" and int(rest[2]) == pgid:
            pids.append(int(entry))
    return pids


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state first), None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: the fields start after the last ')'.
    return stat[stat.rfind(")") + 2 :].split()


def rss_mib(pgid: int) -> float:
    """Resident memory (VmRSS) summed over the process group, in MiB."""
    total_kib = 0
    for pid in group_pids(pgid):
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kib += int(line.split()[1])
                    break
        except OSError:
            continue
    return total_kib / 1024


def cpu_seconds(pgid: int) -> float:
    """User plus system CPU time used so far by the live processes of the group, in seconds."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in group_pids(pgid):
        rest = _stat_fields(pid)
        if rest is not None:
            total += int(rest[11]) + int(rest[12])  # utime, stime (fields 14 and 15)
    return total / ticks


def threads_per_process(pgid: int) -> list[int]:
    """OS threads of each live process in the group (what a server really runs on)."""
    counts = []
    for pid in group_pids(pgid):
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("Threads:"):
                    counts.append(int(line.split()[1]))
                    break
        except OSError:
            continue
    return sorted(counts, reverse=True)


# --- inputs and keys ---------------------------------------------------------------------------


def digit_bodies(count: int) -> list[bytes]:
    """`count` request bodies, each one held-out 8×8 digit: `{"inputs": [[[...8 ints]...]]}`."""
    from service.models.data import digits_splits

    images = digits_splits().heldout[0]
    if not 1 <= count <= len(images):
        raise BenchError(f"--inputs: {count} is not in 1..{len(images)}")
    bodies = []
    for image in images[:count]:
        rows = [[int(v) for v in row] for row in image.tolist()]
        bodies.append(json.dumps({"inputs": [rows]}, separators=(",", ":")).encode())
    return bodies


def write_lines(path: Path, lines: Sequence[bytes | str]) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        for line in lines:
            fh.write((line.encode() if isinstance(line, str) else line) + b"\n")
    return path


def write_config(path: Path, tiers: dict[str, dict[str, Any]] | None = None) -> Path:
    """The service config: the shipped digits model and three tiers, no rate limits."""
    import yaml

    path.write_text(yaml.safe_dump({"model": "digits", "tiers": tiers or TIERS}, sort_keys=False))
    return path


def make_keys(keys_file: Path, tiers: Sequence[str], per_tier: int) -> list[tuple[str, str]]:
    """Create `per_tier` keys for each tier in `keys_file`; return (tier, plaintext) pairs,
    interleaved across tiers so that rotating through them mixes the tiers evenly."""
    from service.access.keys import create_key

    keys: list[tuple[str, str]] = []
    for i in range(per_tier):
        for tier in tiers:
            _, plaintext = create_key(keys_file, tier, f"bench-{tier}-{i}")
            keys.append((tier, plaintext))
    return keys


def aim_server(
    workdir: Path, port: int, env: dict[str, str], keys_per_tier: int = 1, name: str = "ours"
) -> tuple[Server, list[tuple[str, str]]]:
    """An `aim serve` (CPU, auth on, keyed noise) over a fresh config and keys file in
    `workdir`, with the bench secret; returns it (not started) and its keys."""
    config = write_config(workdir / "aim-config.yaml")
    keys_file = workdir / "aim-keys.yaml"
    keys_file.unlink(missing_ok=True)
    keys = make_keys(keys_file, list(TIERS), keys_per_tier)
    command = [
        *aim_command(),
        "serve",
        "--config",
        str(config),
        "--keys-file",
        str(keys_file),
        "--host",
        HOST,
        "--port",
        str(port),
        "--device",
        "cpu",
    ]
    server = Server(
        name=name,
        command=command,
        port=port,
        ready_path="/readyz",
        log_path=workdir / f"{name}.log",
        env={"AIM_SECRET": SECRET, "AIM_NOISE": "keyed", **env},
    )
    return server, keys


def smoke_test(server: Server, body: bytes, keys: list[tuple[str, str]]) -> None:
    """One request per key (or one without a key): a 200 with a prediction, and for ours the
    tier of the key. Fails loudly before any load is sent at a server that answers wrongly."""
    for tier, key in keys or [("", "")]:
        headers = {"Content-Type": "application/json"}
        if key:
            headers["X-API-Key"] = key
        status, raw = http("POST", server.base_url + "/predict", body, headers, timeout=30)
        if status != 200:
            raise BenchError(f"{server.name}: smoke request answered {status}: {raw[:300]!r}")
        answer = json.loads(raw)
        predictions = answer.get("predictions")
        if not predictions or "label" not in predictions[0]:
            raise BenchError(f"{server.name}: smoke answer has no prediction: {raw[:300]!r}")
        if tier and answer.get("tier") != tier:
            raise BenchError(
                f"{server.name}: key of tier {tier} was served as {answer.get('tier')}"
            )


def wrk_setup(
    workdir: Path, keys: list[tuple[str, str]], connections: int, threads: int, inputs: int = 64
) -> tuple[list[bytes], dict[str, Any]]:
    """Request bodies and the wrk_command arguments (bodies and keys files) for `aim serve`."""
    bodies = digit_bodies(inputs)
    common = {
        "bodies_file": write_lines(workdir / "bodies.jsonl", bodies),
        "keys_file": write_lines(workdir / "keys.txt", [k for _, k in keys]),
        "connections": connections,
        "threads": threads,
    }
    return bodies, common


def run_main(main: Any) -> None:
    """`sys.exit(main())`, with Ctrl-C / SIGTERM ending quietly (servers are stopped by then)."""
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; servers stopped", file=sys.stderr)
        sys.exit(130)


# --- load ----------------------------------------------------------------------------------------


@dataclass
class WrkResult:
    requests: int
    duration_s: float
    latency_ms: dict[str, float]
    statuses: dict[str, int]
    errors: dict[str, int]
    raw: str

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def ok(self) -> int:
        return sum(n for code, n in self.statuses.items() if code.startswith("2"))

    @property
    def ok_rps(self) -> float:
        return self.ok / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def non_2xx(self) -> int:
        return self.requests - self.ok

    @property
    def socket_errors(self) -> int:
        return sum(v for k, v in self.errors.items() if k != "status")

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "duration_s": round(self.duration_s, 3),
            "rps": round(self.rps, 1),
            "ok_rps": round(self.ok_rps, 1),
            "latency_ms": self.latency_ms,
            "statuses": self.statuses,
            "non_2xx": self.non_2xx,
            "socket_errors": {k: v for k, v in self.errors.items() if k != "status"},
        }


_SUMMARY = re.compile(r"^AIMBENCH (\{.*\})\s*$", re.MULTILINE)


def parse_wrk(output: str) -> WrkResult:
    match = _SUMMARY.search(output)
    if match is None:
        raise BenchError(f"wrk printed no AIMBENCH summary line:\n{output[-2000:]}")
    data = json.loads(match.group(1))
    lat = data["latency_us"]
    return WrkResult(
        requests=int(data["requests"]),
        duration_s=data["duration_us"] / 1e6,
        latency_ms={k: round(v / 1000, 3) for k, v in lat.items()},
        statuses={str(k): int(v) for k, v in sorted(data["statuses"].items())},
        errors={k: int(v) for k, v in data["errors"].items()},
        raw=output,
    )


def wrk_command(
    url: str,
    bodies_file: Path,
    keys_file: Path | None,
    duration: float,
    connections: int,
    threads: int,
    timeout: float = 10.0,
    tier: str | None = None,
) -> list[str]:
    """wrk posting `bodies_file` with the keys of `keys_file` (rotating), each request lowered
    to `tier` (X-AIM-Tier) when given."""
    command = [
        wrk_binary(),
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        f"--timeout={max(1, round(timeout))}s",
        "--latency",
        "-s",
        str(LUA_SCRIPT),
        url,
        "--",
        str(bodies_file),
    ]
    if keys_file is not None:
        command.append(str(keys_file))
        if tier is not None:
            command.append(tier)
    elif tier is not None:
        raise ValueError("a tier to lower to needs keys")
    return command


def start_wrk(command: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    """wrk in its own process group, output to `log_path` (read it back with parse_wrk)."""
    log = log_path.open("wb")
    try:
        return subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    finally:
        log.close()


def finish_wrk(proc: subprocess.Popen[bytes], log_path: Path, deadline_s: float) -> WrkResult:
    """Wait for wrk (killing its group if it outlives `deadline_s`) and parse its output."""
    try:
        proc.wait(timeout=deadline_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)
        raise BenchError(f"wrk ran past its {deadline_s:.0f} s deadline and was killed") from None
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
    output = log_path.read_text(errors="replace")
    if proc.returncode != 0:
        raise BenchError(f"wrk exited with code {proc.returncode}:\n{output[-2000:]}")
    return parse_wrk(output)


def run_wrk(command: list[str], duration: float, log_path: Path) -> WrkResult:
    """Run wrk to completion, bounded: it is killed 30 s after its own duration."""
    proc = start_wrk(command, log_path)
    try:
        return finish_wrk(proc, log_path, duration + 30)
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)


# --- Prometheus ----------------------------------------------------------------------------------

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def prometheus_samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """(labels, value) of every sample of metric `name` in a text exposition."""
    out = []
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m is None or m.group(1) != name:
            continue
        labels = dict(_LABEL.findall(m.group(2) or ""))
        out.append((labels, float(m.group(3))))
    return out


def scrape(base_url: str, timeout: float = 5.0) -> str | None:
    status, body = http("GET", base_url + "/metrics", timeout=timeout)
    return body.decode(errors="replace") if status == 200 else None


def requests_by_status(metrics_text: str, route: str = "/predict") -> dict[str, int]:
    """`aim_requests_total` on `route`, summed over tiers, by status code."""
    counts: dict[str, int] = {}
    for labels, value in prometheus_samples(metrics_text, "aim_requests_total"):
        if labels.get("route") == route:
            code = labels.get("status", "?")
            counts[code] = counts.get(code, 0) + round(value)
    return dict(sorted(counts.items()))


def machine_info() -> dict[str, Any]:
    import platform

    info: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }
    for module in ("torch", "fastapi", "uvicorn", "litserve"):
        try:
            info[module] = __import__(module).__version__
        except Exception:  # a missing peer library only loses its version line
            info[module] = None
    try:
        info["wrk"] = subprocess.run(
            [wrk_binary(), "-v"], capture_output=True, text=True, timeout=5
        ).stdout.splitlines()[0]
    except Exception:
        info["wrk"] = None
    return info
