"""Keys and accounts: the keys file, `aim keys create|revoke|list`, and live reloading."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
import yaml

from service.access.keys import (
    KeyRecord,
    KeysFileError,
    KeyStore,
    create_key,
    hash_key,
    read_keys_file,
    revoke_key,
)
from service.access.keywatch import KeysWatcher
from service.cli.main import main

pytestmark = pytest.mark.unit
TIERS = {"gold", "silver", "bronze"}


def test_a_created_key_has_an_account_defaulting_to_its_id_and_a_creation_time(
    tmp_path: Path,
) -> None:
    path = tmp_path / "keys.yaml"
    alone, _ = create_key(path, "gold", "k1")
    shared, plaintext = create_key(path, "bronze", "k2", account="acme")
    assert alone.account == "k1"
    assert shared.account == "acme"
    entries = yaml.safe_load(path.read_text())["keys"]
    assert [set(e) for e in entries] == [{"id", "account", "tier", "created", "sha256"}] * 2
    assert plaintext not in path.read_text()
    assert read_keys_file(path, TIERS) == [alone, shared]
    assert shared.created and shared.created.endswith("Z")


def test_an_entry_without_account_or_created_is_an_account_of_its_own(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    digest = hash_key("x")
    path.write_text(yaml.safe_dump({"keys": [{"id": "old", "tier": "gold", "sha256": digest}]}))
    (record,) = read_keys_file(path, TIERS)
    assert (record.account, record.created) == ("old", None)


@pytest.mark.parametrize(
    ("entry", "field"),
    [
        ({"account": "has space"}, "keys[0].account"),
        ({"created": 12}, "keys[0].created"),
        ({"tier": "platinum"}, "keys[0].tier"),
    ],
)
def test_bad_entries_name_their_field(tmp_path: Path, entry: dict[str, object], field: str) -> None:
    path = tmp_path / "keys.yaml"
    base = {"id": "a", "tier": "gold", "sha256": hash_key("x"), **entry}
    path.write_text(yaml.safe_dump({"keys": [base]}))
    with pytest.raises(KeysFileError, match=field.replace("[", r"\[").replace("]", r"\]")):
        read_keys_file(path, TIERS)


def test_revoke_removes_only_that_key(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    create_key(path, "gold", "a")
    kept, _ = create_key(path, "gold", "b")
    assert revoke_key(path, "a").id == "a"
    assert read_keys_file(path) == [kept]
    with pytest.raises(KeysFileError, match="no key 'a'"):
        revoke_key(path, "a")


def test_cli_create_list_revoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = str(tmp_path / "keys.yaml")
    assert main(["keys", "create", "--keys-file", path, "--tier", "gold", "--id", "a1"]) == 0
    plaintext = capsys.readouterr().out.strip().splitlines()[-1]
    args = ["keys", "create", "--keys-file", path, "--tier", "silver", "--id", "a2"]
    assert main([*args, "--account", "acme"]) == 0
    capsys.readouterr()
    assert main(["keys", "list", "--keys-file", path]) == 0
    listing = capsys.readouterr().out
    header, first, second = listing.strip().splitlines()
    assert header.split() == ["id", "account", "tier", "created", "sha256"]
    assert first.split()[:3] == ["a1", "a1", "gold"]
    assert second.split()[:3] == ["a2", "acme", "silver"]
    digest = hash_key(plaintext)
    assert digest not in listing and digest[:12] in listing  # a prefix, never the whole hash
    assert main(["keys", "revoke", "--keys-file", path, "--id", "a1"]) == 0
    assert [r.id for r in read_keys_file(Path(path))] == ["a2"]
    assert main(["keys", "revoke", "--keys-file", path, "--id", "nope"]) == 2
    assert "no key 'nope'" in capsys.readouterr().err


def test_cli_create_refuses_a_bad_account(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(tmp_path / "keys.yaml")
    args = ["keys", "create", "--keys-file", path, "--tier", "gold", "--account", "a b"]
    assert main(args) == 2
    assert "--account" in capsys.readouterr().err


def test_watcher_takes_a_new_file_and_keeps_the_last_good_one_when_broken(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "keys.yaml"
    _, first = create_key(path, "gold", "first")
    store = KeyStore.load(path, TIERS)
    watcher = KeysWatcher(store, path, TIERS)
    assert not watcher.changed()
    _, second = create_key(path, "gold", "second")
    assert watcher.changed() and watcher.reload()
    assert store.lookup(second) is not None and store.lookup(first) is not None
    revoke_key(path, "first")
    assert watcher.reload()
    assert store.lookup(first) is None
    path.write_text("keys: [ {id: broken")  # a half-written file
    with caplog.at_level(logging.ERROR, logger="service.access.keywatch"):
        assert not watcher.reload()
    assert "last good keys" in caplog.text
    assert store.lookup(second) is not None  # neither an open door nor every key refused
    assert watcher.changed()  # retried on every poll until it parses
    path.unlink()
    assert not watcher.reload() and store.lookup(second) is not None


async def test_watcher_task_reloads_a_changed_file(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    create_key(path, "gold", "first")
    store = KeyStore.load(path, TIERS)
    watcher = KeysWatcher(store, path, TIERS, poll_seconds=0.05)
    watcher.start()
    try:
        _, added = create_key(path, "bronze", "added")
        for _ in range(100):
            if store.lookup(added) is not None:
                break
            await asyncio.sleep(0.05)
        record = store.lookup(added)
        assert isinstance(record, KeyRecord) and record.tier == "bronze"
    finally:
        await watcher.stop()
