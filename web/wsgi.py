"""WSGI entry point for gunicorn: ``gunicorn web.wsgi:app``."""

from easel.web import create_app

app = create_app()
