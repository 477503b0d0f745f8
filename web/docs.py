"""The API docs page: Swagger UI from the ``swagger-ui-py`` package (no CDN), over the
generated OpenAPI document."""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, abort, render_template, send_from_directory
from flask.typing import ResponseReturnValue

bp = Blueprint("docs", __name__)
ASSETS = ("swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png")


def _assets_dir() -> Path:
    import swagger_ui

    return Path(swagger_ui.__file__).parent / "static"


@bp.get("/docs")
def docs_page() -> ResponseReturnValue:
    return render_template("docs.html")


@bp.get("/docs/assets/<name>")
def docs_asset(name: str) -> ResponseReturnValue:
    if name not in ASSETS:
        abort(404)
    return send_from_directory(_assets_dir(), name, max_age=86400)
