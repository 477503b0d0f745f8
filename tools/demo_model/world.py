"""The demo world: one shape of one colour on a plain background of another colour.

Scenes are drawn with PIL (supersampled, so edges are soft like a real image) and
captioned ``"a {color} {shape} on a {color} background"``; plain backgrounds are
captioned ``"a {color} background"``. ``judge`` reads a picture back into (background
colour, foreground colour, shape) by nearest palette colour and how much of its
bounding box the foreground fills, so a generated image can be scored against its
prompt. Torch-free: the tests and ``bench/demo_quality.py`` use it too.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 60, 220),
    "yellow": (240, 215, 30),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
SUPERSAMPLE = 4
# Each shape fills this much of its bounding box: square 1, circle pi/4, triangle 1/2.
_FILL = {"square": 1.0, "circle": np.pi / 4, "triangle": 0.5}


@dataclass(frozen=True)
class Scene:
    """What one picture shows; ``shape`` and ``fg`` are None for a plain background."""

    bg: str
    fg: str | None = None
    shape: str | None = None
    cx: float = 0.5  # centre and side, as fractions of the image side
    cy: float = 0.5
    side: float = 0.5

    def caption(self) -> str:
        if self.shape is None:
            return f"a {self.bg} background"
        return f"a {self.fg} {self.shape} on a {self.bg} background"


def random_scene(rng: random.Random, plain_fraction: float = 0.1) -> Scene:
    """A scene of the world: a plain background with ``plain_fraction`` probability."""
    bg = rng.choice(list(COLORS))
    if rng.random() < plain_fraction:
        return Scene(bg=bg)
    fg = rng.choice([c for c in COLORS if c != bg])
    shape = rng.choice(SHAPES)
    side = rng.uniform(0.3, 0.7)
    margin = 0.07  # the border stays background: the judge reads the background there
    cx = rng.uniform(margin + side / 2, 1 - margin - side / 2)
    cy = rng.uniform(margin + side / 2, 1 - margin - side / 2)
    return Scene(bg=bg, fg=fg, shape=shape, cx=cx, cy=cy, side=side)


def render(scene: Scene, size: int = 64) -> Image.Image:
    """The scene as an RGB image ``size`` pixels square."""
    big = size * SUPERSAMPLE
    image = Image.new("RGB", (big, big), COLORS[scene.bg])
    if scene.shape is not None and scene.fg is not None:
        draw = ImageDraw.Draw(image)
        half = scene.side * big / 2
        x, y = scene.cx * big, scene.cy * big
        box = (x - half, y - half, x + half, y + half)
        fill = COLORS[scene.fg]
        if scene.shape == "circle":
            draw.ellipse(box, fill=fill)
        elif scene.shape == "square":
            draw.rectangle(box, fill=fill)
        else:
            draw.polygon([(x, y - half), (x + half, y + half), (x - half, y + half)], fill=fill)
    return image.resize((size, size), Image.Resampling.BOX)


def caption_variant(scene: Scene, rng: random.Random) -> str:
    """A training caption: mostly the full one, sometimes a partial one the API may see
    (``"a red square"``), so short prompts such as inpainting's mean something too."""
    if scene.shape is not None and rng.random() < 0.15:
        return f"a {scene.fg} {scene.shape}"
    return scene.caption()


def palette_classes(image: Image.Image) -> np.ndarray:
    """Index into ``COLORS`` of the nearest palette colour, per pixel (H x W)."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    palette = np.array(list(COLORS.values()), dtype=np.float32)
    distance = ((pixels[:, :, None, :] - palette[None, None]) ** 2).sum(-1)
    return distance.argmin(-1)


@dataclass(frozen=True)
class Verdict:
    """What the judge sees in a picture."""

    bg: str
    fg: str | None
    shape: str | None
    fill: float  # foreground pixels / bounding-box pixels
    fg_fraction: float  # foreground pixels / all pixels


def judge(image: Image.Image) -> Verdict:
    """Read background colour, foreground colour and shape back from a picture.

    Background: the most common palette colour on a border ring (6% of the side).
    Foreground: the most common other colour inside; none if it covers under 2% of
    the picture. Shape: by how much of its bounding box the foreground fills (square
    1, circle 0.79, triangle 0.5), nearest on that scale.
    """
    classes = palette_classes(image)
    names = list(COLORS)
    h, w = classes.shape
    ring = max(1, round(0.06 * min(h, w)))
    edges = (classes[:ring], classes[-ring:], classes[:, :ring], classes[:, -ring:])
    border = np.concatenate([edge.ravel() for edge in edges])
    bg_index = int(np.bincount(border, minlength=len(names)).argmax())
    inner = classes[ring:-ring, ring:-ring]
    counts = np.bincount(inner.ravel(), minlength=len(names))
    counts[bg_index] = 0
    fg_index = int(counts.argmax())
    fg_fraction = counts[fg_index] / classes.size
    if fg_fraction < 0.02:
        return Verdict(bg=names[bg_index], fg=None, shape=None, fill=0.0, fg_fraction=float(fg_fraction))
    mask = classes == fg_index
    ys, xs = np.nonzero(mask)
    # The bounding box of the bulk of the foreground: stray pixels do not stretch it.
    x0, x1 = np.percentile(xs, [1, 99])
    y0, y1 = np.percentile(ys, [1, 99])
    box = (x1 - x0 + 1) * (y1 - y0 + 1)
    inside = mask[int(y0) : int(y1) + 1, int(x0) : int(x1) + 1].sum()
    fill = float(inside / box)
    shape = min(_FILL, key=lambda name: abs(_FILL[name] - fill))
    return Verdict(names[bg_index], names[fg_index], shape, fill, float(fg_fraction))


def parse_caption(caption: str) -> Scene:
    """The scene a full caption asks for (position and size left at their defaults)."""
    words = caption.split()
    if len(words) == 3 and words[0] == "a" and words[2] == "background":
        return Scene(bg=words[1])
    if len(words) == 7 and words[0] == "a" and words[3:5] == ["on", "a"] and words[6] == "background":
        return Scene(bg=words[5], fg=words[1], shape=words[2])
    raise ValueError(f"caption {caption!r} is not one of the world's")
