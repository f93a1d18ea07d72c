"""`aim serve`'s flags: one per `Settings` field, named and described from the field."""

from __future__ import annotations

import argparse
import types
import typing
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from ..settings import Settings

# Flag placeholders by the field name's last word (`max_wait_ms` → MS); counts are N.
_METAVARS = {"ms": "MS", "s": "SECONDS", "bytes": "BYTES", "size": "SIZE", "threads": "N"}
LOG_LEVELS = ["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


def floats(text: str) -> list[float]:
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
    return unwrap(Settings.model_fields[field].annotation) is SecretStr


def unwrap(annotation: Any) -> Any:
    """`X | None` → X; anything else unchanged."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def add_settings_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per `Settings` field (`max_batch_size` → `--max-batch-size`), help from its
    docstring. Unset flags stay None, so the environment (`AIM_<NAME>`) and defaults apply."""
    for name, field in Settings.model_fields.items():
        if env_only(name):
            continue
        kind = unwrap(field.annotation)
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
