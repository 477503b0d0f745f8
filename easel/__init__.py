"""Easel: an asynchronous image-generation job backend.

One import package over the product's folders: ``easel.web`` (the Flask front end),
``easel.worker`` (Celery entry point and the generation engine), ``easel.shared``
(what both tiers import: settings, database, models, schemas, storage, queue, errors)
and ``easel.migrations`` (Alembic). ``easel.cli`` is the ``easel`` command and
``easel.client`` the HTTP client. ``docs/design.md`` is the design the code cites.
"""

from easel.offline import apply_offline

apply_offline()  # before anything can import huggingface_hub (easel/offline.py)
