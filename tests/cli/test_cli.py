"""The `aim` command line: every flag has help, every setting has a flag (secrets excepted),
flag values reach the settings, and bad values are refused naming the flag."""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import pytest

from service import __version__
from service.cli.flags import env_only, flag_name
from service.cli.main import build_parser, main
from service.settings import Settings

pytestmark = pytest.mark.unit


def _parsers(parser: argparse.ArgumentParser, prog: str = "aim"):  # type: ignore[no-untyped-def]
    yield prog, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _parsers(child, f"{prog} {name}")


def test_every_flag_and_subcommand_has_help() -> None:
    missing = []
    for prog, parser in _parsers(build_parser()):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                helps = {a.dest: a.help for a in action._choices_actions}
                missing += [f"{prog} {n}" for n in action.choices if not helps.get(n)]
            elif not action.help or action.help == argparse.SUPPRESS:
                missing.append(f"{prog} {'/'.join(action.option_strings) or action.dest}")
    assert not missing, f"no help for: {missing}"


def test_every_setting_is_a_serve_flag_except_secrets() -> None:
    serve = dict(_parsers(build_parser()))["aim serve"]
    flags = {s for a in serve._actions for s in a.option_strings}
    for name in Settings.model_fields:
        if env_only(name):
            assert flag_name(name) not in flags, f"secret {name} must not be a flag"
        else:
            assert flag_name(name) in flags, f"setting {name} has no `aim serve` flag"
    assert env_only("secret")


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"aim {__version__}"


def test_serve_flags_reach_the_settings(tmp_path: Path) -> None:
    from service.cli.serve import _settings

    args = build_parser().parse_args(
        [
            "serve",
            "--max-batch-size",
            "7",
            "--queue-size",
            "9",
            "--cache-dir",
            str(tmp_path),
            "--log-level",
            "debug",
            "--secret-file",
            str(tmp_path / "s"),
            "--noise",
            "fresh",
            "--demo",
        ]
    )
    settings = _settings(args)
    assert settings is not None
    assert (settings.max_batch_size, settings.queue_size) == (7, 9)
    assert settings.cache_dir == tmp_path and settings.secret_file == tmp_path / "s"
    assert (settings.log_level, settings.noise, settings.demo) == ("DEBUG", "fresh", True)


def test_unset_flags_leave_the_environment_in_charge(monkeypatch: pytest.MonkeyPatch) -> None:
    from service.cli.serve import _settings

    monkeypatch.setenv("AIM_QUEUE_SIZE", "11")
    settings = _settings(build_parser().parse_args(["serve"]))
    assert settings is not None and settings.queue_size == 11
    settings = _settings(build_parser().parse_args(["serve", "--queue-size", "12"]))
    assert settings is not None and settings.queue_size == 12


@pytest.mark.parametrize(
    ("argv", "env", "named"),
    [
        (["serve", "--max-batch-size", "0"], {}, "--max-batch-size 0"),
        (["serve", "--demo"], {"AIM_QUEUE_SIZE": "lots"}, "AIM_QUEUE_SIZE 'lots'"),
    ],
)
def test_bad_setting_is_refused_naming_flag_and_value(
    argv: list[str],
    env: dict[str, str],
    named: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert main(argv) == 2
    assert named in capsys.readouterr().err


def test_serve_without_secret_says_how_to_give_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("AIM_SECRET", raising=False)
    monkeypatch.delenv("AIM_SECRET_FILE", raising=False)
    keys = tmp_path / "keys.yaml"
    assert main(["keys", "create", "--keys-file", str(keys), "--tier", "gold"]) == 0
    capsys.readouterr()
    assert main(["serve", "--keys-file", str(keys)]) == 2
    err = capsys.readouterr().err
    assert "--secret-file" in err and "AIM_SECRET" in err


def test_workers_without_redis_refuse_to_start(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("AIM_REDIS_URL", raising=False)
    # Refused before anything is bound or started: each worker would count limits on its own.
    assert main(["serve", "--demo", "--workers", "2", "--port", "1"]) == 2
    err = capsys.readouterr().err
    assert "--workers 2" in err and "AIM_REDIS_URL" in err


def test_help_runs_without_error() -> None:
    out = io.StringIO()
    build_parser().print_help(out)
    assert "serve" in out.getvalue() and "--version" in out.getvalue()


def _help(prog: str) -> str:
    return dict(_parsers(build_parser()))[prog].format_help()


def test_serve_help_speaks_in_flags_and_user_words() -> None:
    text = " ".join(_help("aim serve").split())  # argparse wraps lines anywhere
    # Internal names a newcomer cannot act on: Python's None, field names in backticks.
    for internal in ("None", "`demo`", "`redis_url`", "`max_batch_size`", "`secret_file`"):
        assert internal not in text, f"`aim serve --help` says {internal!r}"
    assert "Needed unless --demo is given" in text
    assert "the bundled `digits` model" in text


def test_revocation_delay_is_the_same_in_help_and_readme() -> None:
    from service.access.keywatch import POLL_SECONDS
    from service.cli.accounts import REVOKE_DELAY

    assert POLL_SECONDS == 1.0, "REVOKE_DELAY and the README say 'within about a second'"
    assert REVOKE_DELAY in " ".join(_help("aim keys").split())
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    assert REVOKE_DELAY in readme


def test_usage_takes_no_redis_url_flag(capsys: pytest.CaptureFixture[str]) -> None:
    # The URL may hold a password: a command line is visible to every user (`ps`).
    assert "--redis-url" not in _help("aim usage")
    with pytest.raises(SystemExit):
        main(["usage", "--redis-url", "redis://u:p@h/0"])
    assert "unrecognized arguments: --redis-url" in capsys.readouterr().err


BAD_USAGE = [
    (["calibrate", "--model", "digits", "--targets", "1.5"], "--targets 1.5"),
    (["calibrate", "--model", "digits", "--targets", "0.05"], "1/10"),
    (["calibrate", "--model", "nosuch", "--targets", "0.9"], "--model 'nosuch'"),
    (["calibrate", "--model", "digits", "--targets", "0.9", "--inputs", "MISSING"], "no such"),
    (["calibrate", "--model", "digits", "--targets", "0.9", "--inputs", "BAD"], "shape"),
    (["eval", "utility", "--model", "digits", "--sigmas", "0,1", "--keys", "0"], "--keys 0"),
    (["eval", "utility", "--model", "digits", "--sigmas", "0,1", "--keys", "-3"], "--keys -3"),
    (["eval", "utility", "--model", "digits", "--sigmas", "0,-1"], "--sigmas 0,-1"),
]


@pytest.mark.parametrize(("argv", "named"), BAD_USAGE, ids=[" ".join(a) for a, _ in BAD_USAGE])
def test_bad_cli_values_exit_2_with_one_line_naming_the_flag(
    argv: list[str], named: str, tmp_path: Path
) -> None:
    """Issue 23: one line on stderr, no traceback, exit 2, nothing written."""
    import subprocess
    import sys

    import numpy as np

    np.save(tmp_path / "bad.npy", np.zeros((3, 5, 5)))
    paths = {"MISSING": str(tmp_path / "missing.npy"), "BAD": str(tmp_path / "bad.npy")}
    argv = [paths.get(a, a) for a in argv]
    if argv[0] == "eval":
        argv += ["--out", str(tmp_path / "out")]
    done = subprocess.run(
        [sys.executable, "-m", "service.cli", *argv], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert lines[0].startswith(f"aim {argv[0]}") and named in lines[0]
    assert not (tmp_path / "out").exists()
