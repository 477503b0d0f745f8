"""Making torchvision importable where its compiled operators do not load.

diffusers and transformers import torchvision when it is installed, and spandrel (the
upscaler models' loader) always does. PyPI's torchvision wheels for Linux x86_64 are CUDA
builds: beside a CPU build of torch (a laptop, ``make``'s venv) their compiled library
cannot load, and ``import torchvision`` then fails with ``operator torchvision::nms does
not exist``, because torchvision registers fake kernels for ``nms`` and ``qnms`` without
checking that its library loaded (its other registrations check). That failure would
take every pipeline down with it. What Easel uses of torchvision is its Python part
(transforms), which needs none of those operators.

``make_torchvision_importable`` imports torchvision; on exactly that failure it declares
the two operators' schemas (no kernels: calling them still fails, as it would without
torchvision), logs a warning and imports again. A torchvision built for the installed
torch (the worker image's) takes the first path. ``easel.worker.engine`` calls it on
import, before any of its modules imports diffusers.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
from typing import Any

log = logging.getLogger(__name__)

UNGUARDED_OPS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
"""The operators torchvision registers fake kernels for whether or not its library loaded."""
MISSING_OP = "operator torchvision::nms does not exist"
_declared: list[Any] = []  # the torch.library.Library holding the schemas, kept alive


def make_torchvision_importable() -> bool:
    """Import torchvision if it is installed; ``True`` when its operators had to be
    declared (its compiled library does not load beside this torch)."""
    if "torchvision" in sys.modules or importlib.util.find_spec("torchvision") is None:
        return bool(_declared)
    try:
        import torchvision
    except RuntimeError as exc:
        if MISSING_OP not in str(exc):
            raise
        for name in [name for name in sys.modules if name.split(".")[0] == "torchvision"]:
            del sys.modules[name]  # the half-imported package
        _declare_unguarded_ops()
        import torchvision  # noqa: F401

        log.info(
            "torchvision's compiled operators do not load beside this torch (%s): a CUDA "
            "build of torchvision beside a CPU torch? Its Python part is used without them",
            exc,
        )
    return bool(_declared)


def _declare_unguarded_ops() -> None:
    import torch

    library = torch.library.Library("torchvision", "DEF")
    for schema in UNGUARDED_OPS:
        library.define(schema)
    _declared.append(library)
