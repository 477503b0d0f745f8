"""The Flask front end. ``create_app`` is the factory gunicorn and tests call."""

from __future__ import annotations

if __name__ != "easel.web":  # one module, one name: a second copy would split state
    raise ImportError(f"import easel.web, not {__name__}")

import logging

from flask import Flask

from easel.shared.settings import Settings, get_settings
from easel.shared.tracing import setup_tracing


def create_app(settings: Settings | None = None) -> Flask:
    """Build the app for ``settings`` (the environment's when ``None``)."""
    from easel.web import (
        a1111,
        admin,
        api,
        auth,
        catalog,
        docs,
        errors,
        health,
        limits,
        openai_api,
        openapi,
        pages,
        request_ids,
        security,
        usage,
    )
    from easel.web.metrics import bp as metrics_bp
    from easel.web.services import Services

    settings = settings or get_settings()
    if not logging.getLogger().handlers:  # under gunicorn: the app's own log lines
        from easel.shared.logs import setup_logging

        setup_logging("INFO", settings.log_format)
    app = Flask(__name__)
    setup_tracing("easel-web", settings.otlp_endpoint)  # each job's trace starts at its submit
    if settings.trusted_proxy_hops:  # the client's address behind a proxy: per-address limits
        from werkzeug.middleware.proxy_fix import ProxyFix

        hops = settings.trusted_proxy_hops
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops)  # type: ignore[method-assign]
    app.config.update(MAX_CONTENT_LENGTH=settings.max_request_bytes, JSON_SORT_KEYS=False)
    Services(settings).init_app(app)
    request_ids.init_app(app)  # first, so even a 401 carries its request id
    auth.init_app(app)  # before the limiter: limits are counted per API key
    limits.init_app(app, settings)
    security.init_app(app, settings)
    errors.init_app(app)
    app.register_blueprint(api.bp)
    app.register_blueprint(openai_api.bp)  # client-compatibility surfaces: docs/openai.md
    app.register_blueprint(a1111.bp)  # and docs/automatic1111.md (its listings: web/catalog.py)
    app.register_blueprint(catalog.bp)
    app.register_blueprint(usage.bp)  # usage per key: shared/usage.py
    app.register_blueprint(openapi.bp)
    app.register_blueprint(docs.bp)
    app.register_blueprint(admin.bp)
    app.register_blueprint(health.bp)
    app.register_blueprint(metrics_bp)
    from easel.web.ops_metrics import OpsCollector  # easel_ready, easel_workers_lost (alerts)

    app.extensions["easel_metrics"].register(OpsCollector(app.extensions["easel"]))
    app.register_blueprint(pages.bp)
    logging.getLogger(__name__).debug("app created for %s", settings.database_url)
    return app
