"""The private uvicorn API that service/serving/server.py (and coalescing.py) builds on, checked
against the uvicorn installed, so that an upgrade that changes it fails here, with a message
naming what changed, and not at start-up or, worse, by quietly dropping a limit.

`GuardedHttpTools` subclasses `uvicorn.protocols.http.httptools_impl.HttpToolsProtocol`, a
private class: it overrides some of its methods (one of them, `data_received`, is rewritten
rather than extended), calls others, and reads attributes that the base class sets. pyproject.toml
bounds uvicorn and httptools to the versions this was reviewed against; moving a bound is a
deliberate step: review the methods this test names against the new uvicorn, then update the
reviewed sources' digests below.
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import textwrap
from importlib.metadata import requires, version
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from service.serving import server

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
PRIVATE = "uvicorn.protocols.http.httptools_impl.HttpToolsProtocol"

# Base methods GuardedHttpTools overrides: each must still exist (else ours is never called and
# its limit silently disappears).
OVERRIDES = {
    "__init__",
    "connection_made",
    "connection_lost",
    "data_received",
    "on_message_begin",
    "on_url",
    "on_header",
    "on_headers_complete",
    "on_body",
    "on_message_complete",
    "on_response_complete",
    "_start_asgi_task",
}

# sha256 of the source of the uvicorn methods whose behaviour server.py copies or relies on, as
# reviewed with uvicorn 0.55.0: `data_received` is rewritten in GuardedHttpTools; the discard
# branch of `on_message_complete` and the refusal in `on_headers_complete` repeat what the base
# does after a request; `on_response_complete` re-arms keep-alive; `RequestResponseCycle.send`
# writes a response's head in one write (coalescing.HeadWithBody relies on that);
# `_start_asgi_task` is copied in GuardedHttpTools, which adds the slot release to the task.
REVIEWED = {
    "HttpToolsProtocol.data_received": "02c2572f1df55907",
    "HttpToolsProtocol.on_headers_complete": "7e259152e5aade71",
    "HttpToolsProtocol.on_message_complete": "377f9122ee6f3ab8",
    "HttpToolsProtocol.on_response_complete": "5684fd801d0683ac",
    "RequestResponseCycle.send": "cfc84491029529db",
    "HttpToolsProtocol._start_asgi_task": "7b5e573c86b798b0",
}


def _digest(qualname: str) -> str:
    from uvicorn.protocols.http import httptools_impl

    cls_name, method = qualname.split(".")
    source = inspect.getsource(getattr(getattr(httptools_impl, cls_name), method))
    return hashlib.sha256(textwrap.dedent(source).encode()).hexdigest()[:16]


def _self_attributes(tree: ast.AST) -> tuple[set[str], set[str]]:
    """(attributes assigned on `self`, attributes read from `self`) in a class's methods."""
    assigned, read = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if node.value.id != "self":
                continue
            (assigned if isinstance(node.ctx, ast.Store) else read).add(node.attr)
    return assigned, read


def _class_node(path: Path, name: str) -> ast.ClassDef:
    tree = ast.parse(path.read_text())
    return next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == name)


def test_installed_uvicorn_and_httptools_are_the_reviewed_ones() -> None:
    # The installed distribution's metadata: what pip enforces (built from pyproject.toml).
    deps = [Requirement(d) for d in requires("aim-serving") or [] if "extra ==" not in d]
    for name in ("uvicorn", "httptools"):
        (req,) = [d for d in deps if d.name == name]
        assert any(s.operator == "<" for s in req.specifier), f"{name} needs an upper bound"
        installed = version(name)
        assert req.specifier.contains(installed), (
            f"{name} {installed} is outside pyproject.toml's {req}: {PRIVATE} may differ; "
            "see this module's docstring"
        )


def test_overridden_methods_still_exist_in_uvicorn() -> None:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    missing = sorted(m for m in OVERRIDES if not callable(getattr(HttpToolsProtocol, m, None)))
    assert not missing, f"{PRIVATE} no longer has {missing}, which GuardedHttpTools overrides"
    ours = {n for n, v in vars(server.GuardedHttpTools).items() if inspect.isfunction(v)}
    assert ours >= OVERRIDES, f"OVERRIDES names methods GuardedHttpTools lacks: {OVERRIDES - ours}"
    # Our own helpers must not shadow a base method by accident (a new uvicorn may add one).
    shadowing = sorted(n for n in ours - OVERRIDES if hasattr(HttpToolsProtocol, n))
    assert not shadowing, f"GuardedHttpTools.{shadowing} now override {PRIVATE} methods"


def test_overridden_signatures_are_unchanged() -> None:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    for name in sorted(OVERRIDES - {"__init__"}):
        base = list(inspect.signature(getattr(HttpToolsProtocol, name)).parameters)
        ours = list(inspect.signature(getattr(server.GuardedHttpTools, name)).parameters)
        assert base == ours, f"{PRIVATE}.{name}{base} is called as {name}{ours} by our override"


def test_every_base_attribute_server_py_uses_still_exists() -> None:
    from uvicorn.protocols.http import httptools_impl
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    ours_node = _class_node(ROOT / "service/serving/server.py", "GuardedHttpTools")
    ours_assigned, ours_read = _self_attributes(ours_node)
    ours_defined = ours_assigned | {n for n in vars(server.GuardedHttpTools)}
    base_node = _class_node(Path(httptools_impl.__file__), "HttpToolsProtocol")
    base_assigned, _ = _self_attributes(base_node)
    needed = ours_read - ours_defined
    assert needed, "the AST walk found no base attribute read: the test itself is broken"
    gone = sorted(a for a in needed if a not in base_assigned and not hasattr(HttpToolsProtocol, a))
    assert not gone, f"server.py reads self.{gone}, which {PRIVATE} no longer sets or defines"


def test_status_lines_and_collaborators() -> None:
    from uvicorn.protocols.http import httptools_impl
    from uvicorn.protocols.http.flow_control import FlowControl
    from uvicorn.server import ServerState

    for status in (400, 408, 431, 503):
        line = httptools_impl.STATUS_LINE[status]
        assert line.startswith(b"HTTP/1.1 %d " % status) and line.endswith(b"\r\n"), (
            f"uvicorn.protocols.http.httptools_impl.STATUS_LINE[{status}] is {line!r}"
        )
    for name in ("pause_reading", "resume_reading"):
        assert callable(getattr(FlowControl, name, None)), f"FlowControl.{name} is gone"
    state = ServerState()
    for name in ("default_headers", "total_requests"):
        assert hasattr(state, name), f"uvicorn.server.ServerState().{name} is gone"
    cycle = _class_node(Path(httptools_impl.__file__), "RequestResponseCycle")
    assigned, _ = _self_attributes(cycle)
    assert {"response_complete", "keep_alive"} <= assigned, "RequestResponseCycle changed"


@pytest.mark.parametrize("qualname", sorted(REVIEWED))
def test_reviewed_uvicorn_sources_are_unchanged(qualname: str) -> None:
    assert _digest(qualname) == REVIEWED[qualname], (
        f"uvicorn.protocols.http.httptools_impl.{qualname} changed since it was reviewed: "
        "service/serving/server.py copies or relies on its behaviour; review it, then update "
        "REVIEWED in this test"
    )
