"""The `aim` command: serve, keys, calibrate, eval. It parses flags and wires; logic lives in
the modules it calls."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aim", description="AIM serving: one model, several tiers."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="serve a model over HTTP")
    serve.add_argument("--config", type=Path, help="YAML config (model and tiers)")
    serve.add_argument("--keys-file", type=Path, help="YAML keys file (hashes only)")
    serve.add_argument("--host", default=None)
    serve.add_argument("--port", type=int, default=None)
    serve.add_argument("--device", choices=["cpu", "cuda", "auto"], default=None)
    serve.add_argument(
        "--demo", action="store_true", help="ephemeral keys (printed once) and secret"
    )
    serve.add_argument("--workers-threads", type=int, default=None, help=argparse.SUPPRESS)

    keys = sub.add_parser("keys", help="manage API keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser("create", help="add a key; prints the key alone on the last line")
    create.add_argument("--keys-file", type=Path, required=True)
    create.add_argument("--tier", required=True)
    create.add_argument("--id", dest="key_id")
    create.add_argument("--config", type=Path, help="check the tier against this config's tiers")

    cal = sub.add_parser("calibrate", help="find σ for target agreements")
    cal.add_argument("--model", required=True, help="a shipped model name or a config/model path")
    cal.add_argument("--targets", type=_floats, required=True, help="e.g. 0.9,0.75,0.5")
    cal.add_argument("--inputs", type=Path, help="unlabeled calibration inputs (.npy or .pt)")
    cal.add_argument("--out", type=Path, help="write the results as JSON")

    ev = sub.add_parser("eval", help="measure modulation on held-out data")
    ev_sub = ev.add_subparsers(dest="eval_command", required=True)
    util = ev_sub.add_parser("utility", help="accuracy and agreement against σ")
    util.add_argument("--model", required=True)
    util.add_argument("--sigmas", type=_floats, required=True)
    util.add_argument("--out", type=Path, default=Path("out/utility"))
    util.add_argument("--noise", choices=["keyed", "fresh"], default="keyed")
    util.add_argument(
        "--keys",
        type=int,
        default=100,
        help="evaluation keys averaged (keyed noise: one draw each)",
    )
    foc = ev_sub.add_parser("focus", help="class share and accuracy against focus strength")
    foc.add_argument("--model", required=True)
    foc.add_argument("--class", dest="cls", required=True, help="label or index")
    foc.add_argument("--direction", choices=["up", "down"], required=True)
    foc.add_argument("--strengths", type=_floats, required=True)
    foc.add_argument("--out", type=Path, default=Path("out/focus"))
    return parser


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from .api.app import create_app
    from .config import ConfigError, ServiceConfig
    from .keys import KeyRecord, KeysFileError, KeyStore, generate_key, hash_key
    from .logs import configure_logging
    from .settings import Settings

    overrides: dict[str, Any] = {
        k: v
        for k, v in {
            "config": args.config,
            "keys_file": args.keys_file,
            "host": args.host,
            "port": args.port,
            "device": args.device,
        }.items()
        if v is not None
    }
    if args.demo:
        overrides["demo"] = True
    settings = Settings(**overrides)
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
            "aim serve: no server secret: set AIM_SECRET_FILE (a file) or AIM_SECRET",
            file=sys.stderr,
        )
        return 2
    configure_logging(settings.log_level)
    app = create_app(settings, config, keys, secret=secret)
    if demo_keys:
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
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=30,
    )
    return 0


def _keys(args: argparse.Namespace) -> int:
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
        record, plaintext = create_key(args.keys_file, args.tier, args.key_id)
    except KeysFileError as exc:
        print(f"aim keys: {exc}", file=sys.stderr)
        return 2
    print(f"created key {record.id!r} for tier {record.tier!r} in {args.keys_file}")
    print("the key is shown once; only its SHA-256 is stored:")
    print(plaintext)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command == "keys":
        return _keys(args)
    from . import evaluation

    if args.command == "calibrate":
        return evaluation.calibrate_command(args)
    if args.eval_command == "utility":
        return evaluation.eval_utility_command(args)
    return evaluation.eval_focus_command(args)


if __name__ == "__main__":
    raise SystemExit(main())
