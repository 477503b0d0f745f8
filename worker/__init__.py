"""The GPU worker: Celery entry point, thin tasks, and the generation engine."""
