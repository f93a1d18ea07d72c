"""The `aim` command: serve, keys, calibrate, eval. It parses flags and wires; logic lives in
the modules it calls.

Each subcommand is a `_add_<name>(sub)` function that builds its parser and sets `handler`, so a
new subcommand is one more function and one line in `build_parser`.
"""

from __future__ import annotations

import argparse
import os
import sys
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import SecretStr, ValidationError

from . import __version__, cli_accounts
from .settings import Settings

if TYPE_CHECKING:
    from .config import ServiceConfig
    from .keys import KeyStore

Handler = Callable[[argparse.Namespace], int]

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
# Flag placeholders by the field name's last word (`max_wait_ms` → MS); counts are N.
_METAVARS = {"ms": "MS", "s": "SECONDS", "bytes": "BYTES", "size": "SIZE", "threads": "N"}
LOG_LEVELS = ["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


def _floats(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of numbers"
        ) from None
    if not values:
        raise argparse.ArgumentTypeError("the list is empty")
    return values


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def env_only(field: str) -> bool:
    """Secrets are never flags: a command line is visible to every user of the machine (`ps`)."""
    return _unwrap(Settings.model_fields[field].annotation) is SecretStr


def _unwrap(annotation: Any) -> Any:
    """`X | None` → X; anything else unchanged."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _add_settings_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per `Settings` field (`max_batch_size` → `--max-batch-size`), help from its
    docstring. Unset flags stay None, so the environment (`AIM_<NAME>`) and defaults apply."""
    for name, field in Settings.model_fields.items():
        if env_only(name):
            continue
        kind = _unwrap(field.annotation)
        default = "" if field.default is None else f"; default: {field.default}"
        help_text = f"{field.description or name} (env AIM_{name.upper()}{default})"
        kwargs: dict[str, Any] = {"dest": name, "default": None, "help": help_text}
        if kind is bool:
            kwargs.update(action="store_const", const=True)
        elif typing.get_origin(kind) is typing.Literal:
            kwargs.update(choices=list(typing.get_args(kind)))
        elif name == "log_level":
            kwargs.update(type=str.upper, choices=LOG_LEVELS)
        elif kind is Path:
            kwargs.update(type=Path, metavar="DIR" if name.endswith("_dir") else "FILE")
        elif kind in (int, float):
            kwargs.update(type=kind, metavar=_METAVARS.get(name.split("_")[-1], "N"))
        else:  # strings, and anything richer: pydantic validates the text
            kwargs.update(metavar=name.split("_")[-1].upper())
        parser.add_argument(flag_name(name), **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aim", description="AIM serving: one model, several utility tiers."
    )
    parser.add_argument(
        "--version", action="version", version=f"aim {__version__}", help="print the version"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_serve(sub)
    _add_keys(sub)
    _add_calibrate(sub)
    _add_eval(sub)
    return parser


def _add_serve(sub: Any) -> None:
    serve = sub.add_parser(
        "serve",
        help="serve a model over HTTP",
        description="Serve a model over HTTP. Every setting is a flag or an AIM_<NAME> "
        "environment variable (the flag wins). The server secret is read from --secret-file "
        "(AIM_SECRET_FILE), or from AIM_SECRET, which has no flag: a command line is visible "
        "to every user of the machine.",
    )
    _add_settings_flags(serve)
    serve.set_defaults(handler=_serve)


def _add_keys(sub: Any) -> None:
    keys = sub.add_parser("keys", help="manage API keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    create = keys_sub.add_parser("create", help="add a key; prints the key alone on the last line")
    create.add_argument("--keys-file", type=Path, required=True, help="YAML keys file to append to")
    create.add_argument("--tier", required=True, help="tier of the new key")
    create.add_argument("--id", dest="key_id", help="key id (default: generated)")
    create.add_argument("--account", help="account the key belongs to (default: its id)")
    create.add_argument("--config", type=Path, help="check the tier against this config's tiers")
    create.set_defaults(handler=_keys_create)
    cli_accounts.add_commands(sub, keys_sub)


def _add_calibrate(sub: Any) -> None:
    cal = sub.add_parser("calibrate", help="find σ for target agreements")
    cal.add_argument("--model", required=True, help="a shipped model name or a config/model path")
    cal.add_argument(
        "--targets", type=_floats, required=True, help="target agreements, e.g. 0.9,0.75,0.5"
    )
    cal.add_argument("--inputs", type=Path, help="unlabeled calibration inputs (.npy or .pt)")
    cal.add_argument("--out", type=Path, help="write the results as JSON")
    cal.set_defaults(handler=_lazy("calibrate_command"))


def _add_eval(sub: Any) -> None:
    ev = sub.add_parser("eval", help="measure modulation on held-out data")
    ev_sub = ev.add_subparsers(dest="eval_command", required=True, metavar="KIND")
    model_help = "a shipped model name or a config/model path"
    util = ev_sub.add_parser("utility", help="accuracy and agreement against σ")
    util.add_argument("--model", required=True, help=model_help)
    util.add_argument("--sigmas", type=_floats, required=True, help="σ values, e.g. 0,2,4,8,16")
    util.add_argument(
        "--out", type=Path, default=Path("out/utility"), help="output folder (default: out/utility)"
    )
    util.add_argument(
        "--noise",
        choices=["keyed", "fresh"],
        default="keyed",
        help="noise as served (keyed) or a fresh draw per call (default: keyed)",
    )
    util.add_argument(
        "--keys",
        type=int,
        default=100,
        help="evaluation keys averaged (keyed noise: one draw each; default: 100)",
    )
    util.set_defaults(handler=_lazy("eval_utility_command"))
    foc = ev_sub.add_parser("focus", help="class share and accuracy against focus strength")
    foc.add_argument("--model", required=True, help=model_help)
    foc.add_argument(
        "--class", dest="cls", required=True, help="label or index (a token for generation)"
    )
    foc.add_argument("--direction", choices=["up", "down"], required=True, help="shift up or down")
    foc.add_argument(
        "--strengths", type=_floats, required=True, help="focus strengths λ, e.g. 0,1,2,4,8"
    )
    foc.add_argument(
        "--out", type=Path, default=Path("out/focus"), help="output folder (default: out/focus)"
    )
    foc.set_defaults(handler=_lazy("eval_focus_command"))


def _lazy(name: str) -> Handler:
    """A handler in `evaluation`, imported only when run: `aim --help` needs no torch."""

    def run(args: argparse.Namespace) -> int:
        from . import evaluation

        result: int = getattr(evaluation, name)(args)
        return result

    return run


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


def _serve(args: argparse.Namespace) -> int:
    from .config import ConfigError, ServiceConfig
    from .keys import KeyRecord, KeysFileError, KeyStore, generate_key, hash_key
    from .logs import configure_logging

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
    from .api.app import create_app  # not in a --workers parent, which serves nothing itself
    from .workers import WorkerContext

    worker = WorkerContext.from_env()
    app = create_app(settings, config, keys, secret=secret)
    if demo_keys:
        _print_demo_keys(settings, config, demo_keys)
    from .overload import OverloadGuard
    from .server import limits_from, serve

    guard = OverloadGuard(app.state.aim)
    sock = worker.listening_socket() if worker is not None else None
    serve(guard.gate(app), settings.host, settings.port, limits_from(settings), guard, sock=sock)
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

    from .keys import write_keys_file
    from .modulation import SharedRings
    from .workers import MEMORY_ENV, METRICS_ENV, Supervisor, bind, private_dir, worker_command

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


def _keys_create(args: argparse.Namespace) -> int:
    from .config import ConfigError, ServiceConfig
    from .keys import KeysFileError, create_key

    try:
        config = ServiceConfig.load(args.config) if args.config else ServiceConfig()
    except ConfigError as exc:
        print(f"aim keys: {exc}", file=sys.stderr)
        return 2
    tiers = [t.name for t in config.tiers]
    if args.tier not in tiers:
        print(f"aim keys: --tier {args.tier!r} is not one of {', '.join(tiers)}", file=sys.stderr)
        return 2
    try:
        record, plaintext = create_key(args.keys_file, args.tier, args.key_id, args.account)
    except KeysFileError as exc:
        print(f"aim keys: {exc}", file=sys.stderr)
        return 2
    print(
        f"created key {record.id!r} of account {record.account!r} for tier {record.tier!r} "
        f"in {args.keys_file}"
    )
    print("the key is shown once; only its SHA-256 is stored:")
    print(plaintext)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    args.argv = argv  # `serve --workers N` starts each worker with the same flags
    handler: Handler = args.handler
    return handler(args)


if __name__ == "__main__":
    raise SystemExit(main())
