"""Seamless textures (a job's ``tiling``): circular padding on every 2-D convolution of the
denoiser and the VAE for one pipeline call, so the picture wraps around at its edges and
tiles without seams (A1111's ``tiling``).

The padding mode is set on the shared modules within ``seamless_scope`` and set back
after, as ``lora_scope`` does for LoRA weights; ``tiling`` is part of the batch key, so a
call never mixes jobs with and without it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

SEAMLESS_COMPONENTS = ("unet", "transformer", "vae")
"""The pipeline components whose convolutions wrap around."""


def _convolutions(pipes: tuple[Any, ...]) -> list[Any]:
    import torch

    found: dict[int, Any] = {}
    for pipe in pipes:
        for name in SEAMLESS_COMPONENTS:
            module = getattr(pipe, name, None)
            if isinstance(module, torch.nn.Module):
                for layer in module.modules():
                    if isinstance(layer, torch.nn.Conv2d):
                        found[id(layer)] = layer
    return list(found.values())


@contextmanager
def seamless_scope(enabled: bool, *pipes: Any) -> Iterator[None]:
    """Within: when ``enabled``, every ``Conv2d`` of the pipelines' denoiser and VAE pads
    circularly; after: each layer's own padding mode again."""
    if not enabled:
        yield
        return
    layers = _convolutions(pipes)
    before = [layer.padding_mode for layer in layers]
    try:
        for layer in layers:
            layer.padding_mode = "circular"  # F.pad with the layer's own padding, then no padding
        yield
    finally:
        for layer, mode in zip(layers, before, strict=True):
            layer.padding_mode = mode
