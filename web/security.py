"""Security headers on every response; a Content-Security-Policy the pages satisfy.

A response to an authenticated caller depends on who asked: it is marked
``Cache-Control: no-store`` (unless the view chose a ``private`` policy, as outputs do)
and ``Vary: Authorization, Cookie``, so no shared cache keeps or mixes them up.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import Flask, Response, g, request

from easel.shared.settings import Settings


def image_sources(settings: Settings) -> str:
    """Where output images may load from: this site, and the S3 endpoint that presigned
    links redirect to."""
    sources = ["'self'", "blob:", "data:"]
    if settings.storage_url.startswith("s3://"):
        if settings.s3_endpoint_url:
            parts = urlsplit(settings.s3_endpoint_url)
            sources.append(f"{parts.scheme}://{parts.netloc}")
        else:
            sources.append("https://*.amazonaws.com")
    return " ".join(sources)


def init_app(app: Flask, settings: Settings) -> None:
    policy = (
        "default-src 'self'; "
        f"img-src {image_sources(settings)}; "
        "script-src 'self'; style-src 'self'; connect-src 'self'; "
        "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
    )

    @app.after_request
    def _headers(response: Response) -> Response:
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        if settings.auth_enabled:  # who asked decides the answer (even a 401)
            response.vary.update(("Authorization", "Cookie"))
            private = "private" in (response.headers.get("Cache-Control") or "")
            if g.get("principal") is not None and not private and request.endpoint != "static":
                response.headers["Cache-Control"] = "no-store"
        if response.mimetype == "text/html":
            response.headers.setdefault("Content-Security-Policy", policy)
            response.headers.setdefault("X-Frame-Options", "DENY")
        return response
