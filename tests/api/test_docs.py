"""`/docs` works offline (Swagger UI from local files) and documents how to present the key."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from typing import Any

import pytest
from fastapi.testclient import TestClient

pytestmark = pytest.mark.unit

METHODS = {"get", "post", "put", "patch", "delete"}


class _Refs(HTMLParser):
    """Every URL the page loads: script src, link href, img src."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href") and value:
                self.refs.append(value)


def test_docs_page_loads_only_local_assets(client: TestClient) -> None:
    r = client.get("/docs")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    parser = _Refs()
    parser.feed(r.text)
    assert any(ref.endswith(".js") for ref in parser.refs), parser.refs
    assert any(ref.endswith(".css") for ref in parser.refs), parser.refs
    for ref in parser.refs:
        assert ref.startswith("/"), f"/docs loads {ref} from elsewhere"
        asset = client.get(ref)
        assert asset.status_code == 200, ref
        assert len(asset.content) > 100, ref
    # Nothing else in the page may point off the server either (inline script included).
    assert not re.search(r"https?://", r.text), re.findall(r"https?://\S+", r.text)
    assert "SwaggerUIBundle" in client.get(next(x for x in parser.refs if x.endswith(".js"))).text
    assert "'/openapi.json'" in r.text


def test_redoc_is_off_because_it_needs_a_cdn(client: TestClient) -> None:
    assert client.get("/redoc").status_code == 404


def _operations(schema: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method, path, op)
        for path, ops in schema["paths"].items()
        for method, op in ops.items()
        if method in METHODS
    ]


def test_openapi_declares_both_ways_to_present_the_key(client: TestClient) -> None:
    schemes = client.get("/openapi.json").json()["components"]["securitySchemes"]
    assert schemes["ApiKey"] == {**schemes["ApiKey"], "type": "apiKey", "in": "header"}
    assert schemes["ApiKey"]["name"] == "X-API-Key"
    assert schemes["Bearer"]["type"] == "http" and schemes["Bearer"]["scheme"] == "bearer"


def test_security_is_declared_exactly_on_the_routes_that_need_a_key(
    client: TestClient, api_keys: dict[str, str]
) -> None:
    """Called without a key, an operation answers 401 if and only if it declares the schemes;
    with the key sent as each scheme says, the 401 goes away."""
    schema = client.get("/openapi.json").json()
    schemes = schema["components"]["securitySchemes"]
    protected = []
    for method, path, op in _operations(schema):
        url = path.replace("{name}", "digits")
        body = {} if method != "get" else None
        r = client.request(method, url, json=body)
        declared = op.get("security")
        assert (r.status_code == 401) == bool(declared), (method, path, r.status_code, declared)
        if not declared:
            continue
        protected.append(path)
        assert sorted(name for req in declared for name in req) == sorted(schemes)
        for requirement in declared:
            (name,) = requirement
            scheme = schemes[name]
            key = api_keys["gold"]
            headers = (
                {scheme["name"]: key}
                if scheme["type"] == "apiKey"
                else {"Authorization": f"Bearer {key}"}
            )
            assert client.request(method, url, json=body, headers=headers).status_code != 401
    assert "/predict" in protected and "/model" in protected
