"""Alembic migrations: the only way Easel's schema changes (``easel migrate``)."""
