"""Alembic migrations: the only way Easel's schema changes (``easel migrate``)."""

if __name__ != "easel.migrations":  # one module, one name: a second copy would split state
    raise ImportError(f"import easel.migrations, not {__name__}")
