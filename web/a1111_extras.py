"""AUTOMATIC1111's extras (``extra-single-image``, ``upscalers``) as Easel upscale jobs:
pure mappings for ``web.a1111``.

A1111's ``upscaler_1`` names an Easel upscaler (case-insensitive; ``None``, A1111's plain
resize, is ``lanczos``) and ``upscaling_resize`` is the scale. What would change the
picture and Easel does not have (face restoration, a second upscaler blended in, resizing
to a given width and height) is refused naming the field.
"""

from __future__ import annotations

from typing import Any

from easel.shared.upscalers import upscaler_names
from easel.web.a1111_map import invalid

PLAIN_RESIZE = "None"
"""A1111's upscaler of no model: a plain resize (Easel's ``lanczos``)."""
_REFUSED_WHEN_SET = ("gfpgan_visibility", "codeformer_visibility", "extras_upscaler_2_visibility")


def upscalers(registry: Any) -> list[dict[str, Any]]:
    """``GET /sdapi/v1/upscalers``: A1111's shape, ``None`` first as A1111 lists it."""
    return [
        {"name": name, "model_name": None, "model_path": None, "model_url": None, "scale": 4.0}
        for name in (PLAIN_RESIZE, *upscaler_names(registry))
    ]


def extras_fields(body: dict[str, Any], registry: Any) -> dict[str, Any]:
    """The Easel upscale job fields of an ``extra-single-image`` payload (image aside)."""
    for name in _REFUSED_WHEN_SET:
        if body.get(name):
            raise invalid(name, "is not supported by Easel (no face restorer, one upscaler)", body[name])
    if body.get("resize_mode", 0) not in (0, None):
        raise invalid("resize_mode", "only 0 (scale by upscaling_resize) is supported", body["resize_mode"])
    chosen = body.get("upscaler_1") or PLAIN_RESIZE
    known = {name.lower(): name for name in upscaler_names(registry)}
    if not isinstance(chosen, str) or (chosen != PLAIN_RESIZE and chosen.lower() not in known):
        raise invalid(
            "upscaler_1", f"unknown upscaler; known: {', '.join([PLAIN_RESIZE, *known.values()])}", chosen
        )
    upscaler = "lanczos" if chosen == PLAIN_RESIZE else known[chosen.lower()]
    return {"type": "upscale", "upscaler": upscaler, "scale": body.get("upscaling_resize", 2)}
