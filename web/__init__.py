"""The Flask front end. ``create_app`` is the factory gunicorn and tests call."""

from __future__ import annotations

import logging

from flask import Flask

from shared.settings import Settings, get_settings


def create_app(settings: Settings | None = None) -> Flask:
    """Build the app for ``settings`` (the environment's when ``None``)."""
    from web import api, errors, health, openapi, pages
    from web.services import Services

    settings = settings or get_settings()
    app = Flask(__name__)
    app.config.update(MAX_CONTENT_LENGTH=settings.max_request_bytes, JSON_SORT_KEYS=False)
    Services(settings).init_app(app)
    errors.init_app(app)
    app.register_blueprint(api.bp)
    app.register_blueprint(openapi.bp)
    app.register_blueprint(health.bp)
    app.register_blueprint(pages.bp)
    logging.getLogger(__name__).debug("app created for %s", settings.database_url)
    return app
