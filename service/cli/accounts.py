"""The operator's `aim` subcommands: `aim keys revoke|list` and `aim usage`.

`service.cli.main` registers them with `add_commands`; each parser names its handler.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

HASH_SHOWN = 12  # hex characters of a key's hash `keys list` shows: enough to tell keys apart
# service/access/keywatch.py polls the keys file once a second; the README says the same words.
REVOKE_DELAY = "a running server drops it within about a second (at once on SIGHUP)"


def add_commands(sub: Any, keys_sub: Any) -> None:
    """Add `keys revoke`, `keys list` (under `keys_sub`) and `usage` (under `sub`)."""
    revoke = keys_sub.add_parser("revoke", help=f"remove a key; {REVOKE_DELAY}")
    revoke.add_argument("--keys-file", type=Path, required=True, help="YAML keys file")
    revoke.add_argument("--id", dest="key_id", required=True, help="id of the key to remove")
    revoke.set_defaults(handler=_revoke)
    listing = keys_sub.add_parser("list", help="id, account, tier, created (never a full hash)")
    listing.add_argument("--keys-file", type=Path, required=True, help="YAML keys file")
    listing.set_defaults(handler=_list)
    usage = sub.add_parser(
        "usage",
        help="usage per account and tier as CSV (from AIM_REDIS_URL, else AIM_STATE_DIR)",
        description="Usage per account and tier as CSV, read from the Redis of AIM_REDIS_URL "
        "when it is set (environment only: the URL may hold a password), else from the "
        "state directory.",
    )
    usage.add_argument("--since", help="Unix seconds or ISO 8601 (whole minutes)")
    usage.add_argument("--until", help="Unix seconds or ISO 8601 (exclusive)")
    usage.add_argument("--state-dir", type=Path, help="default: AIM_STATE_DIR")
    usage.set_defaults(handler=_usage)


def _revoke(args: argparse.Namespace) -> int:
    from ..access.keys import KeysFileError, revoke_key

    try:
        record = revoke_key(args.keys_file, args.key_id)
    except KeysFileError as exc:
        print(f"aim keys revoke: {exc}", file=sys.stderr)
        return 2
    print(f"revoked key {record.id!r} (account {record.account!r}, tier {record.tier!r})")
    return 0


def _list(args: argparse.Namespace) -> int:
    from ..access.keys import KeysFileError, read_keys_file

    try:
        records = read_keys_file(args.keys_file)
    except KeysFileError as exc:
        print(f"aim keys list: {exc}", file=sys.stderr)
        return 2
    rows = [("id", "account", "tier", "created", "sha256")]
    rows += [
        (r.id, r.account, r.tier, r.created or "-", r.sha256[:HASH_SHOWN] + "…") for r in records
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


def _usage(args: argparse.Namespace) -> int:
    """The same rows as `/admin/usage`, read from the store the servers write to."""
    import asyncio

    from ..access.sharedstate import RedisState, StateDown
    from ..access.usage import SqliteUsage, parse_time, summarise, to_csv
    from ..settings import Settings

    try:
        since = parse_time(args.since, "--since") if args.since else None
        until = parse_time(args.until, "--until") if args.until else None
    except ValueError as exc:
        print(f"aim usage: {exc}", file=sys.stderr)
        return 2
    settings = Settings(**({"state_dir": args.state_dir} if args.state_dir else {}))
    if settings.redis_url is not None:
        state = RedisState(settings.redis_url.get_secret_value())

        async def read() -> list[Any]:
            try:
                return await state.query_usage(since, until)
            finally:
                await state.close()

        try:
            rows = asyncio.run(read())
        except StateDown as exc:
            print(f"aim usage: {exc}", file=sys.stderr)
            return 1
    elif settings.state_dir is not None:
        if not (settings.state_dir / "usage.sqlite3").exists():
            print(f"aim usage: no usage recorded under {settings.state_dir}", file=sys.stderr)
            return 1
        store = SqliteUsage(settings.state_dir)
        rows = store.query(since, until)
        store.close()
    else:
        print(
            "aim usage: set AIM_REDIS_URL or AIM_STATE_DIR (or give --state-dir)",
            file=sys.stderr,
        )
        return 2
    sys.stdout.write(to_csv(summarise(rows)))
    return 0
