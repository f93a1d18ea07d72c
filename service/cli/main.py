"""The `aim` command: serve, keys, calibrate, eval. It parses flags and wires; logic lives in
the modules it calls.

Each subcommand is a `_add_<name>(sub)` function that builds its parser and sets `handler`, so a
new subcommand is one more function and one line in `build_parser`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import __version__
from . import accounts as cli_accounts
from . import digest as cli_digest
from .flags import add_settings_flags, floats
from .serve import serve_command
from .usage import UsageError, check_args

if TYPE_CHECKING:
    pass

Handler = Callable[[argparse.Namespace], int]


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
    cli_digest.add_command(sub)
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
    add_settings_flags(serve)
    serve.set_defaults(handler=serve_command)


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
        "--targets", type=floats, required=True, help="target agreements, e.g. 0.9,0.75,0.5"
    )
    cal.add_argument(
        "--inputs",
        type=Path,
        help="unlabeled calibration inputs (.npy, .pt, or a folder of PNG/JPEG images)",
    )
    cal.add_argument("--out", type=Path, help="write the results as JSON")
    cal.set_defaults(handler=_lazy("calibrate_command"))


def _add_eval(sub: Any) -> None:
    ev = sub.add_parser("eval", help="measure modulation on held-out data")
    ev_sub = ev.add_subparsers(dest="eval_command", required=True, metavar="KIND")
    model_help = "a shipped model name or a config/model path"
    util = ev_sub.add_parser("utility", help="accuracy and agreement against σ")
    util.add_argument("--model", required=True, help=model_help)
    util.add_argument("--sigmas", type=floats, required=True, help="σ values, e.g. 0,2,4,8,16")
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
        "--strengths", type=floats, required=True, help="focus strengths λ, e.g. 0,1,2,4,8"
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


def _keys_create(args: argparse.Namespace) -> int:
    from ..access.keys import KeysFileError, create_key
    from ..config import ConfigError, ServiceConfig

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
    name = " ".join(filter(None, [args.command, getattr(args, "eval_command", None)]))
    try:
        check_args(args)
        return handler(args)
    except UsageError as exc:
        print(f"aim {name}: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        if args.command not in ("calibrate", "eval"):
            raise
        # An offline tool: the reason in one line, not a traceback (a bug still says its type).
        print(f"aim {name}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
