"""The README runs as written: every ```sh and ```python block, in order, against the servers
the README itself starts.

The rules, for whoever edits the README:
- ```sh and ```python blocks run in README order, in a scratch folder holding links to the
  repository's files (`.venv` links to the virtual environment running the tests), so files a
  block writes (keys, secrets) land in the scratch folder.
- A ```sh block whose last command is `make serve` or `aim serve ...` starts that server in the
  background (`--port 8000` and make's `PORT` become a free port; `--host 0.0.0.0` becomes
  127.0.0.1) and waits for `/readyz`. It serves the blocks after it until the next server block.
- In the blocks, `http://127.0.0.1:8000` stands for the server started last and `aim_…` for the
  first key printed by its block (`make serve` lists the gold key first; `aim keys create`
  prints one). Each sh block must exit 0; each python block must run and print something.
- A ```json block right after a run block is that block's output: the same keys and values
  (floats to ±0.01; `…`, `[…]` and `{…}` match anything), compared with the last JSON line
  the block printed.
- A ```yaml block whose first line is `# PATH` of a file in the repository shows that file: both
  must parse to the same YAML.
- A block that cannot run in a test says so in its fence, visibly: ```sh no-test: REASON. Each
  one is reported as skipped with its reason; nothing else is skipped.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from service.cli.main import build_parser

from .conftest import LiveServer, free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
CLIENT_README = ROOT / "clients/python/README.md"
PLACEHOLDER_URL = "http://127.0.0.1:8000"
PLACEHOLDER_KEY = "aim_…"
KEY = re.compile(r"aim_[A-Za-z0-9_-]{20,}")
SERVER = re.compile(r"(?:^|[\s/])(?:make serve|aim serve)\b")
RUN_LANGS = {"sh", "python"}
NO_TEST = "no-test:"
# `make serve` keys its noise with an ephemeral secret. The README's focus outputs are those of
# this secret, so that the test can hold them to it; the README says that numbers vary.
DEMO_SECRET = "readme-example-secret"
ANY = "\x00any"


@dataclass
class Block:
    lang: str
    info: str
    text: str
    line: int

    @property
    def skip_reason(self) -> str | None:
        rest = self.info[len(self.lang) :].strip()
        return (
            rest[len(NO_TEST) :].strip() or "no reason given" if rest.startswith(NO_TEST) else None
        )

    def __str__(self) -> str:
        return f"README.md:{self.line} ```{self.info}"


def blocks(text: str) -> list[Block]:
    found = []
    for m in re.finditer(r"^```([^\n]*)\n(.*?)^```$", text, flags=re.S | re.M):
        info = m.group(1).strip()
        lang = info.split()[0] if info else ""
        found.append(Block(lang, info, m.group(2), text.count("\n", 0, m.start()) + 1))
    return found


def commands(script: str) -> list[str]:
    """Shell commands of a block: continuation lines joined, comments and blank lines dropped."""
    joined = script.replace("\\\n", " ")
    return [c for c in (line.strip() for line in joined.splitlines()) if c and c[0] != "#"]


@dataclass
class Server:
    url: str
    key: str
    process: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()


@dataclass
class Session:
    """The README's reader: one scratch folder, the server started last and its key."""

    work: Path
    env: dict[str, str]
    server: Server | None = None

    def substitute(self, text: str) -> str:
        if self.server is None:
            assert PLACEHOLDER_URL not in text, "a request before any server was started"
            return text
        return text.replace(PLACEHOLDER_URL, self.server.url).replace(
            PLACEHOLDER_KEY, self.server.key
        )

    def run_sh(self, block: Block) -> str:
        cmds = commands(block.text)
        assert cmds, f"{block} has no command"
        if SERVER.search(cmds[-1]):
            self.start_server(block, cmds)
            return self.server.log.read_text(errors="replace") if self.server else ""
        script = "set -euo pipefail\n" + self.substitute(block.text)
        done = subprocess.run(
            ["bash", "-c", script],
            cwd=self.work,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, (
            f"{block} exited {done.returncode}:\n{done.stdout}{done.stderr}"
        )
        return done.stdout

    def start_server(self, block: Block, cmds: list[str]) -> None:
        if self.server is not None:
            self.server.stop()
        port = free_port()
        last = cmds[-1].replace("--host 0.0.0.0", "--host 127.0.0.1")
        last = re.sub(r"--port \d+", f"--port {port}", last)
        env = {**self.env, "PORT": str(port), "HOST": "127.0.0.1"}
        if "make serve" in last:
            env["AIM_SECRET"] = DEMO_SECRET
        script = "set -euo pipefail\n" + "\n".join([*cmds[:-1], "exec " + last])
        log = self.work / f"server-{block.line}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                ["bash", "-c", self.substitute(script)],
                cwd=self.work,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 240
        while True:
            text = log.read_text(errors="replace")
            assert proc.poll() is None, f"{block}: the server exited {proc.returncode}:\n{text}"
            assert time.monotonic() < deadline, f"{block}: no /readyz 200 in time:\n{text}"
            try:
                if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        # The key is printed before the server logs it is ready (keys create, or the demo list).
        text = log.read_text(errors="replace")
        keys = KEY.findall(text)
        assert keys, f"{block}: no API key was printed:\n{text}"
        self.server = Server(url, keys[0], proc, log)
        if "\nTry:\n" in text:  # the request `--demo` prints is one more README command
            printed = text.split("\nTry:\n", 1)[1].splitlines()[0].strip()
            done = subprocess.run(["bash", "-c", printed], capture_output=True, text=True)
            assert "predictions" in last_json(done.stdout), (printed, done.stdout, done.stderr)

    def run_python(self, block: Block) -> str:
        assert self.server is not None, f"{block} runs before any server was started"
        out = io.StringIO()
        cwd = Path.cwd()
        try:
            os.chdir(self.work)
            with contextlib.redirect_stdout(out):
                code = compile(self.substitute(block.text), str(block), "exec")
                exec(code, {"__name__": "readme_example"})
        finally:
            os.chdir(cwd)
        assert out.getvalue().strip(), f"{block} printed nothing"
        return out.getvalue()


def match(expected: Any, actual: Any, where: str = "$") -> None:
    """`actual` has exactly the keys of `expected` and its values; floats to ±0.01."""
    if expected == ANY:
        return
    if isinstance(expected, dict):
        assert isinstance(actual, dict), f"{where}: {actual!r} is not an object"
        assert set(expected) == set(actual), f"{where}: keys {sorted(actual)} != {sorted(expected)}"
        for k in expected:
            match(expected[k], actual[k], f"{where}.{k}")
    elif isinstance(expected, list):
        assert isinstance(actual, list), f"{where}: {actual!r} is not a list"
        assert len(expected) == len(actual), (
            f"{where}: {len(actual)} items, README shows {len(expected)}"
        )
        for i, (e, a) in enumerate(zip(expected, actual, strict=True)):
            match(e, a, f"{where}[{i}]")
    elif isinstance(expected, float) and not isinstance(actual, bool):
        assert isinstance(actual, int | float), f"{where}: {actual!r} is not a number"
        assert abs(actual - expected) <= 0.01, f"{where}: {actual} where README shows {expected}"
    else:
        assert expected == actual, f"{where}: {actual!r} where README shows {expected!r}"


def expected_json(text: str) -> Any:
    return json.loads(re.sub(r'\{…\}|\[…\]|"…"|…', lambda _: json.dumps(ANY), text))


def last_json(output: str) -> Any:
    for line in reversed(output.strip().splitlines()):
        with contextlib.suppress(ValueError):
            return json.loads(line)
    raise AssertionError(f"no JSON line in the output:\n{output}")


def _checkout_entries() -> set[str]:
    """Top-level names a fresh clone has: an `out/` or `keys.yaml` left here is not the README's."""
    listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    if listed.returncode == 0 and listed.stdout.strip():
        return {path.split("/")[0] for path in listed.stdout.split()}
    left_behind = {".venv", ".git", "out", "keys.yaml", "secret"}
    return {p.name for p in ROOT.iterdir()} - left_behind


@pytest.fixture
def session(tmp_path: Path) -> Iterator[Session]:
    work = tmp_path / "checkout"
    work.mkdir()
    for name in _checkout_entries():
        (work / name).symlink_to(ROOT / name)
    venv = Path(sys.prefix).resolve()
    (work / ".venv").symlink_to(venv)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIM_")}
    # As on a fresh shell: no activated venv, so a bare `aim` in the README fails here too.
    env["PATH"] = os.pathsep.join(
        p for p in env.get("PATH", "").split(os.pathsep) if Path(p).resolve() != venv / "bin"
    )
    env.pop("VIRTUAL_ENV", None)
    env.update(
        AIM_CACHE_DIR=str(tmp_path / "cache"),
        AIM_DEVICE="cpu",
        # `make` must use this environment's venv, whatever its folder is called.
        VENV=str(venv),
    )
    s = Session(work, env)
    yield s
    if s.server is not None:
        s.server.stop()


def test_every_readme_block_runs_as_written(session: Session) -> None:
    all_blocks = blocks(README.read_text())
    ran = 0
    output: str | None = None
    for block in all_blocks:
        if block.lang in RUN_LANGS:
            reason = block.skip_reason
            if reason is not None:  # reported by test_blocks_marked_no_test_are_reported
                output = None
                continue
            output = session.run_sh(block) if block.lang == "sh" else session.run_python(block)
            ran += 1
        elif block.lang == "json" and output is not None:
            match(expected_json(block.text), last_json(output))
            output = None
        else:
            output = None
    assert ran >= 5, f"only {ran} blocks ran"


MARKED = [b for b in blocks(README.read_text()) if b.lang in RUN_LANGS and b.skip_reason]


@pytest.mark.parametrize("block", MARKED, ids=str)
def test_blocks_marked_no_test_are_reported(block: Block) -> None:
    """Never silent: each block the README marks no-test shows in the report with its reason."""
    assert block.skip_reason != "no reason given", f"{block}: say why it cannot run"
    pytest.skip(f"{block} (not run)")


def test_every_block_is_of_a_known_kind() -> None:
    langs = {b.lang for b in blocks(README.read_text())}
    assert langs <= RUN_LANGS | {"json", "yaml", "text"}, f"unknown block kinds {langs}"


def test_client_readme_python_example_runs(
    live_server: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """clients/python/README.md: its first Python example against a live server."""
    monkeypatch.setenv("AIM_API_KEY", live_server.keys["gold"][0])
    code = next(b.text for b in blocks(CLIENT_README.read_text()) if b.lang == "python")
    assert PLACEHOLDER_URL in code
    code = code.replace(PLACEHOLDER_URL, live_server.url)
    code = re.sub(r'"aim_[^"]*"', repr(live_server.keys["gold"][0]), code)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "clients/python/README.md", "exec"), {"__name__": "readme_example"})
    assert out.getvalue().strip(), "the example printed nothing"


