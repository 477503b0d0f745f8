"""Tiles of an SD upscale: cut an image into overlapping tiles, blend redrawn tiles back.

``split`` cuts along ``easel.shared.sd_upscale.grid`` (as few tiles as the overlap allows,
spread evenly). ``blend`` puts tiles of the same grid back: each tile weighs in with a
linear ramp across every overlap it shares with a neighbour (rising from its edge), and
every pixel is the weighted mean of the tiles over it, so a constant image comes back
exactly and no tile edge shows as a seam. Numpy and Pillow only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from easel.shared.sd_upscale import grid


def split(image: Image.Image, tile: tuple[int, int], overlap: int) -> list[Image.Image]:
    """``image``'s tiles of ``tile`` (width, height), row by row."""
    xs, ys = grid(image.size, tile, overlap)
    return [image.crop((x, y, x + tile[0], y + tile[1])) for y in ys for x in xs]


def ramp(positions: Sequence[int], tile: int, index: int) -> np.ndarray:
    """The weights along one side of tile ``index`` of ``positions``: rising linearly
    across its overlap with the previous tile, falling across its overlap with the next
    one, 1 elsewhere; never 0. Two neighbours' weights add up to 1 in their overlap."""
    weights = np.ones(tile, dtype=np.float64)
    t = np.arange(tile, dtype=np.float64)
    if index > 0:
        shared = positions[index - 1] + tile - positions[index]
        if shared > 0:
            weights *= np.clip((t + 0.5) / shared, None, 1.0)
    if index + 1 < len(positions):
        shared = positions[index] + tile - positions[index + 1]
        if shared > 0:
            weights *= np.clip((tile - t - 0.5) / shared, None, 1.0)
    return weights


def blend(tiles: Sequence[Image.Image], size: tuple[int, int], overlap: int) -> Image.Image:
    """The RGB image of ``size`` that ``tiles`` (``split``'s order) cover, blended in the overlaps."""
    if not tiles:
        raise ValueError("no tiles to blend")
    tile = tiles[0].size
    xs, ys = grid(size, tile, overlap)
    if len(tiles) != len(xs) * len(ys):
        raise ValueError(f"{len(tiles)} tiles for a grid of {len(xs)}x{len(ys)}")
    total = np.zeros((size[1], size[0], 3), dtype=np.float64)
    weight = np.zeros((size[1], size[0], 1), dtype=np.float64)
    pieces = iter(tiles)
    for row in range(len(ys)):
        down = ramp(ys, tile[1], row)
        for col in range(len(xs)):
            piece = next(pieces)
            if piece.size != tile:
                given = f"{piece.size[0]}x{piece.size[1]}"
                raise ValueError(f"a tile of {given} among tiles of {tile[0]}x{tile[1]}")
            mask = np.outer(down, ramp(xs, tile[0], col))[:, :, None]
            x, y = xs[col], ys[row]
            pixels = np.asarray(piece.convert("RGB"), dtype=np.float64)
            total[y : y + tile[1], x : x + tile[0]] += pixels * mask
            weight[y : y + tile[1], x : x + tile[0]] += mask
    out = np.clip(np.rint(total / weight), 0, 255).astype(np.uint8)
    return Image.fromarray(out)
