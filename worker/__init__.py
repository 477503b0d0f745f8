"""The GPU worker: Celery entry point, thin tasks, and the generation engine."""

if __name__ != "easel.worker":  # one module, one name: a second copy would split state
    raise ImportError(f"import easel.worker, not {__name__}")
