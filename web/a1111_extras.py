"""AUTOMATIC1111's extras (``extra-single-image``, ``upscalers``) as Easel upscale jobs,
and img2img's "SD upscale" script as a job's ``sd_upscale``: pure mappings for ``web.a1111``.

A1111's ``upscaler_1`` names an Easel upscaler (case-insensitive; ``None``, A1111's plain
resize, is ``lanczos``) and ``upscaling_resize`` is the scale. What would change the
picture and Easel does not have (face restoration, a second upscaler blended in, resizing
to a given width and height) is refused naming the field.
"""

from __future__ import annotations

from typing import Any

from easel.shared.sd_upscale import DEFAULT_OVERLAP, DEFAULT_SCALE
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


SCRIPT_ARGS = "[info, overlap, upscaler_index, scale_factor]"
"""The SD upscale script's ``script_args``, as A1111 takes them."""


def sd_upscale_fields(body: dict[str, Any], registry: Any) -> dict[str, Any]:
    """The Easel ``sd_upscale`` of an img2img payload whose script is "SD upscale": its
    ``script_args`` ``[info, overlap, upscaler_index, scale_factor]`` (``info`` ignored;
    absent ones A1111's defaults: 64, ``None``, 2). ``upscaler_index`` is an index into
    ``GET /sdapi/v1/upscalers`` (0, ``None``: lanczos) or an upscaler's name (any case)."""
    args = body.get("script_args")
    if args is None:
        args = []
    if not isinstance(args, list) or len(args) > 4:
        raise invalid("script_args", f"must be a list {SCRIPT_ARGS}", args)
    _info, overlap, index, scale = [*args, None, None, None, None][:4]
    listed = [item["name"] for item in upscalers(registry)]
    if isinstance(index, bool) or not isinstance(index, (int, str, type(None))):
        raise invalid(
            "script_args", f"upscaler_index must be an index of {', '.join(listed)} or a name", index
        )
    if isinstance(index, int):
        if not 0 <= index < len(listed):
            message = f"upscaler_index {index} is not an index of the upscalers ({', '.join(listed)})"
            raise invalid("script_args", message, index)
        name = listed[index]
    else:
        known = {item.lower(): item for item in listed}
        name = known.get((index or PLAIN_RESIZE).strip().lower(), "")
        if not name:
            raise invalid("script_args", f"unknown upscaler {index!r}; known: {', '.join(listed)}", index)
    for label, value in (("overlap", overlap), ("scale_factor", scale)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise invalid("script_args", f"{label} must be a number", value)
    if overlap is not None and overlap != int(overlap):
        raise invalid("script_args", "overlap must be a whole number of pixels", overlap)
    return {
        "upscaler": "lanczos" if name == PLAIN_RESIZE else name,
        "scale": DEFAULT_SCALE if scale is None else scale,
        "overlap": DEFAULT_OVERLAP if overlap is None else int(overlap),
    }