def test_yaml_blocks_naming_a_file_show_that_file() -> None:
    shown = 0
    for block in blocks(README.read_text()):
        first = block.text.splitlines()[0] if block.text else ""
        if block.lang == "yaml" and first.startswith("# ") and (ROOT / first[2:].strip()).is_file():
            path = ROOT / first[2:].strip()
            assert yaml.safe_load(block.text) == yaml.safe_load(path.read_text()), block
            shown += 1
    assert shown >= 1


def _flags_of(argv: list[str]) -> set[str]:
    parser = build_parser()
    for word in argv:
        sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
        parser = sub.choices[word]  # type: ignore[attr-defined]
    return {s for a in parser._actions for s in a.option_strings}


def test_cli_synopsis_names_only_real_flags() -> None:
    synopsis = [b for b in blocks(README.read_text()) if b.lang == "text" and "aim serve" in b.text]
    assert synopsis, "README has no CLI synopsis"
    for line in synopsis[0].text.splitlines():
        if not line.startswith("aim "):
            continue
        words = line.split()
        argv = [w for w in words[1:3] if re.fullmatch(r"[a-z]+", w)]
        unknown = set(re.findall(r"--[a-z-]+", line)) - _flags_of(argv)
        assert not unknown, f"{line!r}: no such flags {unknown}"


def test_settings_table_matches_the_settings_and_the_flags() -> None:
    from service.cli.flags import env_only, flag_name
    from service.settings import Settings

    text = README.read_text()
    rows = re.findall(r"^\| `AIM_([A-Z_]+)` \| ([^|]*) \|", text, flags=re.M)
    assert rows, "README has no settings table"
    documented = {name.lower(): flag.strip() for name, flag in rows}
    assert set(documented) == set(Settings.model_fields), (
        f"settings table and Settings differ: {set(documented) ^ set(Settings.model_fields)}"
    )
    serve_flags = _flags_of(["serve"])
    for name, flag in documented.items():
        if env_only(name):
            assert "environment only" in flag, f"AIM_{name.upper()}: say it is environment only"
        else:
            assert flag == f"`{flag_name(name)}`" and flag_name(name) in serve_flags, (name, flag)
