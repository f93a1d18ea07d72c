"""API keys and the accounts they belong to: stored only as SHA-256 hashes, looked up by the hash
of what a client sends.

The keys file is YAML, `{"keys": [{id, account, tier, created, sha256}, ...]}`; `account` defaults
to the key's id and `created` may be missing (keys written before accounts existed). Every write
replaces the file atomically, so a running server that reloads it (`service.access.keywatch`) never
reads half a file written by `aim keys`.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

KEY_PREFIX = "aim_"
_ID_PATTERN = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
_ID_RULE = "[A-Za-z0-9_.@-], 1-64"


class KeysFileError(ValueError):
    """The keys file is invalid; the message names the entry and field."""


@dataclass(frozen=True)
class KeyRecord:
    """A key as stored: its id, tier, account, creation time and the SHA-256 of the plaintext
    (never the plaintext). Limits and quotas count per `account`."""

    id: str
    tier: str
    sha256: str
    account: str = ""
    created: str | None = None

    def __post_init__(self) -> None:
        if not self.account:  # a key without an account is an account of its own
            object.__setattr__(self, "account", self.id)

    def __repr__(self) -> str:  # the hash is not a secret, but there is no reason to spread it
        return f"KeyRecord(id={self.id!r}, account={self.account!r}, tier={self.tier!r})"

    def to_entry(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"id": self.id, "account": self.account, "tier": self.tier}
        if self.created is not None:
            entry["created"] = self.created
        entry["sha256"] = self.sha256
        return entry


def hash_key(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode()).hexdigest()


def generate_key() -> str:
    """A new random key (256 bits)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class KeyStore:
    """Keys by hash. Lookup hashes the presented key and compares digests in constant time.

    `replace` swaps the whole set at once (one dict assignment), so a request running during a
    reload sees either the old set or the new one, never a mix.
    """

    def __init__(self, records: list[KeyRecord]) -> None:
        self._by_hash = self._index(records)

    @staticmethod
    def _index(records: list[KeyRecord]) -> dict[str, KeyRecord]:
        by_hash: dict[str, KeyRecord] = {}
        for record in records:
            if record.sha256 in by_hash:
                raise KeysFileError(f"keys: {record.id!r} has the same hash as another key")
            by_hash[record.sha256] = record
        return by_hash

    def __len__(self) -> int:
        return len(self._by_hash)

    def records(self) -> list[KeyRecord]:
        return list(self._by_hash.values())

    def replace(self, records: list[KeyRecord]) -> None:
        self._by_hash = self._index(records)

    def lookup(self, presented: str) -> KeyRecord | None:
        digest = hash_key(presented)
        record = self._by_hash.get(digest)
        if record is not None and hmac.compare_digest(record.sha256, digest):
            return record
        return None

    @classmethod
    def load(cls, path: Path, tiers: set[str] | None = None) -> KeyStore:
        return cls(read_keys_file(path, tiers))


def _optional_name(entry: dict[str, Any], name: str, where: str) -> str | None:
    value = entry.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not _ID_PATTERN.fullmatch(value):
        raise KeysFileError(f"{where}.{name}: {value!r} is not a valid {name} ({_ID_RULE})")
    return value


def _created(entry: dict[str, Any], where: str) -> str | None:
    value = entry.get("created")
    if value is None:
        return None
    if isinstance(value, datetime):  # YAML reads an unquoted timestamp as a datetime
        value = value.astimezone(timezone.utc) if value.tzinfo else value
        return value.strftime("%Y-%m-%dT%H:%M:%SZ")
    if not isinstance(value, str):
        raise KeysFileError(f"{where}.created: {value!r} has to be an ISO 8601 time")
    return value


def parse_entry(entry: Any, where: str, tiers: set[str] | None) -> KeyRecord:
    if not isinstance(entry, dict):
        raise KeysFileError(f"{where}: has to be a mapping with id, tier and sha256")
    key_id, tier, digest = entry.get("id"), entry.get("tier"), entry.get("sha256")
    if not isinstance(key_id, str) or not _ID_PATTERN.fullmatch(key_id):
        raise KeysFileError(f"{where}.id: {key_id!r} is not a valid key id")
    if not isinstance(tier, str) or (tiers is not None and tier not in tiers):
        known = "" if tiers is None else f" (known tiers: {', '.join(sorted(tiers))})"
        raise KeysFileError(f"{where}.tier: {tier!r} is not a configured tier{known}")
    if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise KeysFileError(f"{where}.sha256: has to be 64 lowercase hex characters")
    account = _optional_name(entry, "account", where) or key_id
    return KeyRecord(key_id, tier, digest, account, _created(entry, where))


def read_keys_file(path: Path, tiers: set[str] | None = None) -> list[KeyRecord]:
    if not path.exists():
        raise KeysFileError(f"keys file {str(path)!r} does not exist")
    try:
        raw: Any = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise KeysFileError(f"keys file {str(path)!r} is not valid YAML: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise KeysFileError(f"keys file {str(path)!r} cannot be read: {exc}") from None
    if raw is None:
        return []
    entries = raw.get("keys") if isinstance(raw, dict) else None
    if not isinstance(entries, list):
        raise KeysFileError(f"keys file {str(path)!r}: has to be a mapping with a `keys` list")
    records = [parse_entry(entry, f"keys[{i}]", tiers) for i, entry in enumerate(entries)]
    ids = [r.id for r in records]
    dupes = {i for i in ids if ids.count(i) > 1}
    if dupes:
        raise KeysFileError(f"keys: duplicate id(s) {sorted(dupes)}")
    return records


def write_keys_file(path: Path, records: list[KeyRecord]) -> None:
    """Replace the keys file atomically (write a temporary file, rename), owner-only."""
    body = {"keys": [r.to_entry() for r in records]}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            yaml.safe_dump(body, fh, sort_keys=False)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def create_key(
    path: Path, tier: str, key_id: str | None = None, account: str | None = None
) -> tuple[KeyRecord, str]:
    """Append a new key to the keys file (created if missing); return it and its plaintext.

    Only the hash is stored. The account defaults to the key id.
    """
    records = read_keys_file(path) if path.exists() else []
    key_id = key_id or f"key-{secrets.token_hex(4)}"
    if not _ID_PATTERN.fullmatch(key_id):
        raise KeysFileError(f"--id: {key_id!r} is not a valid key id ({_ID_RULE})")
    if account is not None and not _ID_PATTERN.fullmatch(account):
        raise KeysFileError(f"--account: {account!r} is not a valid account name ({_ID_RULE})")
    if any(r.id == key_id for r in records):
        raise KeysFileError(f"--id: a key with id {key_id!r} already exists in {str(path)!r}")
    plaintext = generate_key()
    record = KeyRecord(key_id, tier, hash_key(plaintext), account or key_id, _now())
    write_keys_file(path, [*records, record])
    return record, plaintext


def revoke_key(path: Path, key_id: str) -> KeyRecord:
    """Remove the key `key_id` from the keys file; return what was removed."""
    records = read_keys_file(path)
    found = [r for r in records if r.id == key_id]
    if not found:
        known = ", ".join(r.id for r in records) or "none"
        raise KeysFileError(f"--id: no key {key_id!r} in {str(path)!r} (ids: {known})")
    write_keys_file(path, [r for r in records if r.id != key_id])
    return found[0]
