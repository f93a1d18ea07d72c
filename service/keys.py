"""API keys: stored only as SHA-256 hashes, looked up by the hash of what a client sends."""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

KEY_PREFIX = "aim_"
_ID_PATTERN = re.compile(r"[A-Za-z0-9_.@-]{1,64}")


class KeysFileError(ValueError):
    """The keys file is invalid; the message names the entry and field."""


@dataclass(frozen=True)
class KeyRecord:
    """A key as stored: its id, its tier and the SHA-256 of the plaintext (never the plaintext)."""

    id: str
    tier: str
    sha256: str

    def __repr__(self) -> str:  # the hash is not a secret, but there is no reason to spread it
        return f"KeyRecord(id={self.id!r}, tier={self.tier!r})"


def hash_key(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode()).hexdigest()


def generate_key() -> str:
    """A new random key (256 bits)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


class KeyStore:
    """Keys by hash. Lookup hashes the presented key and compares digests in constant time."""

    def __init__(self, records: list[KeyRecord]) -> None:
        self._by_hash: dict[str, KeyRecord] = {}
        for record in records:
            if record.sha256 in self._by_hash:
                raise KeysFileError(f"keys: {record.id!r} has the same hash as another key")
            self._by_hash[record.sha256] = record

    def __len__(self) -> int:
        return len(self._by_hash)

    def records(self) -> list[KeyRecord]:
        return list(self._by_hash.values())

    def lookup(self, presented: str) -> KeyRecord | None:
        digest = hash_key(presented)
        record = self._by_hash.get(digest)
        if record is not None and hmac.compare_digest(record.sha256, digest):
            return record
        return None

    @classmethod
    def load(cls, path: Path, tiers: set[str] | None = None) -> KeyStore:
        return cls(read_keys_file(path, tiers))


def read_keys_file(path: Path, tiers: set[str] | None = None) -> list[KeyRecord]:
    if not path.exists():
        raise KeysFileError(f"keys file {str(path)!r} does not exist")
    try:
        raw: Any = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise KeysFileError(f"keys file {str(path)!r} is not valid YAML: {exc}") from None
    if raw is None:
        return []
    entries = raw.get("keys") if isinstance(raw, dict) else None
    if not isinstance(entries, list):
        raise KeysFileError(f"keys file {str(path)!r}: has to be a mapping with a `keys` list")
    records = []
    for i, entry in enumerate(entries):
        where = f"keys[{i}]"
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
        records.append(KeyRecord(key_id, tier, digest))
    ids = [r.id for r in records]
    dupes = {i for i in ids if ids.count(i) > 1}
    if dupes:
        raise KeysFileError(f"keys: duplicate id(s) {sorted(dupes)}")
    return records


def create_key(path: Path, tier: str, key_id: str | None = None) -> tuple[KeyRecord, str]:
    """Append a new key to the keys file (created if missing); return it and its plaintext.

    The file is rewritten atomically with owner-only permissions; only the hash is stored.
    """
    records = read_keys_file(path) if path.exists() else []
    key_id = key_id or f"key-{secrets.token_hex(4)}"
    if not _ID_PATTERN.fullmatch(key_id):
        raise KeysFileError(f"--id: {key_id!r} is not a valid key id ([A-Za-z0-9_.@-], 1-64)")
    if any(r.id == key_id for r in records):
        raise KeysFileError(f"--id: a key with id {key_id!r} already exists in {str(path)!r}")
    plaintext = generate_key()
    record = KeyRecord(key_id, tier, hash_key(plaintext))
    records.append(record)
    body = {"keys": [{"id": r.id, "tier": r.tier, "sha256": r.sha256} for r in records]}
    tmp = path.with_name(path.name + ".tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        yaml.safe_dump(body, fh, sort_keys=False)
    os.replace(tmp, path)
    return record, plaintext
