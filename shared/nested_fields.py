"""Nested request objects (a hires fix, an SD upscale) sent as flat form fields.

HTML forms and multipart requests cannot send an object: they send ``<field>_<name>``
fields and a ``<field>`` checkbox instead. ``lift_nested`` turns them back into the
object JSON sends.

This module imports neither torch nor diffusers.
"""

from __future__ import annotations

from typing import Any

CHECKED = ("on", "true", "1", "yes")


def lift_nested(
    data: dict[str, Any], field: str, names: tuple[str, ...], turns_on: tuple[str, ...]
) -> dict[str, Any]:
    """``data`` with its ``<field>_<name>`` fields (one per ``names``) as the ``field``
    object: on when ``field`` is a checked box or one of ``turns_on`` is given; empty
    fields dropped. JSON's ``field`` object passes unchanged."""
    prefix = f"{field}_"
    flat = {name: data[prefix + name] for name in names if prefix + name in data}
    switch = data.get(field)
    if not flat and not isinstance(switch, str):
        return data
    rest = {key: value for key, value in data.items() if not key.startswith(prefix) and key != field}
    given = {name: value for name, value in flat.items() if value not in (None, "")}
    checked = isinstance(switch, str) and switch.lower() in CHECKED
    if checked or any(name in given for name in turns_on):
        rest[field] = given
    elif switch is not None and not isinstance(switch, str):
        rest[field] = switch
    return rest
