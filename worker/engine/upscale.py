"""Upscale jobs: each job's image enlarged by its upscaler to the size its row records.

The built-in ``lanczos`` is Pillow's Lanczos resampling (no weights, no torch). An
upscaler model (``[upscalers.NAME]``) is loaded with spandrel, which detects the
architecture from the file, and runs in tiles of at most ``TILE`` pixels a side (plus
an overlap that is cut off again), so memory stays bounded for any image size; its
output is resized to the job's size when the model's own factor differs. One model
stays loaded at a time. A batch shares the upscaler and the scale (the batch key); each
image is done on its own, one progress step per image.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from PIL import Image

from easel.shared.errors import ModelLoadError, cannot_load
from easel.shared.upscalers import UpscalerSpec, upscaler_names
from easel.worker.engine.generate import GenerationRequest, Upscaler

TILE = 512
OVERLAP = 16
_LOADED: dict[tuple[str, str], Upscaler] = {}


def lanczos(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    return image.convert("RGB").resize(size, Image.Resampling.LANCZOS)


def load_upscaler(name: str, registry: Any = None) -> Upscaler:
    """The upscaler called ``name``: built in, or a model of ``registry`` (loaded once;
    ``ModelLoadError`` when its file cannot be loaded)."""
    if name == "lanczos":
        return lanczos
    spec: UpscalerSpec | None = (getattr(registry, "upscalers", None) or {}).get(name)
    if spec is None:
        raise ValueError(f"unknown upscaler {name!r}; this worker has {', '.join(upscaler_names(registry))}")
    key = (spec.name, spec.location)
    if key not in _LOADED:
        _LOADED.clear()  # one upscaler model at a time
        _LOADED[key] = _load_model(spec)
    return _LOADED[key]


def _load_model(spec: UpscalerSpec) -> Upscaler:
    try:
        import torch
        from spandrel import ModelLoader

        descriptor = ModelLoader().load_from_file(spec.location)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        module = descriptor.model.eval().to(device)
        scale = int(descriptor.scale)
    except Exception as exc:
        raise ModelLoadError(
            f"cannot load upscaler {spec.name!r} from {spec.location!r}: {exc}",
            cannot_load("upscaler", spec.name, "ask for another upscaler, or lanczos"),
        ) from exc
    return ModelUpscaler(module, scale, device)


class ModelUpscaler:
    """An upscaler model (a torch module taking and giving ``1xCxHxW`` in 0..1) run in tiles."""

    def __init__(
        self, module: Callable[[Any], Any], scale: int, device: str = "cpu", tile: int = TILE
    ) -> None:
        self.module, self.scale, self.device, self.tile = module, scale, device, tile

    def __call__(self, image: Image.Image, size: tuple[int, int]) -> Image.Image:
        import numpy as np
        import torch

        pixels = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0)
        batch = pixels.permute(2, 0, 1).unsqueeze(0).to(self.device)
        with torch.inference_mode():
            out = upscale_tiled(self.module, batch, self.scale, self.tile)
        array = (out[0].clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255.0).round().astype(np.uint8)
        result = Image.fromarray(array)
        return result if result.size == size else result.resize(size, Image.Resampling.LANCZOS)


def upscale_tiled(
    module: Callable[[Any], Any], image: Any, scale: int, tile: int, overlap: int = OVERLAP
) -> Any:
    """``module(image)`` for a ``1xCxHxW`` tensor, computed tile by tile: each tile of at
    most ``tile`` pixels a side runs with ``overlap`` pixels of context on each side, and
    only its own part of the output is kept (no seams where the context covers the model's
    reach)."""
    import torch

    _, channels, height, width = image.shape
    out = torch.zeros((1, channels, height * scale, width * scale), dtype=image.dtype, device=image.device)
    for top in range(0, height, tile):
        for left in range(0, width, tile):
            bottom, right = min(top + tile, height), min(left + tile, width)
            y0, x0 = max(0, top - overlap), max(0, left - overlap)
            y1, x1 = min(height, bottom + overlap), min(width, right + overlap)
            piece = module(image[:, :, y0:y1, x0:x1])
            dy, dx = (top - y0) * scale, (left - x0) * scale
            out[:, :, top * scale : bottom * scale, left * scale : right * scale] = piece[
                :, :, dy : dy + (bottom - top) * scale, dx : dx + (right - left) * scale
            ]
    return out


def upscale_batch(
    upscaler: Upscaler,
    requests: Sequence[GenerationRequest],
    on_step: Callable[[int, int], None] | None = None,
) -> list[list[Any]]:
    """One image per request: its input at the request's ``width`` x ``height``."""
    results: list[list[Any]] = []
    for done, request in enumerate(requests, 1):
        if request.image is None:
            raise ValueError("an upscale job needs its image input")
        results.append([upscaler(request.image, (request.params.width, request.params.height))])
        if on_step is not None:
            on_step(done, len(requests))
    return results
