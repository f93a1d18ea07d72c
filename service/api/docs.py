"""`/docs` that works offline, with an Authorize button for the API key.

Swagger UI comes from the `swagger-ui-bundle-v2` package (Apache-2.0), served under
`/docs/assets`, never from a CDN: a server on a closed network still shows its docs. The
OpenAPI document declares the two ways to present a key (`X-API-Key` and `Authorization:
Bearer`) and attaches them to every operation that answers 401, so "Try it out" sends the key.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path

ASSETS = "/docs/assets"
SECURITY_SCHEMES: dict[str, dict[str, Any]] = {
    "ApiKey": {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
        "description": "An API key from `aim keys create` (or one printed by `--demo`).",
    },
    "Bearer": {
        "type": "http",
        "scheme": "bearer",
        "description": "The same API key as `Authorization: Bearer KEY`.",
    },
}
# Either scheme alone is enough: a list of alternatives, not one requirement with both.
SECURITY: list[dict[str, list[str]]] = [{name: []} for name in SECURITY_SCHEMES]


def add_security(schema: dict[str, Any]) -> dict[str, Any]:
    """Declare the key schemes and require them on the operations that can answer 401."""
    components = schema.setdefault("components", {})
    components.setdefault("securitySchemes", {}).update(SECURITY_SCHEMES)
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            if isinstance(operation, dict) and "401" in operation.get("responses", {}):
                operation.setdefault("security", SECURITY)
    return schema


def install_docs(app: FastAPI) -> None:
    """Serve `/docs` from local files. The app must be built with `docs_url=None` (FastAPI's
    own page loads Swagger UI from a CDN) and `redoc_url=None` (ReDoc does too)."""
    app.mount(ASSETS, StaticFiles(directory=str(swagger_ui_path)), name="swagger-ui")
    build_schema = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = add_security(build_schema())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title}: API",
            swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS}/favicon-32x32.png",
            # The key typed into Authorize survives a page reload (kept in the browser only).
            # validatorUrl None: no badge fetched from swagger.io.
            swagger_ui_parameters={"persistAuthorization": True, "validatorUrl": None},
        )
