"""`aim serve`: settings from flags, keys and secret checked, then one server or N workers."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from ..settings import Settings
from .flags import flag_name

if TYPE_CHECKING:
    from ..access.keys import KeyStore
    from ..config import ServiceConfig

# A held-out-style "0" (8×8, values 0..16) for the example request printed by `serve --demo`.
EXAMPLE_DIGIT = [
    [0, 0, 5, 13, 9, 1, 0, 0],
    [0, 0, 13, 15, 10, 15, 5, 0],
    [0, 3, 15, 2, 0, 11, 8, 0],
    [0, 4, 12, 0, 0, 8, 8, 0],
    [0, 5, 8, 0, 0, 9, 8, 0],
    [0, 4, 11, 0, 1, 12, 7, 0],
    [0, 2, 14, 5, 10, 12, 0, 0],
    [0, 0, 6, 13, 10, 0, 0, 0],
]


def _settings(args: argparse.Namespace) -> Settings | None:
    """Settings from the flags given (others from the environment); None after saying why."""
    overrides = {
        name: getattr(args, name)
        for name in Settings.model_fields
        if getattr(args, name, None) is not None
    }
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        for err in exc.errors():
            name = str(err["loc"][0]) if err["loc"] else "settings"
            where = flag_name(name) if name in overrides else f"AIM_{name.upper()}"
            print(f"aim serve: {where} {err.get('input')!r}: {err['msg']}", file=sys.stderr)
        return None


def serve_command(args: argparse.Namespace) -> int:
    from ..access.keys import KeyRecord, KeysFileError, KeyStore, generate_key, hash_key
    from ..config import ConfigError, ServiceConfig
    from ..observability.logs import configure_logging

    settings = _settings(args)
    if settings is None:
        return 2
    try:
        config = ServiceConfig.load(settings.config) if settings.config else ServiceConfig()
    except ConfigError as exc:
        print(f"aim serve: {exc}", file=sys.stderr)
        return 2
    demo_keys: list[tuple[str, str]] = []
    if settings.keys_file is not None:
        try:
            keys = KeyStore.load(settings.keys_file, {t.name for t in config.tiers})
        except KeysFileError as exc:
            print(f"aim serve: {exc}", file=sys.stderr)
            return 2
    elif settings.demo:
        records = []
        for tier in config.tiers:
            plaintext = generate_key()
            demo_keys.append((tier.name, plaintext))
            records.append(KeyRecord(f"demo-{tier.name}", tier.name, hash_key(plaintext)))
        keys = KeyStore(records)
    else:
        print(
            "aim serve: refusing to start without keys: give --keys-file FILE "
            "(create keys with `aim keys create`) or --demo for ephemeral keys",
            file=sys.stderr,
        )
        return 2
    try:
        secret = settings.secret_bytes()
    except (OSError, ValueError) as exc:
        print(f"aim serve: cannot read the server secret: {exc}", file=sys.stderr)
        return 2
    if secret is None and not settings.demo:
        print(
            "aim serve: no server secret: give --secret-file FILE (or AIM_SECRET_FILE), "
            "or set AIM_SECRET",
            file=sys.stderr,
        )
        return 2
    configure_logging(settings.log_level)
    if settings.workers > 1:
        return _serve_workers(args, settings, config, keys, secret, demo_keys)
    from ..api.app import create_app  # not in a --workers parent, which serves nothing itself
    from ..serving.workers import WorkerContext

    worker = WorkerContext.from_env()
    if worker is not None:
        # The supervisor forwards SIGHUP (keys reload); until the keys watcher takes it over,
        # one arriving while this worker starts must not kill it.
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    app = create_app(settings, config, keys, secret=secret)
    if demo_keys:
        _print_demo_keys(settings, config, demo_keys)
    from ..serving.overload import OverloadGuard
    from ..serving.server import limits_from, serve

    state = app.state.aim
    guard = OverloadGuard(state)
    sock = worker.listening_socket() if worker is not None else None

    def stop_if_load_fails(server: Any) -> None:
        # A server that can never serve must not look alive: stop, and exit non-zero below (a
        # worker's supervisor then restarts it; k8s or compose restart the container).
        state.on_load_failure = lambda _: setattr(server, "should_exit", True)

    serve(
        guard.gate(app),
        settings.host,
        settings.port,
        limits_from(settings),
        guard,
        sock=sock,
        on_server=stop_if_load_fails,
    )
    if state.load_error:
        where = f" (config {settings.config})" if settings.config else ""
        print(f"aim serve: {state.load_error}{where}", file=sys.stderr)
        return 1
    return 0


def _print_demo_keys(
    settings: Settings, config: ServiceConfig, demo_keys: list[tuple[str, str]]
) -> None:
    base = f"http://{settings.host}:{settings.port}"
    lines = ["", "AIM serving demo keys (ephemeral, shown once, not stored):"]
    lines += [f"  {tier:<10} {key}" for tier, key in demo_keys]
    if config.model == "digits":
        body = '{"inputs": [' + str(EXAMPLE_DIGIT).replace(" ", "") + "]}"
        lines += [
            "Try:",
            f"  curl -s {base}/predict -H 'X-API-Key: {demo_keys[0][1]}' "
            f"-H 'Content-Type: application/json' -d '{body}'",
        ]
    print("\n".join(lines) + "\n", flush=True)


def _serve_workers(
    args: argparse.Namespace,
    settings: Settings,
    config: ServiceConfig,
    keys: KeyStore,
    secret: bytes | None,
    demo_keys: list[tuple[str, str]],
) -> int:
    """`--workers N`: bind, make what the workers share, run N workers (service/workers.py)."""
    import secrets as token

    from ..access.keys import write_keys_file
    from ..modulation import SharedRings
    from ..serving.workers import (
        MEMORY_ENV,
        METRICS_ENV,
        Supervisor,
        bind,
        private_dir,
        worker_command,
    )

    if settings.redis_url is None:
        print(
            f"aim serve: --workers {settings.workers} needs AIM_REDIS_URL: rate limits, quotas "
            "and usage have to be counted once for all workers, not by each on its own",
            file=sys.stderr,
        )
        return 2
    with private_dir("aim-workers-") as shared:
        extra: list[str] = []
        if settings.demo:  # the same ephemeral keys and secret in every worker
            keys_file, secret_file = shared / "demo-keys.yaml", shared / "demo-secret"
            write_keys_file(keys_file, keys.records())
            fd = os.open(secret_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(secret or token.token_hex(32).encode())
            extra += ["--keys-file", str(keys_file), "--secret-file", str(secret_file)]
        if settings.torch_threads is None:  # half the cores, shared out over the workers
            per_worker = max(1, (os.cpu_count() or 2) // 2 // settings.workers)
            extra += ["--torch-threads", str(per_worker)]
        metrics_dir = shared / "metrics"
        metrics_dir.mkdir()
        memory = shared / "replay-memory"
        SharedRings.create(memory, [t.name for t in config.tiers])  # sparse: filled as used
        try:
            sock = bind(settings.host, settings.port)
        except OSError as exc:
            print(
                f"aim serve: cannot listen on {settings.host}:{settings.port}: {exc}",
                file=sys.stderr,
            )
            return 2
        if demo_keys:
            _print_demo_keys(settings, config, demo_keys)
        env = {METRICS_ENV: str(metrics_dir), MEMORY_ENV: str(memory)}
        command = worker_command(args.argv, extra)
        return Supervisor(command, settings.workers, sock, env).run()
