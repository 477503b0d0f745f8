"""Plain classes that do the work; Celery only calls into them."""
