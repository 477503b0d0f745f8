"""Plain classes that do the work; Celery only calls into them."""

from easel.worker.engine.torchvision_compat import make_torchvision_importable

make_torchvision_importable()  # before any module of the engine imports diffusers
