"""Progress of long CLI runs: plain lines when stderr is not a terminal, a bar when it is."""

from __future__ import annotations

import io

import pytest

from service.cli.progress import progress

pytestmark = pytest.mark.unit


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_not_a_terminal_gets_one_plain_line_per_step() -> None:
    out = io.StringIO()
    assert list(progress([1, 2, 3], "sigmas", file=out)) == [1, 2, 3]
    assert out.getvalue().splitlines() == ["sigmas: 1/3", "sigmas: 2/3", "sigmas: 3/3"]
    assert "\r" not in out.getvalue() and "\x1b" not in out.getvalue()


def test_unsized_iterables_count_without_a_total() -> None:
    out = io.StringIO()
    assert list(progress(iter("ab"), "steps", file=out)) == ["a", "b"]
    assert out.getvalue().splitlines() == ["steps: 1/?", "steps: 2/?"]


def test_a_terminal_gets_a_bar() -> None:
    out = _Terminal()
    assert list(progress([1, 2], "sigmas", file=out)) == [1, 2]
    assert "\r" in out.getvalue() and "2/2" in out.getvalue()
